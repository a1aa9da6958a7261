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

/// `ringtrain show-batch`.
#[derive(Debug, Clone, Args)]
pub struct ShowBatchArgs {
    /// Dataset root: DIR/<train-dir>/<class>/*.png.
    #[arg(long, value_name = "DIR", env = "RINGTRAIN_DATA")]
    data: PathBuf,
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
    #[arg(long, default_value_t = 42, env = "RINGTRAIN_SEED")]
    seed: u64,
    /// Name of the training split folder.
    #[arg(long, default_value = "training", env = "RINGTRAIN_TRAIN_DIR")]
    train_dir: String,
    /// Name of the validation split folder.
    #[arg(long, default_value = "testing", env = "RINGTRAIN_VALID_DIR")]
    valid_dir: String,
    /// Skip (and count) bad files instead of failing.
    #[arg(long, env = "RINGTRAIN_SKIP_BAD")]
    skip_bad: bool,
    /// Worker binary [default: ringtrain-worker next to this executable].
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
}

/// Runs the worker's `show-batch`; true when it succeeded.
pub fn run(a: ShowBatchArgs) -> anyhow::Result<bool> {
    let bin = ringtrain_coordinator::launch::resolve_worker_bin(a.worker_bin.clone())?;
    let mut cmd = Command::new(&bin);
    cmd.arg("show-batch")
        .arg("--data")
        .arg(&a.data)
        .arg("--out")
        .arg(&a.out)
        .args(["--rows", &a.rows.to_string()])
        .args(["--scale", &a.scale.to_string()])
        .args(["--seed", &a.seed.to_string()])
        .args(["--train-dir", &a.train_dir])
        .args(["--valid-dir", &a.valid_dir]);
    if a.skip_bad {
        cmd.arg("--skip-bad");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(status.success())
}
