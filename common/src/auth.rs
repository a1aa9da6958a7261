//! The run's shared secret: loading it, comparing it in constant time, and the proof a ring
//! peer sends instead of the token itself.
//!
//! # Contract
//! * gRPC: every Coordinator call carries `authorization: Bearer <token>`; the coordinator
//!   compares it with [`ct_eq`] before the request body is decoded (tonic interceptor), so a
//!   caller without the token gets UNAUTHENTICATED and nothing it sent is used. The health
//!   service stays open (kubelet probes carry no token).
//! * Ring: a challenge-response handshake. Each side proves it holds the ring key
//!   (key = SHA-256("ringtrain ring v1" ‖ token), never the token) with [`ring_proof`] =
//!   HMAC-SHA256(key, role ‖ ring id ‖ rank ‖ world size ‖ dialer's nonce ‖ acceptor's nonce).
//!   The acceptor picks its nonce fresh for every connection, so a recorded proof is useless on
//!   the next one; the role ("dial"/"accept") keeps one side's proof from being reflected as the
//!   other's; the ring id carries the run and round.
//! * No token configured: gRPC calls are not checked (local and test runs), and the ring proof
//!   is computed from the empty token, so both ends still agree.
//!
//! Tests: `tests` at the bottom.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
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
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The ring key of a token (`None`: no token configured).
pub fn ring_key(token: Option<&Token>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ringtrain ring v1");
    h.update(token.map_or(&b""[..], |t| t.0.as_bytes()));
    h.finalize().into()
}

/// Which end of a ring connection makes a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingRole {
    /// The rank that connected (the predecessor).
    Dial,
    /// The rank that accepted.
    Accept,
}

/// What a ring connection's two nonces and its identity are, for [`ring_proof`].
#[derive(Debug, Clone, Copy)]
pub struct RingHandshake<'a> {
    /// `run id/round-N`.
    pub ring_id: &'a str,
    /// The proving side's rank.
    pub rank: u32,
    pub world_size: u32,
    /// The dialer's nonce (in its hello) and the acceptor's (in its challenge).
    pub dial_nonce: &'a [u8; 32],
    pub accept_nonce: &'a [u8; 32],
}

fn ring_mac(key: &[u8; 32], role: RingRole, h: &RingHandshake<'_>) -> Hmac<Sha256> {
    // HMAC takes keys of any length; 32 bytes cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(match role {
        RingRole::Dial => b"ringtrain ring v3 dial",
        RingRole::Accept => b"ringtrain ring v3 acpt",
    });
    m.update(&(h.ring_id.len() as u64).to_le_bytes());
    m.update(h.ring_id.as_bytes());
    m.update(&h.rank.to_le_bytes());
    m.update(&h.world_size.to_le_bytes());
    m.update(h.dial_nonce);
    m.update(h.accept_nonce);
    m
}

/// The proof `role` sends on a ring connection described by `h` (see the module contract).
pub fn ring_proof(key: &[u8; 32], role: RingRole, h: &RingHandshake<'_>) -> [u8; 32] {
    ring_mac(key, role, h).finalize().into_bytes().into()
}

/// Whether `proof` is `role`'s proof for `h` (constant time).
pub fn verify_ring_proof(
    key: &[u8; 32],
    role: RingRole,
    h: &RingHandshake<'_>,
    proof: &[u8],
) -> bool {
    ring_mac(key, role, h).verify_slice(proof).is_ok()
}

/// 32 bytes from the OS's random source (ring nonces).
pub fn random_nonce() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
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
    fn ring_proofs_bind_token_role_ring_rank_size_and_both_nonces() {
        let t = Token::parse("secret-secret-secret", "t").unwrap();
        let k = ring_key(Some(&t));
        let (d, a) = ([1u8; 32], [2u8; 32]);
        let h = RingHandshake {
            ring_id: "run/round-1",
            rank: 1,
            world_size: 2,
            dial_nonce: &d,
            accept_nonce: &a,
        };
        let p = ring_proof(&k, RingRole::Dial, &h);
        assert!(verify_ring_proof(&k, RingRole::Dial, &h, &p));
        let other = [3u8; 32];
        let changed: Vec<RingHandshake> = vec![
            RingHandshake {
                ring_id: "run/round-2",
                ..h
            },
            RingHandshake { rank: 0, ..h },
            RingHandshake { world_size: 3, ..h },
            RingHandshake {
                dial_nonce: &other,
                ..h
            },
            // A fresh acceptor nonce: a recorded proof does not fit the next connection.
            RingHandshake {
                accept_nonce: &other,
                ..h
            },
        ];
        for c in &changed {
            assert!(!verify_ring_proof(&k, RingRole::Dial, c, &p), "{c:?}");
        }
        assert!(
            !verify_ring_proof(&k, RingRole::Accept, &h, &p),
            "no reflection"
        );
        assert!(!verify_ring_proof(&ring_key(None), RingRole::Dial, &h, &p));
        assert!(!verify_ring_proof(&k, RingRole::Dial, &h, &p[..31]));
        let r = Token::random().unwrap();
        assert_eq!(r.expose().len(), 64);
        assert_ne!(r, Token::random().unwrap());
        assert_ne!(random_nonce().unwrap(), random_nonce().unwrap());
    }
}
