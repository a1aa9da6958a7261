//! The training loop of one replica: data → forward → backward → all-reduce → Adam, per step,
//! with the one-cycle schedule, exact validation and the lesson's epoch table.
//!
//! Owns every tch object of the run on the calling thread (tch tensors are `Send`, not `Sync`).
//! The loop talks to its peers only through [`Collective`], so world size 1 (this issue) and the
//! distributed ring/NCCL runs share the same step.
//!
//! Tests: `tests/tests/train.rs` (real MNIST slice, determinism, run-folder contents).

pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ringtrain_common::data::{load_dataset, DataError, LoadOptions, LoadedDataset, Skipped};
use ringtrain_common::schedule::OneCycleConfig;
use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::collective::{Collective, CollectiveError};
use crate::config::{ConfigError, TrainConfig};
use crate::data::{normalize_for, Normalize, TrainSet, ValidSet};
use crate::flat::{FlatError, FlatParams};
use crate::model::Model;
use crate::optim::Adam;
use report::{EpochRow, RunFiles, Smoothener};

/// Why a training run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration breaks a rule.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
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
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// What a finished run reports (also written to `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub model: String,
    pub params: i64,
    pub epochs: u32,
    pub steps: u64,
    pub train_images: usize,
    pub valid_images: usize,
    pub skipped: usize,
    pub final_accuracy: f64,
    pub final_valid_loss: f64,
    pub train_seconds: f64,
    pub train_images_per_s: f64,
    pub total_seconds: f64,
    pub startup_seconds: f64,
    /// Wall-clock time (UNIX seconds) when the first training step began; benchmarks subtract
    /// their launch time from it to get start-up latency including process start.
    pub first_step_unix: f64,
    pub params_hash: String,
    pub run_dir: PathBuf,
}

/// What the run records about itself for inference and audits (`run.json`).
#[derive(Debug, Serialize)]
struct RunRecord<'a> {
    model: String,
    params: i64,
    classes: &'a [String],
    normalize: Normalize,
    image_size: u32,
    dataset: &'a std::path::Path,
    dataset_fingerprint: &'a str,
    train_images: usize,
    valid_images: usize,
    skipped: &'a [Skipped],
    config: &'a TrainConfig,
    torch_threads: i32,
    device: String,
}

fn write_json(path: PathBuf, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io { path: path.clone(), reason: e.to_string() })?;
    std::fs::write(&path, text + "\n").map_err(|e| TrainError::Io { path, reason: e.to_string() })
}

fn progress_bar(steps: usize, epoch: u32, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(epoch.to_string());
    pb
}

/// Mean loss and correct count over the whole validation split, in eval mode.
fn validate(model: &Model, valid: &ValidSet, batch: usize) -> (f64, u64, u64) {
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
            let logits = model.forward_t(&x, false);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0);
            loss_sum += loss.to_kind(Kind::Double);
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            start += len;
        }
        let count = n as u64;
        let mean = if count == 0 { f64::NAN } else { loss_sum.double_value(&[]) / count as f64 };
        (mean, correct.int64_value(&[]) as u64, count)
    })
}

/// Trains `cfg` on one replica, reducing gradients through `collective`.
pub fn train(cfg: &TrainConfig, collective: &mut dyn Collective) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    cfg.validate()?;
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t as i32);
    }
    let device = Device::Cpu;
    let size = cfg.image_size;
    let ds: LoadedDataset = load_dataset(
        &cfg.data,
        &LoadOptions { scan: cfg.scan.clone(), image_size: (size, size), cache_dir: cfg.cache_dir.clone(), progress: cfg.progress },
    )?;
    if !ds.skipped.is_empty() {
        tracing::warn!(skipped = ds.skipped.len(), "bad files skipped (--skip-bad); listed in run.json");
        eprintln!("skipped {} bad file(s) (--skip-bad); see {}/run.json", ds.skipped.len(), cfg.run_dir.display());
    }
    let steps_per_epoch = cfg.steps_per_epoch(ds.train.len())?;
    let total_steps = steps_per_epoch as u64 * u64::from(cfg.epochs);
    let schedule = OneCycleConfig { total_steps, ..cfg.schedule }.init().map_err(|e| ConfigError::Schedule(e.to_string()))?;

    let norm = normalize_for(&ds);
    let train_set = TrainSet::new(&ds.train, norm, device);
    let valid_set = ValidSet::new(&ds.valid, norm, device);

    tch::manual_seed(cfg.seed as i64);
    let vs = VarStore::new(device);
    let model = Model::new(&vs.root(), cfg.model, ds.classes.len() as i64);
    let mut flat = FlatParams::new(&vs, || {
        // Eval mode: allocates every gradient without touching BatchNorm running statistics.
        let x = Tensor::zeros([2, 1, i64::from(size), i64::from(size)], (Kind::Float, device));
        model.forward_t(&x, false).sum(Kind::Float).backward();
    })?;
    let mut adam = Adam::new(&flat.params, cfg.adam);

    std::fs::create_dir_all(&cfg.run_dir).map_err(|e| TrainError::Io { path: cfg.run_dir.clone(), reason: e.to_string() })?;
    write_json(
        cfg.run_dir.join("run.json"),
        &RunRecord {
            model: cfg.model.to_string(),
            params: flat.numel(),
            classes: &ds.classes,
            normalize: norm,
            image_size: size,
            dataset: &cfg.data,
            dataset_fingerprint: &ds.fingerprint,
            train_images: ds.train.len(),
            valid_images: ds.valid.len(),
            skipped: &ds.skipped,
            config: cfg,
            torch_threads: tch::get_num_threads(),
            device: format!("{device:?}"),
        },
    )?;
    let mut files = RunFiles::create(&cfg.run_dir)?;
    let startup = started.elapsed().as_secs_f64();
    tracing::info!(model = %cfg.model, params = flat.numel(), train = ds.train.len(), valid = ds.valid.len(),
        steps_per_epoch, epochs = cfg.epochs, threads = tch::get_num_threads(), startup_s = startup, "training starts");

    let first_step_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    println!("{}", report::header());
    let mut smooth = Smoothener::new(0.98);
    let mut step: u64 = 0;
    let mut train_seconds = 0.0;
    let mut last = (f64::NAN, 0u64, 0u64);
    for epoch in 0..cfg.epochs {
        let epoch_start = Instant::now();
        let plan = train_set.plan_epoch(cfg.seed, u64::from(epoch), cfg.batch_size);
        let pb = progress_bar(plan.steps, epoch, cfg.progress);
        let mut lr = 0.0;
        for s in 0..plan.steps {
            let point = schedule.at(step);
            lr = point.lr;
            let (x, y) = train_set.batch(&plan, s);
            let logits = model.forward_t(&x, true);
            let loss = logits.cross_entropy_for_logits(&y);
            flat.zero_grad();
            loss.backward();
            collective.all_reduce_mean(&mut flat.grads)?;
            adam.step(&mut flat.params, &flat.grads, point.lr, point.beta1);
            let loss = loss.double_value(&[]);
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step, epoch, loss });
            }
            let sm = smooth.add(loss);
            files.step(step, epoch, point.lr, point.beta1, loss)?;
            if s % 10 == 0 {
                pb.set_message(format!("loss {sm:.4}"));
            }
            pb.inc(1);
            step += 1;
        }
        let epoch_train = epoch_start.elapsed().as_secs_f64();
        train_seconds += epoch_train;
        pb.finish_and_clear();
        last = validate(&model, &valid_set, cfg.valid_batch_size);
        let (valid_loss, correct, count) = last;
        let row = EpochRow {
            epoch,
            train_loss: smooth.value(),
            valid_loss,
            accuracy: if count == 0 { f64::NAN } else { correct as f64 / count as f64 },
            valid_correct: correct,
            valid_count: count,
            seconds: epoch_start.elapsed().as_secs_f64(),
            train_seconds: epoch_train,
            train_images_per_s: (plan.steps * plan.batch_size) as f64 / epoch_train,
            lr,
        };
        println!("{}", report::row(&row));
        tracing::debug!(epoch, train_loss = row.train_loss, valid_loss, accuracy = row.accuracy, "epoch done");
        files.epoch(row)?;
    }
    flat.check_aliasing()?;
    let weights = cfg.run_dir.join("final.safetensors");
    vs.save(&weights)?;
    let (valid_loss, correct, count) = last;
    let summary = TrainSummary {
        model: cfg.model.to_string(),
        params: flat.numel(),
        epochs: cfg.epochs,
        steps: step,
        train_images: ds.train.len(),
        valid_images: ds.valid.len(),
        skipped: ds.skipped.len(),
        final_accuracy: if count == 0 { f64::NAN } else { correct as f64 / count as f64 },
        final_valid_loss: valid_loss,
        train_seconds,
        train_images_per_s: (step as usize * cfg.batch_size) as f64 / train_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        startup_seconds: startup,
        first_step_unix,
        params_hash: format!("{:016x}", flat.hash()),
        run_dir: cfg.run_dir.clone(),
    };
    write_json(cfg.run_dir.join("summary.json"), &summary)?;
    Ok(summary)
}
