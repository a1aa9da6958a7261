//! The run plan: from (recipe, dataset size, world size) to the per-rank batch, the steps per
//! epoch, the shards and every step's learning rate. The coordinator plans each round with it;
//! standalone training (`ringtrain-worker train`) is the world-size-1 case of the same plan.
//!
//! Owns that arithmetic; not the one-cycle curve itself (`schedule`), the shard rule (`shard`),
//! nor the dataset scan (the coordinator's `plan::DatasetView`, the worker's loader).
//!
//! # Contract
//! * `batch_per_worker = batch_size / world_size` exactly (an uneven split is an error, as every
//!   rank must average the same number of samples), and
//!   `steps_per_epoch = train_per_rank / batch_per_worker` (last partial batch dropped, fastai's
//!   `drop_last`); zero steps is an error naming the numbers.
//! * Global step `s` of the run trains with `OneCycle::at(s)` over
//!   `total_steps = epochs × steps_per_epoch`; epoch `e` covers steps
//!   `e·steps_per_epoch .. (e+1)·steps_per_epoch`.
//! * An LR range test (`lr_find`) is one epoch of `iters` steps of its sweep.
//!
//! ```text
//! 60,000 images, N = 2, batch 128:  per rank 30,000 images, 64 per step, 468 steps per epoch
//! epoch 0 = steps 0..468, epoch 1 = steps 468..936, ... (12 epochs: 5,616 steps)
//! 60,000 images, N = 1, batch 128:  128 per step, 468 steps per epoch (standalone)
//! ```
//! Tests: `tests` at the bottom.

use crate::ids::Rank;
use crate::lr_find::LrRange;
use crate::recipe::Recipe;
use crate::schedule::{OneCycle, ScheduleError, SchedulePoint};
use crate::shard::{plan_shards, ShardPlan};

/// The plan cannot work for this dataset and world size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The global batch does not split evenly over the ranks.
    #[error("batch-size {batch_size} is not divisible by world size {world_size}")]
    BatchNotDivisible { batch_size: u32, world_size: u32 },
    /// A rank's shard is smaller than one per-rank batch.
    #[error("{}", no_steps(*.train_images, *.world_size, *.per_rank, *.batch_per_worker))]
    NoSteps {
        train_images: usize,
        world_size: u32,
        per_rank: usize,
        batch_per_worker: u32,
    },
    /// The LR range test does not fit in one epoch.
    #[error(
        "lr-find needs {iters} steps in one epoch, but an epoch has {steps_per_epoch}; \
         lower --iters or --batch-size"
    )]
    LrFindTooLong { iters: u32, steps_per_epoch: u32 },
    /// The schedule is invalid (already caught by `Recipe::validate`; kept for completeness).
    #[error("schedule: {0}")]
    Schedule(ScheduleError),
}

/// [`PlanError::NoSteps`]'s message: per rank in a distributed run, plainly for one process.
fn no_steps(
    train_images: usize,
    world_size: u32,
    per_rank: usize,
    batch_per_worker: u32,
) -> String {
    if world_size == 1 {
        format!(
            "batch-size {batch_per_worker} is larger than the {train_images} training images: \
             no full batch to train on"
        )
    } else {
        format!(
            "no full batch per rank: {train_images} training images over {world_size} ranks is \
             {per_rank} per rank, fewer than the {batch_per_worker} a step needs"
        )
    }
}

/// Everything decided when the round closes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// Number of ranks.
    pub world_size: u32,
    /// Global batch.
    pub batch_size: u32,
    /// `batch_size / world_size`.
    pub batch_per_worker: u32,
    /// Steps of every rank in every epoch.
    pub steps_per_epoch: u32,
    /// Epochs.
    pub epochs: u32,
    /// Which files each rank gets.
    pub shards: ShardPlan,
    /// Every step's learning rate and beta1.
    pub schedule: RunSchedule,
}

/// What decides every step's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunSchedule {
    /// Training: the validated one-cycle schedule over the whole run.
    OneCycle(OneCycle),
    /// `lr-find`: the exponential sweep, beta1 fixed.
    LrRange(LrRange),
}

impl RunSchedule {
    /// The learning rate and beta1 of global step `step`.
    pub fn at(&self, step: u64) -> SchedulePoint {
        match self {
            RunSchedule::OneCycle(s) => s.at(step),
            RunSchedule::LrRange(r) => SchedulePoint {
                lr: r.lr(step),
                beta1: crate::lr_find::BETA1,
            },
        }
    }
}

/// The learning rate and beta1 of every step of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSchedule {
    /// Global index of the epoch's first step.
    pub first_step: u64,
    /// One point per step.
    pub points: Vec<SchedulePoint>,
}

/// Plans a run of `recipe` (or, with `lr_find`, one epoch of that sweep) on `n_train`/`n_valid`
/// images over `world_size` ranks.
pub fn plan_run(
    recipe: &Recipe,
    lr_find: Option<LrRange>,
    n_train: usize,
    n_valid: usize,
    world_size: u32,
) -> Result<RunPlan, PlanError> {
    let batch_size = recipe.batch_size;
    if world_size == 0 || !batch_size.is_multiple_of(world_size) {
        return Err(PlanError::BatchNotDivisible {
            batch_size,
            world_size,
        });
    }
    let batch_per_worker = batch_size / world_size;
    let shards = plan_shards(n_train, n_valid, world_size);
    let per_rank = shards.train_per_rank();
    let steps_per_epoch = per_rank / batch_per_worker.max(1) as usize;
    if steps_per_epoch == 0 {
        return Err(PlanError::NoSteps {
            train_images: n_train,
            world_size,
            per_rank,
            batch_per_worker,
        });
    }
    let mut steps_per_epoch = u32::try_from(steps_per_epoch).unwrap_or(u32::MAX);
    let epochs = if lr_find.is_some() {
        1
    } else {
        recipe.epochs()
    };
    let schedule = match lr_find {
        Some(r) => {
            // The sweep is one epoch of `iters` steps (fastai would wrap into a second epoch;
            // the lesson's 100 steps are a fifth of one).
            if r.iters > steps_per_epoch {
                return Err(PlanError::LrFindTooLong {
                    iters: r.iters,
                    steps_per_epoch,
                });
            }
            steps_per_epoch = r.iters;
            RunSchedule::LrRange(r)
        }
        None => RunSchedule::OneCycle(
            recipe
                .one_cycle(u64::from(epochs) * u64::from(steps_per_epoch))
                .init()
                .map_err(PlanError::Schedule)?,
        ),
    };
    Ok(RunPlan {
        world_size,
        batch_size,
        batch_per_worker,
        steps_per_epoch,
        epochs,
        shards,
        schedule,
    })
}

impl RunPlan {
    /// The sweep, when this is an `lr-find` run.
    pub fn lr_find(&self) -> Option<LrRange> {
        match self.schedule {
            RunSchedule::LrRange(r) => Some(r),
            RunSchedule::OneCycle(_) => None,
        }
    }

    /// Steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        u64::from(self.epochs) * u64::from(self.steps_per_epoch)
    }

    /// Global index of the first step of `epoch`.
    pub fn first_step(&self, epoch: u32) -> u64 {
        u64::from(epoch) * u64::from(self.steps_per_epoch)
    }

    /// The schedule of `epoch`, or `None` past the last epoch.
    pub fn epoch_schedule(&self, epoch: u32) -> Option<EpochSchedule> {
        if epoch >= self.epochs {
            return None;
        }
        let first_step = self.first_step(epoch);
        let points = (first_step..first_step + u64::from(self.steps_per_epoch))
            .map(|s| self.schedule.at(s))
            .collect();
        Some(EpochSchedule { first_step, points })
    }

    /// Training images one epoch consumes over all ranks.
    pub fn images_per_epoch(&self) -> u64 {
        u64::from(self.steps_per_epoch) * u64::from(self.batch_size)
    }

    /// Training and validation positions of `rank` (empty for an unknown rank).
    pub fn shard_of(&self, rank: Rank) -> (&[usize], &[usize]) {
        let train = self
            .shards
            .train
            .get(rank.index())
            .map_or(&[][..], Vec::as_slice);
        let valid = self
            .shards
            .valid
            .get(rank.index())
            .map_or(&[][..], Vec::as_slice);
        (train, valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(epochs: u32, batch: u32) -> Recipe {
        Recipe {
            epochs: Some(epochs),
            batch_size: batch,
            ..Recipe::default()
        }
    }

    #[test]
    fn mnist_two_ranks_worked_example() {
        let p = plan_run(&recipe(12, 128), None, 60_000, 10_000, 2).unwrap();
        assert_eq!(
            (p.batch_per_worker, p.steps_per_epoch, p.total_steps()),
            (64, 468, 5616)
        );
        assert_eq!(p.images_per_epoch(), 468 * 128);
        let e1 = p.epoch_schedule(1).unwrap();
        assert_eq!(e1.first_step, 468);
        assert_eq!(e1.points.len(), 468);
        // The epoch plan is a window onto the whole-run schedule, not a per-epoch restart.
        assert_eq!(e1.points[0], p.schedule.at(468));
        let RunSchedule::OneCycle(one_cycle) = p.schedule else {
            panic!("training runs use the one-cycle schedule")
        };
        assert_eq!(one_cycle.total_steps(), 5616);
        assert!(p.epoch_schedule(12).is_none());
        let whole: Vec<_> = (0..12)
            .flat_map(|e| p.epoch_schedule(e).unwrap().points)
            .collect();
        assert_eq!(whole, one_cycle.table());
        assert_eq!(p.shard_of(Rank(1)).0.len(), 30_000);
        assert!(p.shard_of(Rank(2)).0.is_empty(), "unknown rank");
    }

    #[test]
    fn standalone_is_world_size_one() {
        // What `ringtrain-worker train` computed on its own before it used this plan:
        // images / batch steps (last partial batch dropped), the whole batch on the one rank,
        // and the one-cycle schedule over epochs × steps.
        let r = Recipe::default();
        let p = plan_run(&r, None, 60_000, 10_000, 1).unwrap();
        assert_eq!(
            (p.batch_per_worker, p.steps_per_epoch, p.epochs),
            (128, 60_000 / 128, 12)
        );
        let legacy = r.one_cycle(468_u64 * u64::from(r.epochs())).init().unwrap();
        assert_eq!(p.schedule, RunSchedule::OneCycle(legacy));
        assert!(p.shards.dropped_train.is_empty());
        assert_eq!(p.shard_of(Rank(0)).1.len(), 10_000);
        let e = plan_run(&recipe(1, 64), None, 8, 4, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "batch-size 64 is larger than the 8 training images: no full batch to train on"
        );
    }

    #[test]
    fn lr_find_is_one_epoch_of_the_sweep() {
        let lr = Some(LrRange::default());
        let p = plan_run(&recipe(12, 128), lr, 60_000, 10_000, 2).unwrap();
        assert_eq!(
            (p.epochs, p.steps_per_epoch, p.total_steps()),
            (1, 100, 100)
        );
        assert_eq!(p.lr_find(), lr);
        let e0 = p.epoch_schedule(0).unwrap();
        assert_eq!(e0.points.len(), 100);
        assert_eq!(e0.points[0].lr, 1e-7);
        assert!((e0.points[99].lr - 100.0).abs() < 1e-10);
        assert!(e0.points.iter().all(|x| x.beta1 == 0.9));
        assert!(p.epoch_schedule(1).is_none());
        // 1,000 images over 2 ranks at 64 per rank: 7 steps, too few for 100.
        let e = plan_run(&recipe(12, 128), lr, 1_000, 100, 2).unwrap_err();
        assert!(e.to_string().contains("lr-find needs 100 steps"), "{e}");
    }

    #[test]
    fn warmup_peak_lands_in_the_right_epoch() {
        // 10 epochs × 10 steps, pct_start 0.3: step 30 is exactly max_lr, the first step of epoch 3.
        let p = plan_run(&recipe(10, 10), None, 100, 10, 1).unwrap();
        assert_eq!(p.epoch_schedule(3).unwrap().points[0].lr, 0.05);
        assert_eq!(p.epoch_schedule(0).unwrap().points[0].lr, 0.05 / 25.0);
    }

    #[test]
    fn uneven_batch_and_tiny_shards_are_errors() {
        assert_eq!(
            plan_run(&recipe(1, 128), None, 1000, 10, 3),
            Err(PlanError::BatchNotDivisible {
                batch_size: 128,
                world_size: 3
            })
        );
        assert!(plan_run(&recipe(1, 128), None, 1000, 10, 0).is_err());
        let e = plan_run(&recipe(1, 128), None, 127, 10, 2).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoSteps {
                train_images: 127,
                world_size: 2,
                per_rank: 63,
                batch_per_worker: 64
            }
        );
        assert!(
            e.to_string()
                .starts_with("no full batch per rank: 127 training images over 2 ranks"),
            "{e}"
        );
        // 129 images over 2 ranks: 64 each (one dropped), exactly one step.
        assert_eq!(
            plan_run(&recipe(1, 128), None, 129, 10, 2)
                .unwrap()
                .shards
                .dropped_train,
            vec![128]
        );
    }
}
