//! The content digest of a safetensors file: what every rank computes over its own training
//! state and the coordinator recomputes over the bytes rank 0 uploads.
//!
//! # Contract
//! * [`state_digest`] parses the bytes as safetensors (header length, JSON header, offsets
//!   contiguous and inside the file, each tensor's byte length = its shape × its dtype's size;
//!   anything else is [`DigestError`]) and returns the lowercase hex SHA-256 of the tensors in
//!   name order: for each, the name, dtype, shape and raw bytes, each length-prefixed.
//! * It depends only on the tensors, not on the order they sit in the file or on its metadata,
//!   so replicas holding bit-identical state agree whatever order their writer used.
//! * Pure and bounded: a header is at most 100 MB (the safetensors crate's limit) and the
//!   coordinator never accepts messages over its 64 MiB cap anyway.
//!
//! Tests: `tests` at the bottom.

use sha2::{Digest as _, Sha256};

/// Characters of a digest (hex SHA-256).
pub const DIGEST_HEX_LEN: usize = 64;

/// Why bytes are not a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid safetensors file: {reason}")]
pub struct DigestError {
    pub reason: String,
}

/// The digest of the safetensors file `bytes` (see the module contract).
pub fn state_digest(bytes: &[u8]) -> Result<String, DigestError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| DigestError {
        reason: format!("{e:?}"),
    })?;
    let mut tensors = st.tensors();
    if tensors.is_empty() {
        return Err(DigestError {
            reason: "it holds no tensor".into(),
        });
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (name, view) in &tensors {
        field(&mut h, name.as_bytes());
        field(&mut h, format!("{:?}", view.dtype()).as_bytes());
        h.update((view.shape().len() as u64).to_le_bytes());
        for &d in view.shape() {
            h.update((d as u64).to_le_bytes());
        }
        field(&mut h, view.data());
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// Whether `s` looks like a digest (64 lowercase hex characters).
pub fn is_digest(s: &str) -> bool {
    s.len() == DIGEST_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A safetensors file of f32 tensors (tests, fixtures): `(name, shape, values)` in file order.
pub fn f32_safetensors(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for v in *values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    // The format pads the header to 8 bytes with spaces.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_names_shapes_and_bits_but_not_file_order() {
        let a = f32_safetensors(&[("w", &[2], &[1.0, 2.0]), ("b", &[1], &[0.5])]);
        let d = state_digest(&a).unwrap();
        assert!(is_digest(&d), "{d}");
        let reordered = f32_safetensors(&[("b", &[1], &[0.5]), ("w", &[2], &[1.0, 2.0])]);
        assert_eq!(state_digest(&reordered).unwrap(), d);
        for other in [
            f32_safetensors(&[("w", &[2], &[1.0, 2.000_001]), ("b", &[1], &[0.5])]),
            f32_safetensors(&[("w", &[1, 2], &[1.0, 2.0]), ("b", &[1], &[0.5])]),
            f32_safetensors(&[("v", &[2], &[1.0, 2.0]), ("b", &[1], &[0.5])]),
            f32_safetensors(&[("w", &[2], &[1.0, 2.0])]),
        ] {
            assert_ne!(state_digest(&other).unwrap(), d);
        }
    }

    #[test]
    fn malformed_files_are_errors_never_panics() {
        let good = f32_safetensors(&[("w", &[2], &[1.0, 2.0])]);
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            b"not safetensors at all".to_vec(),
            u64::MAX.to_le_bytes().to_vec(),
            good[..good.len() - 1].to_vec(),
            f32_safetensors(&[]),
        ];
        let mut lying = good.clone();
        // Claim a header longer than the file.
        lying[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
        cases.push(lying);
        // A header whose shape does not fit the bytes it points at.
        let at = good
            .windows(11)
            .position(|w| w == b"\"shape\":[2]")
            .unwrap();
        let mut wrong_shape = good.clone();
        wrong_shape[at + 9] = b'3';
        cases.push(wrong_shape);
        for bytes in cases {
            assert!(state_digest(&bytes).is_err(), "{bytes:?}");
        }
        assert!(!is_digest("abc") && !is_digest(&"G".repeat(64)) && is_digest(&"0a".repeat(32)));
    }
}
