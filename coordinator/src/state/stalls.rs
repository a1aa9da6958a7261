//! The running round's ranks beyond "alive or not": stragglers (`straggler.rs`) and hangs
//! (`hang.rs`), judged from the heartbeats.
//!
//! Same contract as the parent module; split off only to keep files small. In addition:
//! * Every heartbeat re-judges the ranks (with `straggler.rs`'s hysteresis). A rank that
//!   becomes a straggler, or stops being one,
//!   gets one line for people (a notice under the table, and the log); `/metrics`, `/status`
//!   and the dashboard show every rank's standing as of the last judgement. A rank whose
//!   measurement lapses (too few steps in its window) keeps its last standing.
//! * A round hangs when, after its first step, nothing progressed (no rank's step grew, no
//!   barrier call came or went) for `hang_timeout_s`. The coordinator then states which rank is
//!   where and which one the others wait for, and restarts the round with that as its reason.
//!   A rank's own collective failure (a ring timeout) gets the same diagnosis appended.

use std::time::{Duration, Instant};

use super::events::Action;
use super::hang::{self, Diagnosis, RankView};
use super::metrics::host_of;
use super::output::Output;
use super::straggler::{self, PerStep};
use super::{Cause, RunState, Status};
use crate::ids::Rank;

impl RunState {
    /// Re-judges every rank of the running round; notices for changed verdicts.
    pub(super) fn judge_stragglers(&mut self) -> Vec<Action> {
        if self.status != Status::Running {
            return vec![];
        }
        let c = &self.prepared.config;
        let (margin, window_s) = (c.straggler_margin, c.straggler_window_s);
        let per: Vec<Option<PerStep>> = self
            .ranks
            .iter()
            .map(|l| (!l.left && !l.gone).then(|| l.window.per_step()).flatten())
            .collect();
        let named: Vec<bool> = self
            .ranks
            .iter()
            .map(|l| l.standing.is_some_and(|s| s.straggler))
            .collect();
        let mut out = Vec::new();
        for (i, standing) in straggler::judge(&per, margin, &named)
            .into_iter()
            .enumerate()
        {
            let Some(now) = standing else {
                continue;
            };
            let was = self.ranks[i].standing.is_some_and(|s| s.straggler);
            self.ranks[i].standing = Some(now);
            if was == now.straggler {
                continue;
            }
            let rank = Rank(i as u32);
            let who = self.who(rank);
            let line = if now.straggler {
                self.counters.stragglers_named += 1;
                let mine = per[i].map_or(0.0, |p| p.compute_s);
                let line = format!(
                    "straggler: {who} needs {:.1} ms of compute per step, {:.2}x the median of the other ranks ({:.1} ms), over the last {window_s:.0} s",
                    mine * 1e3,
                    now.slowdown,
                    now.others_median_s * 1e3
                );
                tracing::warn!(run_id = %self.prepared.run_id, rank = i, slowdown = now.slowdown, "{line}");
                line
            } else {
                let line = format!(
                    "straggler: {who} is back within the margin ({:.2}x the median of the other ranks)",
                    now.slowdown
                );
                tracing::info!(run_id = %self.prepared.run_id, rank = i, slowdown = now.slowdown, "{line}");
                line
            };
            out.push(Action::Output(Output::Notice(line)));
        }
        if !out.is_empty() {
            out.push(Action::Publish);
        }
        out
    }

    /// `rank (worker on host)`.
    pub(super) fn who(&self, rank: Rank) -> String {
        let host = self
            .membership
            .as_ref()
            .and_then(|m| m.member(rank))
            .map_or_else(|| "?".into(), |m| host_of(&m.candidate.collective_addr));
        format!("rank {rank} ({} on {host})", self.worker_id(rank))
    }

    /// Where every rank of the running round is, and whom the others wait for; `reporter`
    /// waited in the all-reduce until it failed.
    pub(super) fn diagnose_hang(&self, reporter: Option<Rank>, now: Instant) -> Option<Diagnosis> {
        let m = self.membership.as_ref()?;
        let views: Vec<RankView> = m
            .members
            .iter()
            .zip(&self.ranks)
            .map(|(member, l)| RankView {
                rank: member.rank.0,
                worker_id: member.candidate.worker_id.0.clone(),
                host: host_of(&member.candidate.collective_addr),
                step: l.step,
                in_collective: l.in_collective,
                at_barrier: l.waiting > 0,
                silent_s: now.saturating_duration_since(l.last_seen).as_secs_f64(),
            })
            .collect();
        Some(hang::diagnose(
            &views,
            reporter.map(|r| r.0),
            self.prepared.config.heartbeat_interval_s,
        ))
    }

    /// Restarts a round that made no progress for `hang_timeout_s`, naming whom it waits for.
    pub(super) fn hang_check(&mut self, now: Instant) -> Option<Vec<Action>> {
        if self.status != Status::Running || !self.stepped {
            return None;
        }
        let limit = self.prepared.config.hang_timeout_s;
        let idle = now.saturating_duration_since(self.last_progress);
        if idle <= Duration::from_secs_f64(limit) {
            return None;
        }
        let d = self.diagnose_hang(None, now)?;
        let reason = format!(
            "hung: no progress for {:.1} s (--hang-timeout-s {limit}); {}",
            idle.as_secs_f64(),
            d.line
        );
        tracing::error!(run_id = %self.prepared.run_id, round = self.round, suspect = ?d.suspect, "{reason}");
        Some(self.restart_round(reason, Cause::Other, now))
    }
}
