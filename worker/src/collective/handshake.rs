//! The ring's connection handshake: three small messages that authenticate both ends of a
//! connection and bind it to one run, round, rank and world size.
//!
//! Owns the byte layouts, the checks and the one deadline a whole handshake gets; not dialling
//! and accepting (`link.rs`) or the data phase (`wire.rs`). No tch.
//!
//! ```text
//!  dialer (rank r)                                   acceptor (rank r+1)
//!  Hello     ─ magic RTRG, version, run id, r, n, dialer nonce ───────────▶ checks run, n, rank
//!            ◀── Challenge: magic RTRC, version, r+1, n, acceptor nonce, acceptor proof ──
//!  checks rank, n, acceptor proof
//!  Proof     ─ magic RTRP, dialer proof ──────────────────────────────────▶ checks the proof
//!
//!   off len  Hello               Challenge            Proof
//!    0   4   magic "RTRG"        magic "RTRC"         magic "RTRP"
//!    4   2   version             version              proof (32)
//!    6   2   run id length       0
//!    8   4   rank                rank
//!   12   4   world size          world size
//!   16  32   dialer nonce        acceptor nonce
//!   48   n   run id (UTF-8)      acceptor proof (32)
//! ```
//! Proofs are `ringtrain_common::auth::ring_proof`: HMAC-SHA256 of the ring key over the role, the
//! ring id (run id and round), the prover's rank, the world size and **both** nonces. The
//! acceptor's nonce is fresh per connection, so a recorded Hello + Proof cannot be replayed,
//! and the acceptor proves itself too, so a stranger on the next rank's address is found out.
//!
//! # Contract
//! * Every read of a handshake is bounded by one deadline for the whole exchange, however the
//!   peer trickles its bytes ([`DeadlineReader`]).
//! * The first 6 bytes (magic, version) are checked before any length is trusted; a run id is
//!   at most [`MAX_RUN_ID_BYTES`].
//! * Failures name the field (`magic`, `version`, `run_id`, `world_size`, `rank`, `auth`,
//!   `hello`) and never panic, whatever the bytes.
//!
//! Tests: `tests` at the bottom; the handshake tests at the bottom of `ring.rs`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use ringtrain_common::auth::{ring_proof, verify_ring_proof, RingHandshake, RingRole};

/// First bytes of a Hello; anything else on the collective port is refused.
pub(super) const HELLO_MAGIC: [u8; 4] = *b"RTRG";
const CHALLENGE_MAGIC: [u8; 4] = *b"RTRC";
const PROOF_MAGIC: [u8; 4] = *b"RTRP";
/// Bumped whenever a layout here or in `wire.rs` changes (3: challenge-response handshake).
pub(super) const PROTOCOL_VERSION: u16 = 3;
/// Longest run id a hello may carry.
pub(super) const MAX_RUN_ID_BYTES: usize = 256;
const FIXED: usize = 48;
const CHALLENGE_BYTES: usize = FIXED + 32;
const PROOF_BYTES: usize = 4 + 32;

/// Who this rank is on a ring, and the key its proofs are made with.
#[derive(Clone)]
pub(super) struct Identity {
    pub ring_id: String,
    pub rank: u32,
    pub world_size: u32,
    /// `ring_key(token)`; never sent.
    pub key: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("ring_id", &self.ring_id)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

/// Why a handshake failed: the field at fault (or `hello` for the socket) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub field: &'static str,
    pub reason: String,
}

fn refuse<T>(field: &'static str, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        field,
        reason: reason.into(),
    })
}

fn io_refusal(doing: &str, e: &io::Error) -> Refusal {
    let reason = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{doing}: the handshake deadline passed")
        }
        io::ErrorKind::UnexpectedEof => format!("{doing}: the peer closed the connection"),
        _ => format!("{doing}: {e}"),
    };
    Refusal {
        field: "hello",
        reason,
    }
}

/// Reads from a socket with one deadline for everything read through it: before each read the
/// socket's timeout is set to what is left, so a peer that sends a byte at a time cannot
/// stretch the handshake.
pub(super) struct DeadlineReader<'a> {
    pub stream: &'a TcpStream,
    pub deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The dialer's side: sends its Hello, checks the Challenge, sends its Proof. `next_rank` is
/// who must answer.
pub(super) fn dial(
    stream: &TcpStream,
    me: &Identity,
    next_rank: u32,
    deadline: Instant,
) -> Result<(), Refusal> {
    let nonce = fresh_nonce()?;
    let mut w = stream;
    let _ = stream.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(1)),
    ));
    w.write_all(&encode_hello(me, &nonce))
        .map_err(|e| io_refusal("sending our hello", &e))?;
    let mut r = DeadlineReader { stream, deadline };
    let mut c = [0u8; CHALLENGE_BYTES];
    r.read_exact(&mut c[..6])
        .map_err(|e| io_refusal("reading the challenge (the peer refuses a wrong run id, world size, rank or token by closing)", &e))?;
    if c[0..4] != CHALLENGE_MAGIC {
        return refuse(
            "magic",
            format!(
                "expected a challenge {CHALLENGE_MAGIC:?}, got {:?}",
                &c[0..4]
            ),
        );
    }
    check_version(&c)?;
    r.read_exact(&mut c[6..])
        .map_err(|e| io_refusal("reading the challenge", &e))?;
    let (rank, world_size) = (le_u32(&c, 8), le_u32(&c, 12));
    if world_size != me.world_size {
        return refuse(
            "world_size",
            format!("expected {}, got {world_size}", me.world_size),
        );
    }
    if rank != next_rank {
        return refuse(
            "rank",
            format!("expected rank {next_rank}, got rank {rank}"),
        );
    }
    let mut accept_nonce = [0u8; 32];
    accept_nonce.copy_from_slice(&c[16..48]);
    let theirs = RingHandshake {
        ring_id: &me.ring_id,
        rank,
        world_size,
        dial_nonce: &nonce,
        accept_nonce: &accept_nonce,
    };
    if !verify_ring_proof(&me.key, RingRole::Accept, &theirs, &c[48..80]) {
        return refuse(
            "auth",
            "the peer's proof of the run's auth token does not match (another run, round or token)",
        );
    }
    let ours = RingHandshake {
        rank: me.rank,
        ..theirs
    };
    let mut p = [0u8; PROOF_BYTES];
    p[0..4].copy_from_slice(&PROOF_MAGIC);
    p[4..].copy_from_slice(&ring_proof(&me.key, RingRole::Dial, &ours));
    w.write_all(&p)
        .map_err(|e| io_refusal("sending our proof", &e))
}

/// The acceptor's side: reads a Hello that must come from `prev_rank` of our ring, answers with
/// a Challenge and checks the Proof.
pub(super) fn accept(
    stream: &TcpStream,
    me: &Identity,
    prev_rank: u32,
    deadline: Instant,
) -> Result<(), Refusal> {
    let mut r = DeadlineReader { stream, deadline };
    let mut h = [0u8; FIXED];
    r.read_exact(&mut h[..6])
        .map_err(|e| io_refusal("reading the hello", &e))?;
    if h[0..4] != HELLO_MAGIC {
        return refuse(
            "magic",
            format!("expected {HELLO_MAGIC:?}, got {:?}", &h[0..4]),
        );
    }
    check_version(&h)?;
    r.read_exact(&mut h[6..])
        .map_err(|e| io_refusal("reading the hello", &e))?;
    let len = usize::from(u16::from_le_bytes([h[6], h[7]]));
    if len > MAX_RUN_ID_BYTES {
        return refuse(
            "run_id",
            format!("{len} bytes long, at most {MAX_RUN_ID_BYTES} allowed"),
        );
    }
    let mut id = vec![0u8; len];
    r.read_exact(&mut id)
        .map_err(|e| io_refusal("reading the hello", &e))?;
    let Ok(ring_id) = String::from_utf8(id) else {
        return refuse("run_id", "not UTF-8");
    };
    let (rank, world_size) = (le_u32(&h, 8), le_u32(&h, 12));
    if ring_id != me.ring_id {
        return refuse(
            "run_id",
            format!("expected {:?}, got {ring_id:?}", me.ring_id),
        );
    }
    if world_size != me.world_size {
        return refuse(
            "world_size",
            format!("expected {}, got {world_size}", me.world_size),
        );
    }
    if rank != prev_rank {
        return refuse(
            "rank",
            format!("expected rank {prev_rank}, got rank {rank}"),
        );
    }
    let mut dial_nonce = [0u8; 32];
    dial_nonce.copy_from_slice(&h[16..48]);
    let accept_nonce = fresh_nonce()?;
    let ours = RingHandshake {
        ring_id: &me.ring_id,
        rank: me.rank,
        world_size,
        dial_nonce: &dial_nonce,
        accept_nonce: &accept_nonce,
    };
    let mut c = [0u8; CHALLENGE_BYTES];
    c[0..4].copy_from_slice(&CHALLENGE_MAGIC);
    c[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    c[8..12].copy_from_slice(&me.rank.to_le_bytes());
    c[12..16].copy_from_slice(&world_size.to_le_bytes());
    c[16..48].copy_from_slice(&accept_nonce);
    c[48..80].copy_from_slice(&ring_proof(&me.key, RingRole::Accept, &ours));
    let _ = stream.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(1)),
    ));
    let mut w = stream;
    w.write_all(&c)
        .map_err(|e| io_refusal("sending our challenge", &e))?;
    let mut p = [0u8; PROOF_BYTES];
    r.read_exact(&mut p)
        .map_err(|e| io_refusal("reading the proof", &e))?;
    if p[0..4] != PROOF_MAGIC {
        return refuse(
            "magic",
            format!("expected a proof {PROOF_MAGIC:?}, got {:?}", &p[0..4]),
        );
    }
    let theirs = RingHandshake { rank, ..ours };
    if !verify_ring_proof(&me.key, RingRole::Dial, &theirs, &p[4..]) {
        return refuse("auth", "the peer's proof of the run's auth token does not match (another token, or a replayed hello)");
    }
    Ok(())
}

fn check_version(b: &[u8]) -> Result<(), Refusal> {
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != PROTOCOL_VERSION {
        return refuse(
            "version",
            format!("expected {PROTOCOL_VERSION}, got {version}"),
        );
    }
    Ok(())
}

fn fresh_nonce() -> Result<[u8; 32], Refusal> {
    ringtrain_common::auth::random_nonce().map_err(|e| Refusal {
        field: "hello",
        reason: format!("no randomness for a nonce: {e}"),
    })
}

/// A Hello's bytes; the run id is cut at [`MAX_RUN_ID_BYTES`] (the config refuses longer ones).
pub(super) fn encode_hello(me: &Identity, nonce: &[u8; 32]) -> Vec<u8> {
    let id = &me.ring_id.as_bytes()[..me.ring_id.len().min(MAX_RUN_ID_BYTES)];
    let mut out = Vec::with_capacity(FIXED + id.len());
    out.extend_from_slice(&HELLO_MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(&me.rank.to_le_bytes());
    out.extend_from_slice(&me.world_size.to_le_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn me(rank: u32, key: u8) -> Identity {
        Identity {
            ring_id: "run-β/round-1".into(),
            rank,
            world_size: 3,
            key: [key; 32],
        }
    }

    /// Runs `acceptor` on one end of a loopback connection and `dialer` on the other.
    fn pair<A, D>(acceptor: A, dialer: D) -> (Result<(), Refusal>, Result<(), Refusal>)
    where
        A: FnOnce(&TcpStream) -> Result<(), Refusal> + Send,
        D: FnOnce(&TcpStream) -> Result<(), Refusal> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::scope(|s| {
            let d = s.spawn(move || {
                let c = TcpStream::connect(addr).unwrap();
                let r = dialer(&c);
                // Closing tells a waiting acceptor at once.
                drop(c);
                r
            });
            let (a, _) = l.accept().unwrap();
            let ra = acceptor(&a);
            drop(a);
            (ra, d.join().unwrap())
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn both_ends_authenticate_each_other() {
        let (a, d) = pair(
            |s| accept(s, &me(1, 7), 0, soon()),
            |s| dial(s, &me(0, 7), 1, soon()),
        );
        assert_eq!((a, d), (Ok(()), Ok(())));
    }

    #[test]
    fn another_token_is_refused_on_both_sides() {
        let (a, d) = pair(
            |s| accept(s, &me(1, 7), 0, soon()),
            |s| dial(s, &me(0, 8), 1, soon()),
        );
        // The dialer finds the acceptor's proof wrong and never sends its own.
        assert_eq!(d.unwrap_err().field, "auth");
        assert_eq!(a.unwrap_err().field, "hello");
    }

    #[test]
    fn wrong_run_rank_or_size_is_named() {
        for (dialer, field) in [
            (
                Identity {
                    ring_id: "other".into(),
                    ..me(0, 7)
                },
                "run_id",
            ),
            (me(2, 7), "rank"),
            (
                Identity {
                    world_size: 4,
                    ..me(0, 7)
                },
                "world_size",
            ),
        ] {
            let (a, _) = pair(
                |s| accept(s, &me(1, 7), 0, soon()),
                move |s| dial(s, &dialer, 1, soon()),
            );
            assert_eq!(a.unwrap_err().field, field);
        }
    }

    #[test]
    fn a_recorded_hello_and_proof_cannot_be_replayed() {
        // Record what a real dialer sends to a real acceptor...
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let recorded = std::thread::scope(|s| {
            let d = s.spawn(move || {
                let c = TcpStream::connect(addr).unwrap();
                dial(&c, &me(0, 7), 1, soon())
            });
            let (a, _) = l.accept().unwrap();
            // A man in the middle: relay to a real acceptor and keep a copy of the dialer's bytes.
            let real = TcpListener::bind("127.0.0.1:0").unwrap();
            let real_addr = real.local_addr().unwrap();
            let acc = s.spawn(move || {
                let (x, _) = real.accept().unwrap();
                accept(&x, &me(1, 7), 0, soon())
            });
            let up = TcpStream::connect(real_addr).unwrap();
            let mut copy = Vec::new();
            let mut hello = vec![0u8; FIXED + "run-β/round-1".len()];
            (&a).read_exact(&mut hello).unwrap();
            (&up).write_all(&hello).unwrap();
            let mut ch = [0u8; CHALLENGE_BYTES];
            (&up).read_exact(&mut ch).unwrap();
            (&a).write_all(&ch).unwrap();
            let mut p = [0u8; PROOF_BYTES];
            (&a).read_exact(&mut p).unwrap();
            (&up).write_all(&p).unwrap();
            copy.extend_from_slice(&hello);
            copy.extend_from_slice(&p);
            assert_eq!(d.join().unwrap(), Ok(()));
            assert_eq!(acc.join().unwrap(), Ok(()));
            copy
        });
        // ...and replay it to the acceptor's next connection: its nonce is new, the proof fails.
        let (a, _) = pair(
            |s| accept(s, &me(1, 7), 0, soon()),
            move |s| {
                let mut w = s;
                let split = recorded.len() - PROOF_BYTES;
                w.write_all(&recorded[..split]).unwrap();
                let mut ch = [0u8; CHALLENGE_BYTES];
                (&*s).read_exact(&mut ch).unwrap();
                w.write_all(&recorded[split..]).unwrap();
                Ok(())
            },
        );
        assert_eq!(a.unwrap_err().field, "auth");
    }

    #[test]
    fn a_trickling_peer_gets_one_deadline_for_the_whole_hello() {
        let started = Instant::now();
        let (a, _) = pair(
            |s| accept(s, &me(1, 7), 0, Instant::now() + Duration::from_millis(600)),
            |s| {
                let mut w = s;
                let hello = encode_hello(&me(0, 7), &[0; 32]);
                // One byte every 200 ms: each read would finish within any per-read timeout.
                for b in hello {
                    if w.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(())
            },
        );
        let err = a.unwrap_err();
        assert_eq!(err.field, "hello");
        assert!(err.reason.contains("deadline"), "{}", err.reason);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn garbage_never_panics_and_names_the_field() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        for len in [0usize, 3, 6, 20, 48, 60, 400] {
            let mut b: Vec<u8> = (0..len).map(|_| byte()).collect();
            if len >= 6 && len % 2 == 0 {
                b[0..4].copy_from_slice(&HELLO_MAGIC);
                b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            }
            let (a, _) = pair(
                |s| accept(s, &me(1, 7), 0, Instant::now() + Duration::from_millis(500)),
                move |s| {
                    let mut w = s;
                    let _ = w.write_all(&b);
                    Ok(())
                },
            );
            assert!(a.is_err());
        }
        let (a, _) = pair(
            |s| accept(s, &me(1, 7), 0, soon()),
            |s| {
                let mut w = s;
                let _ = w.write_all(b"GET / HTTP/1.1\r\n\r\n");
                Ok(())
            },
        );
        assert_eq!(a.unwrap_err().field, "magic");
        let mut old = encode_hello(&me(0, 7), &[0; 32]);
        old[4] = 2;
        let (a, _) = pair(
            |s| accept(s, &me(1, 7), 0, soon()),
            move |s| {
                let mut w = s;
                let _ = w.write_all(&old);
                Ok(())
            },
        );
        assert_eq!(a.unwrap_err().field, "version");
    }
}
