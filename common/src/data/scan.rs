//! Scanning an image-folder dataset into labelled file lists, with every structural check.
//!
//! Tests: `tests` module at the bottom (one per bad-input case).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DataError, Skipped, Split};

/// How to read the dataset folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanOptions {
    /// Name of the training split folder (fastai `split_by_folder(train=...)`).
    pub train_dir: String,
    /// Name of the validation split folder (fastai `split_by_folder(valid=...)`).
    pub valid_dir: String,
    /// Leave out (and report) bad files instead of failing.
    pub skip_bad: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            train_dir: "training".into(),
            valid_dir: "testing".into(),
            skip_bad: false,
        }
    }
}

/// One image file and its label (index into [`DatasetIndex::classes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// Full path of the file.
    pub path: PathBuf,
    /// Class index.
    pub label: u32,
    /// File size in bytes (part of the cache fingerprint).
    pub len: u64,
    /// Modification time in nanoseconds since the epoch (part of the cache fingerprint).
    pub mtime_ns: u128,
}

/// The labelled file lists of both splits.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetIndex {
    /// The dataset root.
    pub root: PathBuf,
    /// Class names, sorted; a label is an index into this list.
    pub classes: Vec<String>,
    /// Training images, sorted by class then file name.
    pub train: Vec<ImageEntry>,
    /// Validation images, sorted by class then file name.
    pub valid: Vec<ImageEntry>,
    /// Files left out because of `skip_bad`.
    pub skipped: Vec<Skipped>,
}

impl DatasetIndex {
    /// The entries of one split.
    pub fn split(&self, split: Split) -> &[ImageEntry] {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
        }
    }

    /// A hex sha256 over class names and every file's relative path, label, size and mtime.
    /// Equal fingerprints mean the decoded pixels can be reused from a cache.
    pub fn fingerprint(&self) -> String {
        self.hash(true)
    }

    /// Like [`DatasetIndex::fingerprint`] without modification times: equal on every machine
    /// holding a copy of the same dataset. Workers must match the coordinator's.
    pub fn layout_fingerprint(&self) -> String {
        self.hash(false)
    }

    fn hash(&self, with_mtime: bool) -> String {
        let mut h = Sha256::new();
        for c in &self.classes {
            h.update(c.as_bytes());
            h.update([0]);
        }
        for (tag, entries) in [(b'T', &self.train), (b'V', &self.valid)] {
            h.update([tag]);
            for e in entries {
                let rel = e.path.strip_prefix(&self.root).unwrap_or(&e.path);
                h.update(rel.to_string_lossy().as_bytes());
                h.update([0]);
                h.update(e.label.to_le_bytes());
                h.update(e.len.to_le_bytes());
                if with_mtime {
                    h.update(e.mtime_ns.to_le_bytes());
                }
            }
        }
        to_hex(&h.finalize())
    }
}

impl DatasetIndex {
    /// An index over explicit files (a shard): `(path relative to root, label)` per split. Each
    /// file is stat'ed for the cache fingerprint; a missing file is an error naming it.
    pub fn from_files(
        root: &Path,
        classes: Vec<String>,
        train: &[(String, u32)],
        valid: &[(String, u32)],
    ) -> Result<Self, DataError> {
        let n_classes = classes.len();
        let entries = |files: &[(String, u32)]| -> Result<Vec<ImageEntry>, DataError> {
            files
                .iter()
                .map(|(rel, label)| {
                    if *label as usize >= n_classes {
                        return Err(DataError::BadLabel {
                            path: rel.clone(),
                            label: *label,
                            classes: n_classes,
                        });
                    }
                    let path = contained(root, rel)?;
                    let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, &e))?;
                    let mtime_ns = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    Ok(ImageEntry {
                        path,
                        label: *label,
                        len: meta.len(),
                        mtime_ns,
                    })
                })
                .collect()
        };
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            train: entries(train)?,
            valid: entries(valid)?,
            skipped: Vec::new(),
        })
    }

    /// `(path relative to root, label)` of the given positions of a split.
    pub fn relative(&self, split: Split, positions: &[usize]) -> Vec<(String, u32)> {
        let entries = self.split(split);
        positions
            .iter()
            .filter_map(|&i| entries.get(i))
            .map(|e| {
                (
                    e.path
                        .strip_prefix(&self.root)
                        .unwrap_or(&e.path)
                        .to_string_lossy()
                        .into_owned(),
                    e.label,
                )
            })
            .collect()
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Sorted (name, path, is_dir) of the visible entries of `dir`.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, &e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: a dataset assembled from links is legitimate.
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, &e))?;
        out.push((name, path, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Class folder names of one split, sorted; files directly in the split folder are errors.
fn class_dirs(split_dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    if !split_dir.is_dir() {
        return Err(DataError::MissingSplit {
            path: split_dir.to_path_buf(),
        });
    }
    let mut classes = Vec::new();
    for (name, path, meta) in list_dir(split_dir)? {
        if meta.is_dir() {
            classes.push((name, path));
        } else {
            return Err(DataError::Unlabelled { path });
        }
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses {
            dir: split_dir.to_path_buf(),
        });
    }
    Ok(classes)
}

/// File name extensions of the images ringtrain reads (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The image files of one class folder.
fn class_files(
    dir: &Path,
    label: u32,
    skip_bad: bool,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<ImageEntry>, DataError> {
    let mut files = Vec::new();
    for (name, path, meta) in list_dir(dir)? {
        let problem = if meta.is_dir() {
            Some(DataError::NestedFolder { path: path.clone() })
        } else if !meta.is_file() || !is_image_name(&name) {
            Some(DataError::NotImage { path: path.clone() })
        } else {
            None
        };
        match problem {
            Some(err) if skip_bad => skipped.push(Skipped { path, reason: err }),
            Some(err) => return Err(err),
            None => {
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                files.push(ImageEntry {
                    path,
                    label,
                    len: meta.len(),
                    mtime_ns,
                });
            }
        }
    }
    if files.is_empty() {
        return Err(DataError::EmptyClass {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// Scans `root` into labelled file lists, checking the layout (see the module contract).
pub fn scan_dataset(root: &Path, opts: &ScanOptions) -> Result<DatasetIndex, DataError> {
    if !root.is_dir() {
        return Err(DataError::MissingRoot {
            path: root.to_path_buf(),
        });
    }
    let train_dir = root.join(&opts.train_dir);
    let valid_dir = root.join(&opts.valid_dir);
    let train_classes = class_dirs(&train_dir)?;
    let valid_classes = class_dirs(&valid_dir)?;
    let classes: Vec<String> = train_classes.iter().map(|(n, _)| n.clone()).collect();
    if classes.len() > u32::MAX as usize {
        return Err(DataError::TooLarge {
            what: format!("{} classes", classes.len()),
        });
    }
    let mut skipped = Vec::new();
    let mut train = Vec::new();
    for (label, (_, dir)) in train_classes.iter().enumerate() {
        train.extend(class_files(dir, label as u32, opts.skip_bad, &mut skipped)?);
    }
    let mut valid = Vec::new();
    for (name, dir) in &valid_classes {
        let Some(label) = classes.iter().position(|c| c == name) else {
            return Err(DataError::UnknownClass {
                dir: dir.clone(),
                known: classes.join(","),
            });
        };
        valid.extend(class_files(dir, label as u32, opts.skip_bad, &mut skipped)?);
    }
    Ok(DatasetIndex {
        root: root.to_path_buf(),
        classes,
        train,
        valid,
        skipped,
    })
}

/// `root/rel` when `rel` names a file inside `root`: relative, with plain parts only (no `..`,
/// `.`, root or prefix). Anything else is [`DataError::OutsideRoot`] and is never opened.
///
/// Names come from the coordinator and are not trusted; the data root's content is: links
/// inside it are followed, as the scan does (a dataset assembled from links is legitimate).
pub fn contained(root: &Path, rel: &str) -> Result<PathBuf, DataError> {
    use std::path::Component;
    let refuse = |reason: &str| DataError::OutsideRoot {
        path: rel.to_string(),
        root: root.to_path_buf(),
        reason: reason.to_string(),
    };
    let p = Path::new(rel);
    if rel.is_empty() || rel.contains('\0') {
        return Err(refuse("empty or NUL in the name"));
    }
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse("not a plain relative path (absolute, `..` or `.`)"));
    }
    Ok(root.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    fn layout(root: &Path) {
        for split in ["training", "testing"] {
            for class in ["0", "1", "2"] {
                for i in 0..2 {
                    touch(&root.join(split).join(class).join(format!("{i}.png")));
                }
            }
        }
    }

    #[test]
    fn scans_sorted_classes_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        touch(&dir.path().join("training/1/.DS_Store"));
        let idx = scan_dataset(dir.path(), &ScanOptions::default()).unwrap();
        assert_eq!(idx.classes, vec!["0", "1", "2"]);
        assert_eq!(idx.train.len(), 6);
        assert_eq!(idx.valid.len(), 6);
        assert_eq!(
            idx.train.iter().map(|e| e.label).collect::<Vec<_>>(),
            vec![0, 0, 1, 1, 2, 2]
        );
        assert!(idx.skipped.is_empty());
    }

    #[test]
    fn fingerprint_changes_when_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let a = scan_dataset(dir.path(), &ScanOptions::default())
            .unwrap()
            .fingerprint();
        fs::write(dir.path().join("testing/2/1.png"), b"longer").unwrap();
        let b = scan_dataset(dir.path(), &ScanOptions::default())
            .unwrap()
            .fingerprint();
        assert_ne!(a, b);
    }

    #[test]
    fn missing_root_and_split() {
        let dir = tempfile::tempdir().unwrap();
        let err = scan_dataset(&dir.path().join("nope"), &ScanOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::MissingRoot { .. }));
        fs::create_dir_all(dir.path().join("training/0")).unwrap();
        let err = scan_dataset(dir.path(), &ScanOptions::default()).unwrap_err();
        assert_eq!(
            err,
            DataError::MissingSplit {
                path: dir.path().join("testing")
            }
        );
    }

    #[test]
    fn custom_split_names() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("train/a/x.png"));
        touch(&dir.path().join("valid/a/y.png"));
        let opts = ScanOptions {
            train_dir: "train".into(),
            valid_dir: "valid".into(),
            skip_bad: false,
        };
        let idx = scan_dataset(dir.path(), &opts).unwrap();
        assert_eq!((idx.train.len(), idx.valid.len()), (1, 1));
    }

    #[test]
    fn empty_class_folder_is_an_error_even_with_skip_bad() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::create_dir_all(dir.path().join("training/3")).unwrap();
        for skip_bad in [false, true] {
            let opts = ScanOptions {
                skip_bad,
                ..ScanOptions::default()
            };
            let err = scan_dataset(dir.path(), &opts).unwrap_err();
            assert_eq!(
                err,
                DataError::EmptyClass {
                    dir: dir.path().join("training/3")
                }
            );
        }
    }

    #[test]
    fn testing_class_unknown_to_training() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        touch(&dir.path().join("testing/7/0.png"));
        let err = scan_dataset(dir.path(), &ScanOptions::default()).unwrap_err();
        assert!(
            matches!(err, DataError::UnknownClass { ref dir, .. } if dir.ends_with("testing/7"))
        );
    }

    #[test]
    fn split_without_classes_and_unlabelled_file() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        touch(&dir.path().join("testing/stray.png"));
        let err = scan_dataset(dir.path(), &ScanOptions::default()).unwrap_err();
        assert_eq!(
            err,
            DataError::Unlabelled {
                path: dir.path().join("testing/stray.png")
            }
        );
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("training")).unwrap();
        fs::create_dir_all(dir.path().join("testing/0")).unwrap();
        let err = scan_dataset(dir.path(), &ScanOptions::default()).unwrap_err();
        assert_eq!(
            err,
            DataError::NoClasses {
                dir: dir.path().join("training")
            }
        );
    }

    #[test]
    fn non_png_file_fails_or_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let bad = dir.path().join("training/1/notes.txt");
        touch(&bad);
        let err = scan_dataset(dir.path(), &ScanOptions::default()).unwrap_err();
        assert_eq!(err, DataError::NotImage { path: bad.clone() });
        let opts = ScanOptions {
            skip_bad: true,
            ..ScanOptions::default()
        };
        let idx = scan_dataset(dir.path(), &opts).unwrap();
        assert_eq!(idx.train.len(), 6);
        assert_eq!(
            idx.skipped,
            vec![Skipped {
                path: bad.clone(),
                reason: DataError::NotImage { path: bad }
            }]
        );
    }

    #[test]
    fn nested_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        fs::create_dir_all(dir.path().join("testing/0/deeper")).unwrap();
        let err = scan_dataset(dir.path(), &ScanOptions::default()).unwrap_err();
        assert_eq!(
            err,
            DataError::NestedFolder {
                path: dir.path().join("testing/0/deeper")
            }
        );
    }

    #[test]
    fn only_files_inside_the_root_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("training/0")).unwrap();
        std::fs::write(root.join("training/0/a.png"), b"x").unwrap();
        assert_eq!(
            contained(&root, "training/0/a.png").unwrap(),
            root.join("training/0/a.png")
        );
        for (bad, why) in [
            ("/etc/passwd", "not a plain relative path"),
            ("training/../../secret", "not a plain relative path"),
            ("./training/0/a.png", "not a plain relative path"),
            ("", "empty"),
        ] {
            let err = contained(&root, bad).unwrap_err();
            assert!(matches!(err, DataError::OutsideRoot { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let classes = vec!["0".to_string()];
        let err = DatasetIndex::from_files(
            &root,
            classes.clone(),
            &[("training/0/a.png".into(), 3)],
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("label 3, but there are 1 classes"),
            "{err}"
        );
        let err =
            DatasetIndex::from_files(&root, classes, &[("../secret".into(), 0)], &[]).unwrap_err();
        assert!(err.to_string().contains("refused file ../secret"), "{err}");
    }
}
