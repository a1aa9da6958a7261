//! Safe extraction of a `.tgz` into a staging folder.
//!
//! Owns gzip+tar decoding and the entry policy; not where the staging folder lives or how it is
//! moved into place (`stage.rs`).
//!
//! # Contract
//! * Only plain files and folders are written; every other entry type (symlink, hard link, device,
//!   fifo, sparse) is refused with [`FetchError::UnsafeEntry`] naming the entry.
//! * An entry with an absolute path or a `..` component is refused before anything is written for
//!   it. Since no link is ever created, nothing can be written outside the target folder.
//! * Extraction stops at the first refused entry; the caller discards the partial staging folder.
//!
//! Tests at the bottom of this file.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::progress::{Progress, Unit};
use super::FetchError;

/// Split folder names of the fast.ai layout, which are never stripped as a "top folder".
const SPLITS: [&str; 2] = ["training", "testing"];

/// Extracts the gzip'd tar `archive` into `into` (an existing folder) and returns the number of
/// files written. Progress counts compressed bytes read.
pub fn extract_tgz(archive: &Path, into: &Path) -> Result<u64, FetchError> {
    let file = File::open(archive).map_err(FetchError::io("opening", archive))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let progress = Progress::new("extracting", Unit::Bytes, len);
    let files = unpack(
        CountingReader {
            inner: file,
            progress: &progress,
        },
        archive,
        into,
    )?;
    progress.finish();
    Ok(files)
}

/// Extracts a gzip'd tar from `reader`; `archive` only names it in errors.
pub fn unpack(reader: impl Read, archive: &Path, into: &Path) -> Result<u64, FetchError> {
    let bad_archive = |source| FetchError::BadArchive {
        path: archive.to_path_buf(),
        source,
    };
    let mut tar = tar::Archive::new(GzDecoder::new(reader));
    let mut files = 0u64;
    for entry in tar.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let refuse = |reason| FetchError::UnsafeEntry {
            entry: shown.clone(),
            reason,
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            // pax headers carry metadata only; the tar crate already applied the per-entry ones.
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Symlink => return Err(refuse("symlink")),
            EntryType::Link => return Err(refuse("hard link")),
            EntryType::Char | EntryType::Block => return Err(refuse("device file")),
            EntryType::Fifo => return Err(refuse("fifo")),
            _ => return Err(refuse("unsupported entry type")),
        }
        let raw = entry.path().map_err(bad_archive)?.into_owned();
        let rel = safe_relative(&raw).map_err(refuse)?;
        let Some(rel) = rel else {
            if kind == EntryType::Directory {
                continue; // "./" names the target itself
            }
            return Err(refuse("empty path"));
        };
        let dest = into.join(&rel);
        if kind == EntryType::Directory {
            std::fs::create_dir_all(&dest).map_err(FetchError::io("creating", &dest))?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(FetchError::io("creating", parent))?;
        }
        copy_entry(&mut entry, &dest).map_err(|e| match e {
            CopyError::Read(source) => bad_archive(source),
            CopyError::Write(source) => FetchError::Io {
                op: "writing",
                path: dest.clone(),
                source,
            },
        })?;
        files += 1;
    }
    tracing::debug!(files, archive = %archive.display(), "extracted");
    Ok(files)
}

/// The dataset root inside an extracted folder: its single top folder when the archive had one
/// (`mnist_png/`), else the folder itself.
pub fn dataset_root(extracted: &Path) -> Result<PathBuf, FetchError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(extracted).map_err(FetchError::io("listing", extracted))? {
        entries.push(entry.map_err(FetchError::io("listing", extracted))?.path());
    }
    match entries.as_slice() {
        [only] if only.is_dir() && !SPLITS.iter().any(|s| only.file_name() == Some(s.as_ref())) => {
            Ok(only.clone())
        }
        _ => Ok(extracted.to_path_buf()),
    }
}

/// The entry path as a plain relative path, `None` if it names the root itself, or why it is unsafe.
fn safe_relative(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut rel = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies one entry's bytes, keeping archive (read) errors apart from disk (write) errors.
fn copy_entry(entry: &mut impl Read, dest: &Path) -> Result<(), CopyError> {
    let mut out = BufWriter::new(File::create(dest).map_err(CopyError::Write)?);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.write_all(&buf[..n]).map_err(CopyError::Write)?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CopyError::Read(e)),
        }
    }
    out.flush().map_err(CopyError::Write)
}

/// Reports bytes read from the compressed archive.
struct CountingReader<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    /// A tgz in memory; names are written raw into the header so hostile paths survive.
    fn tgz(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for &(name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(0o644);
            header.set_size(if kind == EntryType::Regular {
                data.len() as u64
            } else {
                0
            });
            if kind == EntryType::Symlink || kind == EntryType::Link {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            let body: &[u8] = if kind == EntryType::Regular {
                data
            } else {
                &[]
            };
            builder.append(&header, body).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// Unpacks into `<tmp>/stage` and returns the error, asserting `<tmp>` holds nothing else.
    fn unpack_err(archive: &[u8]) -> FetchError {
        let outer = tempfile::tempdir().unwrap();
        let stage = outer.path().join("stage");
        std::fs::create_dir(&stage).unwrap();
        let err = unpack(archive, Path::new("test.tgz"), &stage).unwrap_err();
        let outside: Vec<_> = std::fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside,
            vec![std::ffi::OsString::from("stage")],
            "nothing written outside the stage"
        );
        err
    }

    #[test]
    fn extracts_files_and_strips_single_top_folder() {
        let archive = tgz(&[
            ("mnist_png/", EntryType::Directory, b""),
            ("mnist_png/training/0/1.png", EntryType::Regular, b"one"),
            ("./mnist_png/testing/7/2.png", EntryType::Regular, b"two"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            unpack(archive.as_slice(), Path::new("t.tgz"), dir.path()).unwrap(),
            2
        );
        let root = dataset_root(dir.path()).unwrap();
        assert_eq!(root, dir.path().join("mnist_png"));
        assert_eq!(
            std::fs::read(root.join("training/0/1.png")).unwrap(),
            b"one"
        );
        assert_eq!(std::fs::read(root.join("testing/7/2.png")).unwrap(), b"two");
    }

    #[test]
    fn no_top_folder_means_no_stripping() {
        let archive = tgz(&[("training/0/1.png", EntryType::Regular, b"x")]);
        let dir = tempfile::tempdir().unwrap();
        unpack(archive.as_slice(), Path::new("t.tgz"), dir.path()).unwrap();
        assert_eq!(dataset_root(dir.path()).unwrap(), dir.path());
    }

    #[test]
    fn parent_components_are_refused() {
        for name in ["../evil", "a/../../evil", "ok/../evil"] {
            let err = unpack_err(&tgz(&[(name, EntryType::Regular, b"pwned")]));
            assert!(
                matches!(&err, FetchError::UnsafeEntry { entry, reason: "`..` component" } if entry == name),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn absolute_paths_are_refused() {
        let name = format!("/tmp/ringtrain-abs-test-{}", std::process::id());
        let err = unpack_err(&tgz(&[(&name, EntryType::Regular, b"pwned")]));
        assert!(
            matches!(&err, FetchError::UnsafeEntry { entry, reason: "absolute path" } if *entry == name)
        );
        assert!(!Path::new(&name).exists());
    }

    #[test]
    fn links_and_devices_are_refused() {
        for (kind, why) in [
            (EntryType::Symlink, "symlink"),
            (EntryType::Link, "hard link"),
            (EntryType::Char, "device file"),
            (EntryType::Block, "device file"),
            (EntryType::Fifo, "fifo"),
        ] {
            let archive = tgz(&[
                ("data/", EntryType::Directory, b""),
                ("data/link", kind, b""),
            ]);
            let err = unpack_err(&archive);
            assert!(
                matches!(&err, FetchError::UnsafeEntry { entry, reason } if entry == "data/link" && *reason == why),
                "{kind:?}: {err:?}"
            );
        }
    }

    #[test]
    fn corrupt_gzip_is_a_bad_archive() {
        let mut archive = tgz(&[("a.png", EntryType::Regular, &[1u8; 4096])]);
        archive.truncate(archive.len() / 2);
        assert!(matches!(
            unpack_err(&archive),
            FetchError::BadArchive { .. }
        ));
        assert!(matches!(
            unpack_err(b"not gzip at all"),
            FetchError::BadArchive { .. }
        ));
    }
}
