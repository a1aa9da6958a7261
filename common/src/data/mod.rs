//! Image-folder datasets in the fast.ai `mnist_png` layout, without libtorch.
//!
//! ```text
//! ROOT/training/<class>/*.{png,jpg,jpeg,webp}   classes = sorted subfolder names of training
//! ROOT/testing/<class>/*.{png,jpg,jpeg,webp}    every testing class must exist in training
//! ```
//!
//! Owns scanning (`scan`), reading headers to resolve channels and size (`probe`, `geometry`),
//! decoding and resizing to one contiguous `u8` buffer per split (`decode`), the memory
//! estimate (`memory`), the decoded-image cache (`cache`) and per-channel pixel statistics
//! (`stats`). Not tensors, augmentation or batching: those live in the worker.
//!
//! # Contract
//! * Structural problems are always errors: a missing split folder, a split with no class
//!   folders, an empty class folder, a testing class unknown to training, a file that is not
//!   inside a class folder. Skipping them would change the label space.
//! * Per-file problems (a corrupt or truncated image, a kind of image that cannot be read, a
//!   size other than the dataset's when no `--image-size` is given, a file that is not an image
//!   by its name) are errors naming the path, unless the caller asked for `skip_bad`: then the
//!   file is left out and reported in [`Skipped`], so nothing is dropped silently.
//! * Hidden entries (names starting with `.`) are ignored everywhere.
//! * Images are converted to the run's [`Geometry`]: one channel like PIL's `convert('L')` or
//!   three like `convert('RGB')` (alpha dropped), and N×N (see `geometry`).

pub mod augment;
pub mod cache;
pub mod decode;
pub mod error;
pub mod geometry;
pub mod load;
pub mod memory;
pub mod probe;
pub mod scan;
pub mod stats;

pub use augment::Augment;
pub use decode::{decode_image, decode_split, DecodedSplit};
pub use error::DataError;
pub use geometry::{Channels, Geometry, ImageOptions};
pub use load::{load_dataset, load_index, LoadOptions, LoadedDataset, MemoryCheck};
pub use probe::resolve_geometry;
pub use scan::{scan_dataset, DatasetIndex, ImageEntry, ScanOptions};
pub use stats::PixelStats;

use std::path::PathBuf;

/// A file left out because the user asked for `skip_bad`, with the reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// The file that was left out.
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: DataError,
}

/// Which part of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training images (`training/` by default).
    Train,
    /// The validation images (`testing/` by default).
    Valid,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Valid => "valid",
        })
    }
}
