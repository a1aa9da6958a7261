//! Rounds and checkpoints in the state machine: ending a broken round, opening the next one
//! from the last checkpoint, and what each completed epoch hands to the checkpoint writer.
//!
//! Same contract as the parent module, plus:
//! * A lost rank (dead process, silent past the heartbeat limit, a recoverable Leave, or a
//!   member re-joining) ends the round: the status goes back to `Rendezvous` with a new round
//!   number and token, every barrier of the old round is dropped, and its callers get
//!   `StaleRound` (gRPC ABORTED: re-join). After `max_restarts` such restarts the run fails.
//! * The next round continues from [`ResumePoint`]: the state after the last completed epoch
//!   (or the very start when no epoch completed yet). Epochs after it are redone, so nothing is
//!   lost but the work since that checkpoint.
//!
//! Tests: `round_tests.rs` beside this file; end to end in `tests/tests/elastic.rs`, `stop.rs`.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringtrain_common::checkpoint::{checkpoint_name, CheckpointState, NormState, FORMAT};
use ringtrain_common::data::PixelStats;
use serde::{Deserialize, Serialize};

use super::epoch::EpochAggregator;
use super::{Action, Cause, RunState, Status};
use crate::rendezvous::{Rendezvous, RendezvousSettings};
use crate::state::output::{CheckpointOut, Output, Segment};

/// The state a round starts from (rank 0's at the end of an epoch, or a checkpoint on disk).
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    /// Epoch to run next (or to continue).
    pub epoch: u32,
    /// Steps of `epoch` already done (0 at an epoch boundary).
    pub step_in_epoch: u32,
    /// Their losses (mean over the ranks).
    pub epoch_losses: Arc<Vec<f32>>,
    /// Steps done so far (Adam's step count).
    pub global_step: u64,
    /// Parameters and BatchNorm buffers (safetensors).
    pub model: Arc<Vec<u8>>,
    /// Adam's moments (safetensors).
    pub optimizer: Arc<Vec<u8>>,
    /// Name of its checkpoint folder.
    pub checkpoint: String,
}

/// The coordinator's part of a checkpoint (`state.json`'s `progress`): what the table and the
/// run's bookkeeping need to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub agg: EpochAggregator,
    /// Best validation accuracy so far and its checkpoint.
    pub best: Option<(f64, String)>,
    pub restarts: u32,
    /// The dataset the run trains on (`layout_fingerprint`); a resume refuses another.
    pub dataset_fingerprint: String,
    /// Losses (mean over the ranks) of the steps done in an unfinished epoch.
    #[serde(default)]
    pub partial_losses: Vec<f32>,
    /// Every round so far: who trained from where (`run.json`'s `membership`).
    #[serde(default)]
    pub membership: Vec<Segment>,
}

/// Where a checkpoint sits in the run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Position {
    /// Epoch to run next or to continue.
    pub epoch: u32,
    pub step_in_epoch: u32,
    pub global_step: u64,
    /// Losses of the steps done in `epoch`.
    pub epoch_losses: Vec<f32>,
}

/// A run continued from a checkpoint on disk.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub point: ResumePoint,
    pub progress: Progress,
    /// The round the checkpoint was written in (the new coordinator starts after it).
    pub round: u32,
    /// The line that tells the person so (`ringtrain: resuming run ...`).
    pub notice: String,
}

/// A token that names one round of one coordinator process: random per process, so a restarted
/// coordinator never accepts a request meant for its predecessor.
pub(super) fn round_token(round: u32) -> u64 {
    if cfg!(test) {
        // Predictable in the unit tests: round r has token 1000 + r.
        return 1000 + u64::from(round);
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(round);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}

impl RunState {
    pub(super) fn rendezvous_settings(&self) -> RendezvousSettings {
        let c = &self.prepared.config;
        RendezvousSettings {
            min_workers: c.min_workers(),
            // A round opened to grow closes as soon as the old world and its newcomers are in.
            max_workers: self.grow_to.unwrap_or(c.workers),
            join_timeout: Duration::from_secs_f64(c.join_timeout_s),
            last_call: Duration::from_secs_f64(c.last_call_s),
        }
    }

    /// Ends the running round after a stop checkpoint (preemption, a stopping coordinator):
    /// expected, so not counted against `max_restarts`.
    pub(super) fn end_round(&mut self, reason: String, now: Instant) -> Vec<Action> {
        if self.status != Status::Running {
            return vec![];
        }
        let line = self.open_next_round(&reason, now);
        vec![Action::Output(Output::Notice(line)), Action::Publish]
    }

    /// Ends the running round because of `reason` and opens the next one, or fails the run when
    /// no restart is left.
    pub(super) fn restart_round(
        &mut self,
        reason: String,
        cause: Cause,
        now: Instant,
    ) -> Vec<Action> {
        if self.status != Status::Running {
            return vec![];
        }
        let max = self.prepared.config.max_restarts;
        if self.restarts >= max {
            return self.fail(
                format!("{reason} (no restarts left: max_restarts = {max})"),
                cause,
                now,
            );
        }
        self.restarts += 1;
        let line = self.open_next_round(&reason, now);
        vec![
            Action::Output(Output::Notice(format!(
                "{line} (restart {} of {max})",
                self.restarts
            ))),
            Action::Publish,
        ]
    }

    /// Opens the next round from the last checkpoint; returns the line for people.
    fn open_next_round(&mut self, reason: &str, now: Instant) -> String {
        self.round += 1;
        self.round_token = round_token(self.round);
        let from = self.resume.as_ref().map_or_else(
            || "the start".to_string(),
            |p| {
                format!(
                    "checkpoint {} (epoch {}, step {})",
                    p.checkpoint, p.epoch, p.step_in_epoch
                )
            },
        );
        tracing::warn!(run_id = %self.prepared.run_id, round = self.round, restarts = self.restarts, %reason, %from, "round ended; waiting for workers to re-join");
        self.round_after = reason.to_string();
        // The members' liveness outlives the round: an id stays held for the heartbeat budget
        // after its holder was last heard from, so only it can re-join under that id meanwhile.
        if let Some(m) = &self.membership {
            for (member, l) in m.members.iter().zip(&self.ranks) {
                let id = &member.candidate.worker_id;
                if l.gone {
                    self.identities.lose(id);
                } else {
                    let at = if l.waiting > 0 { now } else { l.last_seen };
                    self.identities.seen(id, at);
                }
            }
        }
        self.status = Status::Rendezvous;
        self.stepped = false;
        // A stopping coordinator has nothing left to wait for once no round runs: the last
        // checkpoint is the stop point (the ranks' own stop checkpoint, when they were
        // preempted at the same time, as under Slurm's requeue).
        self.stopped |= self.stop_requested;
        self.rdzv = Rendezvous::with_round(self.rendezvous_settings(), now, self.round);
        self.membership = None;
        self.plan = None;
        self.ranks.clear();
        self.pixel.clear();
        self.norm = None;
        self.collective = None;
        self.nccl_id = None;
        self.reports.clear();
        self.mid.clear();
        format!(
            "round {} ended: {reason}; round {} resumes from {from}",
            self.round - 1,
            self.round
        )
    }

    /// The checkpoint at `at`, from rank 0's state; `accuracy` is the validation accuracy of an
    /// epoch that just completed (`None` inside an epoch, which never becomes the best).
    pub(super) fn checkpoint(
        &mut self,
        at: Position,
        model: Vec<u8>,
        optimizer: Vec<u8>,
        accuracy: Option<f64>,
        params_hash: String,
    ) -> Output {
        let Position {
            epoch,
            step_in_epoch,
            global_step,
            epoch_losses,
        } = at;
        let name = checkpoint_name(epoch, global_step);
        if let Some(acc) = accuracy {
            if self.best.as_ref().is_none_or(|(a, _)| acc > *a) {
                self.best = Some((acc, name.clone()));
            }
        }
        let model = Arc::new(model);
        let optimizer = Arc::new(optimizer);
        self.resume = Some(Arc::new(ResumePoint {
            epoch,
            step_in_epoch,
            epoch_losses: Arc::new(epoch_losses.clone()),
            global_step,
            model: model.clone(),
            optimizer: optimizer.clone(),
            checkpoint: name.clone(),
        }));
        let p = &self.prepared;
        let norm = self.norm.clone().unwrap_or_default();
        let total = |f: fn(&PixelStats) -> u64| norm.iter().map(f).sum::<u64>();
        let g = p.dataset.geometry;
        let progress = Progress {
            agg: self.agg.clone(),
            best: self.best.clone(),
            restarts: self.restarts,
            dataset_fingerprint: p.dataset.fingerprint.clone(),
            partial_losses: epoch_losses,
            membership: self.history.clone(),
        };
        let state = CheckpointState {
            format: FORMAT,
            run_id: p.run_id.clone(),
            model: p.config.recipe.model.as_str().into(),
            classes: p.dataset.classes.clone(),
            image_size: g.size,
            channels: g.channels,
            resize: g.resize,
            augment: p.config.augment.to_string(),
            norm: NormState {
                mean: norm.iter().map(|c| c.mean() as f32).collect(),
                std: norm.iter().map(|c| c.std() as f32).collect(),
                count: total(|c| c.count),
                sum: total(|c| c.sum),
                sum_sq: total(|c| c.sum_sq),
            },
            epochs: p.config.epochs(),
            epoch,
            step_in_epoch,
            global_step,
            world_size: self.membership.as_ref().map_or(0, |m| m.world_size()),
            seed: p.config.recipe.seed,
            valid_accuracy: accuracy.or_else(|| self.agg.rows.last().map(|r| r.accuracy)),
            params_hash,
            round: self.round,
            created_unix_ms: {
                let t = crate::clock::unix_ms();
                self.counters.last_checkpoint_unix_ms = Some(t);
                self.counters.checkpoints += 1;
                t
            },
            config: serde_json::to_value(&p.config).unwrap_or_default(),
            progress: serde_json::to_value(&progress).unwrap_or_default(),
        };
        Output::Checkpoint(Box::new(CheckpointOut {
            state,
            model,
            optimizer,
            best: self.best.as_ref().map(|b| b.1.clone()),
            keep: p.config.checkpoint_keep as usize,
        }))
    }
}

/// Restores the aggregator of a resumed run.
pub(super) fn restored(r: &Resumed) -> (EpochAggregator, Option<(f64, String)>, u32) {
    (
        r.progress.agg.clone(),
        r.progress.best.clone(),
        r.progress.restarts,
    )
}
