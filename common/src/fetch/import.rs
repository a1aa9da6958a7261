//! Conversion of the four MNIST idx files into the fast.ai `mnist_png` folder layout.
//!
//! Owns the idx → PNG mapping; not checksums (`checksum.rs`), parsing (`idx.rs`) or where the
//! output folder lives (`stage.rs`).
//!
//! # Contract
//! * `train-*` becomes `training/<label>/<index>.png`, `t10k-*` becomes `testing/<label>/<index>.png`,
//!   `<index>` being the record's 0-based position in its idx file, so a PNG can always be traced
//!   back to its record.
//! * PNGs are 8-bit grayscale, `cols` wide and `rows` high, pixels copied verbatim.
//! * All four files are parsed and cross-checked before the first PNG is written.
//! * PNGs are encoded in parallel on the rayon pool; the output does not depend on the order.
//!
//! Tests at the bottom of this file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::idx::{self, IdxImages};
use super::progress::{Progress, Unit};
use super::FetchError;

/// One split: its folder name and the stems of its idx files.
struct Split {
    folder: &'static str,
    images: &'static str,
    labels: &'static str,
}

const SPLITS: [Split; 2] = [
    Split {
        folder: "training",
        images: "train-images-idx3-ubyte",
        labels: "train-labels-idx1-ubyte",
    },
    Split {
        folder: "testing",
        images: "t10k-images-idx3-ubyte",
        labels: "t10k-labels-idx1-ubyte",
    },
];

/// The idx file names `idx_dir` must hold (each may also end in `.gz`).
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Writes both splits of the idx files in `idx_dir` as PNG folders under `into` (an existing
/// folder) and returns the number of PNGs written.
pub fn idx_to_pngs(idx_dir: &Path, into: &Path) -> Result<u64, FetchError> {
    // Locate everything first so a missing file fails before any parsing.
    let mut located = Vec::new();
    for split in &SPLITS {
        located.push((
            split,
            idx::locate(idx_dir, split.images)?,
            idx::locate(idx_dir, split.labels)?,
        ));
    }
    let mut parsed = Vec::new();
    for (split, images_path, labels_path) in located {
        let images = idx::read_images(&images_path)?;
        let labels = idx::read_labels(&labels_path)?;
        if images.count != labels.len() {
            return Err(FetchError::CountMismatch {
                images: images_path,
                n_images: images.count,
                labels: labels_path,
                n_labels: labels.len(),
            });
        }
        tracing::info!(
            split = split.folder,
            images = images.count,
            rows = images.rows,
            cols = images.cols,
            "parsed idx"
        );
        parsed.push((split, images, labels));
    }

    let total: usize = parsed.iter().map(|(_, images, _)| images.count).sum();
    let progress = Progress::new("writing PNGs", Unit::Files, Some(total as u64));
    for (split, images, labels) in &parsed {
        write_split(&into.join(split.folder), images, labels, &progress)?;
    }
    progress.finish();
    Ok(total as u64)
}

fn write_split(
    dir: &Path,
    images: &IdxImages,
    labels: &[u8],
    progress: &Progress,
) -> Result<(), FetchError> {
    for label in labels.iter().collect::<BTreeSet<_>>() {
        let class_dir = dir.join(label.to_string());
        std::fs::create_dir_all(&class_dir).map_err(FetchError::io("creating", &class_dir))?;
    }
    let (width, height) = dims(dir, images)?;
    labels.par_iter().enumerate().try_for_each(|(i, label)| {
        let path: PathBuf = dir.join(label.to_string()).join(format!("{i}.png"));
        // count == labels.len() was checked by the caller and pixels.len() by the parser.
        let pixels = images.image(i).ok_or_else(|| FetchError::BadIdx {
            path: path.clone(),
            reason: format!("no image record {i}"),
        })?;
        write_png(&path, width, height, pixels)?;
        progress.inc(1);
        Ok(())
    })
}

/// PNG width and height; idx dimensions are u32 on disk, so this only fails on a hand-built `IdxImages`.
fn dims(dir: &Path, images: &IdxImages) -> Result<(u32, u32), FetchError> {
    let too_big = || FetchError::BadIdx {
        path: dir.to_path_buf(),
        reason: format!(
            "{}x{} images are too large for PNG",
            images.rows, images.cols
        ),
    };
    Ok((
        u32::try_from(images.cols).map_err(|_| too_big())?,
        u32::try_from(images.rows).map_err(|_| too_big())?,
    ))
}

/// Writes one 8-bit grayscale PNG.
pub fn write_png(path: &Path, width: u32, height: u32, pixels: &[u8]) -> Result<(), FetchError> {
    let png_err = |source| FetchError::Png {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(FetchError::io("creating", path))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(pixels).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

#[cfg(test)]
mod tests {
    use super::super::idx::tests::{gz, idx1, idx3};
    use super::*;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// Writes a tiny idx set: 4 training images (labels 3,1,3,0), 2 testing (labels 9,9), 2x3 pixels.
    fn tiny_idx(dir: &Path, test_labels: &[u8]) {
        let img = |seed: u8| -> Vec<u8> {
            (0..6)
                .map(|p| seed.wrapping_mul(17).wrapping_add(p))
                .collect()
        };
        let train: Vec<_> = (0..4).map(img).collect();
        let test: Vec<_> = (10..12).map(img).collect();
        std::fs::write(
            dir.join("train-images-idx3-ubyte.gz"),
            gz(&idx3(2, 3, &train)),
        )
        .unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), idx1(&[3, 1, 3, 0])).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx3(2, 3, &test)).unwrap();
        std::fs::write(
            dir.join("t10k-labels-idx1-ubyte.gz"),
            gz(&idx1(test_labels)),
        )
        .unwrap();
    }

    #[test]
    fn writes_the_mnist_png_layout() {
        let idx_dir = tempfile::tempdir().unwrap();
        tiny_idx(idx_dir.path(), &[9, 9]);
        let out = tempfile::tempdir().unwrap();
        assert_eq!(idx_to_pngs(idx_dir.path(), out.path()).unwrap(), 6);
        for (rel, seed) in [
            ("training/3/0.png", 0u8),
            ("training/1/1.png", 1),
            ("training/3/2.png", 2),
            ("training/0/3.png", 3),
            ("testing/9/0.png", 10),
            ("testing/9/1.png", 11),
        ] {
            let (w, h, pixels) = decode(&out.path().join(rel));
            assert_eq!((w, h), (3, 2), "{rel}");
            let want: Vec<u8> = (0..6)
                .map(|p| seed.wrapping_mul(17).wrapping_add(p))
                .collect();
            assert_eq!(pixels, want, "{rel}");
        }
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let idx_dir = tempfile::tempdir().unwrap();
        tiny_idx(idx_dir.path(), &[9, 9, 9]);
        let out = tempfile::tempdir().unwrap();
        let err = idx_to_pngs(idx_dir.path(), out.path()).unwrap_err();
        assert!(
            matches!(&err, FetchError::CountMismatch { n_images: 2, n_labels: 3, labels, .. }
            if labels.ends_with("t10k-labels-idx1-ubyte.gz")),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read_dir(out.path()).unwrap().count(),
            0,
            "nothing written before the checks pass"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let idx_dir = tempfile::tempdir().unwrap();
        tiny_idx(idx_dir.path(), &[9, 9]);
        std::fs::remove_file(idx_dir.path().join("t10k-images-idx3-ubyte")).unwrap();
        let err = idx_to_pngs(idx_dir.path(), tempfile::tempdir().unwrap().path()).unwrap_err();
        assert!(
            matches!(&err, FetchError::MissingFile { path } if path.ends_with("t10k-images-idx3-ubyte"))
        );
    }
}
