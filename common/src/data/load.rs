//! Loading a whole dataset: scan, resolve the geometry from the headers, check the memory
//! estimate, then decoded pixels from the cache or from the image files.
//!
//! Tests: the worker's and the `tests/` crate's data tests exercise this end to end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::cache::{read_cache, write_cache, CacheContents};
use super::memory::{self, Limit};
use super::scan::to_hex;
use super::{
    decode_split, resolve_geometry, scan_dataset, DataError, DatasetIndex, DecodedSplit, Geometry,
    ImageOptions, ScanOptions, Skipped,
};

/// How to load a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Folder layout and `skip_bad`.
    pub scan: ScanOptions,
    /// `--channels` and `--image-size`, resolved by [`load_dataset`] from the images' headers
    /// ([`load_index`] takes the resolved [`Geometry`] instead).
    pub image: ImageOptions,
    /// Where decoded pixels are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Show a progress bar on stderr while decoding (with feature `progress`; ignored without).
    pub progress: bool,
    /// Refuse before decoding when the estimate exceeds the limit; `None`: no check.
    pub memory: Option<MemoryCheck>,
}

/// The memory check before decoding ([`memory`](super::memory)'s formula).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryCheck {
    /// What this process may use; `None`: unknown, nothing is refused.
    pub limit: Option<Limit>,
    /// The training augmentation's padding (`rand_pad`).
    pub pad: u32,
    /// The tensors are built in host memory (CPU training).
    pub tensors_on_host: bool,
    /// Names the images in the refusal, e.g. "rank 1's shard".
    pub what: String,
}

/// A loaded dataset: class names, decoded pixels of both splits and what was skipped.
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// Training images.
    pub train: DecodedSplit,
    /// Validation images.
    pub valid: DecodedSplit,
    /// Files left out because of `skip_bad` (scan and decode), with reasons.
    pub skipped: Vec<Skipped>,
    /// Fingerprint of the file list (see [`super::DatasetIndex::fingerprint`]).
    pub fingerprint: String,
    /// Channels and size of every image.
    pub geometry: Geometry,
    /// True when pixels came from the cache.
    pub from_cache: bool,
}

/// The decoding bar on stderr: drawn when asked for and built with feature `progress`.
struct DecodeBar {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

impl DecodeBar {
    #[cfg(feature = "progress")]
    fn new(len: u64, what: &str, enabled: bool) -> Self {
        use indicatif::{ProgressBar, ProgressStyle};
        if !enabled {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Self { bar }
    }

    #[cfg(not(feature = "progress"))]
    fn new(_len: u64, _what: &str, _enabled: bool) -> Self {
        Self {}
    }

    /// One more file decoded (called from rayon's threads).
    fn tick(&self) {
        #[cfg(feature = "progress")]
        self.bar.inc(1);
    }

    fn finish(self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}

/// Scans `root`, resolves the geometry from the images' headers (see
/// [`resolve_geometry`]) and returns decoded pixels, from the cache when it matches the files on
/// disk.
pub fn load_dataset(root: &Path, opts: &LoadOptions) -> Result<LoadedDataset, DataError> {
    let mut index = scan_dataset(root, &opts.scan)?;
    let geometry = resolve_geometry(
        &mut index,
        &opts.image,
        opts.scan.skip_bad,
        &opts.scan.train_dir,
    )?;
    load_index(&index, geometry, opts)
}

/// Decodes the files of `index` (all of them, or a shard built by the caller) into `geometry`,
/// from the cache when it matches the files on disk.
pub fn load_index(
    index: &DatasetIndex,
    geometry: Geometry,
    opts: &LoadOptions,
) -> Result<LoadedDataset, DataError> {
    let started = Instant::now();
    geometry
        .validate()
        .map_err(|what| DataError::TooLarge { what })?;
    if let Some(m) = &opts.memory {
        let est = memory::estimate(
            index.train.len() as u64,
            index.valid.len() as u64,
            geometry,
            m.pad,
            m.tensors_on_host,
        );
        let what = format!(
            "{} ({} + {} images at {geometry})",
            m.what,
            index.train.len(),
            index.valid.len()
        );
        memory::check(&what, est, m.limit.as_ref())?;
        tracing::info!(decoded = %est.decoded, peak = %est.peak,
            limit = %m.limit.as_ref().map_or("unknown".into(), |l| format!("{} ({})", l.bytes, l.source)),
            "memory estimate for the decoded images");
    }
    let root = index.root.as_path();
    let fingerprint = index.fingerprint();
    let key = {
        let mut h = Sha256::new();
        h.update(fingerprint.as_bytes());
        h.update(format!(
            "|{}x{}x{}|resize={}|skip_bad={}",
            geometry.channels, geometry.size, geometry.size, geometry.resize, opts.scan.skip_bad
        ));
        to_hex(&h.finalize())
    };
    let cache_path = opts
        .cache_dir
        .as_ref()
        .map(|d| d.join(format!("{}.rtc", &key[..32])));
    if let Some(path) = &cache_path {
        if path.exists() {
            match read_cache(path, &key) {
                Ok(c) => {
                    tracing::info!(cache = %path.display(), train = c.train.len(), valid = c.valid.len(),
                        ms = started.elapsed().as_millis() as u64, "decoded images loaded from cache");
                    return Ok(LoadedDataset {
                        classes: c.classes,
                        train: c.train,
                        valid: c.valid,
                        skipped: c.skipped,
                        fingerprint,
                        geometry,
                        from_cache: true,
                    });
                }
                Err(err) => tracing::warn!(%err, "ignoring decoded-image cache; decoding again"),
            }
        }
    }
    let mut skipped = index.skipped.clone();
    let bar = DecodeBar::new(index.train.len() as u64, "decode train", opts.progress);
    let tick = || bar.tick();
    let (train, s) = decode_split(&index.train, geometry, opts.scan.skip_bad, Some(&tick))?;
    bar.finish();
    skipped.extend(s);
    let bar = DecodeBar::new(index.valid.len() as u64, "decode valid", opts.progress);
    let tick = || bar.tick();
    let (valid, s) = decode_split(&index.valid, geometry, opts.scan.skip_bad, Some(&tick))?;
    bar.finish();
    skipped.extend(s);
    for class in 0..index.classes.len() as u32 {
        // skip_bad may have emptied a class entirely; that changes the label space, so refuse.
        if index.train.iter().any(|e| e.label == class) && !train.labels.contains(&class) {
            let dir = root
                .join(&opts.scan.train_dir)
                .join(&index.classes[class as usize]);
            return Err(DataError::EmptyClass { dir });
        }
    }
    tracing::info!(
        train = train.len(),
        valid = valid.len(),
        skipped = skipped.len(),
        ms = started.elapsed().as_millis() as u64,
        "decoded images"
    );
    let contents = CacheContents {
        key,
        classes: index.classes.clone(),
        train,
        valid,
        skipped,
    };
    if let Some(path) = &cache_path {
        // A cache that cannot be written only costs time next start; say so and go on.
        if let Err(err) = write_cache(path, &contents) {
            tracing::warn!(%err, "could not write the decoded-image cache");
        }
    }
    Ok(LoadedDataset {
        classes: contents.classes,
        train: contents.train,
        valid: contents.valid,
        skipped: contents.skipped,
        fingerprint,
        geometry,
        from_cache: false,
    })
}
