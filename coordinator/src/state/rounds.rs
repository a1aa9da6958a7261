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
//! Tests: `tests.rs` beside this file.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringtrain_common::checkpoint::{checkpoint_name, CheckpointState, NormState, FORMAT};
use serde::{Deserialize, Serialize};

use super::epoch::EpochAggregator;
use super::{Action, Cause, RunState, Status};
use crate::artifacts::{CheckpointOut, Output};
use crate::rendezvous::{Rendezvous, RendezvousSettings};

/// The state a round starts from (rank 0's at the end of an epoch, or a checkpoint on disk).
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    /// Epoch to run next.
    pub epoch: u32,
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
}

/// A run continued from a checkpoint on disk.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub point: ResumePoint,
    pub progress: Progress,
    /// The round the checkpoint was written in (the new coordinator starts after it).
    pub round: u32,
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

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RunState {
    pub(super) fn rendezvous_settings(&self) -> RendezvousSettings {
        let c = &self.prepared.config;
        RendezvousSettings {
            min_workers: c.min_workers(),
            max_workers: c.workers,
            join_timeout: Duration::from_secs_f64(c.join_timeout_s),
            last_call: Duration::from_secs_f64(c.last_call_s),
        }
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
        self.round += 1;
        self.round_token = round_token(self.round);
        let from = self.resume.as_ref().map_or_else(
            || "the start".to_string(),
            |p| format!("checkpoint {} (epoch {})", p.checkpoint, p.epoch),
        );
        tracing::warn!(run_id = %self.prepared.run_id, round = self.round, restarts = self.restarts, %reason, %from, "round ended; waiting for workers to re-join");
        self.status = Status::Rendezvous;
        self.rdzv = Rendezvous::with_round(self.rendezvous_settings(), now, self.round);
        self.membership = None;
        self.plan = None;
        self.ranks.clear();
        self.pixel.clear();
        self.norm = None;
        self.reports.clear();
        vec![
            Action::Output(Output::Notice(format!(
                "round {} ended: {reason}; round {} resumes from {from} (restart {} of {max})",
                self.round - 1,
                self.round,
                self.restarts
            ))),
            Action::Publish,
        ]
    }

    /// The checkpoint of the epoch that just completed, from rank 0's state.
    pub(super) fn checkpoint_after_epoch(
        &mut self,
        model: Vec<u8>,
        optimizer: Vec<u8>,
        accuracy: f64,
        params_hash: String,
    ) -> Output {
        let epoch = self.agg.done();
        let name = checkpoint_name(epoch, self.global_step);
        let is_best = self.best.as_ref().is_none_or(|(a, _)| accuracy > *a);
        if is_best {
            self.best = Some((accuracy, name.clone()));
        }
        let model = Arc::new(model);
        let optimizer = Arc::new(optimizer);
        self.resume = Some(Arc::new(ResumePoint {
            epoch,
            global_step: self.global_step,
            model: model.clone(),
            optimizer: optimizer.clone(),
            checkpoint: name.clone(),
        }));
        let p = &self.prepared;
        let norm = self.norm.unwrap_or_default();
        let progress = Progress {
            agg: self.agg.clone(),
            best: self.best.clone(),
            restarts: self.restarts,
            dataset_fingerprint: p.dataset.fingerprint.clone(),
        };
        let state = CheckpointState {
            format: FORMAT,
            run_id: p.run_id.clone(),
            model: p.config.model.as_str().into(),
            classes: p.dataset.classes.clone(),
            image_size: 28,
            norm: NormState {
                mean: vec![norm.mean() as f32],
                std: vec![norm.std() as f32],
                count: norm.count,
                sum: norm.sum,
                sum_sq: norm.sum_sq,
            },
            epochs: p.config.epochs(),
            epoch,
            step_in_epoch: 0,
            global_step: self.global_step,
            world_size: self.membership.as_ref().map_or(0, |m| m.world_size()),
            seed: p.config.seed,
            valid_accuracy: Some(accuracy),
            params_hash,
            round: self.round,
            created_unix_ms: unix_ms(),
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
