//! `ringtrain-worker eval`: a finished run's weights on a validation split, in one process, with
//! the run's recorded model, classes and normalisation. The reference the distributed table's
//! accuracy is checked against.

use std::path::Path;

use ringtrain_common::data::{load_dataset, LoadOptions, ScanOptions};
use serde::Deserialize;
use tch::nn::VarStore;
use tch::Device;

use crate::data::{Normalize, ValidSet};
use crate::model::{Arch, Model};

#[derive(Debug, Deserialize)]
struct RunJson {
    model: Arch,
    classes: Vec<String>,
    normalize: RecordedNorm,
}

/// Standalone runs record f64 scalars; the coordinator records the f32 per-channel lists it sent
/// to the workers. Parsing those as f32 first reproduces the workers' values bit for bit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RecordedNorm {
    Scalar { mean: f64, std: f64 },
    PerChannel { mean: Vec<f32>, std: Vec<f32> },
}

impl RecordedNorm {
    fn get(&self) -> anyhow::Result<Normalize> {
        match self {
            RecordedNorm::Scalar { mean, std } => Ok(Normalize {
                mean: *mean,
                std: *std,
            }),
            RecordedNorm::PerChannel { mean, std } => channel_norm(mean, std),
        }
    }
}

/// The normalisation of recorded per-channel statistics (f32, as the coordinator sends them to
/// the workers and as checkpoints store them): the images are grayscale, so the first channel.
pub fn channel_norm(mean: &[f32], std: &[f32]) -> anyhow::Result<Normalize> {
    match (mean.first(), std.first()) {
        (Some(&m), Some(&s)) => Ok(Normalize {
            mean: f64::from(m),
            std: f64::from(s),
        }),
        _ => anyhow::bail!("empty normalisation statistics"),
    }
}

/// Builds `arch` for `classes` outputs on the CPU and loads `weights`, a safetensors file under
/// the model's state_dict names (`final.safetensors`, a checkpoint's `model.safetensors`).
pub fn load_model(arch: Arch, classes: usize, weights: &Path) -> anyhow::Result<(VarStore, Model)> {
    let mut vs = VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), arch, classes as i64);
    vs.load(weights)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", weights.display()))?;
    Ok((vs, model))
}

/// Validation batch size (speed and memory only).
const VALID_BATCH: usize = 1024;

/// Accuracy, mean loss, correct and count.
pub fn evaluate(
    run_dir: &Path,
    data: &Path,
    weights: &Path,
    valid_dir: &str,
) -> anyhow::Result<(f64, f64, u64, u64)> {
    let record_path = run_dir.join("run.json");
    let text = std::fs::read_to_string(&record_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", record_path.display()))?;
    let record: RunJson = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", record_path.display()))?;
    let scan = ScanOptions {
        valid_dir: valid_dir.to_string(),
        ..ScanOptions::default()
    };
    let ds = load_dataset(
        data,
        &LoadOptions {
            scan,
            image_size: (28, 28),
            cache_dir: None,
            progress: false,
        },
    )?;
    anyhow::ensure!(
        ds.classes == record.classes,
        "classes of {} differ from the run's {:?}",
        data.display(),
        record.classes
    );
    let (_vs, model) = load_model(record.model, record.classes.len(), weights)?;
    let norm = record
        .normalize
        .get()
        .map_err(|e| anyhow::anyhow!("{}: {e}", record_path.display()))?;
    let valid = ValidSet::new(&ds.valid, norm, Device::Cpu);
    let (loss, correct, count) =
        crate::train::validate(&model, &valid, VALID_BATCH, crate::amp::Precision::Fp32);
    Ok((
        correct as f64 / count.max(1) as f64,
        loss / count.max(1) as f64,
        correct,
        count,
    ))
}
