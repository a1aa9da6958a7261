//! The training loop of one replica: data → forward → backward → all-reduce → Adam, per step,
//! with exact validation, reporting to a [`Driver`].
//!
//! Owns every tch object of the run on the calling thread (tch tensors are `Send`, not `Sync`).
//! The loop decides no hyper-parameter: normalisation, the per-step learning rate and beta1, and
//! what happens with an epoch's results come from the driver: [`standalone::Standalone`] computes
//! them locally (world size 1), `crate::dist` asks the coordinator. It talks to peers only
//! through [`Collective`], so the same step serves the standalone, ring and NCCL runs.
//!
//! This module holds the types a driver sees ([`ReplicaSpec`], [`Driver`], [`EpochResult`],
//! [`MidCheckpoint`], [`TrainError`]); `replica.rs` holds the loop itself: a `Replica` with
//! `setup`, `epoch` and `step`.
//!
//! Tests: `tests/tests/train.rs` and `tests/tests/distributed.rs` (real binaries).

pub mod progress;
mod replica;
pub mod standalone;
pub mod state;
mod step_clock;

use std::path::PathBuf;

use ringtrain_common::data::{Augment, DataError, Geometry, LoadedDataset, PixelStats};
use ringtrain_common::report::ReportError;
use ringtrain_common::schedule::SchedulePoint;
use tch::nn::VarStore;
use tch::Device;

use crate::amp::Precision;
use crate::collective::{Collective, CollectiveError};
use crate::config::ConfigError;
use crate::data::Normalize;
use crate::flat::FlatError;
use crate::model::Arch;
use crate::optim::AdamConfig;

pub(crate) use replica::validate;

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
    /// Channels and size of every image (the model's input).
    pub geometry: Geometry,
    /// Training augmentation.
    pub augment: Augment,
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
    /// Normalisation for this replica, given the pixel sums of its training images (one per
    /// channel).
    fn normalization(&mut self, local: Vec<PixelStats>) -> Result<Normalize, TrainError>;
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

/// Trains one replica on `ds` (its whole dataset or its shard) and returns the hash of its final
/// parameters and BatchNorm buffers.
pub fn run_replica(
    spec: &ReplicaSpec,
    ds: &LoadedDataset,
    collective: &mut dyn Collective,
    driver: &mut dyn Driver,
) -> Result<u64, TrainError> {
    let mut replica = replica::Replica::setup(spec, ds, driver)?;
    tracing::info!(model = %spec.model, params = replica.params(), rank = spec.rank,
        world_size = collective.world_size(), device = %crate::device::name(spec.device),
        precision = %spec.precision, train = ds.train.len(), valid = ds.valid.len(),
        steps_per_epoch = spec.steps_per_epoch, epochs = spec.epochs,
        threads = tch::get_num_threads(), "training starts");
    driver.started();
    for epoch in replica.first_epoch()..spec.epochs {
        replica.epoch(epoch, collective, driver)?;
    }
    replica.finish(driver)
}
