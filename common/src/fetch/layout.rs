//! The fast.ai `mnist_png` folder layout and its check.
//!
//! ```text
//! DEST/training/<class>/*.png     one folder per class, same class names in both splits
//! DEST/testing/<class>/*.png
//! ```
//! Owns counting and validating that shape; not decoding the images (the `data` module does that
//! when training starts).
//!
//! Tests at the bottom of this file.

use std::fmt;
use std::path::Path;

use super::FetchError;

/// The split folders, in the order they are reported.
pub const SPLITS: [&str; 2] = ["training", "testing"];

/// Counts for one split folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSummary {
    /// Files across all class folders.
    pub images: u64,
    /// Number of class folders.
    pub classes: usize,
}

/// Counts for a whole dataset folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutSummary {
    /// `training/`.
    pub training: SplitSummary,
    /// `testing/`.
    pub testing: SplitSummary,
}

impl fmt::Display for LayoutSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "training {} images in {} classes, testing {} images in {} classes",
            self.training.images, self.training.classes, self.testing.images, self.testing.classes
        )
    }
}

/// True when `dir` has both split folders (whatever their content).
pub fn has_splits(dir: &Path) -> bool {
    SPLITS.iter().all(|s| dir.join(s).is_dir())
}

/// Checks that `root` has the layout (both splits, at least one non-empty class folder each, the
/// same class names in both) and counts it.
pub fn check_layout(root: &Path) -> Result<LayoutSummary, FetchError> {
    let [training, testing] = SPLITS.map(|split| scan_split(&root.join(split)));
    let (training, train_classes) = training?;
    let (testing, test_classes) = testing?;
    if train_classes != test_classes {
        return Err(FetchError::BadLayout {
            dir: root.to_path_buf(),
            reason: format!(
                "training has classes {train_classes:?} but testing has {test_classes:?}"
            ),
        });
    }
    Ok(LayoutSummary { training, testing })
}

/// Counts one split folder and returns its sorted class names.
fn scan_split(dir: &Path) -> Result<(SplitSummary, Vec<String>), FetchError> {
    let bad = |reason: String| FetchError::BadLayout {
        dir: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(bad("missing folder".to_owned()));
    }
    let mut classes = Vec::new();
    let mut images = 0u64;
    for entry in list(dir)? {
        // Stray files next to the class folders (.DS_Store, READMEs) are not classes.
        if !entry.is_dir() {
            continue;
        }
        let n = list(&entry)?.iter().filter(|p| p.is_file()).count() as u64;
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if n == 0 {
            return Err(bad(format!("class folder {name} has no files")));
        }
        images += n;
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(bad("no class folders".to_owned()));
    }
    classes.sort();
    Ok((
        SplitSummary {
            images,
            classes: classes.len(),
        },
        classes,
    ))
}

fn list(dir: &Path) -> Result<Vec<std::path::PathBuf>, FetchError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(FetchError::io("listing", dir))? {
        out.push(entry.map_err(FetchError::io("listing", dir))?.path());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn counts_a_good_layout() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "training/0/a.png",
            "training/0/b.png",
            "training/1/c.png",
            "testing/0/d.png",
            "testing/1/e.png",
            "testing/.DS_Store",
        ] {
            touch(dir.path(), rel);
        }
        assert!(has_splits(dir.path()));
        let summary = check_layout(dir.path()).unwrap();
        assert_eq!(
            summary.training,
            SplitSummary {
                images: 3,
                classes: 2
            }
        );
        assert_eq!(
            summary.testing,
            SplitSummary {
                images: 2,
                classes: 2
            }
        );
        assert_eq!(
            summary.to_string(),
            "training 3 images in 2 classes, testing 2 images in 2 classes"
        );
    }

    #[test]
    fn each_layout_rule_is_enforced() {
        let missing_split = tempfile::tempdir().unwrap();
        touch(missing_split.path(), "training/0/a.png");
        assert!(!has_splits(missing_split.path()));
        let err = check_layout(missing_split.path()).unwrap_err();
        assert!(
            matches!(&err, FetchError::BadLayout { dir, .. } if dir.ends_with("testing")),
            "{err:?}"
        );

        let no_classes = tempfile::tempdir().unwrap();
        touch(no_classes.path(), "training/0/a.png");
        touch(no_classes.path(), "testing/stray.png");
        let err = check_layout(no_classes.path()).unwrap_err();
        assert!(
            matches!(&err, FetchError::BadLayout { reason, .. } if reason == "no class folders")
        );

        let empty_class = tempfile::tempdir().unwrap();
        touch(empty_class.path(), "training/0/a.png");
        touch(empty_class.path(), "testing/0/a.png");
        std::fs::create_dir(empty_class.path().join("training/1")).unwrap();
        let err = check_layout(empty_class.path()).unwrap_err();
        assert!(
            matches!(&err, FetchError::BadLayout { reason, .. } if reason.contains("no files"))
        );

        let different = tempfile::tempdir().unwrap();
        touch(different.path(), "training/0/a.png");
        touch(different.path(), "testing/1/a.png");
        let err = check_layout(different.path()).unwrap_err();
        assert!(matches!(&err, FetchError::BadLayout { reason, .. } if reason.contains("classes")));
    }
}
