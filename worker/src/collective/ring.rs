//! Ring all-reduce over TCP on plain `&mut [f32]`: reduce-scatter, then all-gather.
//!
//! Owns the algorithm and the [`Ring`] handle; not connection set-up (`link.rs`), byte layouts
//! (`wire.rs`) or tensors (`tensor.rs`). No tch.
//!
//! The buffer is split into N nearly equal segments (`segment`); each rank sends only to the next
//! rank and receives only from the previous one. N = 3, buffers a|b|c on every rank:
//!
//! ```text
//!  reduce-scatter (N-1 steps): at step s rank r sends segment (r-s) mod N and adds the incoming
//!  segment (r-s-1) mod N into its own copy.
//!                 rank 0          rank 1          rank 2
//!   start         a0 b0 c0        a1 b1 c1        a2 b2 c2
//!   step 0        .. .. c2+c0     a0+a1 .. ..     .. b1+b2 ..       0->1: a, 1->2: b, 2->0: c
//!   step 1        .. b1+b2+b0 ..  .. .. c2+c0+c1  a0+a1+a2 .. ..    0->1: c, 1->2: a, 2->0: b
//!   now rank r owns the complete sum of segment (r+1) mod N (for a mean it divides it by N)
//!
//!  all-gather (N-1 steps): at step s rank r sends segment (r+1-s) mod N and overwrites the
//!  incoming segment (r-s) mod N with the owner's bits.
//!   step 0        0->1: b   1->2: c   2->0: a
//!   step 1        0->1: a   1->2: b   2->0: c       every rank holds A|B|C
//! ```
//!
//! # Contract
//! * Bitwise identical results on every rank: each segment's sum is accumulated once, along
//!   the ring starting at rank k for segment k (`((x_k + x_k+1) + ...) + x_k-1`), by its owner;
//!   everyone else copies those bits. A mean divides the owner's sum by N before the copy.
//! * Every call first sends a call header (op, call number, length) to the next rank and checks
//!   the previous rank's: different lengths are [`CollectiveError::ShapeMismatch`], a different
//!   op or call number is [`CollectiveError::Protocol`]. Each chunk repeats the length.
//! * Any error shuts both sockets down (the neighbours fail at once instead of at their timeout)
//!   and closes the ring: later calls return the same error.
//! * Memory: two scratch buffers of one chunk each (`chunk_elems` floats, 256 KiB by default).
//!
//! # Concurrency
//! Within a step a scoped thread writes the outgoing segment to the next rank while the calling
//! thread reads the incoming one from the previous rank, so a segment larger than the socket
//! buffers cannot deadlock the ring. The first failure of either side shuts the sockets down,
//! which unblocks the other. Every read and write is bounded by `timeout`.
//!
//! Tests: `tests` at the bottom (threads on 127.0.0.1, world sizes 1 to 5, failures).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::ops::Range;
use std::thread;
use std::time::Duration;

use super::handshake::Identity;
use super::link::{self, FirstError, Links};
use super::wire::{self, CallHeader, ChunkHeader, Op, CALL_HEADER_BYTES, CHUNK_HEADER_BYTES};
use super::CollectiveError;

pub use super::ring_config::{RingConfig, DEFAULT_CHUNK_ELEMS};

/// One rank's end of a connected ring.
#[derive(Debug)]
pub struct Ring {
    rank: u32,
    world_size: u32,
    timeout: Duration,
    chunk_elems: usize,
    /// `None` for world size 1.
    links: Option<Links>,
    /// Calls made so far; sent in each call header to catch ranks that got out of step.
    calls: u64,
    /// The error that closed the ring.
    failed: Option<CollectiveError>,
    send_bytes: Vec<u8>,
    recv_bytes: Vec<u8>,
}

/// Ends a ring from another thread: shuts its connections down, so a call blocked in a read or
/// write fails at once instead of at its timeout (used when the coordinator ends the round).
#[derive(Debug)]
pub struct RingAbort {
    streams: Vec<std::net::TcpStream>,
}

impl RingAbort {
    /// Shuts every connection of the ring down (idempotent).
    pub fn abort(&self) {
        for s in &self.streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Ring {
    /// A handle that can end this ring from another thread (none for world size 1).
    pub fn abort_handle(&self) -> RingAbort {
        let streams = self
            .links
            .iter()
            .flat_map(|l| [l.next.try_clone().ok(), l.prev.try_clone().ok()])
            .flatten()
            .collect();
        RingAbort { streams }
    }

    /// Connects this rank into the ring: dials `peers[rank + 1]`, accepts the previous rank on
    /// `listener` (bound by the caller at `peers[rank]`) and checks both handshakes.
    /// World size 1 opens no socket.
    pub fn connect(listener: TcpListener, cfg: RingConfig) -> Result<Ring, CollectiveError> {
        cfg.validate()?;
        let links = if cfg.world_size == 1 {
            None
        } else {
            let me = Identity {
                ring_id: cfg.run_id.clone(),
                rank: cfg.rank,
                world_size: cfg.world_size,
                key: cfg.auth_key,
            };
            let next_addr = cfg.peers[((cfg.rank + 1) % cfg.world_size) as usize];
            let links = link::establish(listener, next_addr, &me, cfg.timeout)?;
            tracing::info!(
                run_id = %cfg.run_id, rank = cfg.rank, world_size = cfg.world_size,
                prev = links.prev_rank, next = links.next_rank, "ring connected"
            );
            Some(links)
        };
        Ok(Ring {
            rank: cfg.rank,
            world_size: cfg.world_size,
            timeout: cfg.timeout,
            chunk_elems: cfg.chunk_elems,
            links,
            calls: 0,
            failed: None,
            send_bytes: Vec::new(),
            recv_bytes: Vec::new(),
        })
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> u32 {
        self.world_size
    }

    /// Replaces `buf` by the element-wise sum over all ranks, bit-identical on every rank.
    pub fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.reduce(buf, Op::Sum)
    }

    /// Replaces `buf` by the element-wise mean (the sum divided by the world size).
    pub fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.reduce(buf, Op::Mean)
    }

    fn reduce(&mut self, buf: &mut [f32], op: Op) -> Result<(), CollectiveError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(links) = &self.links else {
            return Ok(()); // world size 1: the sum and the mean of one buffer are itself
        };
        let call = Call {
            links,
            rank: self.rank as usize,
            n: self.world_size as usize,
            chunk_elems: self.chunk_elems,
            timeout: self.timeout,
            total: buf.len() as u64,
        };
        let result = call.run(
            buf,
            op,
            self.calls,
            &mut self.send_bytes,
            &mut self.recv_bytes,
        );
        self.calls += 1;
        if let Err(e) = &result {
            links.shutdown();
            self.failed = Some(e.clone());
        }
        result
    }
}

/// Elements of segment `i` when `len` elements are split into `n` nearly equal segments:
/// the first `len % n` segments get one element more; segments are contiguous and in order.
pub(super) fn segment(len: usize, n: usize, i: usize) -> Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// What incoming floats do to the local segment.
#[derive(Debug, Clone, Copy)]
enum Recv {
    Add,
    Copy,
}

/// The parameters of one all-reduce call.
struct Call<'a> {
    links: &'a Links,
    rank: usize,
    n: usize,
    chunk_elems: usize,
    timeout: Duration,
    total: u64,
}

impl Call<'_> {
    fn run(
        &self,
        buf: &mut [f32],
        op: Op,
        seq: u64,
        sb: &mut Vec<u8>,
        rb: &mut Vec<u8>,
    ) -> Result<(), CollectiveError> {
        self.exchange_call_headers(CallHeader {
            op,
            seq,
            total_len: self.total,
        })?;
        let (r, n) = (self.rank, self.n);
        for s in 0..n - 1 {
            self.step(
                buf,
                (r + n - s) % n,
                (r + 2 * n - s - 1) % n,
                Recv::Add,
                sb,
                rb,
            )?;
        }
        if op == Op::Mean {
            let divisor = n as f32;
            let owned = segment(buf.len(), n, (r + 1) % n);
            for x in &mut buf[owned] {
                *x /= divisor;
            }
        }
        for s in 0..n - 1 {
            self.step(
                buf,
                (r + 1 + n - s) % n,
                (r + n - s) % n,
                Recv::Copy,
                sb,
                rb,
            )?;
        }
        Ok(())
    }

    /// Sends ours, then reads the previous rank's: 24 bytes always fit in the socket buffer.
    fn exchange_call_headers(&self, ours: CallHeader) -> Result<(), CollectiveError> {
        let (next, prev) = (self.links.next_rank, self.links.prev_rank);
        (&self.links.next)
            .write_all(&ours.encode())
            .map_err(|e| wire::lost(next, "sending the call header", &e, self.timeout))?;
        let mut b = [0u8; CALL_HEADER_BYTES];
        (&self.links.prev)
            .read_exact(&mut b)
            .map_err(|e| wire::lost(prev, "reading the call header", &e, self.timeout))?;
        let theirs = CallHeader::decode(&b)
            .map_err(|reason| CollectiveError::Protocol { rank: prev, reason })?;
        if theirs.total_len != ours.total_len {
            return Err(self.shape_mismatch(theirs.total_len));
        }
        if theirs.op != ours.op || theirs.seq != ours.seq {
            let reason = format!(
                "out of step: it is at call {} ({:?}), this rank at call {} ({:?})",
                theirs.seq, theirs.op, ours.seq, ours.op
            );
            return Err(CollectiveError::Protocol { rank: prev, reason });
        }
        Ok(())
    }

    /// Sends segment `out` to the next rank while receiving segment `inc` from the previous one.
    fn step(
        &self,
        buf: &mut [f32],
        out: usize,
        inc: usize,
        mode: Recv,
        sb: &mut Vec<u8>,
        rb: &mut Vec<u8>,
    ) -> Result<(), CollectiveError> {
        let (out_r, inc_r) = (
            segment(buf.len(), self.n, out),
            segment(buf.len(), self.n, inc),
        );
        // Segments are contiguous and in index order, and out != inc (n >= 2), so they are disjoint.
        let (src, dst): (&[f32], &mut [f32]) = if out > inc {
            let (lo, hi) = buf.split_at_mut(out_r.start);
            (&hi[..out_r.len()], &mut lo[inc_r])
        } else {
            let (lo, hi) = buf.split_at_mut(inc_r.start);
            (&lo[out_r], &mut hi[..inc_r.len()])
        };
        let first = FirstError::default();
        let fail = |e| {
            if first.record(e) {
                self.links.shutdown();
            }
        };
        thread::scope(|s| {
            let sender = thread::Builder::new()
                .name("ring-send".into())
                .spawn_scoped(s, || {
                    if let Err(e) = self.send_segment(src, out as u32, sb) {
                        fail(e);
                    }
                });
            match sender {
                Ok(_) => {
                    if let Err(e) = self.recv_segment(dst, inc as u32, mode, rb) {
                        fail(e);
                    }
                }
                Err(e) => {
                    let op = "spawning the ring send thread";
                    fail(CollectiveError::Io {
                        op,
                        reason: e.to_string(),
                    });
                }
            }
        });
        first.into_result()
    }

    fn send_segment(
        &self,
        src: &[f32],
        seg: u32,
        bytes: &mut Vec<u8>,
    ) -> Result<(), CollectiveError> {
        for chunk in src.chunks(self.chunk_elems) {
            let len = CHUNK_HEADER_BYTES + 4 * chunk.len();
            if bytes.len() < len {
                bytes.resize(len, 0);
            }
            let (head, payload) = bytes[..len].split_at_mut(CHUNK_HEADER_BYTES);
            // chunk.len() <= chunk_elems <= MAX_CHUNK_ELEMS < u32::MAX (validated).
            let header = ChunkHeader {
                total_len: self.total,
                segment: seg,
                count: chunk.len() as u32,
            };
            head.copy_from_slice(&header.encode());
            wire::put_f32s(chunk, payload);
            (&self.links.next)
                .write_all(&bytes[..len])
                .map_err(|e| wire::lost(self.links.next_rank, "sending", &e, self.timeout))?;
        }
        Ok(())
    }

    fn recv_segment(
        &self,
        dst: &mut [f32],
        seg: u32,
        mode: Recv,
        bytes: &mut Vec<u8>,
    ) -> Result<(), CollectiveError> {
        let prev = self.links.prev_rank;
        let lost = |e: std::io::Error| wire::lost(prev, "reading", &e, self.timeout);
        for chunk in dst.chunks_mut(self.chunk_elems) {
            let mut head = [0u8; CHUNK_HEADER_BYTES];
            (&self.links.prev).read_exact(&mut head).map_err(lost)?;
            let h = ChunkHeader::decode(&head);
            if h.total_len != self.total {
                return Err(self.shape_mismatch(h.total_len));
            }
            if h.segment != seg || h.count as usize != chunk.len() {
                let reason = format!(
                    "expected {} floats of segment {seg}, got {} of segment {}",
                    chunk.len(),
                    h.count,
                    h.segment
                );
                return Err(CollectiveError::Protocol { rank: prev, reason });
            }
            let len = 4 * chunk.len();
            if bytes.len() < len {
                bytes.resize(len, 0);
            }
            (&self.links.prev)
                .read_exact(&mut bytes[..len])
                .map_err(lost)?;
            match mode {
                Recv::Add => wire::add_f32s(chunk, &bytes[..len]),
                Recv::Copy => wire::copy_f32s(chunk, &bytes[..len]),
            }
        }
        Ok(())
    }

    fn shape_mismatch(&self, peer: u64) -> CollectiveError {
        CollectiveError::ShapeMismatch {
            local: self.total as usize,
            peer: usize::try_from(peer).unwrap_or(usize::MAX),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Barrier;
    use std::time::Instant;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// Binds one 127.0.0.1:0 listener per rank and builds each rank's config.
    fn listeners(
        n: u32,
        run_id: &str,
        timeout: Duration,
        chunk: usize,
    ) -> Vec<(TcpListener, RingConfig)> {
        let ls: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let peers: Vec<SocketAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
        ls.into_iter()
            .enumerate()
            .map(|(r, l)| {
                let mut cfg = RingConfig::new(run_id, r as u32, n, peers.clone(), timeout);
                cfg.chunk_elems = chunk;
                (l, cfg)
            })
            .collect()
    }

    /// Runs `f(rank, listener, config)` on one thread per rank; results in rank order.
    fn per_rank<R: Send>(
        setups: Vec<(TcpListener, RingConfig)>,
        f: impl Fn(u32, TcpListener, RingConfig) -> R + Sync,
    ) -> Vec<R> {
        thread::scope(|s| {
            let hs: Vec<_> = setups
                .into_iter()
                .map(|(l, cfg)| {
                    let f = &f;
                    s.spawn(move || f(cfg.rank, l, cfg))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Connects a ring of `n` ranks on 127.0.0.1 and runs `f(rank, ring)` on each.
    pub(in crate::collective) fn on_ranks<R: Send>(
        n: u32,
        timeout: Duration,
        chunk: usize,
        f: impl Fn(u32, Ring) -> R + Sync,
    ) -> Vec<R> {
        per_rank(listeners(n, "test-run", timeout, chunk), |rank, l, cfg| {
            f(rank, Ring::connect(l, cfg).unwrap())
        })
    }

    /// Seeded inputs spanning several magnitudes, so the summation order shows in the bits.
    fn input(rank: u32, len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed ^ (u64::from(rank) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let unit = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * f32::powi(2.0, (x % 9) as i32 - 4)
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn check_against_f64(got: &[f32], n: u32, len: usize, seed: u64) {
        let ins: Vec<Vec<f32>> = (0..n).map(|r| input(r, len, seed)).collect();
        for (i, g) in got.iter().enumerate() {
            let want: f64 = ins.iter().map(|v| f64::from(v[i])).sum();
            let mag: f64 = ins.iter().map(|v| f64::from(v[i]).abs()).sum();
            let tol = 2.0 * f64::from(n) * f64::from(f32::EPSILON) * mag + 1e-30;
            assert!(
                (f64::from(*g) - want).abs() <= tol,
                "n {n} len {len} [{i}]: {g} vs {want}"
            );
        }
    }

    #[test]
    fn segments_partition_uneven_lengths() {
        for n in 1..=7 {
            for len in 0..50 {
                let segs: Vec<_> = (0..n).map(|i| segment(len, n, i)).collect();
                assert_eq!(segs[0].start, 0);
                assert_eq!(segs[n - 1].end, len);
                for w in segs.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() == w[1].len() || w[0].len() == w[1].len() + 1);
                }
            }
        }
        assert_eq!(segment(3, 5, 2), 2..3);
        assert_eq!(segment(3, 5, 4), 3..3);
        assert_eq!(segment(1_000_003, 2, 1), 500_002..1_000_003);
    }

    #[test]
    fn config_rules() {
        let addr = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let ok = RingConfig::new("r", 1, 2, vec![addr(1), addr(2)], T);
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            RingConfig {
                rank: 2,
                ..ok.clone()
            },
            RingConfig {
                world_size: 3,
                ..ok.clone()
            },
            RingConfig {
                world_size: 0,
                ..ok.clone()
            },
            RingConfig {
                peers: vec![addr(1), addr(1)],
                ..ok.clone()
            },
            RingConfig {
                run_id: "x".repeat(257),
                ..ok.clone()
            },
            RingConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
            RingConfig {
                chunk_elems: 0,
                ..ok.clone()
            },
        ];
        for cfg in bad {
            assert!(
                matches!(cfg.validate(), Err(CollectiveError::Config { .. })),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn world_size_one_is_a_no_op_without_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = RingConfig::new("solo", 0, 1, vec![l.local_addr().unwrap()], T);
        let mut ring = Ring::connect(l, cfg).unwrap();
        assert!(ring.links.is_none());
        let mut buf = input(0, 10, 1);
        let before = buf.clone();
        ring.all_reduce_sum(&mut buf).unwrap();
        ring.all_reduce_mean(&mut buf).unwrap();
        assert_eq!(bits(&buf), bits(&before));
    }

    /// World sizes 1..=5, lengths 0, 1, 3, 1000 and 1_000_003, on one ring per world size:
    /// every rank's sum is bitwise the same, close to an f64 reference, and mean = sum / n.
    #[test]
    fn sum_and_mean_are_bitwise_identical_on_every_rank() {
        const LENS: [usize; 5] = [0, 1, 3, 1000, 1_000_003];
        for n in 1..=5u32 {
            let out = on_ranks(n, T, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
                LENS.iter()
                    .map(|&len| {
                        let mut sum = input(rank, len, 7);
                        ring.all_reduce_sum(&mut sum).unwrap();
                        let mut mean = input(rank, len, 7);
                        ring.all_reduce_mean(&mut mean).unwrap();
                        let div: Vec<f32> = sum.iter().map(|x| x / n as f32).collect();
                        assert_eq!(bits(&mean), bits(&div), "n {n} len {len}: mean != sum / n");
                        sum
                    })
                    .collect::<Vec<_>>()
            });
            for (i, &len) in LENS.iter().enumerate() {
                for r in 1..n as usize {
                    assert!(
                        bits(&out[r][i]) == bits(&out[0][i]),
                        "n {n} len {len}: rank {r} differs"
                    );
                }
                check_against_f64(&out[0][i], n, len, 7);
            }
        }
    }

    #[test]
    fn tiny_chunks_and_uneven_segments() {
        for n in [3u32, 5] {
            let out = on_ranks(n, T, 7, |rank, mut ring| {
                (0..40)
                    .map(|len| {
                        let mut buf = input(rank, len, 3);
                        ring.all_reduce_sum(&mut buf).unwrap();
                        buf
                    })
                    .collect::<Vec<_>>()
            });
            for (len, got) in out[0].iter().enumerate() {
                for other in &out[1..] {
                    assert_eq!(bits(&other[len]), bits(got), "n {n} len {len}");
                }
                check_against_f64(got, n, len, 3);
            }
        }
    }

    #[test]
    fn different_lengths_are_a_shape_mismatch() {
        let out = on_ranks(2, T, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
            let mut buf = vec![1.0; 10 + 2 * rank as usize];
            let first = ring.all_reduce_sum(&mut buf);
            // The ring is closed now: the same error again, without touching the sockets.
            assert_eq!(ring.all_reduce_sum(&mut buf), first);
            first
        });
        assert_eq!(
            out[0],
            Err(CollectiveError::ShapeMismatch {
                local: 10,
                peer: 12
            })
        );
        assert_eq!(
            out[1],
            Err(CollectiveError::ShapeMismatch {
                local: 12,
                peer: 10
            })
        );

        let barrier = Barrier::new(3);
        let out = on_ranks(3, T, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
            let mut buf = vec![1.0; if rank == 1 { 11 } else { 10 }];
            let result = ring.all_reduce_mean(&mut buf);
            barrier.wait(); // keep every socket open until all have a result
            result
        });
        assert_eq!(
            out[1],
            Err(CollectiveError::ShapeMismatch {
                local: 11,
                peer: 10
            })
        );
        assert_eq!(
            out[2],
            Err(CollectiveError::ShapeMismatch {
                local: 10,
                peer: 11
            })
        );
        assert!(
            matches!(out[0], Err(CollectiveError::PeerLost { rank: 2, .. })),
            "{:?}",
            out[0]
        );
    }

    #[test]
    fn mixing_sum_and_mean_is_a_protocol_error() {
        let out = on_ranks(2, T, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
            let mut buf = vec![1.0; 4];
            if rank == 0 {
                ring.all_reduce_sum(&mut buf)
            } else {
                ring.all_reduce_mean(&mut buf)
            }
        });
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(CollectiveError::Protocol { .. }))),
            "{out:?}"
        );
    }

    /// Rank 1 of 4 starts a call, takes one chunk header, then closes: nobody hangs.
    #[test]
    fn a_peer_closing_mid_reduce_is_peer_lost_quickly() {
        let len = 1_000_003;
        let barrier = Barrier::new(3);
        let out = on_ranks(4, T, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
            if rank == 1 {
                let links = ring.links.as_ref().unwrap();
                let call = CallHeader {
                    op: Op::Sum,
                    seq: 0,
                    total_len: len as u64,
                };
                (&links.next).write_all(&call.encode()).unwrap();
                let mut head = [0u8; CALL_HEADER_BYTES + CHUNK_HEADER_BYTES];
                (&links.prev).read_exact(&mut head).unwrap();
                drop(ring);
                return None;
            }
            let mut buf = input(rank, len, 5);
            let t0 = Instant::now();
            let result = ring.all_reduce_sum(&mut buf);
            let waited = t0.elapsed();
            barrier.wait();
            Some((result, waited))
        });
        for (rank, o) in out.iter().enumerate().filter(|(r, _)| *r != 1) {
            let (result, waited) = o.as_ref().unwrap();
            assert!(
                matches!(result, Err(CollectiveError::PeerLost { .. })),
                "rank {rank}: {result:?}"
            );
            assert!(*waited < T, "rank {rank} waited {waited:?}");
        }
        // The first failure is seen by a neighbour of the dead rank (rank 0 writes to it,
        // rank 2 reads from it), and that neighbour names it. Which of the two sees it first,
        // and whether the other one first sees the cascade around the ring, is a race.
        let names_rank_1 = |r: usize| {
            matches!(
                out[r].as_ref().unwrap().0,
                Err(CollectiveError::PeerLost { rank: 1, .. })
            )
        };
        assert!(names_rank_1(0) || names_rank_1(2), "{out:?}");
    }

    /// Rank 2 of 3 connects and then never sends: the others give up after about the timeout.
    #[test]
    fn a_stalled_peer_is_peer_lost_within_the_timeout() {
        let timeout = Duration::from_secs(1);
        let barrier = Barrier::new(3);
        let out = on_ranks(3, timeout, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
            if rank == 2 {
                barrier.wait(); // hold the connections open, silently, until the others gave up
                return None;
            }
            let mut buf = input(rank, 1000, 9);
            let t0 = Instant::now();
            let result = ring.all_reduce_sum(&mut buf);
            let waited = t0.elapsed();
            barrier.wait();
            Some((result, waited))
        });
        for o in &out[..2] {
            let (result, waited) = o.as_ref().unwrap();
            assert!(
                matches!(result, Err(CollectiveError::PeerLost { .. })),
                "{result:?}"
            );
            assert!(
                *waited < timeout + Duration::from_secs(2),
                "waited {waited:?}"
            );
        }
        let (result, waited) = out[0].as_ref().unwrap();
        assert!(
            matches!(result, Err(CollectiveError::PeerLost { rank: 2, .. })),
            "{result:?}"
        );
        assert!(*waited >= timeout.mul_f32(0.9), "gave up early: {waited:?}");
    }

    /// Bytes a stranger sends to a ring port: nothing a real peer would.
    fn strangers() -> Vec<Vec<u8>> {
        let me = |rank, world_size, ring_id: &str, key| super::super::handshake::Identity {
            ring_id: ring_id.into(),
            rank,
            world_size,
            key,
        };
        let hello = |i: &super::super::handshake::Identity| {
            super::super::handshake::encode_hello(i, &[0; 32])
        };
        let key = ringtrain_common::auth::ring_key(None);
        let mut old = hello(&me(0, 3, "r", key));
        old[4] = 2;
        vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Vec::new(),
            vec![0xff; 3],
            old,
            hello(&me(0, 3, "r/round-0", key)),
            hello(&me(2, 3, "r", key)),
            hello(&me(0, 4, "r", key)),
            // The right hello, but it cannot answer the challenge with the run's key.
            hello(&me(0, 3, "r", [9; 32])),
        ]
    }

    #[test]
    fn strangers_on_a_ring_port_never_end_the_ring() {
        let mut setups = listeners(3, "r", T, DEFAULT_CHUNK_ELEMS);
        let victim = setups[1].1.peers[1];
        // Strangers arrive first and keep arriving while the ring connects; one trickles a byte
        // every 300 ms, one connects and says nothing.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let out = thread::scope(|s| {
            let stop = &stop;
            s.spawn(move || {
                let mut slow = TcpStream::connect(victim).unwrap();
                let _silent = TcpStream::connect(victim).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for b in strangers() {
                        if let Ok(mut c) = TcpStream::connect(victim) {
                            let _ = c.write_all(&b);
                        }
                    }
                    let _ = slow.write_all(b"R");
                    thread::sleep(Duration::from_millis(300));
                }
            });
            thread::sleep(Duration::from_millis(200));
            let setups = std::mem::take(&mut setups);
            let out = per_rank(setups, |rank, l, cfg| {
                let mut ring = Ring::connect(l, cfg)?;
                let mut buf = input(rank, 1000, 5);
                ring.all_reduce_mean(&mut buf).map(|_| bits(&buf))
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            out
        });
        let first = out[0].as_ref().unwrap();
        for r in &out {
            assert_eq!(r.as_ref().unwrap(), first, "every rank holds the same mean");
        }
    }

    #[test]
    fn a_port_with_only_strangers_times_out_naming_the_last_refusal() {
        let mut setups = listeners(3, "r", Duration::from_millis(1500), DEFAULT_CHUNK_ELEMS);
        let (l2, cfg2) = setups.remove(2);
        let (l1, cfg1) = setups.remove(1);
        let victim = cfg1.peers[1];
        // Rank 2 answers rank 1's dial, so rank 1's only failure is its listening side (rank 0
        // never comes; a stranger does). Without it both sides time out at the same deadline
        // and which error is reported first depends on the scheduler.
        let successor = thread::spawn(move || Ring::connect(l2, cfg2).err());
        let stranger = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let mut c = TcpStream::connect(victim).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            // Closed by the victim, not left hanging.
            let mut b = [0u8; 1];
            matches!(c.read(&mut b), Ok(0) | Err(_))
        });
        match Ring::connect(l1, cfg1) {
            Err(CollectiveError::Refused {
                rank: 0,
                refused: 1,
                last,
                ..
            }) => assert!(last.contains("magic"), "{last}"),
            other => panic!("expected a refusal summary, got {other:?}"),
        }
        assert!(
            stranger.join().unwrap(),
            "the stranger's connection was closed"
        );
        // Rank 2 in turn never reached rank 0: its own error, not a hang.
        assert!(successor.join().unwrap().is_some());
    }

    #[test]
    fn rings_of_different_runs_do_not_connect() {
        let mut setups = listeners(2, "a", Duration::from_secs(1), DEFAULT_CHUNK_ELEMS);
        setups[1].1.run_id = "b".into();
        let out = per_rank(setups, |_, l, cfg| Ring::connect(l, cfg).map(|_| ()));
        // Whichever side's deadline is noticed first: the acceptor's refusal (naming the run
        // id) or the dialler's closed handshake.
        for r in &out {
            assert!(
                matches!(r, Err(CollectiveError::Refused { last, .. }) if last.contains("run_id"))
                    || matches!(r, Err(CollectiveError::Handshake { field: "hello", .. })),
                "{out:?}"
            );
        }
    }

    #[test]
    fn a_missing_next_rank_times_out() {
        let gone = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(300);
        let cfg = RingConfig::new("r", 0, 2, vec![l.local_addr().unwrap(), gone], timeout);
        let t0 = Instant::now();
        let err = Ring::connect(l, cfg).unwrap_err();
        assert_eq!(
            err,
            CollectiveError::Timeout {
                rank: 1,
                waited: timeout
            }
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    /// Loopback timing at world size 2 (run with --nocapture to see it; nothing is asserted).
    #[test]
    fn throughput_world_size_two() {
        for (len, iters) in [(1usize, 500u32), (41_132usize, 200u32), (1_000_000, 30)] {
            let out = on_ranks(2, T, DEFAULT_CHUNK_ELEMS, |rank, mut ring| {
                let mut buf = input(rank, len, 11);
                for _ in 0..3 {
                    ring.all_reduce_mean(&mut buf).unwrap();
                }
                let t0 = Instant::now();
                for _ in 0..iters {
                    ring.all_reduce_mean(&mut buf).unwrap();
                }
                t0.elapsed() / iters
            });
            let per_call = out[0].max(out[1]);
            let gbs = (len * 4) as f64 / per_call.as_secs_f64() / 1e9;
            eprintln!("ring all-reduce, world size 2, {len} floats: {per_call:?} per call, {gbs:.2} GB/s of buffer");
        }
    }
}
