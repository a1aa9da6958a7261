//! Writing files so that neither a crash nor a concurrent reader ever sees half of one.
//!
//! Owns the workspace's one atomic-replace primitive, [`write_atomic`], and the two steps it is
//! built from, [`write_new`] and [`sync_dir`], which the checkpoint store uses to fill a fresh
//! folder that it then renames as a whole. Not what is written, nor file formats.
//!
//! Every whole file a run replaces goes through here: `run.json`, `summary.json`,
//! `final.safetensors`, `lr_find.*`, the plots, the metric files of a (resumed) run folder,
//! `show-batch`'s picture, the decoded-image cache and the files of a checkpoint.
//!
//! # Contract of [`write_atomic`]
//! ```text
//!   DIR/.NAME.tmp-PID-N   created exclusively (O_EXCL), written, fsynced
//!        │  rename(2)     atomic within one folder: readers see the old NAME or the new one
//!        ▼
//!   DIR/NAME              then DIR itself is fsynced, so the rename survives a crash
//! ```
//! * The temporary file is created with `O_CREAT|O_EXCL` under a name unique to this process
//!   and call, so it never opens, truncates or renames a file that anything else (another
//!   thread, another process, a leftover of a crash) created; a taken name is skipped.
//! * `Err` before the rename ([`WriteError::Create`], [`WriteError::Write`],
//!   [`WriteError::Rename`]): the file at the target is untouched (or still absent) and the
//!   temporary file is removed.
//! * `Err` after the rename ([`WriteError::SyncDir`]): the new content is in place and visible,
//!   but a crash may still bring back the old one. Callers treat it as a failed write.
//! * A folder that the filesystem cannot fsync at all (`EINVAL`, `ENOTSUP`) is not an error:
//!   nothing better can be done there, and refusing would make every write fail.
//! * The new file gets the mode a plain `File::create` would (0o666 less the umask); the old
//!   file's mode and owner are not carried over.
//! * Only a crash between creating the temporary file and the rename (kill -9, power loss) can
//!   leave a `.NAME.tmp-*` file behind; nothing reads such names.
//!
//! Tests: `tests` at the bottom (failure injection through [`replace`]'s write and sync steps,
//! concurrent writers and readers, squatted temporary names).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What went wrong writing a file. Each variant names the file or folder at fault.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file could not be created (missing folder, no permission, full disk, the name taken).
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing or fsyncing a created file failed (full disk, I/O error).
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Renaming the finished temporary file over the target failed (the target is a folder,
    /// the folder vanished).
    #[error("cannot replace {path}: {source}")]
    Rename {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The folder could not be opened or fsynced, so its latest renames may not survive a crash.
    #[error("cannot fsync folder {path}: {source}")]
    SyncDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl WriteError {
    /// The file or folder at fault (for a failed temporary file, the temporary's path).
    pub fn path(&self) -> &Path {
        match self {
            Self::Create { path, .. }
            | Self::Write { path, .. }
            | Self::Rename { path, .. }
            | Self::SyncDir { path, .. } => path,
        }
    }

    /// What the OS said.
    pub fn io_error(&self) -> &io::Error {
        match self {
            Self::Create { source, .. }
            | Self::Write { source, .. }
            | Self::Rename { source, .. }
            | Self::SyncDir { source, .. } => source,
        }
    }
}

/// How many taken temporary names one write skips before it gives up.
const NAME_ATTEMPTS: u32 = 64;

/// The leading part of the target's name kept in the temporary's name: the rest of the name
/// (`.` + `.tmp-PID-N`) must still fit in 255 bytes.
const NAME_PREFIX_CHARS: usize = 96;

/// Numbers this process's temporary names, so that two threads never pick the same one.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically and durably (see the module contract).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    replace(path, |f| f.write_all(bytes), sync_dir)
}

/// Creates the file `path`, which must not exist yet, with `bytes`, and fsyncs it. For files in
/// a folder that is itself made visible later by a rename (a checkpoint being written); the
/// folder still needs a [`sync_dir`] once it is complete. On `Err` nothing is left at `path`
/// (a file that existed before is never touched: [`WriteError::Create`] with `AlreadyExists`).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut file = create_new(path)?;
    write_synced(&mut file, path, |f| f.write_all(bytes))
}

/// Fsyncs folder `dir`, so that the names created, renamed or removed in it survive a crash.
/// A filesystem that cannot fsync folders at all is not an error (see the module contract).
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    let err = |source| WriteError::SyncDir {
        path: dir.to_path_buf(),
        source,
    };
    let folder = File::open(dir).map_err(err)?;
    match folder.sync_all() {
        Err(e) if !cannot_sync_folders(&e) => Err(err(e)),
        _ => Ok(()),
    }
}

/// Whether `e` says the filesystem does not fsync folders, rather than that an fsync failed.
fn cannot_sync_folders(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

/// The folder `path` is in (`.` for a bare file name).
fn parent_or_dot(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// [`write_atomic`] with the content written by `write` and the folder fsynced by `sync`: the
/// two steps the tests replace to inject failures and to watch the order of events.
fn replace(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
    sync: impl FnOnce(&Path) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let dir = parent_or_dot(path);
    let (tmp, mut file) = create_temp(dir, path)?;
    let written = write_synced(&mut file, &tmp, write).and_then(|()| {
        // Closed before the rename so that no handle outlives the name it was opened under.
        drop(file);
        std::fs::rename(&tmp, path).map_err(|source| WriteError::Rename {
            path: path.to_path_buf(),
            source,
        })
    });
    if let Err(e) = written {
        // Best effort: the error that matters is the one being returned.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync(dir)
}

/// Creates a fresh temporary file for `target` in `dir`, skipping names that are taken.
fn create_temp(dir: &Path, target: &Path) -> Result<(PathBuf, File), WriteError> {
    let name: String = target
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .take(NAME_PREFIX_CHARS)
                .collect()
        })
        .ok_or_else(|| WriteError::Create {
            path: target.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        })?;
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{n}"));
        match create_new(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            // Another process with our pid (a container's pid 1, a leftover of a crash) owns it.
            Err(WriteError::Create { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < NAME_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates `path` exclusively: fails with `AlreadyExists` rather than open an existing file.
fn create_new(path: &Path) -> Result<File, WriteError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| WriteError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs `write` on the freshly created `file` at `path` and fsyncs it; removes `path` if either
/// fails (the caller created it, so nobody else's file is removed).
fn write_synced(
    file: &mut File,
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), WriteError> {
    let result = write(file).and_then(|()| file.sync_all());
    result.map_err(|source| {
        let _ = std::fs::remove_file(path);
        WriteError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["f.json"]);
    }

    #[test]
    fn a_missing_folder_fails_at_create() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("missing/x"), b"x").unwrap_err();
        assert!(matches!(err, WriteError::Create { .. }), "{err}");
        assert_eq!(err.io_error().kind(), io::ErrorKind::NotFound);
        assert!(err.path().starts_with(dir.path().join("missing")));
        assert!(matches!(
            write_atomic(Path::new("/"), b"x"),
            Err(WriteError::Create { .. })
        ));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.bin");
        write_atomic(&p, b"old content").unwrap();
        let err = replace(
            &p,
            |f| {
                f.write_all(b"half of the new")?;
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            },
            |_| panic!("no fsync of the folder after a failed write"),
        )
        .unwrap_err();
        assert!(matches!(err, WriteError::Write { .. }), "{err}");
        assert_eq!(err.io_error().kind(), io::ErrorKind::StorageFull);
        assert!(err.path().to_string_lossy().contains(".model.bin.tmp-"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old content");
        assert_eq!(names(dir.path()), ["model.bin"]);
    }

    #[test]
    fn a_failed_rename_keeps_the_target_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // rename(2) cannot put a file over a non-empty folder.
        let p = dir.path().join("final.safetensors");
        std::fs::create_dir_all(p.join("inside")).unwrap();
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(matches!(err, WriteError::Rename { .. }), "{err}");
        assert_eq!(err.path(), p);
        assert!(p.join("inside").is_dir());
        assert_eq!(names(dir.path()), ["final.safetensors"]);
    }

    #[test]
    fn the_folder_is_fsynced_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        write_atomic(&p, b"old").unwrap();
        let synced = Mutex::new(Vec::new());
        replace(
            &p,
            |f| f.write_all(b"new"),
            |d| {
                // The new content must already be in place when the folder entry is made durable.
                synced
                    .lock()
                    .unwrap()
                    .push((d.to_path_buf(), std::fs::read(&p).unwrap()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            synced.into_inner().unwrap(),
            [(dir.path().to_path_buf(), b"new".to_vec())]
        );
        assert_eq!(parent_or_dot(Path::new("bare.json")), Path::new("."));
    }

    #[test]
    fn a_failed_folder_fsync_is_reported_with_the_new_content_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.json");
        let err = replace(
            &p,
            |f| f.write_all(b"new"),
            |d| {
                Err(WriteError::SyncDir {
                    path: d.to_path_buf(),
                    source: io::Error::other("EIO"),
                })
            },
        )
        .unwrap_err();
        assert!(matches!(err, WriteError::SyncDir { .. }));
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        sync_dir(dir.path()).unwrap();
        assert!(matches!(
            sync_dir(&dir.path().join("missing")),
            Err(WriteError::SyncDir { .. })
        ));
        assert!(cannot_sync_folders(&io::Error::from(
            io::ErrorKind::InvalidInput
        )));
        assert!(!cannot_sync_folders(&io::Error::other("EIO")));
    }

    #[test]
    fn taken_temporary_names_are_skipped_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // Squat the next names this process would pick (another writer, or a crash's leftover).
        let next = NEXT_TEMP.load(Ordering::Relaxed);
        let pid = std::process::id();
        for n in next..next + 8 {
            std::fs::write(
                dir.path().join(format!(".f.tmp-{pid}-{n}")),
                b"someone else's",
            )
            .unwrap();
        }
        write_atomic(&p, b"mine").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"mine");
        for n in next..next + 8 {
            let squatter = dir.path().join(format!(".f.tmp-{pid}-{n}"));
            assert_eq!(std::fs::read(squatter).unwrap(), b"someone else's");
        }
        assert_eq!(names(dir.path()).len(), 9);
    }

    #[test]
    fn write_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("MANIFEST.json");
        write_new(&p, b"first").unwrap();
        let err = write_new(&p, b"second").unwrap_err();
        assert!(matches!(err, WriteError::Create { .. }));
        assert_eq!(err.io_error().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
    }

    #[test]
    fn concurrent_writers_and_readers_see_only_whole_files() {
        const WRITERS: u8 = 6;
        const LEN: usize = 256 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(dir.path().join("cache.rtc"));
        write_atomic(&p, &[0u8; LEN]).unwrap();
        let start = Arc::new(Barrier::new(usize::from(WRITERS) + 1));
        let writers: Vec<_> = (1..=WRITERS)
            .map(|w| {
                let (p, start) = (p.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..10 {
                        write_atomic(&p, &vec![w; LEN]).unwrap();
                    }
                })
            })
            .collect();
        start.wait();
        let mut reads = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            let bytes = std::fs::read(&*p).unwrap();
            assert_eq!(bytes.len(), LEN, "a reader saw a partial file");
            assert!(bytes.iter().all(|b| *b == bytes[0]), "a reader saw a mix");
            reads += 1;
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(reads > 0);
        let last = std::fs::read(&*p).unwrap();
        assert!((1..=WRITERS).contains(&last[0]));
        assert_eq!(names(dir.path()), ["cache.rtc"]);
    }
}
