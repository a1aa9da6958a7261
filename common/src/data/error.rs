//! Errors of dataset scanning, decoding and caching. Every variant names the path at fault.

use std::path::PathBuf;

/// What can be wrong with an image-folder dataset.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum DataError {
    /// The dataset root does not exist or is not a folder.
    #[error("dataset folder {path} does not exist or is not a folder")]
    MissingRoot { path: PathBuf },
    /// A file the coordinator named is not inside the data root (absolute, or with `..`);
    /// refused, never opened.
    #[error("refused file {path}: {reason}; only files inside the data root {root} are read")]
    OutsideRoot {
        path: String,
        root: PathBuf,
        reason: String,
    },
    /// A file the coordinator named has a label outside its class list.
    #[error("refused file {path}: label {label}, but there are {classes} classes")]
    BadLabel {
        path: String,
        label: u32,
        classes: usize,
    },
    /// A split folder (`training/`, `testing/`) is missing.
    #[error("split folder {path} is missing (expected ROOT/<split>/<class>/<image files>)")]
    MissingSplit { path: PathBuf },
    /// A split folder has no class subfolders.
    #[error("split folder {dir} has no class subfolders")]
    NoClasses { dir: PathBuf },
    /// A class folder holds no usable image.
    #[error("class folder {dir} holds no images")]
    EmptyClass { dir: PathBuf },
    /// The validation split has a class that the training split lacks.
    #[error("class folder {dir} has no counterpart in the training split (classes: {known})")]
    UnknownClass { dir: PathBuf, known: String },
    /// A file sits directly in a split folder, so it has no label.
    #[error("{path} is not inside a class folder, so it has no label")]
    Unlabelled { path: PathBuf },
    /// A folder inside a class folder (nested classes are not supported).
    #[error("{path} is a folder inside a class folder; expected only image files")]
    NestedFolder { path: PathBuf },
    /// A file that is not an image by its name (`.png`, `.jpg`, `.jpeg`, `.webp`).
    #[error("{path} is not an image file (.png, .jpg, .jpeg or .webp)")]
    NotImage { path: PathBuf },
    /// An image that cannot be decoded (corrupt, truncated, not the format its name says, or a
    /// kind of image ringtrain does not read).
    #[error("cannot decode {path}: {reason}")]
    CorruptImage { path: PathBuf, reason: String },
    /// Without `--image-size`, an image whose size differs from the dataset's (the most common
    /// size); with `--image-size N` every image is resized instead.
    #[error("{path} is {got_w}x{got_h} pixels, expected {want_w}x{want_h} (the dataset's size; --image-size N resizes every image instead)")]
    WrongSize {
        path: PathBuf,
        got_w: u32,
        got_h: u32,
        want_w: u32,
        want_h: u32,
    },
    /// A filesystem error while reading the dataset or its cache.
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// A decoded-image cache file that is corrupt or from another dataset.
    #[error("decoded-image cache {path} is unusable: {reason}")]
    BadCache { path: PathBuf, reason: String },
    /// Too many images for the label or index types.
    #[error("dataset too large: {what}")]
    TooLarge { what: String },
    /// A file a worker left out while decoding (`skip_bad`), with the worker's message.
    #[error("{reason}")]
    Reported { path: PathBuf, reason: String },
    /// Without `--image-size`, the dataset's most common image size is not square.
    #[error("the images are {width}x{height} pixels (e.g. {example}), not square; pass --image-size N to resize them to NxN")]
    NotSquare {
        example: PathBuf,
        width: u32,
        height: u32,
    },
    /// The decoded images of a shard would not fit in the memory this process may use.
    #[error("{what}: needs about {need} but this worker may use {limit} ({source_of_limit}); use more workers (each holds only its shard) or a smaller --image-size")]
    OutOfMemory {
        what: String,
        need: super::memory::Bytes,
        limit: super::memory::Bytes,
        source_of_limit: String,
    },
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            reason: err.to_string(),
        }
    }

    /// True for problems confined to one file, which `skip_bad` may skip.
    pub fn is_per_file(&self) -> bool {
        matches!(
            self,
            DataError::NotImage { .. }
                | DataError::CorruptImage { .. }
                | DataError::WrongSize { .. }
                | DataError::Reported { .. }
        )
    }
}
