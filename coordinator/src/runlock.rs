//! The run folder's lock: one coordinator per run folder.
//!
//! Owns `RUN_DIR/coordinator.lock`; not the run folder's other files (`artifacts.rs`,
//! `ringtrain_common::report`) or checkpoints.
//!
//! # Contract
//! * [`RunLock::acquire`] takes an exclusive `flock(2)` on `RUN_DIR/coordinator.lock` without
//!   waiting, then writes who holds it (pid, host, listen address, start time) into the file.
//!   A second coordinator on the same folder gets [`LockError::Held`], whose message names the
//!   holder, before it reads or writes anything else in the folder.
//! * The kernel releases the lock when the holder's process ends, however it ends (SIGKILL,
//!   OOM, power loss of a local disk): a stale lock file never blocks a restarted coordinator,
//!   so `--auto-resume` after a crash just works. The file itself stays (its content is
//!   informational; its lock is the truth).
//! * Held for the life of the [`RunLock`] value (the prepared run keeps it until `serve`
//!   returns).
//! * `flock` locks are per open file description and work on local file systems and on NFS v4
//!   (Linux emulates them with byte-range locks there), which is where Kubernetes PVCs put run
//!   folders.
//!
//! Tests: `tests` at the bottom (a second holder is refused naming the first; the lock goes
//! with its holder).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// File name of the lock inside the run folder.
pub const LOCK_FILE: &str = "coordinator.lock";

/// Why the run folder cannot be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live coordinator holds the folder.
    #[error("run folder {} is in use by another coordinator ({holder}); stop it first, or use another --run-dir", dir.display())]
    Held { dir: PathBuf, holder: String },
    /// The lock file cannot be created or locked.
    #[error("cannot lock {}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
}

/// An exclusive hold on a run folder; released on drop (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

/// This machine's host name (for the holder line), or "unknown".
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl RunLock {
    /// Locks `dir` (creating it) for this process; `listen` goes into the holder line.
    pub fn acquire(dir: &Path, listen: &str) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |e: std::io::Error| LockError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "holder unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            return Err(io(err));
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format!(
            "pid {} on host {}, listening on {listen}, since unix time {started}\n",
            std::process::id(),
            host_name()
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run, "0.0.0.0:29400").unwrap();
        assert!(first.path().ends_with(LOCK_FILE));
        // flock locks belong to open file descriptions, so a second open in this process
        // conflicts exactly like another process would.
        let err = RunLock::acquire(&run, "127.0.0.1:1").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("0.0.0.0:29400"), "{msg}");
        assert!(msg.contains(&run.display().to_string()), "{msg}");
        drop(first);
        // Released with its holder: the next coordinator gets it and rewrites the line.
        let again = RunLock::acquire(&run, "127.0.0.1:2").unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(
            text.contains("127.0.0.1:2") && !text.contains("29400"),
            "{text}"
        );
    }

    #[test]
    fn an_unwritable_folder_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = RunLock::acquire(&file, "x").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
