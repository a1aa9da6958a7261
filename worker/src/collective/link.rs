//! Connection set-up of the TCP ring: one connection to the next rank, one from the previous.
//!
//! Owns dialling (with retry), accepting, socket options and running the handshake on each
//! connection; not the handshake's bytes (`handshake.rs`), the data layouts (`wire.rs`) or the
//! all-reduce (`ring.rs`). No tch.
//!
//! ```text
//!   rank r        dial thread                              main thread
//!   ------        -----------                              -----------
//!                 connect peers[r+1], handshake as dialer  accept ─┬─ handshake thread (stranger: refused, logged)
//!                 (retry until the ring deadline)                  ├─ handshake thread (trickling: its deadline, or evicted)
//!                                                                  └─ handshake thread (rank r-1: authenticated) ──▶ done
//! ```
//! Dialling and accepting run concurrently, so no rank waits for another rank's dial before it
//! accepts: there is no cycle in the ring's start-up, whatever order the ranks start in.
//!
//! # Contract
//! * The listener keeps accepting until the previous rank's connection is authenticated or the
//!   ring deadline (`start + timeout`) passes. A connection that fails its handshake is closed
//!   and logged (rate-limited) and changes nothing else: strangers cannot end a round.
//! * Each handshake has one deadline of at most 5 s (never past the ring's); at most 16 run at
//!   once, and a new connection beyond that closes the oldest.
//! * At the ring deadline the error is [`CollectiveError::Refused`] when connections were
//!   refused meanwhile (naming how many and the last one's peer and reason), else
//!   [`CollectiveError::Timeout`]. The first failure on either side cancels the other.
//! * Both sockets come back with `TCP_NODELAY` and read/write timeouts set to the ring timeout.
//!
//! Tests: the handshake and time-out tests at the bottom of `ring.rs`; `handshake.rs`.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ringtrain_common::logging::RateLimit;

use super::handshake::{self, Identity, Refusal};
use super::CollectiveError;

/// The two connections of one rank.
#[derive(Debug)]
pub(super) struct Links {
    /// To rank `(r + 1) % n`; this rank only writes to it after the handshake.
    pub next: TcpStream,
    /// From rank `(r + n - 1) % n`; this rank only reads from it after the handshake.
    pub prev: TcpStream,
    pub next_rank: u32,
    pub prev_rank: u32,
}

impl Links {
    /// Shuts both connections down so the neighbours see EOF now rather than at their timeout.
    pub fn shutdown(&self) {
        // Already-closed sockets report ENOTCONN; there is nothing more to do about them.
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
    }
}

/// The first failure among cooperating threads; later failures are its consequences.
#[derive(Debug, Default)]
pub(super) struct FirstError {
    set: AtomicBool,
    slot: Mutex<Option<CollectiveError>>,
}

impl FirstError {
    /// Records `e` if nothing was recorded yet; returns whether it was.
    pub fn record(&self, e: CollectiveError) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return false;
        }
        *slot = Some(e);
        self.set.store(true, Ordering::Release);
        true
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    pub fn into_result(self) -> Result<(), CollectiveError> {
        match self
            .slot
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Dials `next_addr` and accepts the previous rank on `listener`, authenticating both
/// connections (`handshake.rs`).
pub(super) fn establish(
    listener: TcpListener,
    next_addr: SocketAddr,
    me: &Identity,
    timeout: Duration,
) -> Result<Links, CollectiveError> {
    let n = me.world_size;
    let next_rank = (me.rank + 1) % n;
    let prev_rank = (me.rank + n - 1) % n;
    let deadline = Instant::now() + timeout;
    let first = FirstError::default();
    let (next, prev) = thread::scope(|s| {
        let dialer = thread::Builder::new()
            .name(format!("ring-dial-{}", me.rank))
            .spawn_scoped(s, || {
                dial(next_addr, me, next_rank, deadline, timeout, &first)
            });
        let prev = accept(&listener, me, prev_rank, deadline, timeout, &first);
        let next = match dialer {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                first.record(io_err("the ring dial thread", "panicked"));
                None
            }),
            Err(e) => {
                first.record(io_err("spawning the ring dial thread", e));
                None
            }
        };
        (next, prev)
    });
    first.into_result()?;
    let (Some(next), Some(prev)) = (next, prev) else {
        return Err(io_err("ring set-up", "a side gave up without an error"));
    };
    Ok(Links {
        next,
        prev,
        next_rank,
        prev_rank,
    })
}

/// Each handshake may take at most this long, and never past the ring's own deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once on the listener; a new connection past this closes the
/// oldest (a stranger that trickles bytes), never the listener.
const MAX_PENDING_HANDSHAKES: usize = 16;

/// Refused ring connections are logged at most this often.
static REFUSED_LOG: std::sync::LazyLock<RateLimit> =
    std::sync::LazyLock::new(|| RateLimit::new(10, Duration::from_secs(10)));

fn handshake_deadline(ring_deadline: Instant) -> Instant {
    (Instant::now() + HANDSHAKE_TIMEOUT).min(ring_deadline)
}

/// Connects to the next rank and authenticates it, retrying (a rank not listening yet, or a
/// stranger answering at its address) until the ring's deadline.
fn dial(
    addr: SocketAddr,
    me: &Identity,
    next_rank: u32,
    deadline: Instant,
    timeout: Duration,
    first: &FirstError,
) -> Option<TcpStream> {
    let mut backoff = Duration::from_millis(10);
    let mut last_refusal: Option<Refusal> = None;
    loop {
        if first.is_set() {
            return None;
        }
        let now = Instant::now();
        if now >= deadline {
            first.record(match last_refusal {
                Some(r) => CollectiveError::Handshake {
                    peer: addr,
                    field: r.field,
                    reason: r.reason,
                },
                None => CollectiveError::Timeout {
                    rank: next_rank,
                    waited: timeout,
                },
            });
            return None;
        }
        let left = deadline - now;
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                match handshake::dial(&stream, me, next_rank, handshake_deadline(deadline)) {
                    Ok(()) => {
                        if let Err(e) = configure(&stream, timeout) {
                            first.record(e);
                            return None;
                        }
                        return Some(stream);
                    }
                    Err(r) => {
                        tracing::debug!(rank = me.rank, %addr, field = r.field, reason = %r.reason, "ring dial refused; retrying");
                        last_refusal = Some(r);
                    }
                }
            }
            Err(e) => {
                // Refused or unreachable: the next rank has probably not started yet.
                tracing::debug!(rank = next_rank, %addr, error = %e, "ring dial retry");
            }
        }
        thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// A handshake running on its own thread; `handle` shuts its socket to cancel it.
struct Pending {
    handle: TcpStream,
    done: std::sync::Arc<AtomicBool>,
}

/// Accepts until the previous rank's connection passes the handshake. Strangers (port scanners,
/// health checks, a peer of an earlier round or another run, a wrong token) are refused and
/// logged without ending anything; each handshake runs on its own thread under its own
/// deadline, so a slow one never holds up the real predecessor.
fn accept(
    listener: &TcpListener,
    me: &Identity,
    prev_rank: u32,
    deadline: Instant,
    timeout: Duration,
    first: &FirstError,
) -> Option<TcpStream> {
    if let Err(e) = listener.set_nonblocking(true) {
        first.record(io_err("making the listener non-blocking", e));
        return None;
    }
    let (done_tx, done_rx) = mpsc::channel::<TcpStream>();
    let refused: Mutex<(u32, Option<(SocketAddr, Refusal)>)> = Mutex::new((0, None));
    let out = thread::scope(|s| {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        // Handshakes still running are cut short; finished ones (the winner among them) are
        // left alone: their socket is the one being returned.
        let cancel = |pending: &mut VecDeque<Pending>| {
            for p in pending.drain(..) {
                if !p.done.load(Ordering::Acquire) {
                    let _ = p.handle.shutdown(Shutdown::Both);
                }
            }
        };
        loop {
            if first.is_set() {
                cancel(&mut pending);
                return None;
            }
            if let Ok(stream) = done_rx.try_recv() {
                cancel(&mut pending);
                return Some(stream);
            }
            if Instant::now() >= deadline {
                cancel(&mut pending);
                let g = refused.lock().unwrap_or_else(PoisonError::into_inner);
                first.record(match &g.1 {
                    Some((peer, r)) => CollectiveError::Refused {
                        rank: prev_rank,
                        waited: timeout,
                        refused: g.0,
                        last: format!("from {peer}: {}: {}", r.field, r.reason),
                    },
                    None => CollectiveError::Timeout {
                        rank: prev_rank,
                        waited: timeout,
                    },
                });
                return None;
            }
            pending.retain(|p| !p.done.load(Ordering::Acquire));
            let (stream, peer) = match listener.accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Wake early when a handshake finishes.
                    if let Ok(stream) = done_rx.recv_timeout(Duration::from_millis(5)) {
                        cancel(&mut pending);
                        return Some(stream);
                    }
                    continue;
                }
                Err(e) => {
                    // Out of descriptors, an aborted connection: wait and go on accepting.
                    if let Some(left_out) = REFUSED_LOG.allow() {
                        tracing::warn!(rank = me.rank, error = %e, left_out, "ring accept failed");
                    }
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let Ok(handle) = stream.try_clone() else {
                continue;
            };
            if pending.len() >= MAX_PENDING_HANDSHAKES {
                if let Some(old) = pending.pop_front() {
                    if !old.done.load(Ordering::Acquire) {
                        let _ = old.handle.shutdown(Shutdown::Both);
                    }
                }
            }
            let done = std::sync::Arc::new(AtomicBool::new(false));
            pending.push_back(Pending {
                handle,
                done: done.clone(),
            });
            let (tx, refused) = (done_tx.clone(), &refused);
            let spawned = thread::Builder::new()
                .name(format!("ring-hello-{}", me.rank))
                .spawn_scoped(s, move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_nodelay(true);
                    match handshake::accept(&stream, me, prev_rank, handshake_deadline(deadline)) {
                        Ok(()) => match configure(&stream, timeout) {
                            Ok(()) => {
                                // Done before it is handed over, so no cancel cuts it.
                                done.store(true, Ordering::Release);
                                let _ = tx.send(stream);
                            }
                            Err(e) => {
                                first.record(e);
                            }
                        },
                        Err(r) => {
                            // Closed now (the accept loop's clone of it would keep it open).
                            let _ = stream.shutdown(Shutdown::Both);
                            if let Some(left_out) = REFUSED_LOG.allow() {
                                tracing::warn!(rank = me.rank, %peer, field = r.field, reason = %r.reason, left_out, "ring connection refused");
                            }
                            let mut g = refused.lock().unwrap_or_else(PoisonError::into_inner);
                            g.0 += 1;
                            g.1 = Some((peer, r));
                        }
                    }
                    done.store(true, Ordering::Release);
                });
            if let Err(e) = spawned {
                first.record(io_err("spawning a ring handshake thread", e));
            }
        }
    });
    out
}

/// TCP_NODELAY (latency of small chunk headers) and the ring timeout on every read and write.
fn configure(stream: &TcpStream, timeout: Duration) -> Result<(), CollectiveError> {
    stream
        .set_nodelay(true)
        .map_err(|e| io_err("setting TCP_NODELAY", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| io_err("setting the read timeout", e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| io_err("setting the write timeout", e))
}

fn io_err(op: &'static str, e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Io {
        op,
        reason: e.to_string(),
    }
}
