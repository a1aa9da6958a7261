//! `MANIFEST.json`: the size and sha256 of every file of a checkpoint, written last, so that a
//! checkpoint is complete exactly when its manifest verifies.
//!
//! ```text
//! {"format": 1, "files": [{"name": "model.safetensors", "bytes": 166232, "sha256": "ab12…"}, …]}
//! ```
//!
//! Owns building and verifying manifests; not where checkpoints live (`store.rs`).
//!
//! # Contract
//! * [`verify`] accepts a folder only if the manifest parses, has format [`FORMAT`], lists
//!   [`MODEL_FILE`], [`OPTIMIZER_FILE`] and [`STATE_FILE`], every listed file is a plain name
//!   listed once and present with the listed size and sha256, and `state.json` parses with
//!   format [`FORMAT`]. Anything else is [`CheckpointError::Corrupt`] naming the folder and the
//!   first problem found, except an unreadable file, which is [`CheckpointError::Read`].
//!
//! Tests: `tests` at the bottom; the store's tests corrupt real folders.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    CheckpointError, CheckpointState, Loaded, FORMAT, MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE,
    STATE_FILE,
};

/// One file of a checkpoint as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the contents.
    pub sha256: String,
}

/// The contents of `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] when written by this build.
    pub format: u32,
    /// Every other file of the checkpoint.
    pub files: Vec<ManifestEntry>,
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl Manifest {
    /// The manifest of `files` (name, contents), in the given order.
    pub fn of(files: &[(&str, &[u8])]) -> Self {
        Manifest {
            format: FORMAT,
            files: files
                .iter()
                .map(|(name, bytes)| ManifestEntry {
                    name: (*name).to_string(),
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(bytes),
                })
                .collect(),
        }
    }
}

/// A name that stays inside the checkpoint folder.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != MANIFEST_FILE
        && !name.contains(['/', '\\', '\0'])
}

/// Verifies checkpoint folder `dir` (see the module contract) and returns its contents.
pub fn verify(dir: &Path) -> Result<Loaded, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::corrupt(dir, reason);
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(format!(
                "{MANIFEST_FILE} is missing (an interrupted write?)"
            )))
        }
        Err(e) => return Err(CheckpointError::read(&manifest_path, &e)),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| corrupt(format!("{MANIFEST_FILE} does not parse: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!(
            "{MANIFEST_FILE} has format {}, this build reads format {FORMAT}",
            manifest.format
        )));
    }
    let mut seen = HashSet::new();
    for entry in &manifest.files {
        if !plain_name(&entry.name) || !seen.insert(entry.name.as_str()) {
            return Err(corrupt(format!(
                "{MANIFEST_FILE} lists {:?} (not a plain file name, or listed twice)",
                entry.name
            )));
        }
    }
    for required in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
        if !seen.contains(required) {
            return Err(corrupt(format!("{MANIFEST_FILE} does not list {required}")));
        }
    }
    let mut model = Vec::new();
    let mut optimizer = Vec::new();
    let mut state_bytes = Vec::new();
    for entry in &manifest.files {
        let path = dir.join(&entry.name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(format!("{} is missing", entry.name)))
            }
            Err(e) => return Err(CheckpointError::read(&path, &e)),
        };
        if bytes.len() as u64 != entry.bytes {
            return Err(corrupt(format!(
                "{} has {} bytes, manifest says {}",
                entry.name,
                bytes.len(),
                entry.bytes
            )));
        }
        let got = sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(&entry.sha256) {
            return Err(corrupt(format!(
                "{} has sha256 {got}, manifest says {}",
                entry.name, entry.sha256
            )));
        }
        match entry.name.as_str() {
            MODEL_FILE => model = bytes,
            OPTIMIZER_FILE => optimizer = bytes,
            STATE_FILE => state_bytes = bytes,
            _ => {}
        }
    }
    let state: CheckpointState = serde_json::from_slice(&state_bytes)
        .map_err(|e| corrupt(format!("{STATE_FILE} does not parse: {e}")))?;
    if state.format != FORMAT {
        return Err(corrupt(format!(
            "{STATE_FILE} has format {}, this build reads format {FORMAT}",
            state.format
        )));
    }
    Ok(Loaded {
        dir: dir.to_path_buf(),
        state,
        model,
        optimizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        // `printf abc | sha256sum`
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn manifest_json_shape() {
        let m = Manifest::of(&[("a.bin", b"abc")]);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["files"][0]["name"], "a.bin");
        assert_eq!(v["files"][0]["bytes"], 3);
        assert_eq!(v["files"][0]["sha256"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn plain_names_only() {
        for bad in ["", ".", "..", "../x", "a/b", MANIFEST_FILE] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        assert!(plain_name(MODEL_FILE));
    }
}
