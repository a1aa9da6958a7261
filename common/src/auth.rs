//! The run's shared secret: loading it, comparing it in constant time, and the proof a ring
//! peer sends instead of the token itself.
//!
//! # Contract
//! * gRPC: every Coordinator call carries `authorization: Bearer <token>`; the coordinator
//!   compares it with [`ct_eq`] before the request body is decoded (tonic interceptor), so a
//!   caller without the token gets UNAUTHENTICATED and nothing it sent is used. The health
//!   service stays open (kubelet probes carry no token).
//! * Ring: the hello carries [`ring_proof`] = SHA-256(key ‖ ring id ‖ rank ‖ world size) with
//!   key = SHA-256("ringtrain ring v1" ‖ token), never the token, so a captured hello does not
//!   reveal it and a proof for one ring, rank and round does not fit another.
//! * No token configured: gRPC calls are not checked (local and test runs), and the ring proof
//!   is computed from the empty token, so both ends still agree.
//!
//! Tests: `tests` at the bottom.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Metadata key of the token on every gRPC call.
pub const AUTH_HEADER: &str = "authorization";
/// Shortest token accepted (16 bytes of entropy as hex is 32 characters).
pub const MIN_TOKEN_CHARS: usize = 16;

/// The run's shared secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} chars, redacted>)", self.0.len())
    }
}

/// A token that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the auth token file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("the auth token from {source_name} is {len} characters; at least {MIN_TOKEN_CHARS} are required (e.g. `openssl rand -hex 32`)")]
    TooShort { source_name: String, len: usize },
    #[error("the auth token from {source_name} contains characters that cannot go into a header (use hex or base64)")]
    NotPrintable { source_name: String },
}

impl Token {
    /// A token from text (surrounding whitespace, such as a file's final newline, is dropped).
    pub fn parse(text: &str, source_name: &str) -> Result<Self, AuthError> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_CHARS {
            return Err(AuthError::TooShort {
                source_name: source_name.into(),
                len: t.len(),
            });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::NotPrintable {
                source_name: source_name.into(),
            });
        }
        Ok(Self(t.to_string()))
    }

    /// The token from `file` when given, else from the value of an environment variable.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Option<Self>, AuthError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            return Self::parse(&text, &path.display().to_string()).map(Some);
        }
        match env_value {
            Some(v) if !v.trim().is_empty() => Self::parse(v, "RINGTRAIN_AUTH_TOKEN").map(Some),
            _ => Ok(None),
        }
    }

    /// 32 random bytes as hex, from the OS (`launch` makes one per run for its workers).
    pub fn random() -> std::io::Result<Self> {
        use std::io::Read;
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Self(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// The secret itself (to pass to a child process or put in a header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>`, the header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether a received `authorization` header value carries this token.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(h) = header else { return false };
        let Some(given) = h.strip_prefix(b"Bearer ") else {
            return false;
        };
        ct_eq(given, self.0.as_bytes())
    }
}

/// Equality that takes the same time wherever the first difference is (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The ring key of a token (`None`: no token configured).
pub fn ring_key(token: Option<&Token>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ringtrain ring v1");
    h.update(token.map_or(&b""[..], |t| t.0.as_bytes()));
    h.finalize().into()
}

/// What rank `rank` of `world_size` sends in its hello on ring `ring_id`.
pub fn ring_proof(key: &[u8; 32], ring_id: &str, rank: u32, world_size: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key);
    h.update((ring_id.len() as u64).to_le_bytes());
    h.update(ring_id.as_bytes());
    h.update(rank.to_le_bytes());
    h.update(world_size.to_le_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_checked_and_never_printed() {
        let t = Token::parse("  0123456789abcdef0123\n", "file").unwrap();
        assert_eq!(t.expose(), "0123456789abcdef0123");
        assert!(!format!("{t:?}").contains("0123"));
        assert_eq!(
            Token::parse("short", "file"),
            Err(AuthError::TooShort {
                source_name: "file".into(),
                len: 5
            })
        );
        assert!(matches!(
            Token::parse("0123456789abcdef\u{7f}x", "env"),
            Err(AuthError::NotPrintable { .. })
        ));
    }

    #[test]
    fn loads_from_a_file_before_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "ffffffffffffffffffff\n").unwrap();
        let t = Token::load(Some(&f), Some("eeeeeeeeeeeeeeeeeeee")).unwrap();
        assert_eq!(t.unwrap().expose(), "ffffffffffffffffffff");
        let t = Token::load(None, Some("eeeeeeeeeeeeeeeeeeee")).unwrap();
        assert_eq!(t.unwrap().expose(), "eeeeeeeeeeeeeeeeeeee");
        assert_eq!(Token::load(None, None), Ok(None));
        let err = Token::load(Some(&dir.path().join("missing")), None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        let t = Token::parse("secret-secret-secret", "t").unwrap();
        assert!(t.accepts(Some(t.bearer().as_bytes())));
        assert!(!t.accepts(None));
        assert!(!t.accepts(Some(b"secret-secret-secret")));
        assert!(!t.accepts(Some(b"Bearer secret-secret-secreT")));
        assert!(!t.accepts(Some(b"Bearer secret-secret-secret-")));
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }

    #[test]
    fn ring_proofs_bind_token_ring_rank_and_size() {
        let t = Token::parse("secret-secret-secret", "t").unwrap();
        let k = ring_key(Some(&t));
        let p = ring_proof(&k, "run/round-1", 1, 2);
        assert_eq!(p, ring_proof(&k, "run/round-1", 1, 2));
        assert_ne!(p, ring_proof(&ring_key(None), "run/round-1", 1, 2));
        assert_ne!(p, ring_proof(&k, "run/round-2", 1, 2));
        assert_ne!(p, ring_proof(&k, "run/round-1", 0, 2));
        assert_ne!(p, ring_proof(&k, "run/round-1", 1, 3));
        let r = Token::random().unwrap();
        assert_eq!(r.expose().len(), 64);
        assert_ne!(r, Token::random().unwrap());
    }
}
