//! [`CheckpointStore`]: the `RUN_DIR/checkpoints/` folder and the `best`/`latest` links of one run.
//!
//! Owns atomic writes, discovery, pointers and pruning; verification is `manifest.rs`. The
//! layout, contract and concurrency rules are in the parent module's documentation.
//!
//! Tests: `../tests.rs`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::manifest::{self, Manifest};
use super::{
    checkpoint_name, parse_checkpoint_name, CheckpointError, CheckpointState, Loaded, BEST, FORMAT,
    LATEST, MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
};
use crate::fsio;

/// Prefix of folders that are not (yet, or any more) checkpoints: writes in progress, bad
/// folders moved aside, checkpoints being pruned. Anything with it is a leftover once no write
/// runs, and [`CheckpointStore::prune`] removes it.
const TMP_PREFIX: &str = ".tmp-";

/// The checkpoints of one run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStore {
    run_dir: PathBuf,
}

/// A failed write, named by the file or folder at fault.
fn write_error(e: fsio::WriteError) -> CheckpointError {
    CheckpointError::write(e.path(), e.io_error())
}

/// Fsyncs a folder, so that the names created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fsio::sync_dir(dir).map_err(write_error)
}

/// Removes a folder tree, file or link; a missing path is not an error.
fn remove_any(path: &Path) -> Result<(), CheckpointError> {
    let result = match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(|e| CheckpointError::write(path, &e))
}

impl CheckpointStore {
    /// The store of run folder `run_dir` (nothing is touched until a method runs).
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
        }
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `RUN_DIR/checkpoints`.
    pub fn dir(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    /// Creates the checkpoints folder and writes, fsyncs and removes a probe file in it, so that a
    /// read-only or full disk fails the run at its start rather than at its first checkpoint.
    pub fn probe_writable(&self) -> Result<(), CheckpointError> {
        let dir = self.dir();
        let unwritable = |e: std::io::Error| CheckpointError::Unwritable {
            dir: dir.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(unwritable)?;
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        // A block's worth, so that a full disk fails here (a tiny file may fit in the inode).
        let result = std::fs::File::create(&probe).and_then(|mut f| {
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        });
        let removed = std::fs::remove_file(&probe);
        result.and(removed).map_err(unwritable)
    }

    /// Writes the checkpoint of `state` as `checkpoints/<checkpoint_name(epoch, global_step)>`
    /// atomically (see the module contract) and returns its folder.
    pub fn write(
        &self,
        state: &CheckpointState,
        model: &[u8],
        optimizer: &[u8],
    ) -> Result<PathBuf, CheckpointError> {
        if state.format != FORMAT {
            return Err(CheckpointError::Invalid {
                reason: format!(
                    "state has format {}, this build writes {FORMAT}",
                    state.format
                ),
            });
        }
        let dir = self.dir();
        let fresh = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(|e| CheckpointError::Unwritable {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        if fresh {
            // The first checkpoint is only durable once `checkpoints/` itself is.
            sync_dir(self.run_dir_or_dot())?;
        }
        let name = checkpoint_name(state.epoch, state.global_step);
        let target = dir.join(&name);
        if target.symlink_metadata().is_ok() {
            match manifest::verify(&target) {
                Ok(_) => {
                    tracing::debug!(checkpoint = %target.display(), "checkpoint already written");
                    return Ok(target);
                }
                Err(e) => tracing::warn!(
                    checkpoint = %target.display(),
                    reason = %e,
                    "replacing a bad checkpoint folder"
                ),
            }
        }
        let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let result =
            write_files(&tmp, state, model, optimizer).and_then(|()| install(&tmp, &target));
        if result.is_err() {
            // Best effort: a leftover is harmless (never listed) and prune removes it later.
            let _ = remove_any(&tmp);
        }
        result.map(|()| target)
    }

    /// Names of the checkpoint folders in `checkpoints/`, oldest first. Temporary folders and
    /// anything not named like [`checkpoint_name`] are left out.
    pub fn list(&self) -> Result<Vec<String>, CheckpointError> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CheckpointError::read(&dir, &e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CheckpointError::read(&dir, &e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(position) = parse_checkpoint_name(&name) else {
                continue;
            };
            let ty = entry
                .file_type()
                .map_err(|e| CheckpointError::read(entry.path(), &e))?;
            if ty.is_dir() {
                found.push((position, name));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, name)| name).collect())
    }

    /// The newest checkpoint that verifies, and the newer ones skipped as bad (folder, reason),
    /// each also logged with `warn!`. `Ok(None)` when there is no checkpoint at all; when there
    /// are checkpoints but none verifies, [`CheckpointError::Corrupt`] naming the newest, so that
    /// a resume never silently restarts from scratch.
    #[allow(clippy::type_complexity)]
    pub fn latest_good(&self) -> Result<Option<(Loaded, Vec<(PathBuf, String)>)>, CheckpointError> {
        let names = self.list()?;
        let mut skipped = Vec::new();
        for name in names.iter().rev() {
            let path = self.dir().join(name);
            match manifest::verify(&path) {
                Ok(loaded) => return Ok(Some((loaded, skipped))),
                Err(e) => {
                    tracing::warn!(checkpoint = %path.display(), reason = %e, "skipping a bad checkpoint");
                    let reason = match e {
                        CheckpointError::Corrupt { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    skipped.push((path, reason));
                }
            }
        }
        match skipped.into_iter().next() {
            None => Ok(None),
            Some((newest, reason)) => Err(CheckpointError::Corrupt {
                dir: newest,
                reason: format!(
                    "{reason}; none of the {} checkpoints in {} verifies",
                    names.len(),
                    self.dir().display()
                ),
            }),
        }
    }

    /// Atomically points `RUN_DIR/<link>` ([`BEST`] or [`LATEST`]) at `checkpoints/<name>`: a new
    /// relative symlink renamed over the old one, then an fsync of the run folder.
    pub fn set_pointer(&self, link: &str, name: &str) -> Result<(), CheckpointError> {
        if link != BEST && link != LATEST {
            return Err(CheckpointError::Invalid {
                reason: format!("pointer {link:?} is neither {BEST:?} nor {LATEST:?}"),
            });
        }
        if parse_checkpoint_name(name).is_none() {
            return Err(CheckpointError::Invalid {
                reason: format!("{name:?} is not a checkpoint name like e0003-s0000001404"),
            });
        }
        let target_dir = self.dir().join(name);
        if !target_dir.is_dir() {
            return Err(CheckpointError::NotFound { path: target_dir });
        }
        let link_path = self.run_dir.join(link);
        let tmp = self
            .run_dir
            .join(format!(".{link}{TMP_PREFIX}{}", std::process::id()));
        remove_any(&tmp)?;
        std::os::unix::fs::symlink(Path::new("checkpoints").join(name), &tmp)
            .map_err(|e| CheckpointError::write(&tmp, &e))?;
        if let Err(e) = std::fs::rename(&tmp, &link_path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(CheckpointError::write(&link_path, &e));
        }
        sync_dir(self.run_dir_or_dot())
    }

    /// The run folder as a path that can be opened (`.` for an empty relative path).
    fn run_dir_or_dot(&self) -> &Path {
        if self.run_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.run_dir
        }
    }

    /// The checkpoint name `RUN_DIR/<link>` points at, if it is a link into `checkpoints/`.
    pub fn pointer(&self, link: &str) -> Option<String> {
        let target = std::fs::read_link(self.run_dir.join(link)).ok()?;
        let name = target.strip_prefix("checkpoints").ok()?.to_str()?;
        parse_checkpoint_name(name).map(|_| name.to_string())
    }

    /// Removes all but the newest `keep_last` checkpoints, except names in `protect` and the
    /// targets of `best` and `latest`, then every `.tmp-*` leftover. Returns the removed
    /// checkpoint names, oldest first. A removed checkpoint is first renamed to a `.tmp-` name,
    /// so a crash mid-removal never leaves a half-deleted folder under a checkpoint name.
    pub fn prune(
        &self,
        keep_last: usize,
        protect: &[String],
    ) -> Result<Vec<String>, CheckpointError> {
        let dir = self.dir();
        let names = self.list()?;
        let mut keep: HashSet<String> = protect.iter().cloned().collect();
        keep.extend([BEST, LATEST].into_iter().filter_map(|l| self.pointer(l)));
        let old = names.len().saturating_sub(keep_last);
        let pid = std::process::id();
        let mut removed = Vec::new();
        for name in names.into_iter().take(old) {
            if keep.contains(&name) {
                continue;
            }
            let aside = dir.join(format!("{TMP_PREFIX}del-{name}-{pid}"));
            std::fs::rename(dir.join(&name), &aside)
                .map_err(|e| CheckpointError::write(dir.join(&name), &e))?;
            remove_any(&aside)?;
            removed.push(name);
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(CheckpointError::read(&dir, &e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| CheckpointError::read(&dir, &e))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                tracing::info!(path = %entry.path().display(), "removing a stale temporary checkpoint folder");
                remove_any(&entry.path())?;
            }
        }
        sync_dir(&dir)?;
        Ok(removed)
    }
}

/// Fills the fresh folder `tmp` with the checkpoint files, manifest last, each fsynced.
fn write_files(
    tmp: &Path,
    state: &CheckpointState,
    model: &[u8],
    optimizer: &[u8],
) -> Result<(), CheckpointError> {
    // A leftover of this pid (a crashed earlier process that had the same pid) is stale.
    remove_any(tmp)?;
    std::fs::create_dir(tmp).map_err(|e| CheckpointError::write(tmp, &e))?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| CheckpointError::Write {
        path: tmp.join(STATE_FILE),
        reason: e.to_string(),
    })?;
    let files: [(&str, &[u8]); 3] = [
        (MODEL_FILE, model),
        (OPTIMIZER_FILE, optimizer),
        (STATE_FILE, &state_json),
    ];
    for (name, bytes) in files {
        fsio::write_new(&tmp.join(name), bytes).map_err(write_error)?;
    }
    let manifest =
        serde_json::to_vec_pretty(&Manifest::of(&files)).map_err(|e| CheckpointError::Write {
            path: tmp.join(MANIFEST_FILE),
            reason: e.to_string(),
        })?;
    fsio::write_new(&tmp.join(MANIFEST_FILE), &manifest).map_err(write_error)?;
    sync_dir(tmp)
}

/// Renames the complete folder `tmp` to `target`, moving a bad folder already there aside first
/// (a rename cannot replace a non-empty folder), then fsyncs the checkpoints folder.
fn install(tmp: &Path, target: &Path) -> Result<(), CheckpointError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut aside = None;
    if target.symlink_metadata().is_ok() {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let a = dir.join(format!("{TMP_PREFIX}bad-{name}-{}", std::process::id()));
        remove_any(&a)?;
        std::fs::rename(target, &a).map_err(|e| CheckpointError::write(target, &e))?;
        aside = Some(a);
    }
    if let Err(e) = std::fs::rename(tmp, target) {
        // Another writer may have installed the same checkpoint meanwhile: that is a success.
        if manifest::verify(target).is_ok() {
            let _ = remove_any(tmp);
        } else {
            return Err(CheckpointError::write(target, &e));
        }
    }
    sync_dir(dir)?;
    if let Some(a) = aside {
        // The new checkpoint is in place; a leftover here is only disk space, and prune
        // removes it (it carries the temporary prefix).
        if let Err(e) = remove_any(&a) {
            tracing::warn!(reason = %e, "cannot remove a replaced bad checkpoint");
        }
    }
    Ok(())
}
