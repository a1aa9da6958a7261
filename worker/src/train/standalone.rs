//! The standalone driver (world size 1): decides normalisation and the schedule locally, prints
//! the lesson's table and writes the run folder, exactly as the coordinator does for a
//! distributed run. Steps per epoch, the batch and every step's learning rate come from the
//! same plan the coordinator makes (`ringtrain_common::plan::plan_run`, world size 1).

use std::time::Instant;

use ringtrain_common::data::{
    load_dataset, memory, Geometry, LoadOptions, MemoryCheck, PixelStats, Skipped,
};
use ringtrain_common::plan::{plan_run, RunPlan};
use ringtrain_common::report::{self, EpochRow, RunFiles, Smoothener};
use ringtrain_common::schedule::SchedulePoint;
use serde::Serialize;
use tch::nn::VarStore;
use tch::Device;

use super::{run_replica, Driver, EpochResult, ReplicaSpec, TrainError};
use crate::collective::Collective;
use crate::config::{ConfigError, TrainConfig};
use crate::data::Normalize;

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
    /// Seconds from the start of `train` to the first step.
    pub startup_seconds: f64,
    /// Wall-clock time (UNIX seconds) when the first training step began; benchmarks subtract
    /// their launch time from it to get start-up latency including process start.
    pub first_step_unix: f64,
    pub params_hash: String,
    pub run_dir: std::path::PathBuf,
}

/// What the run records about itself for inference and audits (`run.json`).
#[derive(Debug, Serialize)]
struct RunRecord<'a> {
    model: String,
    classes: &'a [String],
    normalize: RecordedNorm,
    image_size: u32,
    /// Channels and size of the decoded images, and the augmentation (as in the
    /// coordinator's `run.json`).
    images: ImagesRecord,
    dataset: &'a std::path::Path,
    dataset_fingerprint: &'a str,
    train_images: usize,
    valid_images: usize,
    world_size: u32,
    skipped: &'a [Skipped],
    config: &'a TrainConfig,
    torch_threads: i32,
    device: String,
    /// The GPU's name and UUID when on CUDA.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu: Option<crate::device::GpuInfo>,
}

/// `normalize` in `run.json`: f64 scalars for one channel (the format before issue 18), f64
/// lists marked `"float": "f64"` for more (the coordinator's lists are the f32 it sends).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum RecordedNorm {
    Scalar {
        mean: f64,
        std: f64,
    },
    Lists {
        mean: Vec<f64>,
        std: Vec<f64>,
        float: &'static str,
    },
}

impl From<&Normalize> for RecordedNorm {
    fn from(n: &Normalize) -> Self {
        match (n.mean.as_slice(), n.std.as_slice()) {
            ([mean], [std]) => RecordedNorm::Scalar {
                mean: *mean,
                std: *std,
            },
            _ => RecordedNorm::Lists {
                mean: n.mean.clone(),
                std: n.std.clone(),
                float: "f64",
            },
        }
    }
}

/// `images` in `run.json`.
#[derive(Debug, Serialize)]
struct ImagesRecord {
    channels: u32,
    size: u32,
    resize: bool,
    augment: String,
}

pub(crate) fn write_json(
    path: std::path::PathBuf,
    value: &impl Serialize,
) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // Replaced atomically: a crash or a reader never sees half of run.json or summary.json.
    ringtrain_common::fsio::write_atomic(&path, (text + "\n").as_bytes()).map_err(|e| {
        TrainError::Io {
            path: e.path().to_path_buf(),
            reason: e.io_error().to_string(),
        }
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// World size 1: everything decided here.
struct Standalone<'a> {
    cfg: &'a TrainConfig,
    device: Device,
    geometry: Geometry,
    classes: &'a [String],
    skipped: &'a [Skipped],
    fingerprint: &'a str,
    train_images: usize,
    valid_images: usize,
    plan: RunPlan,
    files: Option<RunFiles>,
    smooth: Smoothener,
    started: Instant,
    startup: f64,
    first_step_unix: f64,
    train_seconds: f64,
    last: Option<EpochRow>,
    params: i64,
    hash: u64,
}

impl Driver for Standalone<'_> {
    fn normalization(&mut self, local: Vec<PixelStats>) -> Result<Normalize, TrainError> {
        let norm = Normalize::from_stats(&local);
        std::fs::create_dir_all(&self.cfg.run_dir).map_err(|e| TrainError::Io {
            path: self.cfg.run_dir.clone(),
            reason: e.to_string(),
        })?;
        write_json(
            self.cfg.run_dir.join("run.json"),
            &RunRecord {
                model: self.cfg.recipe.model.to_string(),
                classes: self.classes,
                normalize: RecordedNorm::from(&norm),
                image_size: self.geometry.size,
                images: ImagesRecord {
                    channels: self.geometry.channels,
                    size: self.geometry.size,
                    resize: self.geometry.resize,
                    augment: self.cfg.augment.to_string(),
                },
                dataset: &self.cfg.data,
                dataset_fingerprint: self.fingerprint,
                train_images: self.train_images,
                valid_images: self.valid_images,
                world_size: 1,
                skipped: self.skipped,
                config: self.cfg,
                torch_threads: tch::get_num_threads(),
                device: crate::device::name(self.device),
                gpu: match self.device {
                    Device::Cuda(i) => crate::device::gpu_info(i),
                    _ => None,
                },
            },
        )?;
        self.files = Some(RunFiles::create(&self.cfg.run_dir)?);
        Ok(norm)
    }

    fn epoch_plan(&mut self, epoch: u32) -> Result<Vec<SchedulePoint>, TrainError> {
        // The replica asks only for its epochs, so `None` (past the last) cannot happen.
        self.plan
            .epoch_schedule(epoch)
            .map(|e| e.points)
            .ok_or(TrainError::BadPlan {
                epoch,
                got: 0,
                want: self.plan.steps_per_epoch as usize,
            })
    }

    fn started(&mut self) {
        self.startup = self.started.elapsed().as_secs_f64();
        self.first_step_unix = unix_now();
        crate::output::line(report::header());
    }

    fn epoch_done(&mut self, r: &EpochResult) -> Result<(), TrainError> {
        let files = self
            .files
            .as_mut()
            .ok_or_else(|| TrainError::Coordinator("run folder not initialised".into()))?;
        for (i, (loss, p)) in r.step_losses.iter().zip(&r.plan).enumerate() {
            self.smooth.add(f64::from(*loss));
            files.step(
                r.first_step + i as u64,
                r.epoch,
                p.lr,
                p.beta1,
                f64::from(*loss),
            )?;
        }
        self.train_seconds += r.train_seconds;
        let count = r.valid_count.max(1) as f64;
        let row = EpochRow {
            epoch: r.epoch,
            train_loss: self.smooth.value(),
            valid_loss: r.valid_loss_sum / count,
            accuracy: r.valid_correct as f64 / count,
            valid_correct: r.valid_correct,
            valid_count: r.valid_count,
            seconds: r.seconds,
            train_seconds: r.train_seconds,
            train_images_per_s: r.images as f64 / r.train_seconds,
            lr: r.plan.last().map_or(0.0, |p| p.lr),
        };
        crate::output::line(report::row(&row));
        files.epoch(row.clone())?;
        self.last = Some(row);
        Ok(())
    }

    fn finished(&mut self, weights: &VarStore, params_hash: u64) -> Result<(), TrainError> {
        weights.save(self.cfg.run_dir.join("final.safetensors"))?;
        self.params = weights
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        self.hash = params_hash;
        Ok(())
    }
}

/// Trains `cfg` standalone, reducing gradients through `collective` (world size 1: [`crate::collective::Solo`]).
pub fn train(
    cfg: &TrainConfig,
    collective: &mut dyn Collective,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    cfg.validate()?;
    let device = crate::device::select(cfg.device)?;
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t as i32);
    }
    let ds = load_dataset(
        &cfg.data,
        &LoadOptions {
            scan: cfg.scan.clone(),
            image: cfg.image_options(),
            cache_dir: cfg.cache_dir.clone(),
            progress: cfg.progress,
            memory: Some(MemoryCheck {
                limit: memory::process_limit(cfg.memory_limit),
                pad: cfg.augment.pad,
                tensors_on_host: !device.is_cuda(),
                what: "the dataset".into(),
            }),
        },
    )?;
    if !ds.skipped.is_empty() {
        tracing::warn!(
            skipped = ds.skipped.len(),
            "bad files skipped (--skip-bad); listed in run.json"
        );
        crate::output::notice(format!(
            "skipped {} bad file(s) (--skip-bad); see {}/run.json",
            ds.skipped.len(),
            cfg.run_dir.display()
        ));
    }
    let plan = plan_run(&cfg.recipe, None, ds.train.len(), ds.valid.len(), 1)
        .map_err(ConfigError::from)?;
    let total_steps = plan.total_steps();
    let spec = ReplicaSpec {
        model: cfg.recipe.model,
        epochs: plan.epochs,
        batch_size: plan.batch_per_worker as usize,
        steps_per_epoch: plan.steps_per_epoch as usize,
        valid_batch_size: cfg.recipe.valid_batch_size as usize,
        seed: cfg.recipe.seed,
        rank: 0,
        adam: cfg.recipe.adam(),
        geometry: ds.geometry,
        augment: cfg.augment,
        device,
        precision: cfg.recipe.precision,
        progress: cfg.progress,
        progress_counters: None,
        resume: None,
        save_state: false,
        checkpoint_every: 0,
        lr_find_stop_div: None,
    };
    let mut driver = Standalone {
        cfg,
        device,
        geometry: ds.geometry,
        classes: &ds.classes,
        skipped: &ds.skipped,
        fingerprint: &ds.fingerprint,
        train_images: ds.train.len(),
        valid_images: ds.valid.len(),
        plan,
        files: None,
        smooth: Smoothener::new(0.98),
        started,
        startup: 0.0,
        first_step_unix: 0.0,
        train_seconds: 0.0,
        last: None,
        params: 0,
        hash: 0,
    };
    run_replica(&spec, &ds, collective, &mut driver)?;
    let last = driver.last.clone();
    let summary = TrainSummary {
        model: cfg.recipe.model.to_string(),
        params: driver.params,
        epochs: driver.plan.epochs,
        steps: total_steps,
        train_images: ds.train.len(),
        valid_images: ds.valid.len(),
        skipped: ds.skipped.len(),
        final_accuracy: last.as_ref().map_or(f64::NAN, |r| r.accuracy),
        final_valid_loss: last.as_ref().map_or(f64::NAN, |r| r.valid_loss),
        train_seconds: driver.train_seconds,
        train_images_per_s: (total_steps as usize * cfg.recipe.batch_size as usize) as f64
            / driver.train_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        startup_seconds: driver.startup,
        first_step_unix: driver.first_step_unix,
        params_hash: format!("{:016x}", driver.hash),
        run_dir: cfg.run_dir.clone(),
    };
    write_json(cfg.run_dir.join("summary.json"), &summary)?;
    Ok(summary)
}
