//! ringtrain-worker: one training replica. The only crate that links libtorch.
//!
//! Owns data tensors and augmentation (`data`), the lesson-7 models (`model`), the flat parameter
//! layout (`flat`), Adam (`optim`), the collective interface (`collective`), the training loop
//! (`train`) and inference with a checkpoint (`predict`). Scanning, decoding, the schedule and
//! the checkpoint store come from `ringtrain-common`.

pub mod amp;
pub mod cli;
pub mod collective;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod flat;
pub mod inventory;
pub mod model;
pub mod optim;
pub mod output;
pub mod predict;
pub mod show_batch;
pub mod train;

use std::io::IsTerminal;

use cli::{Cli, Command};

/// Exit code of a worker whose run the coordinator declared failed.
pub const EXIT_ABORTED: i32 = 3;

/// Exit code of a worker stopped by SIGTERM (128 + 15, after its stop checkpoint if any).
pub const EXIT_TERMINATED: i32 = 143;

/// The exit code for an error returned by [`run`]: [`EXIT_ABORTED`] when the coordinator stopped
/// the run, [`EXIT_TERMINATED`] after SIGTERM, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.downcast_ref::<train::TrainError>() {
        Some(train::TrainError::RunFailed(_)) => EXIT_ABORTED,
        Some(train::TrainError::Terminated) => EXIT_TERMINATED,
        _ => 1,
    }
}

/// Runs a parsed command line; the binary's `main` only parses and sets up logging.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        let print = cli.join.print_config;
        let opts = cli.join.into_options()?;
        if print {
            output::line(opts.describe());
            return Ok(());
        }
        dist::run_worker(&opts)?;
        return Ok(());
    };
    match command {
        Command::Eval {
            run_dir,
            data,
            weights,
            valid_dir,
        } => {
            let weights = weights.unwrap_or_else(|| run_dir.join("final.safetensors"));
            let (acc, loss, correct, count) =
                eval::evaluate(&run_dir, &data, &weights, &valid_dir)?;
            output::line(format!(
                "accuracy {acc:.6} ({correct} of {count}) valid_loss {loss:.6}"
            ));
        }
        Command::Predict {
            checkpoint,
            json,
            images,
        } => {
            let out = predict::predict(&checkpoint, &images)?;
            let lines = if json { out.json_lines() } else { out.lines() };
            for line in lines {
                output::line(line);
            }
        }
        Command::Devices { json } => {
            let inv = inventory::Inventory::probe();
            if json {
                output::line(serde_json::to_string(&inv)?);
            } else {
                for line in inv.lines() {
                    output::line(line);
                }
            }
        }
        Command::Summary {
            model,
            classes,
            channels,
            image_size,
        } => {
            anyhow::ensure!(
                matches!(channels, 1 | 3),
                "--channels must be 1 or 3, got {channels}"
            );
            anyhow::ensure!(
                (1..=i64::from(ringtrain_common::data::geometry::MAX_IMAGE_SIZE))
                    .contains(&image_size),
                "--image-size must be in 1..={}, got {image_size}",
                ringtrain_common::data::geometry::MAX_IMAGE_SIZE
            );
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let m = model::Model::new(&vs.root(), model, channels, classes, image_size);
            let rows = model::summary::rows(&m, image_size, image_size);
            let text = model::summary::render(&m, &rows);
            output::line(text.strip_suffix('\n').unwrap_or(&text));
        }
        Command::ShowBatch(a) => {
            let shown = show_batch::show_batch(&show_batch::ShowBatchOptions {
                data: cli::required_data(&a.dataset)?,
                scan: a.dataset.scan_options(),
                image: a.dataset.image_options(),
                augment: a.dataset.augment(),
                cache_dir: a.cache_dir.or_else(config::default_cache_dir),
                progress: std::io::stderr().is_terminal(),
                seed: a.seed,
                rows: a.rows,
                scale: a.scale,
                out: a.out,
            })?;
            output::line(format!(
                "{}: {} augmented training images (mean {}, std {}); labels: {}",
                shown.out.display(),
                shown.images,
                fmt4(&shown.norm.mean),
                fmt4(&shown.norm.std),
                shown.labels.join(" ")
            ));
        }
        Command::Cache { dataset, cache_dir } => {
            let data = cli::required_data(&dataset)?;
            let cache_dir = cache_dir.or_else(config::default_cache_dir);
            let opts = ringtrain_common::data::LoadOptions {
                scan: dataset.scan_options(),
                image: dataset.image_options(),
                cache_dir: cache_dir.clone(),
                progress: std::io::stderr().is_terminal(),
                memory: None,
            };
            let ds = ringtrain_common::data::load_dataset(&data, &opts)?;
            output::line(format!(
                "{}: {} training and {} validation images ({}) in {} classes, {} skipped; {} {}",
                data.display(),
                ds.train.len(),
                ds.valid.len(),
                ds.geometry,
                ds.classes.len(),
                ds.skipped.len(),
                if ds.from_cache {
                    "already cached in"
                } else {
                    "cached in"
                },
                cache_dir.map_or_else(|| "(no cache folder)".into(), |d| d.display().to_string())
            ));
        }
        Command::Train(args) => {
            let mut cfg = args.into_config()?;
            // Progress bars only make sense on a terminal; logs and the table always print.
            cfg.progress &= std::io::stderr().is_terminal();
            tracing::info!(config = %serde_json::to_string(&cfg)?, "effective configuration");
            let summary = train::standalone::train(&cfg, &mut collective::Solo)?;
            output::line(format!(
                "accuracy {:.4} ({} of {} validation images) | {:.0} train images/s | run folder {}",
                summary.final_accuracy,
                (summary.final_accuracy * summary.valid_images as f64).round() as u64,
                summary.valid_images,
                summary.train_images_per_s,
                summary.run_dir.display()
            ));
        }
    }
    Ok(())
}

/// `0.1307` for one channel, `[0.4912, 0.4822, 0.4465]` for more.
fn fmt4(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    match parts.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", parts.join(", ")),
    }
}
