//! The idx file format of the original MNIST distribution (LeCun et al.), plain or gzip'd.
//!
//! Owns parsing only; turning records into PNG folders is `import.rs`.
//!
//! # Format
//! ```text
//! images (idx3):  0x00000803 | count u32 BE | rows u32 BE | cols u32 BE | count*rows*cols u8 pixels
//! labels (idx1):  0x00000801 | count u32 BE | count u8 labels
//! ```
//! Anything else (other magic, short or over-long data) is [`FetchError::BadIdx`] naming the file.
//!
//! Tests at the bottom of this file.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::FetchError;

const MAGIC_IMAGES: u32 = 0x0000_0803;
const MAGIC_LABELS: u32 = 0x0000_0801;

/// All images of an idx3 file, row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image (28 for MNIST).
    pub rows: usize,
    /// Columns per image (28 for MNIST).
    pub cols: usize,
    /// `count * rows * cols` pixels.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The pixels of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.rows * self.cols;
        self.pixels.get(i * size..(i + 1) * size)
    }
}

/// Finds `dir/stem`, else `dir/stem.gz`; [`FetchError::MissingFile`] names `dir/stem` if neither exists.
pub fn locate(dir: &Path, stem: &str) -> Result<PathBuf, FetchError> {
    let plain = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if plain.is_file() {
        Ok(plain)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(FetchError::MissingFile { path: plain })
    }
}

/// Reads an idx3 images file (gunzipped on the fly when its name ends in `.gz`).
pub fn read_images(path: &Path) -> Result<IdxImages, FetchError> {
    parse_images(path, &read_maybe_gz(path)?)
}

/// Reads an idx1 labels file (gunzipped on the fly when its name ends in `.gz`).
pub fn read_labels(path: &Path) -> Result<Vec<u8>, FetchError> {
    parse_labels(path, &read_maybe_gz(path)?)
}

/// Parses idx3 bytes; `path` only names the file in errors.
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages, FetchError> {
    let bad = |reason: String| FetchError::BadIdx {
        path: path.to_path_buf(),
        reason,
    };
    let header = header::<4>(path, bytes, MAGIC_IMAGES)?;
    let [_, count, rows, cols] = header.map(|v| v as usize);
    let want = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .ok_or_else(|| bad(format!("dimensions {count}x{rows}x{cols} overflow")))?;
    let pixels = body(path, &bytes[16..], want, "pixel")?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: pixels.to_vec(),
    })
}

/// Parses idx1 bytes; `path` only names the file in errors.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, FetchError> {
    let [_, count] = header::<2>(path, bytes, MAGIC_LABELS)?;
    Ok(body(path, &bytes[8..], count as usize, "label")?.to_vec())
}

/// The first `N` big-endian u32 words, the first being the magic, which must equal `magic`.
fn header<const N: usize>(path: &Path, bytes: &[u8], magic: u32) -> Result<[u32; N], FetchError> {
    let bad = |reason: String| FetchError::BadIdx {
        path: path.to_path_buf(),
        reason,
    };
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Magic first: an images file given where labels belong should say so, not "truncated".
    if let Some(found) = word(0).filter(|&m| m != magic) {
        return Err(bad(format!(
            "bad magic {found:#010x}, expected {magic:#010x}"
        )));
    }
    let mut words = [0u32; N];
    for (i, w) in words.iter_mut().enumerate() {
        *w = word(i).ok_or_else(|| {
            bad(format!(
                "truncated header: {} bytes, need {}",
                bytes.len(),
                4 * N
            ))
        })?;
    }
    Ok(words)
}

/// Exactly `want` bytes of data after the header.
fn body<'a>(path: &Path, data: &'a [u8], want: usize, what: &str) -> Result<&'a [u8], FetchError> {
    if data.len() == want {
        return Ok(data);
    }
    let reason = if data.len() < want {
        format!(
            "truncated: header promises {want} {what} bytes, file has {}",
            data.len()
        )
    } else {
        format!(
            "{} trailing bytes after {want} {what} bytes",
            data.len() - want
        )
    };
    Err(FetchError::BadIdx {
        path: path.to_path_buf(),
        reason,
    })
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, FetchError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FetchError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => FetchError::io("opening", path)(e),
    })?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(|e| FetchError::BadIdx {
                path: path.to_path_buf(),
                reason: format!("corrupt gzip stream: {e}"),
            })?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(FetchError::io("reading", path))?;
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    /// idx3 bytes for `images` (each `rows*cols` long).
    pub(crate) fn idx3(rows: u32, cols: u32, images: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [MAGIC_IMAGES, images.len() as u32, rows, cols] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        images.iter().for_each(|img| out.extend_from_slice(img));
        out
    }

    /// idx1 bytes for `labels`.
    pub(crate) fn idx1(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [MAGIC_LABELS, labels.len() as u32] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(labels);
        out
    }

    pub(crate) fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn three_images() -> Vec<Vec<u8>> {
        (0..3u8)
            .map(|i| (0..6).map(|p| i * 10 + p).collect())
            .collect()
    }

    #[test]
    fn reads_plain_and_gzipped_images() {
        let dir = tempfile::tempdir().unwrap();
        let raw = idx3(2, 3, &three_images());
        std::fs::write(dir.path().join("imgs"), &raw).unwrap();
        std::fs::write(dir.path().join("imgs.gz"), gz(&raw)).unwrap();
        for name in ["imgs", "imgs.gz"] {
            let images = read_images(&dir.path().join(name)).unwrap();
            assert_eq!((images.count, images.rows, images.cols), (3, 2, 3));
            assert_eq!(images.image(2), Some(&[20, 21, 22, 23, 24, 25][..]));
            assert_eq!(images.image(3), None);
        }
    }

    #[test]
    fn reads_labels_and_locates_gz() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("labels.gz"), gz(&idx1(&[7, 0, 9]))).unwrap();
        let path = locate(dir.path(), "labels").unwrap();
        assert_eq!(path, dir.path().join("labels.gz"));
        assert_eq!(read_labels(&path).unwrap(), vec![7, 0, 9]);
        let missing = locate(dir.path(), "nope");
        assert!(
            matches!(missing, Err(FetchError::MissingFile { path }) if path == dir.path().join("nope"))
        );
    }

    #[test]
    fn bad_magic_is_reported() {
        let p = Path::new("x-idx");
        let labels_as_images = parse_images(p, &idx1(&[1, 2, 3]));
        assert!(
            matches!(&labels_as_images, Err(FetchError::BadIdx { reason, .. }) if reason.contains("magic"))
        );
        let images_as_labels = parse_labels(p, &idx3(2, 3, &three_images()));
        assert!(matches!(&images_as_labels, Err(FetchError::BadIdx { path, .. }) if path == p));
    }

    #[test]
    fn truncated_and_overlong_data_are_reported() {
        let p = Path::new("x-idx");
        let raw = idx3(2, 3, &three_images());
        let short = parse_images(p, &raw[..raw.len() - 1]);
        assert!(
            matches!(&short, Err(FetchError::BadIdx { reason, .. }) if reason.starts_with("truncated"))
        );
        let header_only = parse_images(p, &raw[..10]);
        assert!(
            matches!(&header_only, Err(FetchError::BadIdx { reason, .. }) if reason.contains("header"))
        );
        let mut long = idx1(&[1, 2]);
        long.push(3);
        assert!(
            matches!(parse_labels(p, &long), Err(FetchError::BadIdx { reason, .. }) if reason.contains("trailing"))
        );
        assert!(matches!(
            parse_labels(p, &[]),
            Err(FetchError::BadIdx { .. })
        ));
    }

    #[test]
    fn huge_dimensions_do_not_overflow() {
        let mut raw = Vec::new();
        for word in [MAGIC_IMAGES, u32::MAX, u32::MAX, u32::MAX] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        assert!(matches!(
            parse_images(Path::new("x"), &raw),
            Err(FetchError::BadIdx { .. })
        ));
    }

    #[test]
    fn truncated_gzip_is_a_bad_idx_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.gz");
        let packed = gz(&idx1(&[5; 5000]));
        std::fs::write(&path, &packed[..packed.len() / 2]).unwrap();
        assert!(matches!(read_labels(&path), Err(FetchError::BadIdx { path: p, .. }) if p == path));
    }
}
