//! `ringtrain-worker eval`: a finished run's weights on a validation split, in one process, with
//! the run's recorded model, classes and normalisation. The reference the distributed table's
//! accuracy is checked against.

use std::path::Path;

use ringtrain_common::data::{
    load_index, scan_dataset, Geometry, ImageOptions, LoadOptions, ScanOptions,
};
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
    /// Absent from runs before issue 18: MNIST's 1×28×28.
    images: Option<RecordedImages>,
}

#[derive(Debug, Deserialize)]
struct RecordedImages {
    channels: u32,
    size: u32,
    resize: bool,
}

/// Standalone runs record f64 scalars (one channel) or f64 lists marked `"float": "f64"`; the
/// coordinator records the f32 per-channel lists it sent to the workers. Parsing those as f32
/// first reproduces the workers' values bit for bit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RecordedNorm {
    Scalar {
        mean: f64,
        std: f64,
    },
    Exact {
        mean: Vec<f64>,
        std: Vec<f64>,
        #[allow(dead_code)] // only its presence selects this variant
        float: String,
    },
    PerChannel {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
}

impl RecordedNorm {
    fn get(&self) -> anyhow::Result<Normalize> {
        match self {
            RecordedNorm::Scalar { mean, std } => Ok(Normalize {
                mean: vec![*mean],
                std: vec![*std],
            }),
            RecordedNorm::Exact { mean, std, .. } => checked(mean.clone(), std.clone()),
            RecordedNorm::PerChannel { mean, std } => channel_norm(mean, std),
        }
    }
}

fn checked(mean: Vec<f64>, std: Vec<f64>) -> anyhow::Result<Normalize> {
    anyhow::ensure!(
        !mean.is_empty() && mean.len() == std.len(),
        "normalisation statistics: {} means and {} standard deviations",
        mean.len(),
        std.len()
    );
    Ok(Normalize { mean, std })
}

/// The normalisation of recorded per-channel statistics (f32, as the coordinator sends them to
/// the workers and as checkpoints store them).
pub fn channel_norm(mean: &[f32], std: &[f32]) -> anyhow::Result<Normalize> {
    let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    checked(wide(mean), wide(std))
}

/// Builds `arch` for `classes` outputs and images of geometry `g` on the CPU and loads
/// `weights`, a safetensors file under the model's state_dict names (`final.safetensors`, a
/// checkpoint's `model.safetensors`).
pub fn load_model(
    arch: Arch,
    classes: usize,
    g: Geometry,
    weights: &Path,
) -> anyhow::Result<(VarStore, Model)> {
    let mut vs = VarStore::new(Device::Cpu);
    let model = Model::new(
        &vs.root(),
        arch,
        i64::from(g.channels),
        classes as i64,
        i64::from(g.size),
    );
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
    let geometry = record
        .images
        .as_ref()
        .map_or(Geometry::MNIST, |i| Geometry {
            channels: i.channels,
            size: i.size,
            resize: i.resize,
        });
    // The run's own geometry, not one probed again: the images are decoded as in training.
    let mut index = scan_dataset(data, &scan)?;
    index.train.clear();
    let ds = load_index(
        &index,
        geometry,
        &LoadOptions {
            scan,
            image: ImageOptions::default(),
            cache_dir: None,
            progress: false,
            memory: None,
        },
    )?;
    anyhow::ensure!(
        ds.classes == record.classes,
        "classes of {} differ from the run's {:?}",
        data.display(),
        record.classes
    );
    let (_vs, model) = load_model(record.model, record.classes.len(), geometry, weights)?;
    let norm = record
        .normalize
        .get()
        .map_err(|e| anyhow::anyhow!("{}: {e}", record_path.display()))?;
    anyhow::ensure!(
        norm.channels() == geometry.channels as usize,
        "{}: normalisation for {} channel(s), images with {}",
        record_path.display(),
        norm.channels(),
        geometry.channels
    );
    let valid = ValidSet::new(&ds.valid, &norm, Device::Cpu);
    let (loss, correct, count) =
        crate::train::validate(&model, &valid, VALID_BATCH, crate::amp::Precision::Fp32);
    Ok((
        correct as f64 / count.max(1) as f64,
        loss / count.max(1) as f64,
        correct,
        count,
    ))
}
