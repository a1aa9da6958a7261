//! The training loop of one replica, as a [`Replica`]: [`Replica::setup`] puts the data, the
//! model and the optimizer on the device (restored from a checkpoint when resuming),
//! [`Replica::epoch`] trains and validates one epoch, [`Replica::step`] trains one step, and
//! [`Replica::finish`] hands the final weights to the driver.
//!
//! Owns the order of operations that makes runs reproducible: the seed is set right before the
//! model is built, every rank draws the same initial parameters, the per-step all-reduce
//! carries gradients plus one control element, and BatchNorm buffers are averaged before
//! validation and checkpoints. Not the hyper-parameters (the driver's) nor the collective.
//!
//! Log lines inside an epoch carry an `epoch` span (inside the caller's `run` and `round`
//! spans in a distributed worker).
//!
//! Files: `checkpoint.rs` (checkpoints inside an epoch), `buffers.rs` (BatchNorm buffers:
//! averaged, hashed), `validation.rs`.
//!
//! Tests: `tests/tests/train.rs` and `tests/tests/distributed.rs` (real binaries).

mod buffers;
mod checkpoint;
mod validation;

use std::cell::Cell;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ringtrain_common::data::{LoadedDataset, PixelStats};
use ringtrain_common::lr_find::StopRule;
use ringtrain_common::schedule::SchedulePoint;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::step_clock::StepClock;
use super::{state, Driver, EpochResult, ReplicaSpec, TrainError};
use crate::amp::autocast;
use crate::collective::Collective;
use crate::data::{EpochPlan, TrainSet, ValidSet};
use crate::flat::FlatParams;
use crate::model::Model;
use crate::optim::Adam;
use buffers::{average_buffers, buffers, replica_hash};
pub(crate) use validation::validate;

/// On CUDA, steps between host reads of device values (loss check, progress, stop element).
const HOST_SYNC_EVERY: usize = 20;

/// One replica's model, optimizer and data, and where it is in the run.
pub(super) struct Replica<'a> {
    spec: &'a ReplicaSpec,
    train_set: TrainSet,
    valid_set: ValidSet,
    vs: VarStore,
    model: Model,
    flat: FlatParams,
    /// BatchNorm running statistics, sorted by name.
    bufs: Vec<Tensor>,
    adam: Adam,
    first_epoch: u32,
    /// Global steps done.
    step: u64,
    /// Steps of the first epoch already done (resumed inside it); taken by that epoch.
    skip: usize,
    /// Steps between host reads of the control element (1 on the CPU, where reads are free).
    sync_every: usize,
    /// Times each step's compute and all-reduce, for the heartbeats (straggler detection).
    clock: StepClock,
}

/// One epoch under way.
struct EpochRun {
    epoch: u32,
    plan: EpochPlan,
    /// This replica's loss of every step, kept on the device.
    losses: Tensor,
    bar: ProgressBar,
    /// `lr-find`'s stop rule, when this is a sweep.
    sweep: Option<StopRule>,
    /// Time spent in checkpoints inside the epoch: not training, so not in `train_seconds`
    /// (a `Cell`, since a checkpoint sees the epoch only by shared reference).
    checkpointing: Cell<Duration>,
}

/// What the loop does after a step.
enum AfterStep {
    Continue,
    /// The LR sweep's stop rule fired: the epoch ends after this step.
    SweepDone,
}

impl<'a> Replica<'a> {
    /// Data on the device, the seed's initial model (or the resumed state) and its optimizer.
    pub(super) fn setup(
        spec: &'a ReplicaSpec,
        ds: &LoadedDataset,
        driver: &mut dyn Driver,
    ) -> Result<Self, TrainError> {
        let device = spec.device;
        let norm = driver.normalization(PixelStats::per_channel(&ds.train))?;
        let g = spec.geometry;
        if norm.channels() != g.channels as usize || ds.train.channels != g.channels {
            return Err(TrainError::Coordinator(format!(
                "normalisation for {} channels, images with {}, the run's {}",
                norm.channels(),
                ds.train.channels,
                g.channels
            )));
        }
        let valid_set = ValidSet::new(&ds.valid, &norm, device);
        let train_set = TrainSet::new(&ds.train, norm, spec.augment, device);
        let (channels, size) = (i64::from(g.channels), i64::from(g.size));

        // Same seed on every rank: identical initial parameters without a broadcast.
        tch::manual_seed(spec.seed as i64);
        let mut vs = VarStore::new(device);
        let model = Model::new(
            &vs.root(),
            spec.model,
            channels,
            ds.classes.len() as i64,
            size,
        );
        let flat = FlatParams::new(&vs, || {
            // Eval mode: allocates every gradient without touching BatchNorm running statistics.
            let x = Tensor::zeros([2, channels, size, size], (Kind::Float, device));
            model.forward_t(&x, false).sum(Kind::Float).backward();
        })?;
        let bufs = buffers(&vs);
        let mut adam = Adam::new(&flat.params, spec.adam);
        let (first_epoch, step, skip) = match &spec.resume {
            Some(r) => {
                state::restore(&mut vs, &mut adam, r)?;
                tracing::info!(
                    epoch = r.epoch,
                    step_in_epoch = r.step_in_epoch,
                    step = r.global_step,
                    "resumed from the coordinator's checkpoint"
                );
                (r.epoch, r.global_step, r.step_in_epoch as usize)
            }
            None => (0, 0, 0),
        };
        // On a GPU the host reads the device only every `HOST_SYNC_EVERY` steps (the loss check
        // and the stop element of the all-reduce); on the CPU reading is free, so every step.
        let sync_every = if device.is_cuda() { HOST_SYNC_EVERY } else { 1 };
        Ok(Self {
            spec,
            train_set,
            valid_set,
            vs,
            model,
            flat,
            bufs,
            adam,
            first_epoch,
            step,
            skip,
            sync_every,
            clock: StepClock::for_device(device),
        })
    }

    /// Trainable parameters.
    pub(super) fn params(&self) -> i64 {
        self.flat.numel()
    }

    /// The epoch training starts (or resumes) in.
    pub(super) fn first_epoch(&self) -> u32 {
        self.first_epoch
    }

    /// Trains epoch `epoch` with the driver's plan, validates, and reports the result.
    pub(super) fn epoch(
        &mut self,
        epoch: u32,
        collective: &mut dyn Collective,
        driver: &mut dyn Driver,
    ) -> Result<(), TrainError> {
        let _span = tracing::info_span!("epoch", epoch).entered();
        let spec = self.spec;
        let device = spec.device;
        let epoch_start = Instant::now();
        let plan_points = driver.epoch_plan(epoch)?;
        if plan_points.len() != spec.steps_per_epoch {
            return Err(TrainError::BadPlan {
                epoch,
                got: plan_points.len(),
                want: spec.steps_per_epoch,
            });
        }
        let plan = self.train_set.plan_epoch_min(
            spec.seed,
            u64::from(epoch),
            u64::from(spec.rank),
            spec.batch_size,
            spec.steps_per_epoch,
        );
        if plan.steps < spec.steps_per_epoch {
            return Err(TrainError::BadPlan {
                epoch,
                got: plan.steps,
                want: spec.steps_per_epoch,
            });
        }
        let skip = std::mem::take(&mut self.skip);
        let first_step = self.step - skip as u64;
        let mut run = EpochRun {
            epoch,
            plan,
            losses: Tensor::zeros([spec.steps_per_epoch as i64], (Kind::Float, device)),
            bar: progress_bar(spec.steps_per_epoch, epoch, spec.progress),
            sweep: spec.lr_find_stop_div.map(StopRule::new),
            checkpointing: Cell::new(Duration::ZERO),
        };
        // Resumed inside this epoch: its first `skip` steps are done, their losses known.
        if let Some(r) = spec.resume.as_ref().filter(|_| skip > 0) {
            let done = Tensor::from_slice(&r.epoch_losses).to_device(device);
            tch::no_grad(|| run.losses.narrow(0, 0, done.numel() as i64).copy_(&done));
            run.bar.inc(skip as u64);
        }
        let mut done = spec.steps_per_epoch;
        for (s, point) in plan_points.iter().enumerate().skip(skip) {
            if let AfterStep::SweepDone = self.step(&mut run, s, point, collective, driver)? {
                done = s + 1;
                break;
            }
        }
        let step_losses: Vec<f32> =
            Vec::<f32>::try_from(&run.losses.narrow(0, 0, done as i64).to_device(Device::Cpu))
                .unwrap_or_default();
        let diverged = step_losses.iter().enumerate().find(|(_, l)| !l.is_finite());
        if let Some((i, l)) = diverged.filter(|_| run.sweep.is_none()) {
            return Err(TrainError::Diverged {
                step: first_step + i as u64,
                epoch,
                loss: f64::from(*l),
            });
        }
        // Images/s is what this replica trained over the time it spent training: checkpoints
        // inside the epoch (their barrier and state upload) are left out, as the epoch's own
        // checkpoint after validation is, and so are the steps trained before a resume.
        let train_seconds = epoch_start
            .elapsed()
            .saturating_sub(run.checkpointing.get())
            .as_secs_f64();
        run.bar.finish_and_clear();
        average_buffers(&self.bufs, collective)?;
        let (valid_loss_sum, valid_correct, valid_count) = validate(
            &self.model,
            &self.valid_set,
            spec.valid_batch_size,
            spec.precision,
        );
        let result = EpochResult {
            epoch,
            first_step,
            step_losses,
            plan: plan_points,
            valid_loss_sum,
            valid_correct,
            valid_count,
            params_hash: replica_hash(&self.flat, &self.bufs),
            train_seconds,
            seconds: epoch_start.elapsed().as_secs_f64(),
            images: done.saturating_sub(skip) * spec.batch_size,
            state: self.saved_state()?,
        };
        driver.epoch_done(&result)
    }

    /// Step `s` of the epoch: forward, backward, all-reduce of the gradients (and the control
    /// element), Adam at `point`'s learning rate and beta1; then a checkpoint when the ranks
    /// agreed to stop or one is due.
    fn step(
        &mut self,
        run: &mut EpochRun,
        s: usize,
        point: &SchedulePoint,
        collective: &mut dyn Collective,
        driver: &mut dyn Driver,
    ) -> Result<AfterStep, TrainError> {
        let spec = self.spec;
        self.clock.step_start();
        let (x, y) = self.train_set.batch(&run.plan, s);
        let loss = autocast(spec.precision, spec.device, || {
            self.model.forward_t(&x, true).cross_entropy_for_logits(&y)
        });
        self.flat.zero_grad();
        loss.backward();
        if run.sweep.is_some() {
            self.flat.set_control_from(&loss);
        } else {
            self.flat
                .set_control(if driver.stop_requested() { 1.0 } else { 0.0 });
        }
        // Fault injection for the hang-diagnosis test (the `failpoints` feature only; nothing
        // in release builds): e.g. FAILPOINTS='before-allreduce=30*off->sleep(600000)'.
        fail::fail_point!("before-allreduce");
        self.clock.reduce_start();
        let counters = spec.progress_counters.as_deref();
        if let Some(p) = counters {
            p.set_in_collective(true);
        }
        let reduce_start = Instant::now();
        let reduced = collective.all_reduce_mean(&mut self.flat.comm);
        let reduce_time = collective.host_timed().then(|| reduce_start.elapsed());
        if let Some(p) = counters {
            p.set_in_collective(false);
        }
        reduced?;
        self.clock.reduce_end();
        // Drained every step, also when nobody reads the times (standalone training).
        self.clock.drain(|compute, wait| {
            if let Some(p) = counters {
                p.record_timing(compute, wait);
            }
        });
        self.adam.step(
            &mut self.flat.params,
            &self.flat.grads,
            point.lr,
            point.beta1,
        );
        // Kept on the device; read once per epoch (and every 20 steps for the progress bar).
        tch::no_grad(|| run.losses.get(s as i64).copy_(&loss));
        if s % HOST_SYNC_EVERY == 0 {
            let l = loss.double_value(&[]);
            if !l.is_finite() && run.sweep.is_none() {
                return Err(TrainError::Diverged {
                    step: self.step,
                    epoch: run.epoch,
                    loss: l,
                });
            }
            run.bar.set_message(format!("loss {l:.4}"));
        }
        run.bar.inc(1);
        self.step += 1;
        if let Some(p) = &spec.progress_counters {
            p.set_step(self.step);
            p.record(spec.batch_size as u64, reduce_time);
        }
        // The sweep: every rank sees the same mean loss, so all stop after the same step.
        if let Some(rule) = run.sweep.as_mut() {
            return Ok(if rule.stop_after(self.flat.control()) {
                AfterStep::SweepDone
            } else {
                AfterStep::Continue
            });
        }
        // Every rank computes the same two conditions: the step count and the reduced control
        // element. The epoch's last step has its own checkpoint (the epoch's).
        let stop = s % self.sync_every == 0 && self.flat.control() > 0.0;
        let periodic = spec.checkpoint_every > 0 && self.step % spec.checkpoint_every == 0;
        if (stop || periodic) && s + 1 < spec.steps_per_epoch {
            self.mid_checkpoint(run, s + 1, stop, collective, driver)?;
        }
        Ok(AfterStep::Continue)
    }

    /// Checks the parameter layout, hands the final weights to the driver, returns their hash.
    pub(super) fn finish(self, driver: &mut dyn Driver) -> Result<u64, TrainError> {
        self.flat.check_aliasing()?;
        let hash = replica_hash(&self.flat, &self.bufs);
        driver.finished(&self.vs, hash)?;
        Ok(hash)
    }
}

fn progress_bar(steps: usize, epoch: u32, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(epoch.to_string());
    pb
}
