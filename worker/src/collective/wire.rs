//! Wire format of the TCP ring's data phase: the per-call header and the data chunks.
//!
//! Owns byte layouts and the mapping of socket errors to [`CollectiveError`]; not connection
//! set-up (`link.rs`), the handshake (`handshake.rs`) or the algorithm (`ring.rs`). No tch.
//!
//! All integers are little-endian; floats are IEEE-754 binary32, little-endian, so the bits a
//! rank sends are the bits its neighbour adds or copies.
//!
//! ```text
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

use std::io;
use std::time::Duration;

use super::CollectiveError;

/// First bytes of a call header.
const CALL_MAGIC: [u8; 4] = *b"RTAR";
/// Bytes of a call header.
pub(super) const CALL_HEADER_BYTES: usize = 24;
/// Bytes of a chunk header.
pub(super) const CHUNK_HEADER_BYTES: usize = 16;

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
                b[0..4].copy_from_slice(&CALL_MAGIC);
            }
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
