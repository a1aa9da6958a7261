//! Scratch paths beside the destination and the final rename into place.
//!
//! # Contract
//! * All work happens in hidden siblings of DEST (`.NAME.partial-PID/`, `.NAME.download-PID.tgz`),
//!   so they share DEST's filesystem and the final `rename(2)` is atomic: DEST is either absent,
//!   the old complete folder, or the new complete folder — never half written.
//! * A [`Scratch`] is removed when dropped (error paths included). A process killed outright
//!   leaves its scratch behind; [`clean_stale`] removes scratch whose process is gone (Linux).
//! * With `--force` an existing DEST is first renamed aside (`.NAME.old-PID`), then removed after
//!   the new one is in place.
//!
//! Tests at the bottom of this file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::FetchError;

/// Scratch kinds, the middle part of their names.
const KINDS: [&str; 3] = ["partial", "download", "old"];

/// A scratch file or folder next to the destination, removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates the scratch folder `.NAME.partial-PID` beside `dest`.
    pub(crate) fn dir(dest: &Path) -> Result<Self, FetchError> {
        let path = scratch_path(dest, "partial", "")?;
        // A leftover from an earlier run of the same pid would only confuse; start clean.
        remove(&path);
        std::fs::create_dir(&path).map_err(FetchError::io("creating", &path))?;
        Ok(Self { path })
    }

    /// Reserves the scratch file `.NAME.download-PID.tgz` beside `dest` (created by the writer).
    pub(crate) fn file(dest: &Path) -> Result<Self, FetchError> {
        Ok(Self {
            path: scratch_path(dest, "download", ".tgz")?,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

/// The folder DEST lives in and DEST's final name, or [`FetchError::BadDest`].
pub(crate) fn split_dest(dest: &Path) -> Result<(PathBuf, &OsStr), FetchError> {
    let name = dest.file_name().ok_or_else(|| FetchError::BadDest {
        dest: dest.to_path_buf(),
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

fn scratch_path(dest: &Path, kind: &str, suffix: &str) -> Result<PathBuf, FetchError> {
    let (parent, name) = split_dest(dest)?;
    let name = name.to_string_lossy();
    Ok(parent.join(format!(".{name}.{kind}-{}{suffix}", std::process::id())))
}

/// Moves the finished folder `staged` to `dest`, replacing an existing `dest` (the caller has
/// already decided that replacing is allowed).
pub(crate) fn commit(staged: &Path, dest: &Path) -> Result<(), FetchError> {
    let renamed = |from: &Path| FetchError::io("renaming", from.to_path_buf());
    if !dest.exists() || is_empty_dir(dest) {
        // rename(2) replaces an empty folder atomically.
        return std::fs::rename(staged, dest).map_err(renamed(staged));
    }
    let old = scratch_path(dest, "old", "")?;
    std::fs::rename(dest, &old).map_err(renamed(dest))?;
    if let Err(e) = std::fs::rename(staged, dest) {
        // Put the previous dataset back rather than leave nothing.
        let _ = std::fs::rename(&old, dest);
        return Err(renamed(staged)(e));
    }
    tracing::info!(old = %old.display(), "removing the replaced dataset");
    remove(&old);
    Ok(())
}

/// Removes scratch siblings of `dest` left by processes that no longer run.
pub(crate) fn clean_stale(dest: &Path) {
    let Ok((parent, name)) = split_dest(dest) else {
        return;
    };
    // Without /proc we cannot tell a dead process from a live one; leave everything alone.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = KINDS
            .iter()
            .find_map(|k| rest.strip_prefix(k)?.strip_prefix('-'))
        else {
            continue;
        };
        let pid = pid.trim_end_matches(".tgz");
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            tracing::info!(path = %entry.path().display(), "removing stale scratch of an interrupted fetch");
            remove(&entry.path());
        }
    }
}

pub(crate) fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Best-effort removal of a file or folder tree; failures only leave scratch behind.
fn remove(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not remove scratch");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_a_hidden_sibling_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("mnist_png");
        let scratch = Scratch::dir(&dest).unwrap();
        let path = scratch.path().to_path_buf();
        assert_eq!(path.parent(), Some(parent.path()));
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".mnist_png.partial-"));
        std::fs::write(path.join("x"), b"x").unwrap();
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn commit_moves_into_place_and_replaces() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("data");
        for content in ["first", "second"] {
            let staged = Scratch::dir(&dest).unwrap();
            std::fs::write(staged.path().join("f"), content).unwrap();
            commit(staged.path(), &dest).unwrap();
            assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), content);
        }
        let names: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("data")],
            "no scratch left behind"
        );
    }

    #[test]
    fn stale_scratch_of_dead_processes_is_removed() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("mnist_png");
        // pid_max is at most 2^22 on Linux, so this pid cannot be running.
        let dead = parent.path().join(".mnist_png.partial-4294967");
        let dead_file = parent.path().join(".mnist_png.download-4294967.tgz");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(&dead_file, b"").unwrap();
        let live = Scratch::dir(&dest).unwrap();
        let unrelated = parent.path().join(".other.partial-4294967");
        std::fs::create_dir(&unrelated).unwrap();
        clean_stale(&dest);
        if Path::new("/proc/self").exists() {
            assert!(!dead.exists() && !dead_file.exists());
        }
        assert!(live.path().exists() && unrelated.exists());
    }

    #[test]
    fn dest_must_have_a_name() {
        assert!(matches!(
            split_dest(Path::new("/")),
            Err(FetchError::BadDest { .. })
        ));
        assert!(matches!(
            split_dest(Path::new("a/..")),
            Err(FetchError::BadDest { .. })
        ));
        assert_eq!(
            split_dest(Path::new("mnist")).unwrap(),
            (PathBuf::from("."), OsStr::new("mnist"))
        );
    }
}
