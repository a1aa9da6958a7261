//! `show-batch` (fastai's `data.show_batch`): a PNG grid of one augmented training batch with
//! its labels, drawn from exactly what the model is fed.
//!
//! The batch comes from the training pipeline itself ([`TrainSet::plan_epoch`] and
//! [`TrainSet::batch`] with the run's seed, epoch 0, rank 0: the first batch a standalone run
//! trains on, the run's `--augment` included), normalised with the training set's per-channel
//! statistics; only the normalisation is undone for display (`x · std + mean`, × 255, clamped),
//! so a pixel of the grid is the model's input up to that affine map. RGB runs show colour
//! tiles at the run's `--image-size`.
//!
//! Tests: `tests` at the bottom (the round trip and the grid); `tests/tests/show_batch.rs`
//! runs the command on a dataset.

use std::path::{Path, PathBuf};

use ringtrain_common::data::{
    load_dataset, Augment, DataError, ImageOptions, LoadOptions, PixelStats, ScanOptions,
};
use ringtrain_common::plot::{grid_png, PlotError, Tile};
use tch::{Device, Kind, Tensor};

use crate::data::{Normalize, TrainSet};

/// What to show.
#[derive(Debug, Clone)]
pub struct ShowBatchOptions {
    pub data: PathBuf,
    pub scan: ScanOptions,
    /// `--channels` and `--image-size`.
    pub image: ImageOptions,
    /// `--augment`.
    pub augment: Augment,
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
    /// Seed of shuffling and augmentation (a run with this seed trains on this batch first).
    pub seed: u64,
    /// The grid is `rows × rows` images.
    pub rows: usize,
    /// Pixel scale of each image in the grid.
    pub scale: u32,
    pub out: PathBuf,
}

/// Why no grid was written.
#[derive(Debug, thiserror::Error)]
pub enum ShowBatchError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("--rows must be between 1 and 16 (got {0})")]
    Rows(usize),
    #[error("the training split has {have} images, fewer than the {want} of a {rows}x{rows} grid")]
    TooFew {
        have: usize,
        want: usize,
        rows: usize,
    },
    #[error("cannot draw the grid: {0}")]
    Plot(#[from] PlotError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot write {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownBatch {
    pub out: PathBuf,
    pub images: usize,
    /// Class names of the tiles, row by row.
    pub labels: Vec<String>,
    pub norm: Normalize,
}

/// Undoes `norm` on a normalised batch `[B, C, H, W]`: u8 pixels `[B, H, W, C]` (interleaved),
/// row-major.
pub fn denormalize(x: &Tensor, norm: &Normalize) -> Result<Vec<u8>, tch::TchError> {
    let c = norm.channels() as i64;
    let per = |v: &[f64]| {
        let v: Vec<f64> = v.to_vec();
        Tensor::from_slice(&v)
            .view([1, c, 1, 1])
            .to_device(x.device())
    };
    let px = (x.to_kind(Kind::Double) * per(&norm.std) + per(&norm.mean)) * 255.0;
    let px = px
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1]);
    Vec::<u8>::try_from(&px.to_device(Device::Cpu).contiguous().view([-1]))
}

/// Loads the dataset, draws the first training batch of `opts.seed` and writes the grid.
pub fn show_batch(opts: &ShowBatchOptions) -> Result<ShownBatch, ShowBatchError> {
    if !(1..=16).contains(&opts.rows) {
        return Err(ShowBatchError::Rows(opts.rows));
    }
    let ds = load_dataset(
        &opts.data,
        &LoadOptions {
            scan: opts.scan.clone(),
            image: opts.image,
            cache_dir: opts.cache_dir.clone(),
            progress: opts.progress,
            memory: None,
        },
    )?;
    let n = opts.rows * opts.rows;
    if ds.train.len() < n {
        return Err(ShowBatchError::TooFew {
            have: ds.train.len(),
            want: n,
            rows: opts.rows,
        });
    }
    let norm = Normalize::from_stats(&PixelStats::per_channel(&ds.train));
    let train = TrainSet::new(&ds.train, norm.clone(), opts.augment, Device::Cpu);
    let plan = train.plan_epoch(opts.seed, 0, 0, n);
    let (x, y) = train.batch(&plan, 0);
    let pixels = denormalize(&x, &norm)?;
    let channels = ds.train.channels;
    let labels: Vec<i64> = Vec::<i64>::try_from(&y.to_device(Device::Cpu))?;
    let (h, w) = (ds.train.height, ds.train.width);
    let names: Vec<String> = labels
        .iter()
        .map(|&l| {
            ds.classes
                .get(l as usize)
                .cloned()
                .unwrap_or_else(|| l.to_string())
        })
        .collect();
    let tiles: Vec<Tile> = pixels
        .chunks((h * w * channels) as usize)
        .zip(&names)
        .map(|(p, name)| Tile {
            width: w,
            height: h,
            channels,
            pixels: p.to_vec(),
            caption: name.clone(),
        })
        .collect();
    let title = format!("train batch, seed {}", opts.seed);
    let png = grid_png(&title, &tiles, opts.rows, opts.scale)?;
    write(&opts.out, &png)?;
    Ok(ShownBatch {
        out: opts.out.clone(),
        images: n,
        labels: names,
        norm,
    })
}

/// Creates `out`'s folder and replaces `out` atomically, so it is never half a PNG.
fn write(out: &Path, bytes: &[u8]) -> Result<(), ShowBatchError> {
    let err = |e: std::io::Error| ShowBatchError::Io {
        path: out.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    ringtrain_common::fsio::write_atomic(out, bytes).map_err(|e| ShowBatchError::Io {
        path: e.path().to_path_buf(),
        reason: e.io_error().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denormalize_inverts_the_training_normalisation() {
        let raw: Vec<u8> = (0..=255u8).step_by(5).collect();
        let n = raw.len() as i64;
        let norm = Normalize {
            mean: vec![0.1307],
            std: vec![0.3081],
        };
        let x = norm.apply(&Tensor::from_slice(&raw).view([n, 1, 1, 1]));
        let back = denormalize(&x, &norm).unwrap();
        assert_eq!(back, raw);
        // RGB: planar in, interleaved out.
        let norm = Normalize {
            mean: vec![0.5, 0.4, 0.3],
            std: vec![0.2, 0.25, 0.3],
        };
        let px = [10u8, 20, 30, 40, 50, 60];
        let x = norm.apply(&Tensor::from_slice(&px).view([1, 3, 1, 2]));
        assert_eq!(
            denormalize(&x, &norm).unwrap(),
            vec![10, 30, 50, 20, 40, 60]
        );
    }

    #[test]
    fn rows_out_of_range_are_refused_before_loading() {
        let opts = ShowBatchOptions {
            data: "/nonexistent".into(),
            scan: ScanOptions::default(),
            image: ImageOptions::default(),
            augment: Augment::default(),
            cache_dir: None,
            progress: false,
            seed: 42,
            rows: 0,
            scale: 4,
            out: "/nonexistent/out.png".into(),
        };
        assert!(matches!(show_batch(&opts), Err(ShowBatchError::Rows(0))));
    }
}
