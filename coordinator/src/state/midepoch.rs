//! Checkpoints inside an epoch: the barrier of `Checkpoint` calls, and stopping a run at a
//! checkpoint (SIGTERM on the coordinator or on a worker).
//!
//! Same contract as the parent module, plus:
//! * Every rank of the round reports the same global step (the step is decided by the ranks:
//!   every `checkpoint_every_steps`, or the step at which their all-reduce carried a stop flag),
//!   the same parameter hash, and its losses of the epoch so far; rank 0 adds its state.
//! * A complete stop checkpoint ends the round without counting a restart: with a preempted
//!   rank, the next round continues from it with whoever re-joins; without one (the coordinator
//!   asked), the coordinator is stopping and `stopped` is published.
//!
//! Tests: `round_tests.rs` beside this file.

use std::time::Instant;

use super::rounds::Position;
use super::{Action, Actions, Cause, RunError, RunState};
use crate::ids::Rank;

/// One rank's `Checkpoint` call.
#[derive(Debug, Clone, PartialEq)]
pub struct MidReport {
    pub rank: Rank,
    pub epoch: u32,
    pub step_in_epoch: u32,
    pub global_step: u64,
    pub step_losses: Vec<f32>,
    pub params_hash: String,
    /// Rank 0 only.
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    /// Every rank: `state_digest` of its model and optimizer state.
    pub model_digest: String,
    pub optimizer_digest: String,
    pub stop: bool,
    pub preempted: bool,
}

impl RunState {
    pub(super) fn mid_checkpoint(
        &mut self,
        run_id: &str,
        round_token: u64,
        r: MidReport,
        now: Instant,
    ) -> Actions {
        let plan = self.running_rank(run_id, round_token, r.rank)?.clone();
        self.ranks[r.rank.index()].last_seen = now;
        if r.global_step <= self.checkpoint_step {
            return Ok(vec![]);
        }
        let bad = |why: String| Err(RunError::BadRequest(format!("rank {}: {why}", r.rank)));
        let done = self.agg.done();
        if r.epoch != done
            || r.step_in_epoch == 0
            || r.step_in_epoch >= plan.steps_per_epoch
            || r.global_step != self.global_step + u64::from(r.step_in_epoch)
        {
            return bad(format!(
                "checkpoint at epoch {} step {} (global {}) does not fit the run at epoch {done}, global step {}",
                r.epoch, r.step_in_epoch, r.global_step, self.global_step
            ));
        }
        if r.step_losses.len() != r.step_in_epoch as usize {
            return bad("a checkpoint needs one loss per step done".into());
        }
        super::reports::check_state(
            r.rank,
            &r.params_hash,
            (&r.model_digest, &r.optimizer_digest),
            (&r.model, &r.optimizer),
        )?;
        if let Some(other) = self.mid.values().find(|o| o.global_step != r.global_step) {
            return bad(format!(
                "checkpoints at step {}, rank {} at step {}",
                r.global_step, other.rank, other.global_step
            ));
        }
        self.mid.entry(r.rank).or_insert(r);
        if self.mid.len() < plan.world_size as usize {
            return Ok(vec![]);
        }
        let mut reports: Vec<MidReport> = std::mem::take(&mut self.mid).into_values().collect();
        if let Err(why) = super::reports::agree_on_state(
            reports
                .iter()
                .map(|r| (r.rank, r.model_digest.as_str(), r.optimizer_digest.as_str())),
        ) {
            let reason = format!(
                "replicas diverged before the checkpoint at step {}: {why}",
                reports[0].global_step
            );
            return Ok(self.fail(reason, Cause::Other, now));
        }
        let first = reports[0].params_hash.clone();
        if reports.iter().any(|x| x.params_hash != first) {
            let hashes: Vec<String> = reports
                .iter()
                .map(|x| format!("rank {} {}", x.rank, x.params_hash))
                .collect();
            let reason = format!(
                "replicas diverged before the checkpoint at step {}: {}",
                reports[0].global_step,
                hashes.join(", ")
            );
            return Ok(self.fail(reason, Cause::Other, now));
        }
        let n = reports.len() as f64;
        let steps = reports[0].step_in_epoch as usize;
        let losses: Vec<f32> = (0..steps)
            .map(|k| {
                (reports
                    .iter()
                    .map(|x| f64::from(x.step_losses[k]))
                    .sum::<f64>()
                    / n) as f32
            })
            .collect();
        let preempted: Vec<String> = reports
            .iter()
            .filter(|x| x.preempted)
            .map(|x| format!("rank {} ({})", x.rank, self.worker_id(x.rank)))
            .collect();
        let stop = reports.iter().any(|x| x.stop);
        let r0 = &mut reports[0];
        let at = Position {
            epoch: r0.epoch,
            step_in_epoch: r0.step_in_epoch,
            global_step: r0.global_step,
            epoch_losses: losses,
        };
        let (model, optimizer) = (
            std::mem::take(&mut r0.model),
            std::mem::take(&mut r0.optimizer),
        );
        self.checkpoint_step = at.global_step;
        tracing::info!(run_id = %self.prepared.run_id, epoch = at.epoch, step = at.global_step, stop, "checkpoint inside the epoch complete");
        let step = at.global_step;
        let mut out = vec![Action::Output(
            self.checkpoint(at, model, optimizer, None, first),
        )];
        if !stop {
            out.extend(self.grow_if_waiting(now));
        } else if preempted.is_empty() {
            self.stopped = true;
            out.extend(self.end_round(
                format!("the coordinator is stopping; stop checkpoint at step {step}"),
                now,
            ));
        } else {
            out.extend(self.end_round(
                format!(
                    "{} preempted (SIGTERM); stop checkpoint at step {step}",
                    preempted.join(", ")
                ),
                now,
            ));
        }
        out.push(Action::Publish);
        Ok(out)
    }
}
