//! The reporting half of the state machine: the pixel-statistics and epoch barriers and Leave.
//!
//! Same contract as the parent module; split off only to keep files small.

use std::time::Instant;

use ringtrain_common::data::PixelStats;

use super::epoch::EpochReport;
use super::rounds::Position;
use super::{Action, Actions, Cause, RunError, RunState, Status};
use crate::artifacts::Output;
use crate::ids::Rank;

/// What a Leave says besides who sent it.
pub(super) struct LeaveArgs {
    pub ok: bool,
    pub recoverable: bool,
    pub reason: String,
    pub weights: Vec<u8>,
}

impl RunState {
    pub(super) fn pixel_stats(
        &mut self,
        run_id: &str,
        round_token: u64,
        rank: Rank,
        stats: PixelStats,
        now: Instant,
    ) -> Actions {
        let world_size = self.running_rank(run_id, round_token, rank)?.world_size;
        self.ranks[rank.index()].last_seen = now;
        if self.norm.is_some() {
            return Ok(vec![]);
        }
        self.pixel.entry(rank).or_insert(stats);
        if self.pixel.len() < world_size as usize {
            return Ok(vec![]);
        }
        let merged = self
            .pixel
            .values()
            .fold(PixelStats::default(), |a, &b| a.merge(b));
        self.norm = Some(merged);
        self.epoch_started = now;
        tracing::info!(run_id = %self.prepared.run_id, mean = merged.mean(), std = merged.std(), pixels = merged.count, "normalisation statistics merged");
        Ok(vec![
            Action::Output(Output::RunInfo(Box::new(self.run_info()))),
            Action::Publish,
        ])
    }

    pub(super) fn epoch(
        &mut self,
        run_id: &str,
        round_token: u64,
        r: EpochReport,
        now: Instant,
    ) -> Actions {
        let plan = self.running_rank(run_id, round_token, r.rank)?.clone();
        self.ranks[r.rank.index()].last_seen = now;
        let done = self.agg.done();
        if r.epoch < done {
            return Ok(vec![]);
        }
        if r.epoch >= plan.epochs || r.epoch > done {
            return Err(RunError::BadRequest(format!(
                "rank {} reported epoch {}, but the run is at epoch {done} of {}",
                r.rank, r.epoch, plan.epochs
            )));
        }
        let n = r.step_losses.len();
        let fits = match plan.lr_find() {
            Some(_) => (1..=plan.steps_per_epoch as usize).contains(&n),
            None => n == plan.steps_per_epoch as usize,
        };
        if !fits {
            return Err(RunError::BadRequest(format!(
                "rank {} sent {} step losses, an epoch has {} steps",
                r.rank,
                r.step_losses.len(),
                plan.steps_per_epoch
            )));
        }
        if r.params_hash.is_empty() {
            return Err(RunError::BadRequest(format!(
                "rank {} sent no params_hash",
                r.rank
            )));
        }
        if r.rank.0 == 0 && (r.model.is_empty() || r.optimizer.is_empty()) {
            return Err(RunError::BadRequest(
                "rank 0 sent no model or optimizer state for the epoch's checkpoint".into(),
            ));
        }
        self.reports.entry(r.rank).or_insert(r);
        if self.reports.len() < plan.world_size as usize {
            return Ok(vec![]);
        }
        let mut reports: Vec<EpochReport> =
            std::mem::take(&mut self.reports).into_values().collect();
        let (model, optimizer) = reports.first_mut().map_or_else(Default::default, |r0| {
            (
                std::mem::take(&mut r0.model),
                std::mem::take(&mut r0.optimizer),
            )
        });
        let seconds = now
            .saturating_duration_since(self.epoch_started)
            .as_secs_f64();
        // Resumed inside this epoch: its first steps were trained (and timed) before.
        let restored = self
            .resume
            .as_ref()
            .filter(|p| p.epoch == done)
            .map_or(0, |p| p.step_in_epoch as usize);
        match self.agg.complete(&reports, &plan, seconds, restored) {
            Ok(result) => {
                self.epoch_started = now;
                self.global_step += result.steps.len() as u64;
                let sweep = match plan.lr_find() {
                    Some(range) => {
                        let losses: Vec<f64> = result.steps.iter().map(|s| s.loss).collect();
                        match ringtrain_common::lr_find::analyse(range, &losses) {
                            Ok(a) => {
                                tracing::info!(run_id = %self.prepared.run_id, steps = losses.len(), suggested = a.suggested(), "LR sweep complete");
                                Some(Action::Output(Output::LrFind(Box::new(a))))
                            }
                            Err(e) => return Ok(self.fail(e.to_string(), Cause::Other, now)),
                        }
                    }
                    None => None,
                };
                let row = &result.row;
                tracing::info!(run_id = %self.prepared.run_id, epoch = row.epoch, loss = row.train_loss, valid_loss = row.valid_loss, accuracy = row.accuracy, lr = row.lr, "epoch complete");
                let at = Position {
                    epoch: self.agg.done(),
                    step_in_epoch: 0,
                    global_step: self.global_step,
                    epoch_losses: Vec::new(),
                };
                let checkpoint = self.checkpoint(
                    at,
                    model,
                    optimizer,
                    Some(row.accuracy),
                    result.params_hash.clone(),
                );
                let mut actions = vec![Action::Output(Output::Epoch(Box::new(result)))];
                actions.extend(sweep);
                actions.extend([Action::Output(checkpoint), Action::Publish]);
                Ok(actions)
            }
            Err(e) => Ok(self.fail(e.to_string(), Cause::Other, now)),
        }
    }

    pub(super) fn leave(
        &mut self,
        run_id: &str,
        round_token: u64,
        rank: Rank,
        args: LeaveArgs,
        now: Instant,
    ) -> Actions {
        let LeaveArgs {
            ok,
            recoverable,
            reason,
            weights,
        } = args;
        self.check_rank(run_id, round_token, rank)?;
        if self.status == Status::Rendezvous {
            return Err(RunError::NotRunning {
                status: self.status,
            });
        }
        let worker_id = self.worker_id(rank);
        let l = &mut self.ranks[rank.index()];
        let first_leave = !l.left;
        l.left = true;
        l.last_seen = now;
        if self.status.is_terminal() || !first_leave {
            l.informed = true;
            return Ok(vec![]);
        }
        if !ok {
            let why = if reason.is_empty() {
                "failed without a reason".to_string()
            } else {
                reason
            };
            if recoverable {
                return Ok(self.restart_round(
                    format!("rank {rank} ({worker_id}): {why}"),
                    Cause::Report(rank),
                    now,
                ));
            }
            return Ok(self.fail(
                format!("rank {rank} ({worker_id}): {why}"),
                Cause::Report(rank),
                now,
            ));
        }
        let (done, epochs) = (self.agg.done(), self.plan.as_ref().map_or(0, |p| p.epochs));
        if done < epochs {
            return Ok(self.fail(
                format!("rank {rank} ({worker_id}) left after {done} of {epochs} epochs"),
                Cause::Other,
                now,
            ));
        }
        tracing::info!(run_id = %self.prepared.run_id, rank = rank.0, worker_id = %worker_id, "rank finished");
        let mut out = Vec::new();
        if rank.0 == 0 {
            if weights.is_empty() {
                tracing::warn!(
                    rank = 0,
                    "rank 0 finished without sending weights; no final.safetensors"
                );
            } else {
                out.push(Action::Output(Output::Weights(weights)));
            }
        }
        if self.ranks.iter().all(|l| l.left) {
            self.status = Status::Finished;
            tracing::info!(run_id = %self.prepared.run_id, before = "running", after = "finished", "run state");
            out.push(Action::Output(Output::Summary(Box::new(self.summary(now)))));
            out.push(Action::Publish);
        }
        Ok(out)
    }
}
