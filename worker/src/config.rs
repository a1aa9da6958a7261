//! The standalone training configuration: the shared training recipe plus what only a standalone
//! process needs (paths, threads, device), validated once.
//!
//! Owns `TrainConfig` and the worker's own rules (image size range, threads); the recipe, its
//! defaults and its rules are `ringtrain_common::recipe` (the coordinator's `RunConfig` embeds
//! the same `Recipe`), and steps per epoch come from `ringtrain_common::plan` (world size 1).
//!
//! Tests: `tests` at the bottom (one per own rule; the recipe's are tested in common).

use std::path::PathBuf;

use ringtrain_common::data::geometry::MAX_IMAGE_SIZE;
use ringtrain_common::data::memory::Bytes;
use ringtrain_common::data::{Augment, Channels, ImageOptions, ScanOptions};
use ringtrain_common::plan::PlanError;
use ringtrain_common::recipe::{Recipe, RecipeError};
use serde::{Deserialize, Serialize};

use crate::device::DeviceRequest;
use crate::model::Arch;

/// Everything `ringtrain-worker train` needs. Defaults are the lesson's ResNet-ish recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Dataset root in the `mnist_png` layout (PNG, JPEG or WebP files).
    pub data: PathBuf,
    /// Folder layout and `skip_bad`.
    pub scan: ScanOptions,
    /// Resize every image to N×N (`--image-size`); none: the images' own square size.
    #[serde(default)]
    pub image_size: Option<u32>,
    /// Colour channels (`--channels auto|1|3`).
    #[serde(default)]
    pub channels: Channels,
    /// Training augmentation (`--augment`).
    #[serde(default)]
    pub augment: Augment,
    /// Refuse to decode more than fits in this (`--memory-limit`; also the cgroup limit and
    /// `MemAvailable`, whichever is smallest).
    #[serde(default)]
    pub memory_limit: Option<Bytes>,
    /// Network and hyper-parameters, as flat keys (`model`, `epochs`, `batch_size`, ...).
    #[serde(flatten)]
    pub recipe: Recipe,
    /// libtorch intra-op threads (`None`: all cores).
    pub threads: Option<usize>,
    /// Where metrics, plots and weights go.
    pub run_dir: PathBuf,
    /// Decoded-image cache folder (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: DeviceRequest,
}

/// A configuration rule that does not hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A rule of the training recipe (shared with the coordinator) does not hold.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// `image_size` is out of range.
    #[error("image-size must be in 1..={MAX_IMAGE_SIZE}, got {0}")]
    ImageSize(u32),
    /// `threads` must be at least 1.
    #[error("threads must be at least 1")]
    ZeroThreads,
    /// The recipe cannot be planned on this dataset (e.g. fewer training images than one
    /// batch).
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl TrainConfig {
    /// The lesson's recipe for `arch` on `data` (ResNet-ish: 12 epochs at 0.05; plain: 3 at 0.1),
    /// with `epochs` and `max_lr` written in.
    pub fn lesson(data: PathBuf, arch: Arch) -> Self {
        Self {
            data,
            scan: ScanOptions::default(),
            image_size: None,
            channels: Channels::Auto,
            augment: Augment::default(),
            memory_limit: None,
            recipe: Recipe::lesson(arch).resolved(),
            threads: None,
            run_dir: PathBuf::from("runs/latest"),
            cache_dir: default_cache_dir(),
            progress: true,
            device: DeviceRequest::Auto,
        }
    }

    /// `--channels` and `--image-size` as the loader takes them.
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions {
            channels: self.channels,
            size: self.image_size,
        }
    }

    /// Checks every rule that does not need the dataset; returns the first violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.recipe.validate()?;
        if let Some(n) = self.image_size {
            if !(1..=MAX_IMAGE_SIZE).contains(&n) {
                return Err(ConfigError::ImageSize(n));
            }
        }
        if self.threads == Some(0) {
            return Err(ConfigError::ZeroThreads);
        }
        Ok(())
    }
}

/// `$RINGTRAIN_CACHE_DIR` or `~/.cache/ringtrain/decoded`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RINGTRAIN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ringtrain/decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> TrainConfig {
        TrainConfig::lesson("d".into(), Arch::Resnet)
    }

    #[test]
    fn lesson_defaults_are_valid() {
        ok().validate().unwrap();
        let basic = TrainConfig::lesson("d".into(), Arch::Basic);
        assert_eq!(
            (basic.recipe.epochs, basic.recipe.max_lr),
            (Some(3), Some(0.1))
        );
        assert_eq!(
            (
                ok().recipe.epochs(),
                ok().recipe.max_lr(),
                ok().recipe.batch_size
            ),
            (12, 0.05, 128)
        );
    }

    #[test]
    fn each_rule() {
        type Mutation = Box<dyn Fn(&mut TrainConfig)>;
        let cases: Vec<(Mutation, ConfigError)> = vec![
            (
                Box::new(|c| c.recipe.epochs = Some(0)),
                RecipeError::NoEpochs.into(),
            ),
            (
                Box::new(|c| c.image_size = Some(0)),
                ConfigError::ImageSize(0),
            ),
            (
                Box::new(|c| c.image_size = Some(5000)),
                ConfigError::ImageSize(5000),
            ),
            (Box::new(|c| c.threads = Some(0)), ConfigError::ZeroThreads),
            (
                Box::new(|c| c.recipe.eps = 0.0),
                RecipeError::BadEps(0.0).into(),
            ),
        ];
        for (mutate, want) in cases {
            let mut c = ok();
            mutate(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
        // The recipe's messages come through unchanged (tests/tests/train.rs reads them).
        let mut c = ok();
        c.recipe.epochs = Some(0);
        assert_eq!(
            c.validate().map_err(|e| e.to_string()),
            Err("epochs must be at least 1".into())
        );
    }

    #[test]
    fn run_json_keeps_flat_recipe_keys() {
        let v = serde_json::to_value(ok()).unwrap();
        // `ringtrain status RUN_DIR` reads config.epochs from run.json.
        assert_eq!(
            (v["epochs"].clone(), v["model"].clone()),
            (12.into(), "resnet".into())
        );
        assert_eq!(v["precision"], "fp32");
        let back: TrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, ok());
    }
}
