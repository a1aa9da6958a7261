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
//!   [`ServeError::AlreadyFinished`], nothing is served or written (`serve` exits 0).
//!
//! Tests: `tests/tests/resume.rs`, `elastic.rs`, `stop.rs` (real binaries).

use std::sync::Arc;

use ringtrain_common::checkpoint::CheckpointStore;

use crate::config::RunConfig;
use crate::server::ServeError;
use crate::state::{Progress, ResumePoint, Resumed};

/// Decides whether `config` starts a run or continues one from its run folder's latest good
/// checkpoint (`auto_resume`, set by `--auto-resume` and `--resume`); a folder that holds
/// checkpoints is never silently overwritten.
pub(crate) fn find_resume(config: RunConfig) -> Result<(RunConfig, Option<Resumed>), ServeError> {
    let run_dir = config.run_dir.clone().unwrap_or_default();
    let store = CheckpointStore::new(&run_dir);
    let existing = store.list().unwrap_or_default();
    if !config.auto_resume {
        if !existing.is_empty() {
            return Err(ServeError::Resume(format!(
                "run folder {} already holds checkpoints ({}); continue it with --resume {0}, or choose another --run-dir",
                run_dir.display(),
                existing.join(", ")
            )));
        }
        return Ok((config, None));
    }
    let Some((loaded, skipped)) = store.latest_good()? else {
        if config.resume_required {
            return Err(ServeError::Resume(format!(
                "nothing to resume: {} has no good checkpoint",
                store.dir().display()
            )));
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
        return Err(ServeError::AlreadyFinished {
            run_id: st.run_id.clone(),
            run_dir: run_dir.clone(),
        });
    }
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        ServeError::Resume(format!("checkpoint {}: {what}: {e}", loaded.dir.display()))
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
