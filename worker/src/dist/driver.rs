//! The distributed driver: normalisation, schedule and epoch verdicts come from the coordinator.

use ringtrain_common::checkpoint::digest::state_digest;
use ringtrain_common::data::PixelStats;
use ringtrain_common::pb::{self, RunStatus};
use ringtrain_common::schedule::SchedulePoint;
use tch::nn::VarStore;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Client, RoundCtl};
use crate::data::Normalize;
use crate::train::progress::Progress;
use crate::train::MidCheckpoint;
use crate::train::{Driver, EpochResult, TrainError};

pub(super) struct Distributed<'a> {
    client: &'a Client,
    ctl: &'a Mutex<RoundCtl>,
    terminated: &'a AtomicBool,
    run_id: String,
    round_token: u64,
    rank: u32,
    steps_per_epoch: usize,
    /// This worker's secret (JoinReply.worker_secret), on every call.
    secret: Vec<u8>,
    /// The work counters the heartbeats report; the final Leave reports them once more.
    progress: Arc<Progress>,
    /// Files of this shard the decoding left out (skip_bad), reported with the pixel sums.
    pub(super) skipped: Vec<pb::SkippedFile>,
}

impl<'a> Distributed<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        client: &'a Client,
        ctl: &'a Mutex<RoundCtl>,
        terminated: &'a AtomicBool,
        run_id: String,
        round_token: u64,
        rank: u32,
        steps_per_epoch: usize,
        secret: Vec<u8>,
        progress: Arc<Progress>,
    ) -> Self {
        Self {
            client,
            ctl,
            terminated,
            run_id,
            round_token,
            rank,
            steps_per_epoch,
            secret,
            progress,
            skipped: Vec::new(),
        }
    }

    /// What this rank tells the coordinator about its state: the digests of the model and
    /// optimizer bytes (every rank), and the bytes themselves (rank 0, for the checkpoint).
    fn state_report(
        &self,
        state: Option<&(Vec<u8>, Vec<u8>)>,
    ) -> Result<(Vec<u8>, Vec<u8>, String, String), TrainError> {
        let Some((model, optimizer)) = state else {
            return Err(TrainError::Coordinator(
                "internal: a distributed rank must serialise its state at checkpoints".into(),
            ));
        };
        let digest = |what: &str, b: &[u8]| {
            state_digest(b).map_err(|e| TrainError::Resume(format!("own {what} state: {e}")))
        };
        let (md, od) = (digest("model", model)?, digest("optimizer", optimizer)?);
        if self.rank == 0 {
            Ok((model.clone(), optimizer.clone(), md, od))
        } else {
            Ok((Vec::new(), Vec::new(), md, od))
        }
    }
}

fn check(v: &pb::Verdict) -> Result<(), TrainError> {
    if v.status == RunStatus::Failed as i32 {
        return Err(TrainError::RunFailed(v.reason.clone()));
    }
    Ok(())
}

impl Driver for Distributed<'_> {
    fn normalization(&mut self, local: Vec<PixelStats>) -> Result<Normalize, TrainError> {
        let channels = local.len();
        let merged = self.client.pixel_stats(pb::PixelStatsReport {
            run_id: self.run_id.clone(),
            rank: self.rank,
            round_token: self.round_token,
            channels: local
                .iter()
                .map(|c| pb::ChannelSums {
                    sum: c.sum,
                    sum_sq: c.sum_sq,
                    count: c.count,
                })
                .collect(),
            worker_secret: self.secret.clone(),
            skipped: self.skipped.clone(),
        })?;
        let sane = merged.mean.len() == channels
            && merged.std.len() == channels
            && merged.std.iter().all(|&s| s > 0.0 && s.is_finite())
            && merged.mean.iter().all(|m| m.is_finite());
        if !sane {
            return Err(TrainError::Coordinator(format!(
                "bad normalisation statistics for {channels} channel(s): {merged:?}"
            )));
        }
        Ok(Normalize {
            mean: merged.mean.iter().map(|&m| f64::from(m)).collect(),
            std: merged.std.iter().map(|&s| f64::from(s)).collect(),
        })
    }

    fn epoch_plan(&mut self, epoch: u32) -> Result<Vec<SchedulePoint>, TrainError> {
        let plan = self.client.epoch_plan(pb::EpochPlanRequest {
            run_id: self.run_id.clone(),
            rank: self.rank,
            epoch,
            round_token: self.round_token,
            worker_secret: self.secret.clone(),
        })?;
        if plan.lr.len() != self.steps_per_epoch || plan.beta1.len() != self.steps_per_epoch {
            return Err(TrainError::BadPlan {
                epoch,
                got: plan.lr.len().min(plan.beta1.len()),
                want: self.steps_per_epoch,
            });
        }
        Ok(plan
            .lr
            .iter()
            .zip(&plan.beta1)
            .map(|(&lr, &beta1)| SchedulePoint { lr, beta1 })
            .collect())
    }

    fn epoch_done(&mut self, r: &EpochResult) -> Result<(), TrainError> {
        let (model, optimizer, model_digest, optimizer_digest) =
            self.state_report(r.state.as_ref())?;
        let verdict = self.client.report_epoch(pb::EpochReport {
            worker_secret: self.secret.clone(),
            model_digest,
            optimizer_digest,
            round_token: self.round_token,
            model_safetensors: model,
            optimizer_safetensors: optimizer,
            run_id: self.run_id.clone(),
            rank: self.rank,
            epoch: r.epoch,
            step_losses: r.step_losses.clone(),
            valid_loss_sum: r.valid_loss_sum,
            valid_correct: r.valid_correct,
            valid_count: r.valid_count,
            params_hash: format!("{:016x}", r.params_hash),
            train_seconds: r.train_seconds,
        })?;
        check(&verdict)
    }

    fn stop_requested(&self) -> bool {
        self.terminated.load(Ordering::Relaxed)
            || self.ctl.lock().unwrap_or_else(PoisonError::into_inner).stop
    }

    fn checkpoint(&mut self, c: &MidCheckpoint) -> Result<(), TrainError> {
        let (model, optimizer, model_digest, optimizer_digest) =
            self.state_report(c.state.as_ref())?;
        let verdict = self.client.checkpoint(pb::CheckpointReport {
            worker_secret: self.secret.clone(),
            model_digest,
            optimizer_digest,
            run_id: self.run_id.clone(),
            round_token: self.round_token,
            rank: self.rank,
            epoch: c.epoch,
            step_in_epoch: c.step_in_epoch,
            global_step: c.global_step,
            step_losses: c.step_losses.clone(),
            params_hash: format!("{:016x}", c.params_hash),
            model_safetensors: model,
            optimizer_safetensors: optimizer,
            stop: c.stop,
            preempted: self.terminated.load(Ordering::Relaxed),
        })?;
        check(&verdict)?;
        if c.stop {
            // The coordinator ends the round after a stop checkpoint; it answers the waiting
            // call with ABORTED, so this is only reached if it did not.
            return Err(TrainError::RoundEnded("stop checkpoint taken".into()));
        }
        Ok(())
    }

    fn finished(&mut self, weights: &VarStore, _params_hash: u64) -> Result<(), TrainError> {
        let bytes = if self.rank == 0 {
            crate::train::state::model_bytes(weights)?
        } else {
            Vec::new()
        };
        let done = self.progress.sample();
        let verdict = self.client.leave(pb::LeaveRequest {
            run_id: self.run_id.clone(),
            round_token: self.round_token,
            rank: self.rank,
            ok: true,
            recoverable: false,
            reason: String::new(),
            weights_safetensors: bytes,
            worker_secret: self.secret.clone(),
            images_trained: done.images,
            allreduce_seconds_total: done.allreduce_nanos as f64 / 1e9,
            allreduces: done.allreduces,
        })?;
        check(&verdict)
    }
}
