//! The training loop of one replica: data → forward → backward → all-reduce → Adam, per step,
//! with exact validation, reporting to a [`Driver`].
//!
//! Owns every tch object of the run on the calling thread (tch tensors are `Send`, not `Sync`).
//! The loop decides no hyper-parameter: normalisation, the per-step learning rate and beta1, and
//! what happens with an epoch's results come from the driver: [`standalone::Standalone`] computes
//! them locally (world size 1), `crate::dist` asks the coordinator. It talks to peers only
//! through [`Collective`], so the same step serves the standalone, ring and NCCL runs.
//!
//! Tests: `tests/tests/train.rs` and `tests/tests/distributed.rs` (real binaries).

pub mod progress;
pub mod standalone;
pub mod state;

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ringtrain_common::data::{DataError, LoadedDataset, PixelStats};
use ringtrain_common::report::ReportError;
use ringtrain_common::schedule::SchedulePoint;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::amp::{autocast, Precision};
use crate::collective::{Collective, CollectiveError};
use crate::config::ConfigError;
use crate::data::{Normalize, TrainSet, ValidSet};
use crate::flat::{FlatError, FlatParams};
use crate::model::{Arch, Model};
use crate::optim::{Adam, AdamConfig};
use ringtrain_common::lr_find::StopRule;

/// Why a training run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration breaks a rule.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The requested device cannot be used.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// The dataset could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The flat parameter layout could not be built.
    #[error(transparent)]
    Flat(#[from] FlatError),
    /// A collective failed (peer lost, shape mismatch).
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at step {step} (epoch {epoch}); lower --max-lr")]
    Diverged { step: u64, epoch: u32, loss: f64 },
    /// Writing the run folder failed.
    #[error("cannot write {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// Writing a metrics file failed.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The coordinator could not be reached or answered with an error.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// The coordinator declared the run failed (another rank's problem, usually).
    #[error("run failed: {0}")]
    RunFailed(String),
    /// The driver's plan does not fit the replica (wrong number of steps).
    #[error("epoch plan for epoch {epoch} has {got} steps, expected {want}")]
    BadPlan { epoch: u32, got: usize, want: usize },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The state to resume from does not fit this replica.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The coordinator ended this round (a peer was lost); the worker re-joins.
    #[error("round ended: {0}")]
    RoundEnded(String),
    /// SIGTERM: the worker stopped (after its stop checkpoint, when there was time for one).
    #[error("terminated by SIGTERM")]
    Terminated,
}

/// What one replica trains: everything but the hyper-parameters the driver supplies per step.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub model: Arch,
    pub epochs: u32,
    /// Images per step on this replica.
    pub batch_size: usize,
    pub steps_per_epoch: usize,
    pub valid_batch_size: usize,
    pub seed: u64,
    pub rank: u32,
    pub adam: AdamConfig,
    pub image_size: u32,
    pub device: Device,
    /// Forward-pass arithmetic (bf16: autocast).
    pub precision: Precision,
    pub progress: bool,
    /// Updated after every step: the global step, images and all-reduce time (heartbeats
    /// report them).
    pub progress_counters: Option<std::sync::Arc<progress::Progress>>,
    /// Start from this state instead of the seed's initialisation.
    pub resume: Option<state::ResumeState>,
    /// Put the model and optimizer state into every [`EpochResult`] (rank 0: checkpoints).
    pub save_state: bool,
    /// Checkpoint inside epochs every this many global steps (0: never).
    pub checkpoint_every: u64,
    /// `lr-find`: the all-reduce's control element carries the loss and the epoch ends once
    /// the smoothed mean loss passes this multiple of its minimum (see
    /// `ringtrain_common::lr_find`); stop requests and mid-epoch checkpoints are off.
    pub lr_find_stop_div: Option<f64>,
}

/// One epoch's results on this replica.
#[derive(Debug, Clone)]
pub struct EpochResult {
    pub epoch: u32,
    pub first_step: u64,
    pub step_losses: Vec<f32>,
    pub plan: Vec<SchedulePoint>,
    pub valid_loss_sum: f64,
    pub valid_correct: u64,
    pub valid_count: u64,
    /// Hash of parameters and BatchNorm buffers (identical on every replica).
    pub params_hash: u64,
    pub train_seconds: f64,
    pub seconds: f64,
    pub images: usize,
    /// With `save_state`: `model.safetensors` and `optimizer.safetensors` after the epoch.
    pub state: Option<(Vec<u8>, Vec<u8>)>,
}

/// Supplies what the replica must not decide alone, and receives its results.
pub trait Driver {
    /// Normalisation for this replica, given the pixel sums of its training images.
    fn normalization(&mut self, local: PixelStats) -> Result<Normalize, TrainError>;
    /// Learning rate and beta1 of every step of `epoch`.
    fn epoch_plan(&mut self, epoch: u32) -> Result<Vec<SchedulePoint>, TrainError>;
    /// Called once training starts (after start-up).
    fn started(&mut self) {}
    /// One epoch finished; an error stops the run.
    fn epoch_done(&mut self, result: &EpochResult) -> Result<(), TrainError>;
    /// Training finished; `weights` holds parameters and BatchNorm buffers.
    fn finished(&mut self, weights: &VarStore, params_hash: u64) -> Result<(), TrainError>;
    /// Whether this replica wants the run stopped at a checkpoint (SIGTERM, or the coordinator
    /// asked); it goes into the next step's all-reduce, so every rank agrees on the step.
    fn stop_requested(&self) -> bool {
        false
    }
    /// A checkpoint inside an epoch (every `checkpoint_every` steps, or the agreed stop). After
    /// a stop checkpoint the driver returns the error that ends this replica's round.
    fn checkpoint(&mut self, _c: &MidCheckpoint) -> Result<(), TrainError> {
        Ok(())
    }
}

/// A checkpoint inside an epoch, as this replica sees it.
#[derive(Debug, Clone)]
pub struct MidCheckpoint {
    pub epoch: u32,
    /// Steps of the epoch done.
    pub step_in_epoch: u32,
    pub global_step: u64,
    /// This replica's losses of those steps.
    pub step_losses: Vec<f32>,
    /// Parameters and (averaged) BatchNorm buffers.
    pub params_hash: u64,
    /// With `save_state`: `model.safetensors` and `optimizer.safetensors`.
    pub state: Option<(Vec<u8>, Vec<u8>)>,
    /// The ranks agreed to stop here.
    pub stop: bool,
}

/// On CUDA, steps between host reads of device values (loss check, progress, stop element).
pub const HOST_SYNC_EVERY: usize = 20;

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

/// Loss sum, correct count and count over the validation split, in eval mode, in batches of
/// `batch` (results do not depend on it).
pub(crate) fn validate(
    model: &Model,
    valid: &ValidSet,
    batch: usize,
    precision: Precision,
) -> (f64, u64, u64) {
    tch::no_grad(|| {
        let n = valid.len() as i64;
        let device = valid.images.device();
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        while start < n {
            let len = (batch as i64).min(n - start);
            let x = valid.images.narrow(0, start, len);
            let y = valid.labels.narrow(0, start, len);
            let logits =
                autocast(precision, device, || model.forward_t(&x, false)).to_kind(Kind::Float);
            let loss =
                logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0);
            loss_sum += loss.to_kind(Kind::Double);
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            start += len;
        }
        (
            loss_sum.double_value(&[]),
            correct.int64_value(&[]) as u64,
            n as u64,
        )
    })
}

/// BatchNorm running statistics, sorted by name.
fn buffers(vs: &VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// Averages BatchNorm running statistics across replicas (before validation and at the end), so
/// every replica validates and saves the same model.
fn average_buffers(
    bufs: &[Tensor],
    collective: &mut dyn Collective,
) -> Result<(), CollectiveError> {
    if collective.world_size() == 1 || bufs.is_empty() {
        return Ok(());
    }
    let flat: Vec<Tensor> = bufs.iter().map(|b| b.reshape([-1])).collect();
    let mut flat = Tensor::cat(&flat, 0);
    collective.all_reduce_mean(&mut flat)?;
    let mut offset = 0;
    tch::no_grad(|| {
        for b in bufs {
            let n = b.numel() as i64;
            let mut b = b.shallow_clone();
            b.copy_(&flat.narrow(0, offset, n).view(b.size().as_slice()));
            offset += n;
        }
    });
    Ok(())
}

/// Parameters and buffers, hashed together.
fn replica_hash(flat: &FlatParams, bufs: &[Tensor]) -> u64 {
    let mut h = flat.hash();
    for b in bufs {
        let host = b
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]);
        let v: Vec<f32> = Vec::<f32>::try_from(&host).unwrap_or_default();
        for x in v {
            h = (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Trains one replica on `ds` (its whole dataset or its shard).
pub fn run_replica(
    spec: &ReplicaSpec,
    ds: &LoadedDataset,
    collective: &mut dyn Collective,
    driver: &mut dyn Driver,
) -> Result<u64, TrainError> {
    let device = spec.device;
    let norm = driver.normalization(PixelStats::of(&ds.train.pixels))?;
    let train_set = TrainSet::new(&ds.train, norm, device);
    let valid_set = ValidSet::new(&ds.valid, norm, device);
    let size = i64::from(spec.image_size);

    // Same seed on every rank: identical initial parameters without a broadcast.
    tch::manual_seed(spec.seed as i64);
    let mut vs = VarStore::new(device);
    let model = Model::new(&vs.root(), spec.model, ds.classes.len() as i64);
    let mut flat = FlatParams::new(&vs, || {
        // Eval mode: allocates every gradient without touching BatchNorm running statistics.
        let x = Tensor::zeros([2, 1, size, size], (Kind::Float, device));
        model.forward_t(&x, false).sum(Kind::Float).backward();
    })?;
    let bufs = buffers(&vs);
    let mut adam = Adam::new(&flat.params, spec.adam);
    let (first_epoch, mut step, mut skip) = match &spec.resume {
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
    // On a GPU the host reads the device only every `HOST_SYNC_EVERY` steps (the loss check and
    // the stop element of the all-reduce); on the CPU reading is free, so every step.
    let sync_every = if device.is_cuda() { HOST_SYNC_EVERY } else { 1 };
    tracing::info!(model = %spec.model, params = flat.numel(), rank = spec.rank, world_size = collective.world_size(),
        device = %crate::device::name(device), precision = %spec.precision,
        train = ds.train.len(), valid = ds.valid.len(), steps_per_epoch = spec.steps_per_epoch,
        epochs = spec.epochs, threads = tch::get_num_threads(), "training starts");
    driver.started();

    for epoch in first_epoch..spec.epochs {
        let epoch_start = Instant::now();
        let plan_points = driver.epoch_plan(epoch)?;
        if plan_points.len() != spec.steps_per_epoch {
            return Err(TrainError::BadPlan {
                epoch,
                got: plan_points.len(),
                want: spec.steps_per_epoch,
            });
        }
        let plan = train_set.plan_epoch(
            spec.seed,
            u64::from(epoch),
            u64::from(spec.rank),
            spec.batch_size,
        );
        if plan.steps < spec.steps_per_epoch {
            return Err(TrainError::BadPlan {
                epoch,
                got: plan.steps,
                want: spec.steps_per_epoch,
            });
        }
        let pb = progress_bar(spec.steps_per_epoch, epoch, spec.progress);
        let first_step = step - skip as u64;
        let mut sweep = spec.lr_find_stop_div.map(StopRule::new);
        let mut done = spec.steps_per_epoch;
        let losses = Tensor::zeros([spec.steps_per_epoch as i64], (Kind::Float, device));
        // Resumed inside this epoch: its first `skip` steps are done, their losses known.
        if let Some(r) = spec.resume.as_ref().filter(|_| skip > 0) {
            let done = Tensor::from_slice(&r.epoch_losses).to_device(device);
            tch::no_grad(|| losses.narrow(0, 0, done.numel() as i64).copy_(&done));
            pb.inc(skip as u64);
        }
        for (s, point) in plan_points
            .iter()
            .enumerate()
            .skip(std::mem::take(&mut skip))
        {
            let (x, y) = train_set.batch(&plan, s);
            let loss = autocast(spec.precision, device, || {
                model.forward_t(&x, true).cross_entropy_for_logits(&y)
            });
            flat.zero_grad();
            loss.backward();
            if sweep.is_some() {
                flat.set_control_from(&loss);
            } else {
                flat.set_control(if driver.stop_requested() { 1.0 } else { 0.0 });
            }
            let reduce_start = Instant::now();
            collective.all_reduce_mean(&mut flat.comm)?;
            let reduce_time = collective.host_timed().then(|| reduce_start.elapsed());
            adam.step(&mut flat.params, &flat.grads, point.lr, point.beta1);
            // Kept on the device; read once per epoch (and every 20 steps for the progress bar).
            tch::no_grad(|| losses.get(s as i64).copy_(&loss));
            if s % HOST_SYNC_EVERY == 0 {
                let l = loss.double_value(&[]);
                if !l.is_finite() && sweep.is_none() {
                    return Err(TrainError::Diverged {
                        step,
                        epoch,
                        loss: l,
                    });
                }
                pb.set_message(format!("loss {l:.4}"));
            }
            pb.inc(1);
            step += 1;
            if let Some(p) = &spec.progress_counters {
                p.set_step(step);
                p.record(spec.batch_size as u64, reduce_time);
            }
            // The sweep: every rank sees the same mean loss, so all stop after the same step.
            if let Some(rule) = sweep.as_mut() {
                if rule.stop_after(flat.control()) {
                    done = s + 1;
                    break;
                }
                continue;
            }
            // Every rank computes the same two conditions: the step count and the reduced
            // control element. The epoch's last step has its own checkpoint below.
            let stop = s % sync_every == 0 && flat.control() > 0.0;
            let periodic = spec.checkpoint_every > 0 && step % spec.checkpoint_every == 0;
            if (stop || periodic) && s + 1 < spec.steps_per_epoch {
                average_buffers(&bufs, collective)?;
                let n = s as i64 + 1;
                let c = MidCheckpoint {
                    epoch,
                    step_in_epoch: n as u32,
                    global_step: step,
                    step_losses: Vec::<f32>::try_from(
                        &losses.narrow(0, 0, n).to_device(Device::Cpu),
                    )
                    .unwrap_or_default(),
                    params_hash: replica_hash(&flat, &bufs),
                    state: if spec.save_state {
                        Some(state::save(&vs, &adam)?)
                    } else {
                        None
                    },
                    stop,
                };
                driver.checkpoint(&c)?;
            }
        }
        let step_losses: Vec<f32> =
            Vec::<f32>::try_from(&losses.narrow(0, 0, done as i64).to_device(Device::Cpu))
                .unwrap_or_default();
        let diverged = step_losses.iter().enumerate().find(|(_, l)| !l.is_finite());
        if let Some((i, l)) = diverged.filter(|_| sweep.is_none()) {
            return Err(TrainError::Diverged {
                step: first_step + i as u64,
                epoch,
                loss: f64::from(*l),
            });
        }
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        average_buffers(&bufs, collective)?;
        let (valid_loss_sum, valid_correct, valid_count) =
            validate(&model, &valid_set, spec.valid_batch_size, spec.precision);
        let result = EpochResult {
            epoch,
            first_step,
            step_losses,
            plan: plan_points,
            valid_loss_sum,
            valid_correct,
            valid_count,
            params_hash: replica_hash(&flat, &bufs),
            train_seconds,
            seconds: epoch_start.elapsed().as_secs_f64(),
            images: done * spec.batch_size,
            state: if spec.save_state {
                Some(state::save(&vs, &adam)?)
            } else {
                None
            },
        };
        driver.epoch_done(&result)?;
    }
    flat.check_aliasing()?;
    let hash = replica_hash(&flat, &bufs);
    driver.finished(&vs, hash)?;
    Ok(hash)
}
