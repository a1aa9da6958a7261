//! Continuing a run from its folder: find the latest good checkpoint and turn it into the
//! configuration and starting point of a new coordinator.
//!
//! # Contract
//! * Without `auto_resume` (`--auto-resume`, `--resume`), a run folder that holds checkpoints
//!   is refused with the fix in the message: nothing is overwritten silently.
//! * With it, the newest checkpoint that verifies wins; bad newer ones are logged and skipped.
//!   `--resume` (`resume_required`) without any good checkpoint is an error; `--auto-resume`
//!   then starts fresh.
//! * The stored run settings win over the invocation's (`RunConfig::continuing`).
//! * A run whose newest checkpoint is its last epoch's end is finished:
//!   [`ResumeError::AlreadyFinished`], nothing is served or written (`serve` exits 0).
//!
//! Tests: `tests/tests/resume.rs`, `elastic.rs`, `stop.rs` (real binaries).

use std::sync::Arc;

use ringtrain_common::checkpoint::CheckpointStore;

use std::path::PathBuf;

use ringtrain_common::checkpoint::CheckpointError;

use crate::config::{ConfigError, RunConfig};
use crate::state::{Progress, ResumePoint, Resumed};

/// Why a run folder cannot be continued (or must not be overwritten).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The folder holds checkpoints and neither `--resume` nor `--auto-resume` was given.
    #[error("run folder {dir} already holds checkpoints ({list}); continue it with --resume {dir}, or choose another --run-dir", dir = run_dir.display(), list = names.join(", "))]
    CheckpointsPresent {
        run_dir: PathBuf,
        names: Vec<String>,
    },
    /// `--resume` of a folder without a good checkpoint.
    #[error("nothing to resume: {} has no good checkpoint", dir.display())]
    NothingToResume { dir: PathBuf },
    /// The newest checkpoint is the end of the last epoch: nothing to do.
    #[error("run {run_id} in {} already finished; nothing to resume", run_dir.display())]
    AlreadyFinished { run_id: String, run_dir: PathBuf },
    /// A part of the checkpoint does not parse.
    #[error("checkpoint {}: {what}: {reason}", dir.display())]
    BadCheckpoint {
        dir: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// The dataset is not the one the run trained on.
    #[error("the dataset at {root} is not the one run {run_id} trained on (fingerprint {got}, checkpoint says {want}); resume with the same files")]
    OtherDataset {
        root: String,
        run_id: String,
        got: String,
        want: String,
    },
    /// The checkpoint store cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The stored configuration, continued by this invocation, breaks a rule.
    #[error("the stored configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Decides whether `config` starts a run or continues one from its run folder's latest good
/// checkpoint (`auto_resume`, set by `--auto-resume` and `--resume`); a folder that holds
/// checkpoints is never silently overwritten.
pub(crate) fn find_resume(config: RunConfig) -> Result<(RunConfig, Option<Resumed>), ResumeError> {
    let run_dir = config.run_dir.clone().unwrap_or_default();
    let store = CheckpointStore::new(&run_dir);
    let existing = store.list().unwrap_or_default();
    if !config.auto_resume {
        if !existing.is_empty() {
            return Err(ResumeError::CheckpointsPresent {
                run_dir,
                names: existing,
            });
        }
        return Ok((config, None));
    }
    let Some((loaded, skipped)) = store.latest_good()? else {
        if config.resume_required {
            return Err(ResumeError::NothingToResume { dir: store.dir() });
        }
        return Ok((config, None));
    };
    for (dir, why) in &skipped {
        tracing::warn!(checkpoint = %dir.display(), reason = %why, "skipping a bad checkpoint");
    }
    let st = &loaded.state;
    if st.epoch >= st.epochs && st.step_in_epoch == 0 {
        // The checkpoint after the last epoch: nothing is left to train. A restarted cluster
        // coordinator must not wait for workers and then rewrite the finished run as failed.
        return Err(ResumeError::AlreadyFinished {
            run_id: st.run_id.clone(),
            run_dir: run_dir.clone(),
        });
    }
    let bad = |what: &'static str, e: &dyn std::fmt::Display| ResumeError::BadCheckpoint {
        dir: loaded.dir.clone(),
        what,
        reason: e.to_string(),
    };
    let stored: RunConfig =
        serde_json::from_value(st.config.clone()).map_err(|e| bad("config", &e))?;
    let progress: Progress =
        serde_json::from_value(st.progress.clone()).map_err(|e| bad("progress", &e))?;
    let config = config.continuing(&stored);
    config.validate()?;
    let name = loaded
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tracing::info!(run_id = %st.run_id, checkpoint = %loaded.dir.display(), epoch = st.epoch, step = st.global_step, "resuming from checkpoint");
    let notice = format!(
        "ringtrain: resuming run {} from {} (epoch {} of {}, step {})",
        st.run_id,
        loaded.dir.display(),
        st.epoch,
        st.epochs,
        st.global_step
    );
    let resumed = Resumed {
        point: ResumePoint {
            epoch: st.epoch,
            step_in_epoch: st.step_in_epoch,
            epoch_losses: Arc::new(progress.partial_losses.clone()),
            global_step: st.global_step,
            model: Arc::new(loaded.model),
            optimizer: Arc::new(loaded.optimizer),
            checkpoint: name,
        },
        progress,
        round: st.round,
        notice,
    };
    Ok((config, Some(resumed)))
}
