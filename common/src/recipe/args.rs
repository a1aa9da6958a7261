//! The command-line flags of the recipe and the dataset, defined once for `ringtrain serve` /
//! `launch` / `lr-find` and `ringtrain-worker train` (clap derive; feature `cli`).
//!
//! Owns flag names, their `RINGTRAIN_*` variables and help texts; not the values' rules
//! (`Recipe::validate`) nor how a binary layers them over its defaults.
//!
//! # Contract
//! * Every flag is optional: a flag left unset (and not in the environment) is `None`/`false`
//!   and is skipped when serialised. The coordinator serialises these structs as the top layer
//!   of `defaults < --config FILE < RINGTRAIN_* and flags` (the `config` crate), so an unset flag
//!   never hides a file's value; the worker lays them over the lesson's recipe with
//!   [`RecipeArgs::overlay`] and [`DatasetArgs::scan_options`]. Both give the same result
//!   (tested below).
//! * The help texts state the defaults in words, because an `Option` flag has no clap default
//!   to print; a test checks each stated default against the `DEFAULT_*` constants.
//! * A subcommand that needs `--data` marks it required with
//!   `#[command(mut_arg("data", |a| a.required(true)))]`.
//!
//! Tests: `tests` at the bottom.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{Model, Recipe};
use crate::data::{Augment, Channels, ImageOptions, ScanOptions};
use crate::devices::Precision;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `--moms A,B`: two numbers separated by a comma.
fn parse_moms(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("expected two numbers A,B, got {s:?}");
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    let num = |x: &str| x.trim().parse::<f64>().map_err(|_| bad());
    Ok((num(a)?, num(b)?))
}

/// The training-recipe flags (`--model`, `--epochs`, `--max-lr`, ..., `--precision`).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize)]
pub struct RecipeArgs {
    /// Network [default: resnet].
    #[arg(long, env = "RINGTRAIN_MODEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Model>,
    /// Epochs [default: 12, 3 for basic].
    #[arg(long, env = "RINGTRAIN_EPOCHS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Peak learning rate of the one-cycle schedule [default: 0.05, 0.1 for basic].
    #[arg(long, env = "RINGTRAIN_MAX_LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lr: Option<f64>,
    /// Global batch size, split evenly over the workers [default: 128].
    #[arg(long, env = "RINGTRAIN_BATCH_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Validation batch size per worker (speed only) [default: 1024].
    #[arg(long, env = "RINGTRAIN_VALID_BATCH_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_batch_size: Option<u32>,
    /// Seed of initialisation, shuffling and augmentation [default: 42].
    #[arg(long, env = "RINGTRAIN_SEED")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Warm-up fraction of the one-cycle schedule [default: 0.3].
    #[arg(long, env = "RINGTRAIN_PCT_START")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pct_start: Option<f64>,
    /// Start lr = max_lr / div_factor [default: 25].
    #[arg(long, env = "RINGTRAIN_DIV_FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub div_factor: Option<f64>,
    /// Final lr = max_lr / (div_factor * final_div_factor) [default: 1e4].
    #[arg(long, env = "RINGTRAIN_FINAL_DIV_FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_div_factor: Option<f64>,
    /// Adam beta1 at the start/end and at the peak lr, as A,B [default: 0.95,0.85].
    #[arg(long, value_name = "A,B", value_parser = parse_moms, env = "RINGTRAIN_MOMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moms: Option<(f64, f64)>,
    /// Adam beta2 [default: 0.99].
    #[arg(long, env = "RINGTRAIN_BETA2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// Adam epsilon [default: 1e-8].
    #[arg(long, env = "RINGTRAIN_EPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Decoupled weight decay [default: 0.01].
    #[arg(long, env = "RINGTRAIN_WD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wd: Option<f64>,
    /// Forward-pass arithmetic: fp32, or bf16 autocast (weights and optimiser stay f32)
    /// [default: fp32].
    #[arg(long, value_name = "fp32|bf16", env = "RINGTRAIN_PRECISION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

impl RecipeArgs {
    /// `base` with every given flag written over it (the worker's layering: defaults < flags).
    pub fn overlay(&self, base: Recipe) -> Recipe {
        let mut r = base;
        if let Some(m) = self.model {
            r.model = m;
        }
        r.epochs = self.epochs.or(r.epochs);
        r.max_lr = self.max_lr.or(r.max_lr);
        r.batch_size = self.batch_size.unwrap_or(r.batch_size);
        r.valid_batch_size = self.valid_batch_size.unwrap_or(r.valid_batch_size);
        r.seed = self.seed.unwrap_or(r.seed);
        r.pct_start = self.pct_start.unwrap_or(r.pct_start);
        r.div_factor = self.div_factor.unwrap_or(r.div_factor);
        r.final_div_factor = self.final_div_factor.unwrap_or(r.final_div_factor);
        r.moms = self.moms.unwrap_or(r.moms);
        r.beta2 = self.beta2.unwrap_or(r.beta2);
        r.eps = self.eps.unwrap_or(r.eps);
        r.wd = self.wd.unwrap_or(r.wd);
        r.precision = self.precision.unwrap_or(r.precision);
        r
    }
}

/// The dataset flags: where the image folders are and how to read them.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize)]
pub struct DatasetArgs {
    /// Dataset root: DIR/<train-dir>/<class>/<images> and DIR/<valid-dir>/<class>/<images>
    /// (.png, .jpg, .jpeg, .webp).
    #[arg(long, value_name = "DIR", env = "RINGTRAIN_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Skip (and count) corrupt, unreadable, wrong-size and non-image files instead of failing.
    #[arg(long, env = "RINGTRAIN_SKIP_BAD")]
    #[serde(skip_serializing_if = "is_false")]
    pub skip_bad: bool,
    /// Training split folder name [default: training].
    #[arg(long, env = "RINGTRAIN_TRAIN_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_dir: Option<String>,
    /// Validation split folder name [default: testing].
    #[arg(long, env = "RINGTRAIN_VALID_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_dir: Option<String>,
    /// Resize every image to NxN: shorter side to N, then centre crop; NxN images are not
    /// resampled [default: the images' own size, which must be square].
    #[arg(long, value_name = "N", env = "RINGTRAIN_IMAGE_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// Colour channels: auto (1 when every image is grayscale, else 3), 1 or 3 [default: auto].
    #[arg(long, value_name = "auto|1|3", env = "RINGTRAIN_CHANNELS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Channels>,
    /// Training augmentation, comma-separated: pad[=P] (rand_pad, P=3), flip (horizontal),
    /// none [default: pad].
    #[arg(long, value_name = "LIST", env = "RINGTRAIN_AUGMENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
}

impl DatasetArgs {
    /// How to read the folder: the given flags over [`ScanOptions::default`].
    pub fn scan_options(&self) -> ScanOptions {
        let d = ScanOptions::default();
        ScanOptions {
            train_dir: self.train_dir.clone().unwrap_or(d.train_dir),
            valid_dir: self.valid_dir.clone().unwrap_or(d.valid_dir),
            skip_bad: self.skip_bad || d.skip_bad,
        }
    }

    /// `--channels` and `--image-size` (auto and the images' own size when not given).
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions {
            channels: self.channels.unwrap_or_default(),
            size: self.image_size,
        }
    }

    /// `--augment`, or the lesson's `rand_pad(3)`.
    pub fn augment(&self) -> Augment {
        self.augment.unwrap_or_default()
    }

    /// The same flags as command-line words (`ringtrain show-batch` hands them to the worker).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        if let Some(d) = &self.data {
            out.extend(["--data".into(), d.clone().into_os_string()]);
        }
        if self.skip_bad {
            out.push("--skip-bad".into());
        }
        let image_size = self.image_size.map(|n| n.to_string());
        let channels = self.channels.map(|c| c.to_string());
        let augment = self.augment.map(|a| a.to_string());
        for (flag, v) in [
            ("--train-dir", &self.train_dir),
            ("--valid-dir", &self.valid_dir),
            ("--image-size", &image_size),
            ("--channels", &channels),
            ("--augment", &augment),
        ] {
            if let Some(v) = v {
                out.extend([flag.into(), v.into()]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{DEFAULT_BATCH_SIZE, DEFAULT_BETA2, DEFAULT_EPS, DEFAULT_SEED};
    use crate::recipe::{DEFAULT_VALID_BATCH_SIZE, DEFAULT_WD};
    use crate::schedule::{
        DEFAULT_DIV_FACTOR, DEFAULT_FINAL_DIV_FACTOR, DEFAULT_MOMS, DEFAULT_PCT_START,
    };
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        dataset: DatasetArgs,
    }

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
    }

    #[test]
    fn unset_flags_are_none_and_not_serialised() {
        // No test sets RINGTRAIN_* variables in this crate, so the environment is not a layer.
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.recipe, RecipeArgs::default());
        assert_eq!(serde_json::to_string(&cli.recipe).unwrap(), "{}");
        assert_eq!(serde_json::to_string(&cli.dataset).unwrap(), "{}");
        assert_eq!(cli.recipe.overlay(Recipe::default()), Recipe::default());
        assert_eq!(cli.dataset.scan_options(), ScanOptions::default());
    }

    #[test]
    fn overlay_and_serde_layering_agree() {
        let cli = parse(&[
            "--model",
            "basic",
            "--epochs",
            "4",
            "--max-lr",
            "0.2",
            "--batch-size",
            "64",
            "--valid-batch-size",
            "10",
            "--seed",
            "7",
            "--pct-start",
            "0.25",
            "--div-factor",
            "10",
            "--final-div-factor",
            "100",
            "--moms",
            "0.9,0.8",
            "--beta2",
            "0.98",
            "--eps",
            "1e-6",
            "--wd",
            "0",
            "--precision",
            "bf16",
            "--train-dir",
            "tr",
            "--skip-bad",
        ])
        .unwrap();
        let by_overlay = cli.recipe.overlay(Recipe::default());
        assert_eq!(
            by_overlay,
            Recipe {
                model: Model::Basic,
                epochs: Some(4),
                max_lr: Some(0.2),
                batch_size: 64,
                valid_batch_size: 10,
                seed: 7,
                pct_start: 0.25,
                div_factor: 10.0,
                final_div_factor: 100.0,
                moms: (0.9, 0.8),
                beta2: 0.98,
                eps: 1e-6,
                wd: 0.0,
                precision: Precision::Bf16,
            }
        );
        // The coordinator's way: serialise the given flags, deserialise over the defaults.
        let v = serde_json::to_value(&cli.recipe).unwrap();
        let by_serde: Recipe = serde_json::from_value(v).unwrap();
        assert_eq!(by_serde, by_overlay);
        // Only some flags: the rest keep the base's values.
        let cli = parse(&["--wd", "0.1"]).unwrap();
        let base = Recipe::lesson(Model::Dense);
        let v = serde_json::to_value(&cli.recipe).unwrap();
        assert_eq!(v, serde_json::json!({"wd": 0.1}));
        assert_eq!(cli.recipe.overlay(base.clone()), Recipe { wd: 0.1, ..base });
        let scan = parse(&["--train-dir", "tr", "--skip-bad"])
            .unwrap()
            .dataset
            .scan_options();
        assert_eq!(
            (
                scan.train_dir.as_str(),
                scan.valid_dir.as_str(),
                scan.skip_bad
            ),
            ("tr", "testing", true)
        );
        let d = parse(&[
            "--image-size",
            "64",
            "--channels",
            "3",
            "--augment",
            "pad,flip",
        ])
        .unwrap()
        .dataset;
        assert_eq!(
            d.image_options(),
            ImageOptions {
                channels: Channels::Rgb,
                size: Some(64)
            }
        );
        assert_eq!(d.augment().to_string(), "pad=3,flip");
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"image_size": 64, "channels": "3", "augment": "pad=3,flip"})
        );
        let words: Vec<String> = d
            .to_args()
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            words,
            [
                "--image-size",
                "64",
                "--channels",
                "3",
                "--augment",
                "pad=3,flip"
            ]
        );
        assert!(parse(&["--channels", "2"]).is_err());
        assert!(parse(&["--augment", "rotate"]).is_err());
        assert_eq!(parse(&[]).unwrap().dataset.augment(), Augment::default());
    }

    #[test]
    fn moms_take_exactly_two_numbers() {
        assert_eq!(parse_moms("0.9,0.8"), Ok((0.9, 0.8)));
        assert_eq!(parse_moms(" 0.9 , 0.8 "), Ok((0.9, 0.8)));
        for bad in ["0.9", "0.9,0.8,0.7", "a,b", ""] {
            assert!(parse_moms(bad).is_err(), "{bad}");
            assert!(parse(&["--moms", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--moms", "0.9", "0.8"]).is_err(), "one word, A,B");
    }

    #[test]
    fn help_texts_state_the_defaults() {
        let cmd = Cli::command();
        let help = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        let cases: [(&str, &str, f64); 10] = [
            ("batch_size", "128", f64::from(DEFAULT_BATCH_SIZE)),
            (
                "valid_batch_size",
                "1024",
                f64::from(DEFAULT_VALID_BATCH_SIZE),
            ),
            ("seed", "42", DEFAULT_SEED as f64),
            ("pct_start", "0.3", DEFAULT_PCT_START),
            ("div_factor", "25", DEFAULT_DIV_FACTOR),
            ("final_div_factor", "1e4", DEFAULT_FINAL_DIV_FACTOR),
            ("beta2", "0.99", DEFAULT_BETA2),
            ("eps", "1e-8", DEFAULT_EPS),
            ("wd", "0.01", DEFAULT_WD),
            ("moms", "0.95", DEFAULT_MOMS.0),
        ];
        for (id, text, value) in cases {
            assert_eq!(text.parse::<f64>(), Ok(value), "{id}");
            assert!(
                help(id).contains(&format!("[default: {text}")),
                "{id}: {}",
                help(id)
            );
        }
        assert!(help("moms").contains(&format!("{},{}]", DEFAULT_MOMS.0, DEFAULT_MOMS.1)));
        let (e, lr) = Model::default().lesson_defaults();
        let (be, blr) = Model::Basic.lesson_defaults();
        assert!(help("epochs").contains(&format!("[default: {e}, {be} for basic]")));
        assert!(help("max_lr").contains(&format!("[default: {lr}, {blr} for basic]")));
        assert!(help("model").contains(&format!("[default: {}]", Model::default())));
        let scan = ScanOptions::default();
        assert!(help("train_dir").contains(&format!("[default: {}]", scan.train_dir)));
        assert!(help("valid_dir").contains(&format!("[default: {}]", scan.valid_dir)));
    }

    #[test]
    fn dataset_flags_as_words() {
        let d = parse(&["--data", "/d", "--valid-dir", "v"])
            .unwrap()
            .dataset;
        let words: Vec<String> = d
            .to_args()
            .into_iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        assert_eq!(words, ["--data", "/d", "--valid-dir", "v"]);
    }
}
