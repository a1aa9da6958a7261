//! `ringtrain show-batch`: the grid of augmented training images. The coordinator never links
//! libtorch, and the picture must come from the real training pipeline, so this runs
//! `ringtrain-worker show-batch` (next to this executable, or `--worker-bin`) with the same
//! flags and passes its output and exit status through.
//!
//! Tests: `tests/tests/show_batch.rs` (real binaries on a dataset).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use clap::Args;
use ringtrain_common::recipe::args::DatasetArgs;
use ringtrain_common::recipe::DEFAULT_SEED;

/// `ringtrain show-batch`.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("data", |a| a.required(true)))]
pub struct ShowBatchArgs {
    /// `--data` (required), `--skip-bad`, `--train-dir`, `--valid-dir`, `--image-size`,
    /// `--channels`, `--augment`: as for a run.
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Output PNG.
    #[arg(long, value_name = "FILE", default_value = "show_batch.png")]
    out: PathBuf,
    /// The grid is ROWS × ROWS images (1 to 16).
    #[arg(long, default_value_t = 4)]
    rows: usize,
    /// Pixel scale of each 28×28 image.
    #[arg(long, default_value_t = 4)]
    scale: u32,
    /// Seed of shuffling and augmentation: a run with this seed trains on this batch first.
    #[arg(long, default_value_t = DEFAULT_SEED, env = "RINGTRAIN_SEED")]
    seed: u64,
    /// Worker binary [default: ringtrain-worker next to this executable].
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
}

/// Runs the worker's `show-batch`; true when it succeeded.
pub fn run(a: ShowBatchArgs) -> anyhow::Result<bool> {
    let bin = ringtrain_coordinator::launch::resolve_worker_bin(a.worker_bin.clone())?;
    let mut cmd = Command::new(&bin);
    // Only the dataset flags given here; the worker's defaults are the same.
    cmd.arg("show-batch")
        .args(a.dataset.to_args())
        .arg("--out")
        .arg(&a.out)
        .args(["--rows", &a.rows.to_string()])
        .args(["--scale", &a.scale.to_string()])
        .args(["--seed", &a.seed.to_string()]);
    let status = cmd
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(status.success())
}
