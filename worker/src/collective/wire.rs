//! Wire format of the TCP ring: the handshake, the per-call header and the data chunks.
//!
//! Owns byte layouts and the mapping of socket errors to [`CollectiveError`]; not connection
//! set-up (`link.rs`) or the algorithm (`ring.rs`). No tch.
//!
//! All integers are little-endian; floats are IEEE-754 binary32, little-endian, so the bits a
//! rank sends are the bits its neighbour adds or copies.
//!
//! ```text
//!  Hello: once per connection in each direction; the dialling rank speaks first, the accepting
//!  rank checks it and replies with its own.
//!    off len  field
//!     0   4   magic        b"RTRG"
//!     4   2   version      u16 = PROTOCOL_VERSION
//!     6   2   run_id_len   u16 <= MAX_RUN_ID_BYTES
//!     8   4   rank         u32, the sender's rank
//!    12   4   world_size   u32
//!    16   n   run_id       UTF-8
//!
//!  Call header: rank -> next, once per all-reduce call, before any chunk (24 bytes).
//!     0   4   magic        b"RTAR"
//!     4   4   op           u32: 0 = sum, 1 = mean
//!     8   8   seq          u64, calls made on this ring before this one
//!    16   8   total_len    u64, elements in the whole buffer
//!
//!  Chunk: rank -> next, ceil(segment_len / chunk_elems) per step, none for an empty segment.
//!     0   8   total_len    u64, elements in the whole buffer (checked again: cheap)
//!     8   4   segment      u32, index of the segment the chunk belongs to
//!    12   4   count        u32, elements in this chunk (<= chunk_elems)
//!    16  4*count payload   f32
//! ```
//!
//! Each TCP connection carries data in one direction only (rank -> next) once the handshake is
//! done, so a rank that closes after an error never discards unread data of its own (no RST).
//!
//! Tests: `tests` at the bottom (round trips and rejections).

use std::io::{self, Read};
use std::time::Duration;

use ringtrain_common::auth::{ct_eq, ring_proof};

use super::CollectiveError;

/// First bytes of a hello; anything else on the collective port is rejected.
pub(super) const MAGIC: [u8; 4] = *b"RTRG";
/// Bumped whenever a layout below changes.
pub(super) const PROTOCOL_VERSION: u16 = 2;
/// Longest run id a hello may carry.
pub(super) const MAX_RUN_ID_BYTES: usize = 256;
/// First bytes of a call header.
const CALL_MAGIC: [u8; 4] = *b"RTAR";
/// Bytes of the fixed part of a hello (magic, version, id length, rank, world size, proof).
const HELLO_FIXED: usize = 48;
/// Bytes of a call header.
pub(super) const CALL_HEADER_BYTES: usize = 24;
/// Bytes of a chunk header.
pub(super) const CHUNK_HEADER_BYTES: usize = 16;

/// The identity a rank announces on each of its two connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Hello {
    pub rank: u32,
    pub world_size: u32,
    pub run_id: String,
    /// Ours: the ring key the proof is made with (never sent). Received: zeros.
    pub key: [u8; 32],
    /// Received: the sender's [`ring_proof`]. Ours: unused (`encode` computes it).
    pub proof: [u8; 32],
}

/// Why a hello could not be read.
#[derive(Debug)]
pub(super) enum HelloError {
    /// The socket failed (closed, timed out) before a whole hello arrived.
    Io(io::Error),
    /// The bytes are not a hello of this protocol version.
    Bad { field: &'static str, reason: String },
}

impl Hello {
    /// The hello's bytes; `run_id` must be at most [`MAX_RUN_ID_BYTES`] (checked by the config).
    pub fn encode(&self) -> Vec<u8> {
        let id = self.run_id.as_bytes();
        let mut out = Vec::with_capacity(HELLO_FIXED + id.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.extend_from_slice(&(id.len().min(MAX_RUN_ID_BYTES) as u16).to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.world_size.to_le_bytes());
        out.extend_from_slice(&ring_proof(
            &self.key,
            &self.run_id,
            self.rank,
            self.world_size,
        ));
        out.extend_from_slice(&id[..id.len().min(MAX_RUN_ID_BYTES)]);
        out
    }

    /// Reads one hello, rejecting a wrong magic or version before trusting the length field.
    pub fn read(r: &mut impl Read) -> Result<Self, HelloError> {
        // Magic and version first: a stranger (an HTTP client, an old peer) is named as such
        // even when it sends fewer bytes than a whole hello.
        let mut fixed = [0u8; HELLO_FIXED];
        r.read_exact(&mut fixed[..8]).map_err(HelloError::Io)?;
        let bad = |field, reason| Err(HelloError::Bad { field, reason });
        if fixed[0..4] != MAGIC {
            return bad(
                "magic",
                format!("expected {:?}, got {:?}", MAGIC, &fixed[0..4]),
            );
        }
        let version = u16::from_le_bytes([fixed[4], fixed[5]]);
        if version != PROTOCOL_VERSION {
            return bad(
                "version",
                format!("expected {PROTOCOL_VERSION}, got {version}"),
            );
        }
        r.read_exact(&mut fixed[8..]).map_err(HelloError::Io)?;
        let len = usize::from(u16::from_le_bytes([fixed[6], fixed[7]]));
        if len > MAX_RUN_ID_BYTES {
            return bad(
                "run_id",
                format!("{len} bytes long, at most {MAX_RUN_ID_BYTES} allowed"),
            );
        }
        let mut id = vec![0u8; len];
        r.read_exact(&mut id).map_err(HelloError::Io)?;
        let Ok(run_id) = String::from_utf8(id) else {
            return bad("run_id", "not UTF-8".into());
        };
        let mut proof = [0u8; 32];
        proof.copy_from_slice(&fixed[16..48]);
        Ok(Self {
            rank: le_u32(&fixed, 8),
            world_size: le_u32(&fixed, 12),
            run_id,
            key: [0; 32],
            proof,
        })
    }

    /// Checks that `self`, as received, comes from rank `expected_rank` of our run (`ours`).
    /// On mismatch returns the offending field and a message naming both values.
    pub fn check(&self, ours: &Hello, expected_rank: u32) -> Result<(), (&'static str, String)> {
        if self.run_id != ours.run_id {
            return Err((
                "run_id",
                format!("expected {:?}, got {:?}", ours.run_id, self.run_id),
            ));
        }
        if self.world_size != ours.world_size {
            let msg = format!("expected {}, got {}", ours.world_size, self.world_size);
            return Err(("world_size", msg));
        }
        if self.rank != expected_rank {
            return Err((
                "rank",
                format!("expected rank {expected_rank}, got rank {}", self.rank),
            ));
        }
        let want = ring_proof(&ours.key, &ours.run_id, expected_rank, ours.world_size);
        if !ct_eq(&self.proof, &want) {
            return Err((
                "auth",
                "the peer's proof of the run's auth token does not match (another token, or none)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The reduction a call performs; both neighbours must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Sum,
    Mean,
}

/// Announces one all-reduce call to the next rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CallHeader {
    pub op: Op,
    pub seq: u64,
    pub total_len: u64,
}

impl CallHeader {
    pub fn encode(&self) -> [u8; CALL_HEADER_BYTES] {
        let mut out = [0u8; CALL_HEADER_BYTES];
        out[0..4].copy_from_slice(&CALL_MAGIC);
        let op: u32 = match self.op {
            Op::Sum => 0,
            Op::Mean => 1,
        };
        out[4..8].copy_from_slice(&op.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.total_len.to_le_bytes());
        out
    }

    /// Parses a call header; the error says what is malformed.
    pub fn decode(b: &[u8; CALL_HEADER_BYTES]) -> Result<Self, String> {
        if b[0..4] != CALL_MAGIC {
            return Err(format!("bad call header magic {:?}", &b[0..4]));
        }
        let op = match le_u32(b, 4) {
            0 => Op::Sum,
            1 => Op::Mean,
            other => return Err(format!("unknown op {other}")),
        };
        Ok(Self {
            op,
            seq: le_u64(b, 8),
            total_len: le_u64(b, 16),
        })
    }
}

/// Precedes each chunk of payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChunkHeader {
    pub total_len: u64,
    pub segment: u32,
    pub count: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_BYTES] {
        let mut out = [0u8; CHUNK_HEADER_BYTES];
        out[0..8].copy_from_slice(&self.total_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.segment.to_le_bytes());
        out[12..16].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8; CHUNK_HEADER_BYTES]) -> Self {
        Self {
            total_len: le_u64(b, 0),
            segment: le_u32(b, 8),
            count: le_u32(b, 12),
        }
    }
}

/// Writes `src` as little-endian f32 into `dst`, which must hold exactly `4 * src.len()` bytes.
pub(super) fn put_f32s(src: &[f32], dst: &mut [u8]) {
    for (d, x) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&x.to_le_bytes());
    }
}

/// `dst[i] = incoming[i] + dst[i]`: the incoming partial sum plus this rank's own value.
pub(super) fn add_f32s(dst: &mut [f32], src: &[u8]) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// `dst[i] = incoming[i]`, bit for bit.
pub(super) fn copy_f32s(dst: &mut [f32], src: &[u8]) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Maps a failed read from / write to `rank` to [`CollectiveError::PeerLost`].
pub(super) fn lost(rank: u32, doing: &str, e: &io::Error, timeout: Duration) -> CollectiveError {
    let reason = match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => {
            format!("{doing}: connection closed")
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{doing}: nothing moved within the {timeout:?} timeout")
        }
        _ => format!("{doing}: {e}"),
    };
    CollectiveError::PeerLost { rank, reason }
}

fn le_u32<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64<const N: usize>(b: &[u8; N], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            rank: 3,
            world_size: 5,
            run_id: "run-β".into(),
            key: [7; 32],
            proof: [0; 32],
        }
    }

    /// `hello()` as the receiving end reads it.
    fn received() -> Hello {
        Hello::read(&mut &hello().encode()[..]).unwrap()
    }

    fn read_err(bytes: &[u8]) -> (&'static str, String) {
        match Hello::read(&mut &bytes[..]) {
            Err(HelloError::Bad { field, reason }) => (field, reason),
            other => panic!("expected a bad hello, got {other:?}"),
        }
    }

    #[test]
    fn hello_round_trips() {
        let bytes = hello().encode();
        assert_eq!(bytes.len(), 48 + "run-β".len());
        let got = Hello::read(&mut &bytes[..]).unwrap();
        assert_eq!(
            (got.rank, got.world_size, got.run_id.as_str()),
            (3, 5, "run-β")
        );
        assert_eq!(got.key, [0; 32], "the key itself is never sent");
        assert_eq!(got.proof, ring_proof(&[7; 32], "run-β", 3, 5));
    }

    #[test]
    fn hello_rejects_magic_version_and_long_run_id() {
        let mut b = hello().encode();
        b[0] = b'X';
        assert_eq!(read_err(&b).0, "magic");
        let mut b = hello().encode();
        b[4] = 99;
        assert_eq!(read_err(&b).0, "version");
        let mut b = hello().encode();
        b[6..8].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(read_err(&b).0, "run_id");
        let mut b = hello().encode();
        b[48] = 0xff;
        assert_eq!(read_err(&b).0, "run_id");
    }

    #[test]
    fn truncated_hello_is_an_io_error() {
        let b = hello().encode();
        assert!(matches!(Hello::read(&mut &b[..10]), Err(HelloError::Io(_))));
        assert!(matches!(
            Hello::read(&mut &b[..b.len() - 1]),
            Err(HelloError::Io(_))
        ));
    }

    #[test]
    fn hello_check_names_the_field() {
        let ours = hello();
        assert_eq!(received().check(&ours, 3), Ok(()));
        assert_eq!(received().check(&ours, 2).unwrap_err().0, "rank");
        let other_run = Hello {
            run_id: "other".into(),
            ..received()
        };
        assert_eq!(other_run.check(&ours, 3).unwrap_err().0, "run_id");
        let other_size = Hello {
            world_size: 4,
            ..received()
        };
        assert_eq!(other_size.check(&ours, 3).unwrap_err().0, "world_size");
        // Another token (or none) makes another proof: refused, naming the field.
        let stranger = Hello {
            key: [8; 32],
            ..hello()
        };
        let got = Hello::read(&mut &stranger.encode()[..]).unwrap();
        let (field, reason) = got.check(&ours, 3).unwrap_err();
        assert_eq!(field, "auth");
        assert!(reason.contains("auth token"), "{reason}");
    }

    #[test]
    fn headers_round_trip() {
        let c = CallHeader {
            op: Op::Mean,
            seq: 1 << 40,
            total_len: 1_000_003,
        };
        assert_eq!(CallHeader::decode(&c.encode()), Ok(c));
        let mut bad = c.encode();
        bad[4] = 7;
        assert!(CallHeader::decode(&bad).is_err());
        bad[0] = 0;
        assert!(CallHeader::decode(&bad).is_err());
        let h = ChunkHeader {
            total_len: u64::MAX - 1,
            segment: 4,
            count: 65536,
        };
        assert_eq!(ChunkHeader::decode(&h.encode()), h);
    }

    #[test]
    fn floats_round_trip_bit_for_bit() {
        let xs = [
            0.0f32,
            -0.0,
            1.5,
            f32::MIN_POSITIVE / 2.0,
            f32::INFINITY,
            f32::NAN,
            -3.25e-7,
        ];
        let mut bytes = vec![0u8; 4 * xs.len()];
        put_f32s(&xs, &mut bytes);
        let mut back = [9.0f32; 7];
        copy_f32s(&mut back, &bytes);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&xs));
        let mut acc = [1.0f32, 2.0];
        add_f32s(&mut acc, &bytes[8..16]);
        assert_eq!(acc, [2.5, 2.0 + f32::MIN_POSITIVE / 2.0]);
    }

    #[test]
    fn lost_names_the_rank() {
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        let CollectiveError::PeerLost { rank, reason } =
            lost(4, "reading", &e, Duration::from_secs(1))
        else {
            panic!("not PeerLost")
        };
        assert_eq!(rank, 4);
        assert!(reason.contains("closed"));
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        // xorshift: reproducible garbage of every length up to a few hellos.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        for len in 0..400 {
            let mut b: Vec<u8> = (0..len).map(|_| byte()).collect();
            if len >= 8 && len % 3 == 0 {
                // Past the magic and version checks, so the length and id parsing run too.
                b[0..4].copy_from_slice(&MAGIC);
                b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            }
            let _ = Hello::read(&mut &b[..]);
            if let Ok(h) = <[u8; CALL_HEADER_BYTES]>::try_from(&b[..b.len().min(CALL_HEADER_BYTES)])
            {
                let _ = CallHeader::decode(&h);
            }
            if let Ok(h) =
                <[u8; CHUNK_HEADER_BYTES]>::try_from(&b[..b.len().min(CHUNK_HEADER_BYTES)])
            {
                let _ = ChunkHeader::decode(&h);
            }
        }
    }
}
