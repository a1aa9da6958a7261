//! Errors of the checkpoint store. Every variant names the path at fault and why.

use std::path::PathBuf;

/// What can go wrong writing, finding or verifying a checkpoint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoints folder cannot be created or written (read-only, full, no permission).
    #[error("cannot write checkpoint folder {dir}: {reason}")]
    Unwritable { dir: PathBuf, reason: String },
    /// A file, folder or link of a checkpoint cannot be written, synced, renamed or removed.
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// A file or folder exists but cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// A checkpoint folder that fails verification (manifest, sizes, hashes, state).
    #[error("checkpoint {dir} is corrupt: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    /// The path holds no checkpoint at all.
    #[error(
        "no checkpoint at {path} (expected a checkpoint folder with {manifest}, a link such as \
         RUN_DIR/best, or a run folder with checkpoints/)",
        manifest = super::MANIFEST_FILE
    )]
    NotFound { path: PathBuf },
    /// A caller passed a pointer name, checkpoint name or state that the store refuses.
    #[error("invalid checkpoint request: {reason}")]
    Invalid { reason: String },
}

impl CheckpointError {
    /// A failed write of `path`.
    pub(crate) fn write(path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        CheckpointError::Write {
            path: path.into(),
            reason: err.to_string(),
        }
    }

    /// A failed read of `path`.
    pub(crate) fn read(path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        CheckpointError::Read {
            path: path.into(),
            reason: err.to_string(),
        }
    }

    /// Checkpoint `dir` failed verification because of `reason`.
    pub(crate) fn corrupt(dir: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CheckpointError::Corrupt {
            dir: dir.into(),
            reason: reason.into(),
        }
    }
}
