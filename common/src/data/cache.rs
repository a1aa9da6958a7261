//! The decoded-image cache: one file per (dataset fingerprint, decode options), so that a second
//! start does not decode 70,000 PNGs again.
//!
//! # Format (little-endian)
//! ```text
//! b"RTDCACHE" | u32 version | u32 header_len | header (JSON) |
//! train pixels | train labels (u32 each) | valid pixels | valid labels | sha256 of all before
//! ```
//! Replaced atomically with [`crate::fsio::write_atomic`], so readers never see a partial file,
//! even while another process writes the same cache. A file that fails any check is reported as
//! [`DataError::BadCache`]; callers then re-decode.
//!
//! Tests: `tests` module at the bottom.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DataError, DecodedSplit, Skipped};

const MAGIC: &[u8; 8] = b"RTDCACHE";
/// 2: planar channels (`channels` in the header), images of any format and size.
const VERSION: u32 = 2;

/// Everything a cache file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheContents {
    /// The cache key this file was written for.
    pub key: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Decoded training images.
    pub train: DecodedSplit,
    /// Decoded validation images.
    pub valid: DecodedSplit,
    /// Files left out while decoding (with `skip_bad`).
    pub skipped: Vec<Skipped>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    key: String,
    classes: Vec<String>,
    channels: u32,
    width: u32,
    height: u32,
    n_train: u64,
    n_valid: u64,
    skipped: Vec<Skipped>,
}

fn push_split(out: &mut Vec<u8>, s: &DecodedSplit) {
    out.extend_from_slice(&s.pixels);
    for l in &s.labels {
        out.extend_from_slice(&l.to_le_bytes());
    }
}

/// Writes `c` to `path` atomically ([`crate::fsio::write_atomic`]), creating its folder.
pub fn write_cache(path: &Path, c: &CacheContents) -> Result<(), DataError> {
    let header = Header {
        key: c.key.clone(),
        classes: c.classes.clone(),
        channels: c.train.channels,
        width: c.train.width,
        height: c.train.height,
        n_train: c.train.len() as u64,
        n_valid: c.valid.len() as u64,
        skipped: c.skipped.clone(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| DataError::BadCache {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let mut buf =
        Vec::with_capacity(64 + header.len() + c.train.pixels.len() * 2 + c.valid.pixels.len() * 2);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
    buf.extend_from_slice(&header);
    push_split(&mut buf, &c.train);
    push_split(&mut buf, &c.valid);
    let digest = Sha256::digest(&buf);
    buf.extend_from_slice(&digest);

    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, &e))?;
    crate::fsio::write_atomic(path, &buf).map_err(|e| DataError::io(e.path(), e.io_error()))
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn split(&mut self, n: u64, c: u32, w: u32, h: u32) -> Option<DecodedSplit> {
        let n = usize::try_from(n).ok()?;
        let image = (c as usize)
            .checked_mul(w as usize)?
            .checked_mul(h as usize)?;
        let pixels = self.take(n.checked_mul(image)?)?.to_vec();
        let labels = self
            .take(n.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(DecodedSplit {
            channels: c,
            height: h,
            width: w,
            pixels,
            labels,
        })
    }
}

/// Reads a cache file, checking magic, version, checksum, sizes and that it was written for `key`.
pub fn read_cache(path: &Path, key: &str) -> Result<CacheContents, DataError> {
    let bad = |reason: &str| DataError::BadCache {
        path: path.into(),
        reason: reason.into(),
    };
    let data = std::fs::read(path).map_err(|e| DataError::io(path, &e))?;
    if data.len() < MAGIC.len() + 8 + 32 || &data[..8] != MAGIC {
        return Err(bad("not a ringtrain cache file"));
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch (truncated or corrupt)"));
    }
    let mut cur = Cursor { data: body, pos: 8 };
    let version = cur.u32().ok_or_else(|| bad("short header"))?;
    if version != VERSION {
        return Err(bad(&format!(
            "format version {version}, expected {VERSION}"
        )));
    }
    let hlen = cur.u32().ok_or_else(|| bad("short header"))? as usize;
    let header: Header = serde_json::from_slice(cur.take(hlen).ok_or_else(|| bad("short header"))?)
        .map_err(|e| bad(&format!("header: {e}")))?;
    if header.key != key {
        return Err(bad("written for another dataset or options"));
    }
    let train = cur
        .split(header.n_train, header.channels, header.width, header.height)
        .ok_or_else(|| bad("short data"))?;
    let valid = cur
        .split(header.n_valid, header.channels, header.width, header.height)
        .ok_or_else(|| bad("short data"))?;
    if cur.pos != body.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(CacheContents {
        key: header.key,
        classes: header.classes,
        train,
        valid,
        skipped: header.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> CacheContents {
        let split = |n: usize| DecodedSplit {
            channels: 3,
            height: 2,
            width: 3,
            pixels: (0..n * 18).map(|i| i as u8).collect(),
            labels: (0..n as u32).collect(),
        };
        CacheContents {
            key: "k1".into(),
            classes: vec!["a".into(), "b".into()],
            train: split(3),
            valid: split(2),
            skipped: vec![Skipped {
                path: "/x.txt".into(),
                reason: DataError::NotImage {
                    path: "/x.txt".into(),
                },
            }],
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.rtc");
        write_cache(&path, &contents()).unwrap();
        assert_eq!(read_cache(&path, "k1").unwrap(), contents());
    }

    #[test]
    fn wrong_key_truncated_and_flipped_bytes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.rtc");
        write_cache(&path, &contents()).unwrap();
        assert!(matches!(
            read_cache(&path, "other"),
            Err(DataError::BadCache { .. })
        ));
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 5]).unwrap();
        assert!(matches!(
            read_cache(&path, "k1"),
            Err(DataError::BadCache { .. })
        ));
        let mut flipped = data.clone();
        flipped[40] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            read_cache(&path, "k1"),
            Err(DataError::BadCache { .. })
        ));
    }
}
