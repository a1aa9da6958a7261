//! Elastic growth: workers that join a running run are admitted at its next checkpoint.
//!
//! Same contract as the parent module; split off only to keep files small. In addition:
//! * A Join from a worker that is not a member, while a round runs with fewer than
//!   `max_workers` ranks, is queued: it is answered [`RunError::Queued`] (RESOURCE_EXHAUSTED,
//!   "keep joining") and the worker keeps asking. A queued worker counts as waiting while it
//!   asked within [`QUEUE_FRESH`] (or three heartbeat intervals, if longer).
//! * At the next epoch end, or the next checkpoint inside an epoch (`--checkpoint-every-steps`),
//!   after the checkpoint is taken: if workers wait, the round ends there (not a restart) and
//!   the next one opens to close as soon as the old world plus the waiting workers (at most
//!   `max_workers`) joined. It resumes from that checkpoint with the data re-sharded and the
//!   same global batch, so no step is lost or repeated; the running workers re-join in their
//!   own processes.
//! * Every round's membership (world size, workers, where it started, why the one before it
//!   ended) is kept in `run.json` and in every checkpoint, so a resume knows the history that
//!   led to it.
//!
//! Tests: `growth_tests.rs` beside this file; `tests/tests/grow.rs` (real processes).

use std::time::{Duration, Instant};

use super::output::Segment;
use super::{Action, RunError, RunState, Status};
use crate::ids::WorkerId;
use crate::rendezvous::Membership;

/// How recently a queued worker must have asked to count as waiting.
pub const QUEUE_FRESH: Duration = Duration::from_secs(10);

impl RunState {
    /// Queues `worker_id`'s Join when the running round has room to grow; `None` when the Join
    /// goes its usual way.
    pub(super) fn queue_join(&mut self, worker_id: &WorkerId, now: Instant) -> Option<RunError> {
        let m = self.membership.as_ref()?;
        let max = self.prepared.config.max_workers();
        if self.status != Status::Running
            || self.stop_requested
            || m.rank_of(worker_id).is_some()
            || m.world_size() >= max
        {
            return None;
        }
        if self.queued.insert(worker_id.clone(), now).is_none() {
            tracing::info!(run_id = %self.prepared.run_id, worker_id = %worker_id, world_size = m.world_size(), max_workers = max, "worker waits to join the running run");
        }
        let at = if self.prepared.config.checkpoint_every_steps > 0 {
            "checkpoint"
        } else {
            "epoch end"
        };
        Some(RunError::Queued {
            worker_id: worker_id.clone(),
            world_size: m.world_size(),
            max_workers: max,
            at,
        })
    }

    /// After a checkpoint: ends the round to grow the world when workers wait to join.
    pub(super) fn grow_if_waiting(&mut self, now: Instant) -> Vec<Action> {
        let Some(world) = self.membership.as_ref().map(|m| m.world_size()) else {
            return vec![];
        };
        let c = &self.prepared.config;
        let fresh = QUEUE_FRESH.max(Duration::from_secs_f64(3.0 * c.heartbeat_interval_s));
        self.queued
            .retain(|_, asked| now.saturating_duration_since(*asked) <= fresh);
        let max = c.max_workers();
        if self.status != Status::Running || self.queued.is_empty() || world >= max {
            return vec![];
        }
        let target = max.min(world + self.queued.len() as u32);
        let names: Vec<String> = self.queued.keys().map(|w| w.0.clone()).collect();
        self.grow_to = Some(target);
        self.end_round(
            format!(
                "growing the world from {world} to {target} workers ({} joining)",
                names.join(", ")
            ),
            now,
        )
    }

    /// A round closed with `m`: its membership goes into the history; grown, it is no longer
    /// growing, and its members no longer wait.
    pub(super) fn record_membership(&mut self, m: &Membership) {
        self.grow_to = None;
        for x in &m.members {
            self.queued.remove(&x.candidate.worker_id);
        }
        let (from_epoch, from_step_in_epoch, from_global_step) = self
            .resume
            .as_ref()
            .map_or((0, 0, 0), |p| (p.epoch, p.step_in_epoch, p.global_step));
        let segment = Segment {
            round: m.round,
            world_size: m.world_size(),
            workers: m
                .members
                .iter()
                .map(|x| x.candidate.worker_id.0.clone())
                .collect(),
            from_epoch,
            from_step_in_epoch,
            from_global_step,
            after: std::mem::take(&mut self.round_after),
        };
        tracing::info!(run_id = %self.prepared.run_id, round = m.round, world_size = segment.world_size, from_global_step, "membership recorded");
        self.history.push(segment);
    }
}
