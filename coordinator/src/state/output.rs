//! What the run state machine asks the output layer to show or write, in emission order: the
//! [`Output`]s and the records they carry (`run.json`'s [`RunInfo`], `summary.json`'s
//! [`Summary`], a [`CheckpointOut`]).
//!
//! Owns those types only; the state machine (`state`) emits them and `artifacts` writes them,
//! so `state` never imports the writer and the writer imports `state` only for these types.

use std::sync::Arc;

use ringtrain_common::checkpoint::CheckpointState;
use ringtrain_common::data::Skipped;
use ringtrain_common::lr_find::LrFindResult;
use serde::{Deserialize, Serialize};

use super::epoch::EpochResult;
use crate::config::RunConfig;

/// One thing to show or write, in emission order.
#[derive(Debug)]
pub enum Output {
    /// (Re)write `run.json`.
    RunInfo(Box<RunInfo>),
    /// A completed epoch: its steps, the table row, metrics and plots.
    Epoch(Box<EpochResult>),
    /// Rank 0's final weights (a safetensors file).
    Weights(Vec<u8>),
    /// Write `summary.json`.
    Summary(Box<Summary>),
    /// Steps done in the current epoch (a live line on a terminal's stderr, nothing otherwise).
    Progress { epoch: u32, done: u64, steps: u32 },
    /// Write a checkpoint, point `latest` (and `best`) at it, prune old ones.
    Checkpoint(Box<CheckpointOut>),
    /// A line for people between the table's rows (a round restart).
    Notice(String),
    /// `lr-find`'s analysis: `lr_find.json`, `lr_find.csv`, `plots/lr_find.png` and the
    /// suggestion under the table.
    LrFind(Box<LrFindResult>),
}

/// A checkpoint to write.
#[derive(Debug)]
pub struct CheckpointOut {
    pub state: CheckpointState,
    pub model: Arc<Vec<u8>>,
    pub optimizer: Arc<Vec<u8>>,
    /// The name of the best checkpoint so far (this one or an older one).
    pub best: Option<String>,
    /// Newest checkpoints to keep besides the best.
    pub keep: usize,
}

/// Normalisation statistics on the [0, 1] scale, one per channel, as every rank applies them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormInfo {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Pixels per channel.
    pub count: u64,
}

/// What every image is decoded to, and the training augmentation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImagesInfo {
    pub channels: u32,
    pub size: u32,
    /// Images of other sizes were resized (`--image-size`).
    pub resize: bool,
    pub augment: String,
}

/// One rank in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankInfo {
    pub rank: u32,
    pub worker_id: String,
    pub collective_addr: String,
    pub device: String,
    /// The GPU's UUID (empty on CPU).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_uuid: String,
    pub train_images: usize,
    pub valid_images: usize,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub round: u32,
    pub model: String,
    pub world_size: u32,
    pub classes: Vec<String>,
    pub data_root: String,
    pub dataset_fingerprint: String,
    pub batch_per_worker: u32,
    pub steps_per_epoch: u32,
    pub total_steps: u64,
    /// `None` until every rank reported its pixel sums. Named like the standalone worker's
    /// `run.json` so `ringtrain-worker eval` reads both.
    #[serde(rename = "normalize")]
    pub norm: Option<NormInfo>,
    /// Channels and size of the decoded images, and the augmentation.
    pub images: ImagesInfo,
    pub ranks: Vec<RankInfo>,
    /// The round's all-reduce (`ring` or `nccl`) and why (`None` before the round closed).
    pub collective: Option<String>,
    pub collective_reason: Option<String>,
    /// Training files no rank trains on (the shard plan's trim), relative to the data root.
    pub dropped_train: Vec<String>,
    /// Files left out because of `skip_bad`, with reasons: by the scan and the header probe,
    /// and by the workers' decoding (as they reported them).
    pub skipped: Vec<Skipped>,
    /// The effective configuration.
    pub config: RunConfig,
    /// Every round so far: world size, workers by rank, where it started, and why the round
    /// before it ended (elastic growth, a restart, a resume).
    pub membership: Vec<Segment>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    /// `finished` or `failed`.
    pub status: String,
    /// Why the run failed.
    pub reason: Option<String>,
    pub model: String,
    pub world_size: u32,
    /// Epochs completed.
    pub epochs: u32,
    pub accuracy: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_correct: Option<u64>,
    pub valid_count: Option<u64>,
    /// Training images per second, paced by the slowest rank of each epoch.
    pub train_images_per_s: f64,
    /// The hash every rank agreed on after the last epoch.
    pub params_hash: Option<String>,
    /// Each rank's hash after the last epoch, index = rank.
    pub rank_hashes: Vec<String>,
    /// Seconds from coordinator start to the end of the run.
    pub wall_seconds: f64,
    pub run_dir: String,
    /// Rounds ended by a lost worker (`max_restarts` bounds them).
    #[serde(default)]
    pub restarts: u32,
    /// Each rank slot's step timings over the run (this coordinator's life), as its workers'
    /// heartbeats reported them.
    #[serde(default)]
    pub step_timing: Vec<RankTiming>,
    /// Times a rank was named a straggler.
    #[serde(default)]
    pub stragglers_named: u64,
    /// Files left out by `--skip-bad` (the scan, the header probe and the workers' decoding;
    /// listed with reasons in `run.json`).
    #[serde(default)]
    pub skipped: usize,
}

/// One round of the run's membership history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub round: u32,
    pub world_size: u32,
    /// Worker ids by rank.
    pub workers: Vec<String>,
    /// Where the round started: the epoch, steps into it, and the global step.
    pub from_epoch: u32,
    pub from_step_in_epoch: u32,
    pub from_global_step: u64,
    /// Why the round before it ended ("start", "grown to 2 workers", a restart's reason).
    pub after: String,
}

/// One rank slot's step timings in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankTiming {
    pub rank: u32,
    /// Steps timed (0: not measured, e.g. a GPU without CUDA events).
    pub timed_steps: u64,
    /// Mean seconds per step from its start until the all-reduce.
    pub compute_s_per_step: Option<f64>,
    /// Mean seconds per step inside the all-reduce.
    pub wait_s_per_step: Option<f64>,
}
