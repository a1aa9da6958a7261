//! Checkpoints: a run's complete training state on disk, written atomically and verified on load.
//!
//! ```text
//! RUN_DIR/checkpoints/<name>/        name = e{epoch:04}-s{global_step:010}, sortable
//!     model.safetensors              parameters + BatchNorm buffers, PyTorch state_dict names
//!     optimizer.safetensors          Adam moments
//!     state.json                     CheckpointState, pretty JSON
//!     MANIFEST.json                  {"format":1,"files":[{"name","bytes","sha256"}, …]}, written last
//! RUN_DIR/checkpoints/.tmp-<name>-<pid>/   a write in progress (or a crash's leftover)
//! RUN_DIR/best   -> checkpoints/<name>     best validation accuracy so far (relative symlink)
//! RUN_DIR/latest -> checkpoints/<name>     newest checkpoint (relative symlink)
//! ```
//!
//! Owns the layout, the atomic write, verification, discovery, pointers and pruning; not what a
//! checkpoint holds (the caller serialises the tensors, and `config`/`progress` are opaque JSON)
//! nor when to write one (the coordinator decides). Never links libtorch.
//!
//! # Contract
//! * A checkpoint is *good* exactly when [`load`] verifies it: `MANIFEST.json` present and
//!   parsing, format [`FORMAT`], listing the three files, each present with the listed size and
//!   sha256, and `state.json` parsing (see `manifest.rs`).
//! * [`CheckpointStore::write`] never shows a partial checkpoint under its final name: it writes
//!   and fsyncs every file in `checkpoints/.tmp-<name>-<pid>/` (each created exclusively, with
//!   [`crate::fsio::write_new`]), writes the manifest last, fsyncs the folder, renames it into
//!   place and fsyncs `checkpoints/` ([`crate::fsio::sync_dir`]). A failure removes the temporary
//!   folder and leaves every existing checkpoint untouched. Re-writing a name that verifies is a
//!   no-op returning `Ok` (an idempotent retry); a bad folder under that name is replaced.
//! * A crash at any point leaves the previous good checkpoints good; [`CheckpointStore::latest_good`]
//!   skips (and `warn!`s about) bad newer ones, so resuming falls back one checkpoint at worst.
//! * `best`/`latest` are replaced atomically (new symlink, rename over the old); they always hold
//!   a relative target, so a run folder can be moved or copied whole.
//! * [`CheckpointStore::prune`] never removes a protected name nor the target of `best`/`latest`.
//!
//! # Concurrency
//! One process writes a run folder, from one thread (the coordinator's output writer): `write`,
//! `set_pointer` and `prune` must not run concurrently on the same store. Readers ([`load`],
//! `latest_good`) may run at any time: they only ever see complete checkpoints or none.
//!
//! Tests: `tests.rs` beside this file (store behaviour on real folders), `manifest.rs` tests.

pub mod digest;
mod error;
pub mod manifest;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::CheckpointError;
pub use store::CheckpointStore;

/// Model weights: parameters and BatchNorm buffers under PyTorch `state_dict` names.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimiser state (Adam moments).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// [`CheckpointState`] as pretty JSON.
pub const STATE_FILE: &str = "state.json";
/// Size and sha256 of every other file; written last.
pub const MANIFEST_FILE: &str = "MANIFEST.json";
/// The checkpoint format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Pointer to the checkpoint with the best validation accuracy so far.
pub const BEST: &str = "best";
/// Pointer to the newest checkpoint.
pub const LATEST: &str = "latest";

/// Folder name of the checkpoint at (`epoch`, `global_step`); sorts in training order.
pub fn checkpoint_name(epoch: u32, global_step: u64) -> String {
    format!("e{epoch:04}-s{global_step:010}")
}

/// `(epoch, global_step)` of a name made by [`checkpoint_name`]; `None` for anything else.
pub fn parse_checkpoint_name(name: &str) -> Option<(u32, u64)> {
    let (e, s) = name.strip_prefix('e')?.split_once("-s")?;
    let digits = |t: &str, min: usize| t.len() >= min && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(e, 4) || !digits(s, 10) {
        return None;
    }
    Some((e.parse().ok()?, s.parse().ok()?))
}

/// Normalisation statistics the model was trained with, on the `[0, 1]` scale
/// (`x = (pixel / 255 - mean) / std`), one entry per channel, plus the exact pixel sums they came
/// from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormState {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Pixels summed.
    pub count: u64,
    /// Sum of pixel values (0..=255).
    pub sum: u64,
    /// Sum of squared pixel values.
    pub sum_sq: u64,
}

fn one() -> u32 {
    1
}

/// `state.json`: where training stands, and everything needed to resume it or to use the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// [`FORMAT`].
    pub format: u32,
    pub run_id: String,
    /// Network: `resnet`, `basic` or `dense`.
    pub model: String,
    /// Class names, index = model output.
    pub classes: Vec<String>,
    /// Images are `channels` × `image_size` × `image_size`.
    pub image_size: u32,
    /// Colour channels (1 or 3); absent from checkpoints written before issue 18: 1.
    #[serde(default = "one")]
    pub channels: u32,
    /// Images of other sizes were resized (shorter side) and centre-cropped to `image_size`;
    /// `predict` does the same to its inputs.
    #[serde(default)]
    pub resize: bool,
    /// Training augmentation (`--augment`), for the record.
    #[serde(default)]
    pub augment: String,
    pub norm: NormState,
    /// Epochs of the whole run.
    pub epochs: u32,
    /// Index of the epoch to run next (the epochs completed when `step_in_epoch == 0`).
    pub epoch: u32,
    /// Steps already done inside `epoch` (0 at an epoch boundary).
    pub step_in_epoch: u32,
    /// Steps done in total (Adam's step count).
    pub global_step: u64,
    pub world_size: u32,
    /// Every random stream is a pure function of (seed, epoch, rank): with the position above,
    /// this is the complete RNG state.
    pub seed: u64,
    /// Validation accuracy of the last completed epoch.
    pub valid_accuracy: Option<f64>,
    /// The parameter hash every rank agreed on.
    pub params_hash: String,
    /// Rendezvous round that wrote the checkpoint.
    pub round: u32,
    pub created_unix_ms: u64,
    /// The coordinator's effective configuration (opaque here).
    pub config: serde_json::Value,
    /// The coordinator's metrics so far (opaque here).
    pub progress: serde_json::Value,
}

/// A verified checkpoint.
#[derive(Clone, PartialEq)]
pub struct Loaded {
    /// The checkpoint folder, with links such as `RUN_DIR/best` resolved.
    pub dir: PathBuf,
    pub state: CheckpointState,
    /// Contents of [`MODEL_FILE`].
    pub model: Vec<u8>,
    /// Contents of [`OPTIMIZER_FILE`].
    pub optimizer: Vec<u8>,
}

impl std::fmt::Debug for Loaded {
    // The tensors would drown every assertion message; their sizes say enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("dir", &self.dir)
            .field("state", &self.state)
            .field("model_bytes", &self.model.len())
            .field("optimizer_bytes", &self.optimizer.len())
            .finish()
    }
}

/// Follows symlinks (relative ones from their own folder) without canonicalising the rest of the
/// path, so that errors name `RUN_DIR/checkpoints/<name>` as the user would write it.
fn resolve_links(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    // A bound, so that a link cycle ends in a verification error instead of a hang.
    for _ in 0..16 {
        let Ok(target) = std::fs::read_link(&p) else {
            break;
        };
        p = match p.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    p
}

/// Loads and verifies a checkpoint. `path` is a checkpoint folder, a link to one such as
/// `RUN_DIR/best`, or a run folder: then `RUN_DIR/best` if present, else the newest good
/// checkpoint ([`CheckpointStore::latest_good`]).
pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let dir = resolve_links(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CheckpointError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(if dir == path {
                CheckpointError::NotFound { path: dir }
            } else {
                CheckpointError::Read {
                    path: path.to_path_buf(),
                    reason: format!("link to {}, which does not exist", dir.display()),
                }
            })
        }
        Err(e) => return Err(CheckpointError::read(path, &e)),
    }
    if dir.join(MANIFEST_FILE).exists() {
        return manifest::verify(&dir);
    }
    let best = dir.join(BEST);
    if best.symlink_metadata().is_ok() {
        let target = resolve_links(&best);
        if !target.is_dir() {
            return Err(CheckpointError::Read {
                path: best,
                reason: format!("link to {}, which is not a folder", target.display()),
            });
        }
        return manifest::verify(&target);
    }
    if dir.join("checkpoints").is_dir() {
        if let Some((loaded, _skipped)) = CheckpointStore::new(&dir).latest_good()? {
            return Ok(loaded);
        }
    }
    // Checkpoint files without a manifest: an interrupted write, reported as such.
    if dir.join(MODEL_FILE).exists() || dir.join(STATE_FILE).exists() {
        return manifest::verify(&dir);
    }
    Err(CheckpointError::NotFound {
        path: path.to_path_buf(),
    })
}
