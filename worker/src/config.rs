//! The standalone training configuration: typed, defaulted from the lesson, validated once.
//!
//! Tests: `tests` at the bottom (one per rule).

use std::path::PathBuf;

use ringtrain_common::data::ScanOptions;
use ringtrain_common::schedule::OneCycleConfig;
use serde::{Deserialize, Serialize};

use crate::amp::Precision;
use crate::device::DeviceRequest;
use crate::model::Arch;
use crate::optim::AdamConfig;

/// Everything `ringtrain-worker train` needs. Defaults are the lesson's ResNet-ish recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Dataset root in the `mnist_png` layout.
    pub data: PathBuf,
    /// Folder layout and `skip_bad`.
    pub scan: ScanOptions,
    /// Square image size; the lesson's networks reduce 28×28 to 1×1.
    pub image_size: u32,
    /// Network.
    pub model: Arch,
    /// Passes over the training set.
    pub epochs: u32,
    /// Global batch size (fastai `bs`).
    pub batch_size: usize,
    /// Validation batch size (no effect on results, only on speed and memory).
    pub valid_batch_size: usize,
    /// One-cycle schedule; `total_steps` is filled in once the dataset size is known.
    pub schedule: OneCycleConfig,
    /// Adam's fixed hyper-parameters.
    pub adam: AdamConfig,
    /// Seed for initialisation, shuffling and augmentation.
    pub seed: u64,
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
    /// Forward-pass arithmetic.
    #[serde(default)]
    pub precision: Precision,
}

/// A configuration rule that does not hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `epochs` must be at least 1.
    #[error("epochs must be at least 1")]
    NoEpochs,
    /// `batch_size` must be at least 1.
    #[error("batch-size must be at least 1")]
    ZeroBatch,
    /// `valid_batch_size` must be at least 1.
    #[error("valid-batch-size must be at least 1")]
    ZeroValidBatch,
    /// The networks need 28×28 inputs.
    #[error("image-size must be 28 for the lesson-7 networks, got {0}")]
    ImageSize(u32),
    /// `threads` must be at least 1.
    #[error("threads must be at least 1")]
    ZeroThreads,
    /// Adam hyper-parameter out of range.
    #[error("{field} must be {rule}, got {value}")]
    Adam {
        field: &'static str,
        rule: &'static str,
        value: f64,
    },
    /// One-cycle schedule parameter out of range.
    #[error("schedule: {0}")]
    Schedule(String),
    /// The training split has fewer images than one batch.
    #[error("batch-size {batch_size} is larger than the {images} training images: no full batch to train on")]
    BatchLargerThanData { batch_size: usize, images: usize },
}

impl TrainConfig {
    /// The lesson's recipe for `arch` on `data` (ResNet-ish: 12 epochs at 0.05; plain: 3 at 0.1).
    pub fn lesson(data: PathBuf, arch: Arch) -> Self {
        let (epochs, max_lr) = if arch == Arch::Basic {
            (3, 0.1)
        } else {
            (12, 0.05)
        };
        Self {
            data,
            scan: ScanOptions::default(),
            image_size: 28,
            model: arch,
            epochs,
            batch_size: 128,
            valid_batch_size: 1024,
            schedule: OneCycleConfig::new(max_lr, 1),
            adam: AdamConfig::default(),
            seed: 42,
            threads: None,
            run_dir: PathBuf::from("runs/latest"),
            cache_dir: default_cache_dir(),
            progress: true,
            device: DeviceRequest::Auto,
            precision: Precision::Fp32,
        }
    }

    /// Checks every rule that does not need the dataset; returns the first violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epochs == 0 {
            return Err(ConfigError::NoEpochs);
        }
        if self.batch_size == 0 {
            return Err(ConfigError::ZeroBatch);
        }
        if self.valid_batch_size == 0 {
            return Err(ConfigError::ZeroValidBatch);
        }
        if self.image_size != 28 {
            return Err(ConfigError::ImageSize(self.image_size));
        }
        if self.threads == Some(0) {
            return Err(ConfigError::ZeroThreads);
        }
        let a = &self.adam;
        if !(a.beta2 >= 0.0 && a.beta2 < 1.0) {
            return Err(ConfigError::Adam {
                field: "beta2",
                rule: "in [0, 1)",
                value: a.beta2,
            });
        }
        if !(a.eps > 0.0 && a.eps.is_finite()) {
            return Err(ConfigError::Adam {
                field: "eps",
                rule: "positive",
                value: a.eps,
            });
        }
        if !(a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
            return Err(ConfigError::Adam {
                field: "wd",
                rule: "non-negative",
                value: a.weight_decay,
            });
        }
        self.schedule
            .init()
            .map_err(|e| ConfigError::Schedule(e.to_string()))?;
        Ok(())
    }

    /// Training steps per epoch for `images` training images (last partial batch dropped).
    pub fn steps_per_epoch(&self, images: usize) -> Result<usize, ConfigError> {
        if images < self.batch_size {
            return Err(ConfigError::BatchLargerThanData {
                batch_size: self.batch_size,
                images,
            });
        }
        Ok(images / self.batch_size)
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
        assert_eq!((basic.epochs, basic.schedule.max_lr), (3, 0.1));
        assert_eq!(
            (ok().epochs, ok().schedule.max_lr, ok().batch_size),
            (12, 0.05, 128)
        );
    }

    #[test]
    fn each_rule() {
        type Mutation = Box<dyn Fn(&mut TrainConfig)>;
        let cases: Vec<(Mutation, ConfigError)> = vec![
            (Box::new(|c| c.epochs = 0), ConfigError::NoEpochs),
            (Box::new(|c| c.batch_size = 0), ConfigError::ZeroBatch),
            (
                Box::new(|c| c.valid_batch_size = 0),
                ConfigError::ZeroValidBatch,
            ),
            (Box::new(|c| c.image_size = 32), ConfigError::ImageSize(32)),
            (Box::new(|c| c.threads = Some(0)), ConfigError::ZeroThreads),
            (
                Box::new(|c| c.adam.beta2 = 1.0),
                ConfigError::Adam {
                    field: "beta2",
                    rule: "in [0, 1)",
                    value: 1.0,
                },
            ),
            (
                Box::new(|c| c.adam.eps = 0.0),
                ConfigError::Adam {
                    field: "eps",
                    rule: "positive",
                    value: 0.0,
                },
            ),
            (
                Box::new(|c| c.adam.weight_decay = -1.0),
                ConfigError::Adam {
                    field: "wd",
                    rule: "non-negative",
                    value: -1.0,
                },
            ),
        ];
        for (mutate, want) in cases {
            let mut c = ok();
            mutate(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
        let mut c = ok();
        c.schedule.max_lr = -1.0;
        assert!(matches!(c.validate(), Err(ConfigError::Schedule(_))));
    }

    #[test]
    fn batch_larger_than_data() {
        assert_eq!(ok().steps_per_epoch(60_000), Ok(468));
        assert_eq!(
            ok().steps_per_epoch(100),
            Err(ConfigError::BatchLargerThanData {
                batch_size: 128,
                images: 100
            })
        );
    }
}
