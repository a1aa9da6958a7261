//! The training recipe: which lesson-7 network, and every hyper-parameter that decides a run's
//! arithmetic, with the lesson's defaults and one `validate()`.
//!
//! Owns [`Model`], [`Recipe`], [`AdamConfig`], the defaults (`DEFAULT_*`; the one-cycle ones are
//! `schedule::DEFAULT_*`) and [`RecipeError`]. The coordinator's `RunConfig` and the worker's
//! `TrainConfig` embed a `Recipe` (serde-flattened, so file keys, `run.json` and env variables
//! keep their flat names) and add only their own knobs and rules; not how a recipe is planned
//! over a dataset and a world size (`plan`), nor the shared command-line flags (`args`, feature
//! `cli`).
//!
//! # Contract
//! * Defaults are the lesson's: `resnet`, 12 epochs at `max_lr` 0.05 (`basic`: 3 at 0.1), batch
//!   128, seed 42, fastai's one-cycle (`pct_start` 0.3, `div_factor` 25, `final_div_factor`
//!   1e4, `moms` (0.95, 0.85)) and Adam (`beta2` 0.99, `eps` 1e-8, `wd` 1e-2), fp32.
//! * `epochs` and `max_lr` may be left unset (`None`): they then follow the model
//!   ([`Recipe::epochs`], [`Recipe::max_lr`]); [`Recipe::resolved`] writes them in.
//! * [`Recipe::validate`] checks every rule that needs no dataset and no world size, first
//!   violation in field order, one [`RecipeError`] variant per rule; messages name the flag.
//!
//! Tests: `tests` at the bottom (defaults, one test per rule, the names on the wire).

#[cfg(feature = "cli")]
pub mod args;

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::devices::Precision;
use crate::schedule::{
    OneCycleConfig, ScheduleError, DEFAULT_DIV_FACTOR, DEFAULT_FINAL_DIV_FACTOR, DEFAULT_MOMS,
    DEFAULT_PCT_START,
};

/// The lesson's training batch (fastai `bs`), global over all ranks.
pub const DEFAULT_BATCH_SIZE: u32 = 128;
/// Validation batch per rank; speed only, results do not depend on it.
pub const DEFAULT_VALID_BATCH_SIZE: u32 = 1024;
/// Seed of initialisation, shuffling and augmentation.
pub const DEFAULT_SEED: u64 = 42;
/// fastai v1's Adam `betas=(0.9, 0.99)`: the second one (the first comes from `moms`).
pub const DEFAULT_BETA2: f64 = 0.99;
/// PyTorch's Adam epsilon.
pub const DEFAULT_EPS: f64 = 1e-8;
/// fastai v1's decoupled weight decay `wd`.
pub const DEFAULT_WD: f64 = 1e-2;

/// The lesson-7 networks. The coordinator only names them; the worker builds them
/// (`ringtrain_worker::model`, where this enum is called `Arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Plain CNN: 3 epochs at max_lr 0.1 in the lesson.
    Basic,
    /// ResNet-ish: 12 epochs at max_lr 0.05 in the lesson.
    #[default]
    Resnet,
    /// ResNet-ish with concatenating (dense) merges.
    Dense,
}

impl Model {
    /// Every network, for help texts and tests.
    pub const ALL: [Model; 3] = [Model::Basic, Model::Resnet, Model::Dense];

    /// The name on the command line, on the wire and in run folders.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Basic => "basic",
            Model::Resnet => "resnet",
            Model::Dense => "dense",
        }
    }

    /// The lesson's `(epochs, max_lr)` for this network.
    pub fn lesson_defaults(self) -> (u32, f64) {
        match self {
            Model::Basic => (3, 0.1),
            Model::Resnet | Model::Dense => (12, 0.05),
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Model {
    type Err = String;
    /// The exact lower-case name (what the coordinator sends and `run.json` holds).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Model::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown model '{s}' (expected one of: basic, resnet, dense)"))
    }
}

/// Adam's fixed hyper-parameters (the schedule supplies `lr` and `beta1` per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// fastai v1: `betas=(0.9, 0.99)`, eps 1e-8 (PyTorch's), wd 1e-2.
    fn default() -> Self {
        Recipe::default().adam()
    }
}

/// Everything that decides a run's arithmetic. Field names are the TOML keys of a job file, the
/// keys in `run.json` and, upper-cased with a `RINGTRAIN_` prefix, the environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Network.
    pub model: Model,
    /// Epochs (default: the lesson's for `model`).
    pub epochs: Option<u32>,
    /// Peak learning rate (default: the lesson's for `model`).
    pub max_lr: Option<f64>,
    /// Global batch, split evenly over the ranks.
    pub batch_size: u32,
    /// Validation batch per rank (speed only).
    pub valid_batch_size: u32,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// One-cycle warm-up fraction.
    pub pct_start: f64,
    /// Start lr = max_lr / div_factor.
    pub div_factor: f64,
    /// Final lr = max_lr / (div_factor · final_div_factor).
    pub final_div_factor: f64,
    /// Adam beta1 at the start/end and at the peak lr.
    pub moms: (f64, f64),
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub wd: f64,
    /// Forward-pass arithmetic: `fp32` or `bf16` (autocast; weights and optimiser stay f32).
    pub precision: Precision,
}

impl Default for Recipe {
    fn default() -> Self {
        Self::lesson(Model::default())
    }
}

/// A recipe rule that does not hold; one variant per rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecipeError {
    /// `epochs` is zero.
    #[error("epochs must be at least 1")]
    NoEpochs,
    /// `batch_size` is zero.
    #[error("batch-size must be at least 1")]
    ZeroBatch,
    /// `valid_batch_size` is zero.
    #[error("valid-batch-size must be at least 1")]
    ZeroValidBatch,
    /// A one-cycle parameter (`max_lr`, `pct_start`, `div_factor`, `final_div_factor`, `moms`)
    /// is out of range.
    #[error("schedule: {0}")]
    Schedule(ScheduleError),
    /// Adam beta2 outside [0, 1).
    #[error("beta2 must be in [0, 1), got {0}")]
    BadBeta2(f64),
    /// Adam epsilon not finite and > 0.
    #[error("eps must be finite and > 0, got {0}")]
    BadEps(f64),
    /// Weight decay negative or not finite.
    #[error("wd must be finite and >= 0, got {0}")]
    BadWd(f64),
}

impl Recipe {
    /// The lesson's recipe for `model`, `epochs` and `max_lr` left to follow it.
    pub fn lesson(model: Model) -> Self {
        Self {
            model,
            epochs: None,
            max_lr: None,
            batch_size: DEFAULT_BATCH_SIZE,
            valid_batch_size: DEFAULT_VALID_BATCH_SIZE,
            seed: DEFAULT_SEED,
            pct_start: DEFAULT_PCT_START,
            div_factor: DEFAULT_DIV_FACTOR,
            final_div_factor: DEFAULT_FINAL_DIV_FACTOR,
            moms: DEFAULT_MOMS,
            beta2: DEFAULT_BETA2,
            eps: DEFAULT_EPS,
            wd: DEFAULT_WD,
            precision: Precision::Fp32,
        }
    }

    /// Epochs: explicit or the lesson's for the model.
    pub fn epochs(&self) -> u32 {
        self.epochs.unwrap_or(self.model.lesson_defaults().0)
    }

    /// Peak learning rate: explicit or the lesson's for the model.
    pub fn max_lr(&self) -> f64 {
        self.max_lr.unwrap_or(self.model.lesson_defaults().1)
    }

    /// The same recipe with `epochs` and `max_lr` written in, so records say what ran.
    pub fn resolved(mut self) -> Self {
        self.epochs = Some(self.epochs());
        self.max_lr = Some(self.max_lr());
        self
    }

    /// The one-cycle config for a run of `total_steps` steps.
    pub fn one_cycle(&self, total_steps: u64) -> OneCycleConfig {
        OneCycleConfig {
            max_lr: self.max_lr(),
            total_steps,
            pct_start: self.pct_start,
            div_factor: self.div_factor,
            final_div_factor: self.final_div_factor,
            moms: self.moms,
        }
    }

    /// Adam's fixed hyper-parameters.
    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.wd,
        }
    }

    /// Checks every rule that needs no dataset and no world size; returns the first violation.
    pub fn validate(&self) -> Result<(), RecipeError> {
        if self.epochs() == 0 {
            return Err(RecipeError::NoEpochs);
        }
        if self.batch_size == 0 {
            return Err(RecipeError::ZeroBatch);
        }
        if self.valid_batch_size == 0 {
            return Err(RecipeError::ZeroValidBatch);
        }
        self.one_cycle(1).init().map_err(RecipeError::Schedule)?;
        if !(self.beta2 >= 0.0 && self.beta2 < 1.0) {
            return Err(RecipeError::BadBeta2(self.beta2));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(RecipeError::BadEps(self.eps));
        }
        if !(self.wd.is_finite() && self.wd >= 0.0) {
            return Err(RecipeError::BadWd(self.wd));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_lessons() {
        let r = Recipe::default();
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(
            (r.model, r.epochs(), r.max_lr(), r.batch_size, r.seed),
            (Model::Resnet, 12, 0.05, 128, 42)
        );
        assert_eq!((r.valid_batch_size, r.precision), (1024, Precision::Fp32));
        assert_eq!(
            (r.pct_start, r.div_factor, r.final_div_factor, r.moms),
            (0.3, 25.0, 1e4, (0.95, 0.85))
        );
        assert_eq!(
            AdamConfig::default(),
            AdamConfig {
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 1e-2
            }
        );
        let basic = Recipe::lesson(Model::Basic);
        assert_eq!((basic.epochs(), basic.max_lr()), (3, 0.1));
        assert_eq!(
            (
                Recipe::lesson(Model::Dense).epochs(),
                basic.clone().resolved().epochs
            ),
            (12, Some(3))
        );
        // The schedule's own defaults are the recipe's.
        let oc = OneCycleConfig::new(0.05, 7);
        assert_eq!(r.one_cycle(7), oc);
        // Explicit values win over the model's.
        let r = Recipe {
            epochs: Some(2),
            max_lr: Some(0.2),
            ..basic
        };
        assert_eq!((r.epochs(), r.max_lr()), (2, 0.2));
    }

    #[test]
    fn each_rule() {
        type Mutate = Box<dyn Fn(&mut Recipe)>;
        let cases: Vec<(Mutate, RecipeError)> = vec![
            (Box::new(|r| r.epochs = Some(0)), RecipeError::NoEpochs),
            (Box::new(|r| r.batch_size = 0), RecipeError::ZeroBatch),
            (
                Box::new(|r| r.valid_batch_size = 0),
                RecipeError::ZeroValidBatch,
            ),
            (
                Box::new(|r| r.max_lr = Some(0.0)),
                RecipeError::Schedule(ScheduleError::BadMaxLr { max_lr: 0.0 }),
            ),
            (
                Box::new(|r| r.pct_start = 1.0),
                RecipeError::Schedule(ScheduleError::BadPctStart { pct_start: 1.0 }),
            ),
            (
                Box::new(|r| r.div_factor = f64::NAN),
                RecipeError::Schedule(ScheduleError::BadDivFactor {
                    div_factor: f64::NAN,
                }),
            ),
            (
                Box::new(|r| r.moms = (1.0, 0.5)),
                RecipeError::Schedule(ScheduleError::BadMoms { moms: (1.0, 0.5) }),
            ),
            (Box::new(|r| r.beta2 = 1.0), RecipeError::BadBeta2(1.0)),
            (Box::new(|r| r.beta2 = -0.1), RecipeError::BadBeta2(-0.1)),
            (Box::new(|r| r.eps = 0.0), RecipeError::BadEps(0.0)),
            (
                Box::new(|r| r.eps = f64::INFINITY),
                RecipeError::BadEps(f64::INFINITY),
            ),
            (Box::new(|r| r.wd = -0.1), RecipeError::BadWd(-0.1)),
        ];
        for (mutate, want) in cases {
            let mut r = Recipe::default();
            mutate(&mut r);
            let got = r.validate();
            // NaN != NaN: compare the message for that case.
            assert_eq!(
                got.map_err(|e| e.to_string()),
                Err(want.to_string()),
                "{r:?}"
            );
        }
        assert_eq!(
            RecipeError::BadWd(-0.1).to_string(),
            "wd must be finite and >= 0, got -0.1"
        );
        assert_eq!(
            Recipe {
                wd: 0.0,
                ..Recipe::default()
            }
            .validate(),
            Ok(()),
            "no weight decay is allowed"
        );
    }

    #[test]
    fn names_on_the_wire() {
        for m in Model::ALL {
            assert_eq!(m.as_str().parse::<Model>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
            assert_eq!(m.to_string(), m.as_str());
        }
        assert!("ResNet"
            .parse::<Model>()
            .unwrap_err()
            .contains("basic, resnet, dense"));
        // Flat keys: a job file and run.json name the fields directly.
        let v = serde_json::to_value(Recipe::default().resolved()).unwrap();
        assert_eq!(v["epochs"], 12);
        assert_eq!(v["moms"], serde_json::json!([0.95, 0.85]));
        assert_eq!(v["precision"], "fp32");
        let r: Recipe = serde_json::from_str(r#"{"model": "basic", "wd": 0.0}"#).unwrap();
        assert_eq!(
            r,
            Recipe {
                wd: 0.0,
                ..Recipe::lesson(Model::Basic)
            }
        );
    }
}
