//! The epoch barrier's arithmetic: from every rank's [`EpochReport`] to one table row.
//!
//! Owns the divergence check, the cross-rank averaging and fastai's loss smoothing; not waiting
//! (`service.rs`) or writing (`artifacts.rs`).
//!
//! # Contract
//! * All ranks must report the same `params_hash`; otherwise the verdict is a failure naming every
//!   rank and its hash (data parallelism keeps replicas bit-identical, so any difference is a bug
//!   or a corrupted collective).
//! * Step `k`'s loss is the mean over ranks of their step-`k` losses; one
//!   `Smoothener(0.98)` runs across the whole run, like fastai's recorder, and the row's
//!   `train_loss` is its value after the epoch's last step.
//! * `valid_loss = Σ valid_loss_sum / Σ valid_count`, `accuracy = Σ correct / Σ count`.
//! * Throughput uses the slowest rank's `train_seconds`: the ring runs at its pace.
//!
//! Tests: `tests` at the bottom.

use ringtrain_common::report::{EpochRow, Smoothener};

use crate::ids::Rank;
use crate::plan::RunPlan;

/// One rank's numbers for one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Who reported.
    pub rank: Rank,
    /// Which epoch.
    pub epoch: u32,
    /// Loss at every step of the epoch.
    pub step_losses: Vec<f32>,
    /// Sum of validation losses over this rank's validation shard.
    pub valid_loss_sum: f64,
    /// Correct validation predictions.
    pub valid_correct: u64,
    /// Validation images.
    pub valid_count: u64,
    /// Hex hash of parameters and buffers after the epoch.
    pub params_hash: String,
    /// Seconds spent in training steps.
    pub train_seconds: f64,
    /// Rank 0 only: parameters and BatchNorm buffers after the epoch (safetensors).
    pub model: Vec<u8>,
    /// Rank 0 only: Adam's moments after the epoch (safetensors).
    pub optimizer: Vec<u8>,
    /// Every rank: `state_digest` of its model and optimizer state after the epoch.
    pub model_digest: String,
    pub optimizer_digest: String,
}

/// One step for `steps.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    pub step: u64,
    pub epoch: u32,
    pub lr: f64,
    pub beta1: f64,
    /// Mean over ranks.
    pub loss: f64,
}

/// A completed epoch.
#[derive(Debug, Clone)]
pub struct EpochResult {
    /// The table row.
    pub row: EpochRow,
    /// Every step of the epoch.
    pub steps: Vec<StepLine>,
    /// The hash all ranks agreed on.
    pub params_hash: String,
}

/// Why a complete epoch fails the run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EpochError {
    /// The replicas' parameters differ.
    #[error("replicas diverged after epoch {epoch}: {}", hashes.iter().map(|(r, h)| format!("rank {r} {h}")).collect::<Vec<_>>().join(", "))]
    Diverged {
        epoch: u32,
        hashes: Vec<(Rank, String)>,
    },
    /// The mean loss of a step is NaN or infinite.
    #[error("training diverged: loss is {loss} at step {step} (epoch {epoch})")]
    NonFiniteLoss { epoch: u32, step: u64, loss: f64 },
    /// `lr-find`: the ranks stopped the sweep after different numbers of steps (they decide
    /// on the same all-reduced loss, so this is a bug or a tampered worker).
    #[error("the ranks stopped the LR sweep at different steps: {}", steps.iter().map(|(r, n)| format!("rank {r} after {n}")).collect::<Vec<_>>().join(", "))]
    SweepMismatch { steps: Vec<(Rank, usize)> },
}

/// Run-long state of the epoch barriers (saved in every checkpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochAggregator {
    smoother: Smoothener,
    /// Slowest rank's train seconds, per completed epoch.
    pub slowest_train_seconds: Vec<f64>,
    /// Images trained in those seconds, per completed epoch: fewer than an epoch's when the
    /// round resumed inside it or an LR sweep stopped early. Absent in checkpoints written
    /// before it existed (those epochs count as whole).
    #[serde(default)]
    pub trained_images: Vec<u64>,
    /// Rows of completed epochs.
    pub rows: Vec<EpochRow>,
    /// The hash after the last completed epoch.
    pub params_hash: Option<String>,
    /// Every rank's hash after the last completed epoch, index = rank (all equal, or the run
    /// failed).
    pub rank_hashes: Vec<String>,
}

impl Default for EpochAggregator {
    fn default() -> Self {
        Self {
            smoother: Smoothener::new(0.98),
            slowest_train_seconds: Vec::new(),
            trained_images: Vec::new(),
            rows: Vec::new(),
            params_hash: None,
            rank_hashes: Vec::new(),
        }
    }
}

impl EpochAggregator {
    /// Epochs completed so far.
    pub fn done(&self) -> u32 {
        self.rows.len() as u32
    }

    /// Combines the reports of every rank (sorted by rank, one each, all for the same epoch and
    /// with `steps_per_epoch` losses: the caller checked) into the epoch's result. `seconds` is
    /// the epoch's wall time at the coordinator; `restored_steps` of the epoch were trained
    /// before this round resumed it (their losses are in the reports, their time is not).
    pub fn complete(
        &mut self,
        reports: &[EpochReport],
        plan: &RunPlan,
        seconds: f64,
        restored_steps: usize,
    ) -> Result<EpochResult, EpochError> {
        let epoch = reports.first().map_or(0, |r| r.epoch);
        let first_hash = reports
            .first()
            .map(|r| r.params_hash.as_str())
            .unwrap_or_default();
        if reports.iter().any(|r| r.params_hash != first_hash) {
            return Err(EpochError::Diverged {
                epoch,
                hashes: reports
                    .iter()
                    .map(|r| (r.rank, r.params_hash.clone()))
                    .collect(),
            });
        }
        let sched = plan
            .epoch_schedule(epoch)
            .unwrap_or_else(|| crate::plan::EpochSchedule {
                first_step: plan.first_step(epoch),
                points: vec![],
            });
        let n = reports.len().max(1) as f64;
        // An LR sweep ends where the ranks agreed the loss diverged (the same step on all).
        let lr_find = plan.lr_find().is_some();
        let done = if lr_find {
            let first = reports.first().map_or(0, |r| r.step_losses.len());
            if reports.iter().any(|r| r.step_losses.len() != first) {
                return Err(EpochError::SweepMismatch {
                    steps: reports
                        .iter()
                        .map(|r| (r.rank, r.step_losses.len()))
                        .collect(),
                });
            }
            first
        } else {
            plan.steps_per_epoch as usize
        };
        let mut steps = Vec::with_capacity(done);
        for k in 0..done {
            let loss = reports
                .iter()
                .map(|r| f64::from(r.step_losses.get(k).copied().unwrap_or(f32::NAN)))
                .sum::<f64>()
                / n;
            let step = sched.first_step + k as u64;
            // The sweep's last step may diverge: that is how it ends.
            if !loss.is_finite() && !lr_find {
                return Err(EpochError::NonFiniteLoss { epoch, step, loss });
            }
            let p = sched
                .points
                .get(k)
                .copied()
                .unwrap_or_else(|| plan.schedule.at(step));
            steps.push(StepLine {
                step,
                epoch,
                lr: p.lr,
                beta1: p.beta1,
                loss,
            });
        }
        let mut train_loss = f64::NAN;
        for s in &steps {
            train_loss = self.smoother.add(s.loss);
        }
        let valid_count: u64 = reports.iter().map(|r| r.valid_count).sum();
        let valid_correct: u64 = reports.iter().map(|r| r.valid_correct).sum();
        let valid_loss_sum: f64 = reports.iter().map(|r| r.valid_loss_sum).sum();
        let slowest = reports.iter().map(|r| r.train_seconds).fold(0.0, f64::max);
        let trained = done.saturating_sub(restored_steps) as u64 * u64::from(plan.batch_size);
        let row = EpochRow {
            epoch,
            train_loss,
            valid_loss: valid_loss_sum / valid_count as f64,
            accuracy: valid_correct as f64 / valid_count as f64,
            valid_correct,
            valid_count,
            seconds,
            train_seconds: slowest,
            train_images_per_s: if slowest > 0.0 {
                trained as f64 / slowest
            } else {
                0.0
            },
            lr: steps.last().map_or(f64::NAN, |s| s.lr),
        };
        self.slowest_train_seconds.push(slowest);
        self.trained_images.push(trained);
        self.rows.push(row.clone());
        self.params_hash = Some(first_hash.to_string());
        self.rank_hashes = reports.iter().map(|r| r.params_hash.clone()).collect();
        Ok(EpochResult {
            row,
            steps,
            params_hash: first_hash.to_string(),
        })
    }

    /// Training images per second over the whole run, paced by the slowest rank of each epoch.
    pub fn train_images_per_s(&self, plan: &RunPlan) -> f64 {
        let secs: f64 = self.slowest_train_seconds.iter().sum();
        let images: u64 = (0..self.slowest_train_seconds.len())
            .map(|i| {
                self.trained_images
                    .get(i)
                    .copied()
                    .unwrap_or_else(|| plan.images_per_epoch())
            })
            .sum();
        if secs > 0.0 {
            images as f64 / secs
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::plan::plan_run;

    fn plan() -> RunPlan {
        // 2 ranks × 2 steps × 2 per rank.
        let c = RunConfig {
            data: "d".into(),
            recipe: crate::config::Recipe {
                epochs: Some(2),
                batch_size: 4,
                ..Default::default()
            },
            ..RunConfig::default()
        };
        plan_run(&c, 8, 4, 2).unwrap()
    }

    fn report(rank: u32, epoch: u32, losses: [f32; 2], hash: &str) -> EpochReport {
        EpochReport {
            rank: Rank(rank),
            epoch,
            step_losses: losses.to_vec(),
            valid_loss_sum: 1.0 + f64::from(rank),
            valid_correct: 1 + u64::from(rank),
            valid_count: 2,
            params_hash: hash.into(),
            train_seconds: 1.0 + f64::from(rank),
            model: Vec::new(),
            optimizer: Vec::new(),
            model_digest: String::new(),
            optimizer_digest: String::new(),
        }
    }

    #[test]
    fn averages_smooths_and_sums() {
        let p = plan();
        let mut agg = EpochAggregator::default();
        let r = agg
            .complete(
                &[report(0, 0, [1.0, 2.0], "h"), report(1, 0, [3.0, 4.0], "h")],
                &p,
                5.0,
                0,
            )
            .unwrap();
        assert_eq!(
            r.steps.iter().map(|s| s.loss).collect::<Vec<_>>(),
            vec![2.0, 3.0]
        );
        assert_eq!(
            r.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(r.steps[1].lr, p.schedule.at(1).lr);
        let mut sm = Smoothener::new(0.98);
        sm.add(2.0);
        assert_eq!(r.row.train_loss, sm.add(3.0));
        assert_eq!(
            (r.row.valid_loss, r.row.accuracy, r.row.valid_count),
            (3.0 / 4.0, 3.0 / 4.0, 4)
        );
        // Slowest rank: 2 s for 2 steps × 4 images.
        assert_eq!(
            (r.row.train_seconds, r.row.train_images_per_s, r.row.seconds),
            (2.0, 4.0, 5.0)
        );
        // The smoother carries over into the next epoch (fastai's recorder is run-long).
        let r2 = agg
            .complete(
                &[report(0, 1, [1.0, 1.0], "g"), report(1, 1, [1.0, 1.0], "g")],
                &p,
                5.0,
                0,
            )
            .unwrap();
        sm.add(1.0);
        assert_eq!(r2.row.train_loss, sm.add(1.0));
        assert_eq!(r2.steps[0].step, 2);
        assert_eq!((agg.done(), agg.params_hash.as_deref()), (2, Some("g")));
        assert_eq!(agg.train_images_per_s(&p), 16.0 / 4.0);
    }

    #[test]
    fn a_resumed_epoch_counts_only_the_images_this_round_trained() {
        let p = plan();
        let mut agg = EpochAggregator::default();
        // Step 0 of the 2 was trained before the resume; the 2 s cover step 1 alone.
        let r = agg
            .complete(
                &[report(0, 0, [1.0, 2.0], "h"), report(1, 0, [3.0, 4.0], "h")],
                &p,
                5.0,
                1,
            )
            .unwrap();
        assert_eq!(r.row.train_images_per_s, 4.0 / 2.0);
        assert_eq!(
            r.steps.len(),
            2,
            "the restored step's loss is still recorded"
        );
        agg.complete(
            &[report(0, 1, [1.0, 1.0], "g"), report(1, 1, [1.0, 1.0], "g")],
            &p,
            5.0,
            0,
        )
        .unwrap();
        assert_eq!(agg.train_images_per_s(&p), (4.0 + 8.0) / 4.0);
        // A checkpoint from before `trained_images` existed counts its epochs as whole.
        agg.trained_images.clear();
        assert_eq!(agg.train_images_per_s(&p), 16.0 / 4.0);
    }

    #[test]
    fn hash_mismatch_names_every_rank() {
        let mut agg = EpochAggregator::default();
        let err = agg
            .complete(
                &[
                    report(0, 3, [1.0, 1.0], "aaa"),
                    report(1, 3, [1.0, 1.0], "bbb"),
                ],
                &plan(),
                1.0,
                0,
            )
            .unwrap_err();
        assert_eq!(
            err,
            EpochError::Diverged {
                epoch: 3,
                hashes: vec![(Rank(0), "aaa".into()), (Rank(1), "bbb".into())]
            }
        );
        assert_eq!(
            err.to_string(),
            "replicas diverged after epoch 3: rank 0 aaa, rank 1 bbb"
        );
        assert_eq!(agg.done(), 0);
    }

    #[test]
    fn nan_loss_fails_with_the_step() {
        let mut agg = EpochAggregator::default();
        let err = agg
            .complete(
                &[
                    report(0, 1, [1.0, f32::NAN], "h"),
                    report(1, 1, [1.0, 1.0], "h"),
                ],
                &plan(),
                1.0,
                0,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                EpochError::NonFiniteLoss {
                    epoch: 1,
                    step: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
