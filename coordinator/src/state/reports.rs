//! The reporting half of the state machine: the pixel-statistics and epoch barriers and Leave.
//!
//! Same contract as the parent module; split off only to keep files small.

use std::time::Instant;

use ringtrain_common::checkpoint::digest::{is_digest, state_digest};
use ringtrain_common::data::PixelStats;

use super::epoch::EpochReport;
use super::rounds::Position;
use super::{Action, Actions, Cause, RunError, RunState, Status};
use crate::ids::Rank;
use crate::state::output::Output;

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
        stats: Vec<PixelStats>,
        skipped: Vec<(String, String)>,
        now: Instant,
    ) -> Actions {
        let plan = self.running_rank(run_id, round_token, rank)?.clone();
        let world_size = plan.world_size;
        self.ranks[rank.index()].last_seen = now;
        if self.norm.is_some() {
            return Ok(vec![]);
        }
        let g = self.prepared.dataset.geometry;
        if stats.len() != g.channels as usize {
            return Err(RunError::BadRequest(format!(
                "rank {rank} pixel statistics: {} channels, the run's images have {}",
                stats.len(),
                g.channels
            )));
        }
        let plane = u64::from(g.size) * u64::from(g.size);
        for s in &stats {
            check_pixel_stats(rank, s, plan.shard_of(rank).0.len(), plane)?;
        }
        if stats.windows(2).any(|w| w[0].count != w[1].count) {
            return Err(RunError::BadRequest(format!(
                "rank {rank} pixel statistics: the channels count different numbers of pixels"
            )));
        }
        self.check_skipped(rank, &plan, &skipped)?;
        for (path, reason) in skipped {
            self.decode_skipped.insert(path, reason);
        }
        self.pixel.entry(rank).or_insert(stats);
        if self.pixel.len() < world_size as usize {
            return Ok(vec![]);
        }
        // Each one is bounded by its shard, so the merge cannot overflow; checked anyway.
        let merged = self
            .pixel
            .values()
            .try_fold(vec![PixelStats::default(); g.channels as usize], |a, b| {
                PixelStats::checked_merge_all(&a, b)
            })
            .ok_or_else(|| RunError::BadRequest("pixel statistics overflow when merged".into()))?;
        let mean: Vec<f64> = merged.iter().map(PixelStats::mean).collect();
        let std: Vec<f64> = merged.iter().map(PixelStats::std).collect();
        self.epoch_started = now;
        tracing::info!(run_id = %self.prepared.run_id, ?mean, ?std, pixels = merged[0].count, "normalisation statistics merged");
        self.norm = Some(merged);
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
        check_epoch_numbers(&r, plan.shard_of(r.rank).1.len())?;
        check_state(
            r.rank,
            &r.params_hash,
            (&r.model_digest, &r.optimizer_digest),
            (&r.model, &r.optimizer),
        )?;
        self.reports.entry(r.rank).or_insert(r);
        if self.reports.len() < plan.world_size as usize {
            return Ok(vec![]);
        }
        let mut reports: Vec<EpochReport> =
            std::mem::take(&mut self.reports).into_values().collect();
        if let Err(why) = agree_on_state(
            reports
                .iter()
                .map(|r| (r.rank, r.model_digest.as_str(), r.optimizer_digest.as_str())),
        ) {
            return Ok(self.fail(
                format!("replicas diverged after epoch {}: {why}", r_epoch(&reports)),
                Cause::Other,
                now,
            ));
        }
        let (model, optimizer) = reports.first_mut().map_or_else(Default::default, |r0| {
            (
                std::mem::take(&mut r0.model),
                std::mem::take(&mut r0.optimizer),
            )
        });
        let seconds = now
            .saturating_duration_since(self.epoch_started)
            .as_secs_f64();
        // This round resumed inside this epoch: its first steps were trained (and timed) by an
        // earlier round. Not `self.resume`, which the checkpoints inside this epoch moved on.
        let restored = match self.round_from {
            (epoch, steps) if epoch == done => steps as usize,
            _ => 0,
        };
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
                if self.agg.done() < plan.epochs {
                    actions.extend(self.grow_if_waiting(now));
                }
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
        l.last_seen = now;
        if self.status.is_terminal() || !first_leave {
            l.left = true;
            l.informed = true;
            return Ok(vec![]);
        }
        if !ok {
            l.left = true;
            let why = if reason.is_empty() {
                "failed without a reason".to_string()
            } else {
                reason
            };
            if recoverable {
                // A collective that failed while another rank held it up: name that rank.
                let hang = self
                    .diagnose_hang(Some(rank), now)
                    .filter(|d| d.suspect.is_some_and(|s| s != rank.0))
                    .map(|d| format!("; {}", d.line))
                    .unwrap_or_default();
                return Ok(self.restart_round(
                    format!("rank {rank} ({worker_id}): {why}{hang}"),
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
            self.ranks[rank.index()].left = true;
            return Ok(self.fail(
                format!("rank {rank} ({worker_id}) left after {done} of {epochs} epochs"),
                Cause::Other,
                now,
            ));
        }
        tracing::info!(run_id = %self.prepared.run_id, rank = rank.0, worker_id = %worker_id, "rank finished");
        let mut out = Vec::new();
        if rank.0 == 0 && !weights.is_empty() {
            // Only the state every rank agreed on becomes final.safetensors.
            let agreed = self.resume.as_ref().map(|p| state_digest(&p.model));
            let got = state_digest(&weights);
            match (agreed, got) {
                (Some(Ok(want)), Ok(got)) if want == got => {}
                (_, Err(e)) => {
                    return Err(RunError::BadRequest(format!(
                        "rank 0 ({worker_id}) final weights: {e}"
                    )))
                }
                _ => {
                    return Err(RunError::BadRequest(format!(
                        "rank 0 ({worker_id}) final weights are not the state the ranks agreed on after the last epoch"
                    )))
                }
            }
        }
        let l = &mut self.ranks[rank.index()];
        l.left = true;
        l.last_seen = now;
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

/// Refuses one channel's pixel sums that cannot come from `shard_images` images of `plane`
/// (the run's size²) `u8` pixels.
fn check_pixel_stats(
    rank: Rank,
    s: &PixelStats,
    shard_images: usize,
    plane: u64,
) -> Result<(), RunError> {
    // Bad files left out by skip_bad make a shard smaller, never larger.
    let max = shard_images as u64 * plane;
    let why = if s.count == 0 || s.count > max || s.count % plane != 0 {
        format!(
            "count {} is not a whole number of images of {plane} pixels up to its {shard_images}",
            s.count
        )
    } else if !s.plausible() {
        format!(
            "sum {} and sum_sq {} cannot come from {} pixels of 0..=255",
            s.sum, s.sum_sq, s.count
        )
    } else {
        return Ok(());
    };
    Err(RunError::BadRequest(format!(
        "rank {rank} pixel statistics: {why}"
    )))
}

/// Refuses validation counts and timings no real epoch produces.
fn check_epoch_numbers(r: &EpochReport, shard_valid: usize) -> Result<(), RunError> {
    let bad = |why: String| {
        Err(RunError::BadRequest(format!(
            "rank {} epoch {}: {why}",
            r.rank, r.epoch
        )))
    };
    if r.valid_count == 0 || r.valid_count > shard_valid as u64 {
        return bad(format!(
            "valid_count {} outside 1..={shard_valid} (its validation shard)",
            r.valid_count
        ));
    }
    if r.valid_correct > r.valid_count {
        return bad(format!(
            "valid_correct {} > valid_count {}",
            r.valid_correct, r.valid_count
        ));
    }
    // A loss sum may be infinite (a diverged model) but never negative or NaN.
    if r.valid_loss_sum.is_nan() || r.valid_loss_sum < 0.0 {
        return bad(format!(
            "valid_loss_sum {} is not a loss sum",
            r.valid_loss_sum
        ));
    }
    if !(r.train_seconds.is_finite() && r.train_seconds >= 0.0) {
        return bad(format!(
            "train_seconds {} is not a duration",
            r.train_seconds
        ));
    }
    Ok(())
}

/// Refuses a malformed hash or digest, and rank 0's uploaded state unless it parses and hashes
/// to the digests it reported (every rank's digests are compared at the barrier).
pub(super) fn check_state(
    rank: Rank,
    params_hash: &str,
    (model_digest, optimizer_digest): (&str, &str),
    (model, optimizer): (&[u8], &[u8]),
) -> Result<(), RunError> {
    let bad = |why: String| Err(RunError::BadRequest(format!("rank {rank}: {why}")));
    if params_hash.len() != 16 || !params_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad(format!("params_hash {params_hash:?} is not 16 hex digits"));
    }
    for (field, d) in [
        ("model_digest", model_digest),
        ("optimizer_digest", optimizer_digest),
    ] {
        if !is_digest(d) {
            return bad(format!("{field} {d:?} is not a hex SHA-256"));
        }
    }
    if rank.0 != 0 {
        if !model.is_empty() || !optimizer.is_empty() {
            return bad("only rank 0 uploads its state".into());
        }
        return Ok(());
    }
    for (what, bytes, want) in [
        ("model", model, model_digest),
        ("optimizer", optimizer, optimizer_digest),
    ] {
        if bytes.is_empty() {
            return bad(format!("no {what} state for the checkpoint"));
        }
        match state_digest(bytes) {
            Ok(got) if got == want => {}
            Ok(got) => {
                return bad(format!(
                    "its {what} state hashes to {got}, not to the {what}_digest {want} it reported"
                ))
            }
            Err(e) => return bad(format!("{what} state: {e}")),
        }
    }
    Ok(())
}

/// Every rank's `(model_digest, optimizer_digest)` must be the same: the state rank 0 uploads is
/// then the one every replica holds. The error names each rank's digests.
pub(super) fn agree_on_state<'a>(
    digests: impl Iterator<Item = (Rank, &'a str, &'a str)>,
) -> Result<(), String> {
    let all: Vec<(Rank, &str, &str)> = digests.collect();
    let Some(first) = all.first() else {
        return Ok(());
    };
    if all.iter().all(|d| (d.1, d.2) == (first.1, first.2)) {
        return Ok(());
    }
    Err(format!(
        "the ranks hold different training state: {}",
        all.iter()
            .map(|(r, m, o)| format!(
                "rank {r} model {} optimizer {}",
                &m[..m.len().min(12)],
                &o[..o.len().min(12)]
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn r_epoch(reports: &[EpochReport]) -> u32 {
    reports.first().map_or(0, |r| r.epoch)
}
