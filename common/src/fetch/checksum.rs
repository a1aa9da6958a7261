//! Checksums: full-file sha256, fastai v1's quick check, and `SHA256SUMS` lists.
//!
//! Owns hashing and comparison only; what to check against is decided by the caller (`mod.rs`).
//! Digests are computed while bytes stream past ([`Digests::update`]), so a download is read once.
//!
//! Tests at the bottom of this file.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest as _, Md5};
use rayon::prelude::*;
use sha2::Sha256;

use super::FetchError;

/// fastai v1 hashes only this many leading bytes (`_check_file`: `hashlib.md5(f.read(2**20))`).
const FASTAI_MD5_PREFIX: u64 = 1 << 20;

/// A checksum a file must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// sha256 of the whole file, lowercase hex.
    Sha256(String),
    /// fastai v1's `_check_file`: the file size and the md5 of its first 2**20 bytes.
    FastaiV1 {
        /// Size in bytes.
        size: u64,
        /// md5 (lowercase hex) of the first MiB.
        md5_first_mib: &'static str,
    },
}

/// Running digests of a byte stream: size, sha256, md5 of the first MiB.
#[derive(Debug, Clone, Default)]
pub struct Digests {
    size: u64,
    sha256: Sha256,
    md5_prefix: Md5,
}

impl Digests {
    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, buf: &[u8]) {
        let prefix_left = FASTAI_MD5_PREFIX.saturating_sub(self.size);
        let take = buf
            .len()
            .min(usize::try_from(prefix_left).unwrap_or(usize::MAX));
        self.md5_prefix.update(&buf[..take]);
        self.sha256.update(buf);
        self.size += buf.len() as u64;
    }

    /// The final values.
    pub fn finish(self) -> Digested {
        Digested {
            size: self.size,
            sha256: hex(&self.sha256.finalize()),
            md5_first_mib: hex(&self.md5_prefix.finalize()),
        }
    }
}

/// The digests of a complete stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    /// Total bytes.
    pub size: u64,
    /// sha256 of everything, lowercase hex.
    pub sha256: String,
    /// md5 of the first 2**20 bytes, lowercase hex.
    pub md5_first_mib: String,
}

impl Digested {
    /// Checks `expected`; `what` (a URL or path) names the subject in the error.
    pub fn check(&self, what: &str, expected: &Expected) -> Result<(), FetchError> {
        let mismatch = |algo, want: String, got: String| FetchError::ChecksumMismatch {
            what: what.to_owned(),
            algo,
            want,
            got,
        };
        match expected {
            Expected::Sha256(want) if *want != self.sha256 => {
                Err(mismatch("sha256", want.clone(), self.sha256.clone()))
            }
            Expected::FastaiV1 { size, .. } if *size != self.size => {
                Err(mismatch("size", size.to_string(), self.size.to_string()))
            }
            Expected::FastaiV1 { md5_first_mib, .. } if *md5_first_mib != self.md5_first_mib => {
                Err(mismatch(
                    "md5 of first MiB",
                    (*md5_first_mib).to_owned(),
                    self.md5_first_mib.clone(),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Validates a user-given sha256 (64 hex digits, any case) and returns it lowercase.
pub fn parse_sha256(value: &str) -> Result<String, FetchError> {
    let v = value.trim();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(FetchError::InvalidSha256 {
            value: value.to_owned(),
        })
    }
}

/// Digests of a whole file, streamed.
pub fn digest_file(path: &Path) -> Result<Digested, FetchError> {
    let mut file = File::open(path).map_err(FetchError::io("opening", path))?;
    let mut digests = Digests::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(FetchError::io("reading", path))?;
        if n == 0 {
            return Ok(digests.finish());
        }
        digests.update(&buf[..n]);
    }
}

/// Verifies every file listed in `dir/SHA256SUMS` (sha256sum format), in parallel.
///
/// Returns how many files were verified, or `None` when `dir` has no `SHA256SUMS`. A listed file that
/// is missing is [`FetchError::MissingFile`]; a wrong one is [`FetchError::ChecksumMismatch`] naming it.
pub fn verify_sha256sums(dir: &Path) -> Result<Option<usize>, FetchError> {
    let list = dir.join("SHA256SUMS");
    let text = match std::fs::read_to_string(&list) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FetchError::io("reading", &list)(e)),
    };
    let entries = parse_sha256sums(&list, &text)?;
    entries.par_iter().try_for_each(|(want, name)| {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(FetchError::MissingFile { path });
        }
        let got = digest_file(&path)?;
        got.check(&path.display().to_string(), &Expected::Sha256(want.clone()))?;
        tracing::debug!(file = %path.display(), "sha256 ok");
        Ok(())
    })?;
    Ok(Some(entries.len()))
}

/// Parses sha256sum output: `<hex>  <name>` (text mode) or `<hex> *<name>` (binary mode) per line;
/// blank lines and `#` comments are skipped.
fn parse_sha256sums(path: &Path, text: &str) -> Result<Vec<(String, PathBuf)>, FetchError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || FetchError::BadChecksumList {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let (hash, rest) = line.split_once(' ').ok_or_else(bad)?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(bad)?;
        let hash = parse_sha256(hash).map_err(|_| bad())?;
        if name.is_empty() {
            return Err(bad());
        }
        entries.push((hash, PathBuf::from(name)));
    }
    Ok(entries)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `printf abc | sha256sum`, `printf abc | md5sum`
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";

    #[test]
    fn digests_known_vectors() {
        let mut d = Digests::default();
        d.update(b"a");
        d.update(b"bc");
        let got = d.finish();
        assert_eq!(
            got,
            Digested {
                size: 3,
                sha256: ABC_SHA256.into(),
                md5_first_mib: ABC_MD5.into()
            }
        );
    }

    #[test]
    fn md5_covers_only_the_first_mib() {
        let data = vec![7u8; (1 << 20) + 1000];
        let mut whole = Digests::default();
        // Uneven chunks straddling the 1 MiB boundary.
        for chunk in data.chunks(333_333) {
            whole.update(chunk);
        }
        let mut prefix = Digests::default();
        prefix.update(&data[..1 << 20]);
        assert_eq!(whole.finish().md5_first_mib, prefix.finish().md5_first_mib);
    }

    #[test]
    fn check_reports_each_mismatch() {
        let got = Digested {
            size: 3,
            sha256: ABC_SHA256.into(),
            md5_first_mib: ABC_MD5.into(),
        };
        assert!(got.check("x", &Expected::Sha256(ABC_SHA256.into())).is_ok());
        assert!(got
            .check(
                "x",
                &Expected::FastaiV1 {
                    size: 3,
                    md5_first_mib: ABC_MD5
                }
            )
            .is_ok());
        let wrong_sha = got.check("x", &Expected::Sha256("0".repeat(64)));
        assert!(matches!(
            wrong_sha,
            Err(FetchError::ChecksumMismatch { algo: "sha256", .. })
        ));
        let wrong_size = got.check(
            "x",
            &Expected::FastaiV1 {
                size: 4,
                md5_first_mib: ABC_MD5,
            },
        );
        assert!(matches!(
            wrong_size,
            Err(FetchError::ChecksumMismatch { algo: "size", .. })
        ));
        let wrong_md5 = got.check(
            "x",
            &Expected::FastaiV1 {
                size: 3,
                md5_first_mib: "00",
            },
        );
        assert!(matches!(
            wrong_md5,
            Err(FetchError::ChecksumMismatch {
                algo: "md5 of first MiB",
                ..
            })
        ));
    }

    #[test]
    fn parse_sha256_validates() {
        assert_eq!(
            parse_sha256(&ABC_SHA256.to_uppercase()).ok(),
            Some(ABC_SHA256.to_owned())
        );
        assert!(matches!(
            parse_sha256("abc"),
            Err(FetchError::InvalidSha256 { .. })
        ));
        assert!(matches!(
            parse_sha256(&"g".repeat(64)),
            Err(FetchError::InvalidSha256 { .. })
        ));
    }

    #[test]
    fn sha256sums_verified_and_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"abc").unwrap();
        std::fs::write(dir.path().join("b.bin"), b"abc").unwrap();
        assert_eq!(
            verify_sha256sums(dir.path()).unwrap(),
            None,
            "no list, nothing checked"
        );

        let list = format!("{ABC_SHA256}  a.bin\n\n# comment\n{ABC_SHA256} *b.bin\n");
        std::fs::write(dir.path().join("SHA256SUMS"), list).unwrap();
        assert_eq!(verify_sha256sums(dir.path()).unwrap(), Some(2));

        std::fs::write(dir.path().join("b.bin"), b"abd").unwrap();
        match verify_sha256sums(dir.path()) {
            Err(FetchError::ChecksumMismatch { what, want, .. }) => {
                assert!(what.ends_with("b.bin"), "{what}");
                assert_eq!(want, ABC_SHA256);
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }

        std::fs::remove_file(dir.path().join("b.bin")).unwrap();
        let missing = verify_sha256sums(dir.path());
        assert!(
            matches!(missing, Err(FetchError::MissingFile { path }) if path.ends_with("b.bin"))
        );
    }

    #[test]
    fn malformed_sha256sums_line_is_reported() {
        let p = Path::new("SHA256SUMS");
        let bad = parse_sha256sums(p, &format!("{ABC_SHA256}  ok\nnot-a-hash  file\n"));
        assert!(matches!(
            bad,
            Err(FetchError::BadChecksumList { line: 2, .. })
        ));
        assert!(matches!(
            parse_sha256sums(p, ABC_SHA256),
            Err(FetchError::BadChecksumList { line: 1, .. })
        ));
    }
}
