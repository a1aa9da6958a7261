//! Getting MNIST onto disk in the fast.ai `mnist_png` layout (`training/<digit>/*.png`,
//! `testing/<digit>/*.png`), either by downloading fast.ai's archive or by converting the four
//! original idx files.
//!
//! Owns download, verification, safe extraction, idx conversion and the atomic move into place;
//! not reading the images for training (`data`). Blocking I/O on the calling thread, PNG encoding on
//! the rayon pool; progress bars on stderr, logs via `tracing`, no stdout.
//!
//! # Contract
//! * DEST is never half written: work happens in a hidden sibling folder that is renamed into
//!   place only after the checksums and the layout check pass (`stage.rs`).
//! * A DEST that already has `training/` and `testing/` is left alone unless `force`.
//! * A download is checked against the full-file sha256 when one is given (any URL); otherwise
//!   [`MNIST_URL`] gets fastai v1's own check ([`MNIST_FASTAI_CHECK`]) and any other URL is only
//!   logged with its sha256, not checked.
//! * Archive entries that are links, devices, absolute or contain `..` are refused (`extract.rs`).
//! * An idx folder with a `SHA256SUMS` file is verified against it before anything is parsed.
//!
//! Unit tests sit at the bottom of each file; `tests/tests/fetch.rs` runs the `ringtrain` binary
//! against a local HTTP server and the real idx files.

mod checksum;
mod download;
mod error;
mod extract;
mod idx;
mod import;
mod layout;
mod progress;
mod stage;

use std::path::{Path, PathBuf};

pub use checksum::{digest_file, parse_sha256, verify_sha256sums, Digested, Digests, Expected};
pub use download::download;
pub use error::FetchError;
pub use extract::{dataset_root, extract_tgz, unpack};
pub use idx::{
    locate as locate_idx, parse_images, parse_labels, read_images, read_labels, IdxImages,
};
pub use import::{idx_to_pngs, write_png, IDX_FILES};
pub use layout::{check_layout, has_splits, LayoutSummary, SplitSummary, SPLITS};

use stage::Scratch;

/// fast.ai's MNIST archive (`URLs.MNIST` of fastai v1 plus the `.tgz` that `download_data` appends).
pub const MNIST_URL: &str = "https://s3.amazonaws.com/fast-ai-imageclas/mnist_png.tgz";

/// fastai v1's check for [`MNIST_URL`]: `_checks[URLs.MNIST] = (15683414, '03639f83c4e3d19e0a3a53a8a997c487')`,
/// i.e. file size and md5 of the first 2**20 bytes (`_check_file`), from
/// github.com/fastai/fastai `fastai/datasets.py` at commit 36121b4651e2e7cd92acdaf624f5e2b2b6ee75aa.
pub const MNIST_FASTAI_CHECK: Expected = Expected::FastaiV1 {
    size: 15_683_414,
    md5_first_mib: "03639f83c4e3d19e0a3a53a8a997c487",
};

/// Environment variable naming the MNIST folder (also read by the Makefile and the worker).
pub const MNIST_DIR_ENV: &str = "RINGTRAIN_MNIST_DIR";

/// Where MNIST lives by default: `$RINGTRAIN_MNIST_DIR`, else `~/.cache/ringtrain/data/mnist_png`.
pub fn default_mnist_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = std::env::var_os(MNIST_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(FetchError::NoHome)?;
    Ok(PathBuf::from(home).join(".cache/ringtrain/data/mnist_png"))
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MnistSource {
    /// A `.tgz` in the `mnist_png` layout (optionally under one top folder) at `url`.
    Url {
        /// The archive URL (http or https).
        url: String,
        /// Full-file sha256 the archive must have (64 hex digits, any case).
        sha256: Option<String>,
    },
    /// A folder holding the four idx files (each optionally `.gz`) and optionally `SHA256SUMS`.
    Idx {
        /// The folder.
        dir: PathBuf,
    },
}

/// What [`fetch_mnist`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// DEST already had the layout; nothing was changed.
    AlreadyPresent,
    /// The archive was downloaded and extracted.
    Downloaded {
        /// sha256 of the archive.
        sha256: String,
        /// Whether a checksum (fastai's or `--sha256`) was checked; otherwise the sha256 was only logged.
        checked: bool,
    },
    /// The idx files were converted.
    Imported {
        /// Files verified against `SHA256SUMS` (0 when there was none).
        verified: usize,
    },
}

/// The result of a successful [`fetch_mnist`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// The dataset folder.
    pub dest: PathBuf,
    /// What was done.
    pub action: Action,
    /// Image and class counts of `dest`.
    pub summary: LayoutSummary,
}

/// Puts MNIST at `dest` from `source` (see the module contract); `force` replaces an existing `dest`.
pub fn fetch_mnist(
    source: &MnistSource,
    dest: &Path,
    force: bool,
) -> Result<FetchReport, FetchError> {
    let (parent, _) = stage::split_dest(dest)?;
    if has_splits(dest) && !force {
        let summary = check_layout(dest)?;
        tracing::info!(dest = %dest.display(), %summary, "MNIST already present; use --force to replace it");
        return Ok(FetchReport {
            dest: dest.to_path_buf(),
            action: Action::AlreadyPresent,
            summary,
        });
    }
    if dest.exists() && !force && !stage::is_empty_dir(dest) {
        return Err(FetchError::DestOccupied {
            dest: dest.to_path_buf(),
        });
    }
    // Checked before any slow work, so a typo fails in milliseconds.
    let sha256 = match source {
        MnistSource::Url {
            sha256: Some(s), ..
        } => Some(parse_sha256(s)?),
        _ => None,
    };
    std::fs::create_dir_all(&parent).map_err(FetchError::io("creating", &parent))?;
    stage::clean_stale(dest);

    let staging = Scratch::dir(dest)?;
    let (root, action) = match source {
        MnistSource::Url { url, .. } => {
            let archive = Scratch::file(dest)?;
            let digested = download(url, archive.path())?;
            // An explicit pin replaces fastai's check, so a re-published archive can still be accepted.
            let checks: Vec<Expected> = match sha256 {
                Some(sha256) => vec![Expected::Sha256(sha256)],
                None if url == MNIST_URL => vec![MNIST_FASTAI_CHECK],
                None => Vec::new(),
            };
            for check in &checks {
                digested.check(url, check)?;
            }
            if checks.is_empty() {
                tracing::warn!(url, sha256 = %digested.sha256, "no checksum known for this URL: not checked (pin it with --sha256)");
            } else {
                tracing::info!(url, sha256 = %digested.sha256, checks = checks.len(), "archive verified");
            }
            extract_tgz(archive.path(), staging.path())?;
            let action = Action::Downloaded {
                sha256: digested.sha256,
                checked: !checks.is_empty(),
            };
            (dataset_root(staging.path())?, action)
        }
        MnistSource::Idx { dir } => {
            let verified = verify_sha256sums(dir)?.unwrap_or(0);
            if verified == 0 {
                tracing::warn!(dir = %dir.display(), "no SHA256SUMS: idx files not verified");
            } else {
                tracing::info!(dir = %dir.display(), files = verified, "idx files match SHA256SUMS");
            }
            idx_to_pngs(dir, staging.path())?;
            (staging.path().to_path_buf(), Action::Imported { verified })
        }
    };
    let summary = check_layout(&root)?;
    stage::commit(&root, dest)?;
    tracing::info!(dest = %dest.display(), %summary, "MNIST ready");
    Ok(FetchReport {
        dest: dest.to_path_buf(),
        action,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::idx::tests::{idx1, idx3};
    use super::*;

    fn write_idx(dir: &Path) {
        let img = vec![vec![1u8; 4], vec![2u8; 4]];
        std::fs::write(dir.join("train-images-idx3-ubyte"), idx3(2, 2, &img)).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), idx1(&[0, 1])).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx3(2, 2, &img)).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx1(&[1, 0])).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn idx_import_then_already_present_then_force() {
        let idx_dir = tempfile::tempdir().unwrap();
        write_idx(idx_dir.path());
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("mnist_png");
        let source = MnistSource::Idx {
            dir: idx_dir.path().to_path_buf(),
        };

        let report = fetch_mnist(&source, &dest, false).unwrap();
        assert_eq!(report.action, Action::Imported { verified: 0 });
        assert_eq!(
            report.summary.training,
            SplitSummary {
                images: 2,
                classes: 2
            }
        );
        assert_eq!(names(parent.path()), vec!["mnist_png"], "no scratch left");

        let again = fetch_mnist(&source, &dest, false).unwrap();
        assert_eq!(again.action, Action::AlreadyPresent);

        std::fs::write(dest.join("marker"), b"old").unwrap();
        fetch_mnist(&source, &dest, true).unwrap();
        assert!(!dest.join("marker").exists(), "--force replaced the folder");
        assert_eq!(names(parent.path()), vec!["mnist_png"]);
    }

    #[test]
    fn failed_import_leaves_no_dest_and_no_scratch() {
        let idx_dir = tempfile::tempdir().unwrap();
        write_idx(idx_dir.path());
        std::fs::write(idx_dir.path().join("t10k-labels-idx1-ubyte"), b"garbage").unwrap();
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("mnist_png");
        let err = fetch_mnist(
            &MnistSource::Idx {
                dir: idx_dir.path().to_path_buf(),
            },
            &dest,
            false,
        );
        assert!(matches!(err, Err(FetchError::BadIdx { .. })));
        assert!(names(parent.path()).is_empty());
    }

    #[test]
    fn occupied_dest_and_bad_sha256_are_refused_before_any_work() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("stuff");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("precious"), b"x").unwrap();
        let source = MnistSource::Idx {
            dir: parent.path().join("nowhere"),
        };
        assert!(matches!(
            fetch_mnist(&source, &dest, false),
            Err(FetchError::DestOccupied { .. })
        ));

        let url = MnistSource::Url {
            url: "http://127.0.0.1:9/x.tgz".into(),
            sha256: Some("zz".into()),
        };
        let fresh = parent.path().join("fresh");
        assert!(matches!(
            fetch_mnist(&url, &fresh, false),
            Err(FetchError::InvalidSha256 { .. })
        ));
        assert!(!fresh.exists());
    }
}
