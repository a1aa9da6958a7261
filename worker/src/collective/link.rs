//! Connection set-up of the TCP ring: one connection to the next rank, one from the previous.
//!
//! Owns dialling (with retry), accepting, socket options and the hello exchange; not the
//! byte layouts (`wire.rs`) or the all-reduce (`ring.rs`). No tch.
//!
//! ```text
//!   rank r                                 dial thread                 main thread
//!   ------                                 -----------                 -----------
//!   dial next (retry until deadline) ----> connect peers[r+1], send hello
//!   accept prev (until deadline)                                       accept, read hello,
//!                                                                      check run/size/rank,
//!                                                                      reply with own hello
//!   join; then read next's reply and check it is rank r+1 of our run
//! ```
//! Dialling and accepting run concurrently, so no rank waits for another rank's dial before it
//! accepts: there is no cycle in the ring's start-up, whatever order the ranks start in. A hello
//! is small and fits in the socket buffer, so writing it never waits for the peer to read.
//!
//! Contract: both sockets come back with `TCP_NODELAY` and read/write timeouts set to the ring
//! timeout. Dialling and accepting each give up at `start + timeout` with
//! [`CollectiveError::Timeout`]; the first failure cancels the other side.
//!
//! Tests: the handshake and time-out tests at the bottom of `ring.rs`.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{Hello, HelloError};
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

/// Dials `next_addr` and accepts one connection on `listener`, exchanging hellos on both.
pub(super) fn establish(
    listener: TcpListener,
    next_addr: SocketAddr,
    ours: &Hello,
    timeout: Duration,
) -> Result<Links, CollectiveError> {
    let n = ours.world_size;
    let next_rank = (ours.rank + 1) % n;
    let prev_rank = (ours.rank + n - 1) % n;
    let deadline = Instant::now() + timeout;
    let hello = ours.encode();
    let first = FirstError::default();
    let (next, prev) = thread::scope(|s| {
        let dialer = thread::Builder::new()
            .name(format!("ring-dial-{}", ours.rank))
            .spawn_scoped(s, || {
                dial(next_addr, next_rank, &hello, deadline, timeout, &first)
            });
        let prev = accept(&listener, ours, prev_rank, deadline, timeout, &first);
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
    match Hello::read(&mut &next) {
        Ok(reply) => {
            reply
                .check(ours, next_rank)
                .map_err(|(field, reason)| CollectiveError::Handshake {
                    peer: next_addr,
                    field,
                    reason,
                })?
        }
        Err(HelloError::Bad { field, reason }) => {
            return Err(CollectiveError::Handshake {
                peer: next_addr,
                field,
                reason,
            })
        }
        Err(HelloError::Io(e)) if is_timeout(&e) => {
            return Err(CollectiveError::Timeout {
                rank: next_rank,
                waited: timeout,
            })
        }
        Err(HelloError::Io(e)) => {
            let reason = format!(
                "no reply to our hello ({e}); it rejects a wrong run id, world size or rank"
            );
            return Err(CollectiveError::Handshake {
                peer: next_addr,
                field: "reply",
                reason,
            });
        }
    }
    Ok(Links {
        next,
        prev,
        next_rank,
        prev_rank,
    })
}

/// Connects to the next rank, retrying while it is not listening yet, and sends our hello.
fn dial(
    addr: SocketAddr,
    next_rank: u32,
    hello: &[u8],
    deadline: Instant,
    timeout: Duration,
    first: &FirstError,
) -> Option<TcpStream> {
    let mut backoff = Duration::from_millis(10);
    let stream = loop {
        if first.is_set() {
            return None;
        }
        let now = Instant::now();
        if now >= deadline {
            first.record(CollectiveError::Timeout {
                rank: next_rank,
                waited: timeout,
            });
            return None;
        }
        let left = deadline - now;
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            Ok(s) => break s,
            Err(e) => {
                // Refused or unreachable: the next rank has probably not started yet.
                tracing::debug!(rank = next_rank, %addr, error = %e, "ring dial retry");
                thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    };
    if let Err(e) = configure(&stream, timeout) {
        first.record(e);
        return None;
    }
    if let Err(e) = (&stream).write_all(hello) {
        let reason = format!("sending our hello: {e}");
        first.record(CollectiveError::Handshake {
            peer: addr,
            field: "hello",
            reason,
        });
        return None;
    }
    Some(stream)
}

/// Accepts the previous rank's connection, checks its hello and replies with ours.
fn accept(
    listener: &TcpListener,
    ours: &Hello,
    prev_rank: u32,
    deadline: Instant,
    timeout: Duration,
    first: &FirstError,
) -> Option<TcpStream> {
    let result = (|| {
        // std has no accept timeout; poll a non-blocking listener instead.
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("making the listener non-blocking", e))?;
        let (stream, peer) = loop {
            if first.is_set() {
                return Ok(None);
            }
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(CollectiveError::Timeout {
                            rank: prev_rank,
                            waited: timeout,
                        });
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("accepting on the collective port", e)),
            }
        };
        // Accepted sockets may inherit non-blocking mode on some platforms.
        stream
            .set_nonblocking(false)
            .map_err(|e| io_err("making a socket blocking", e))?;
        configure(&stream, timeout)?;
        let handshake = |field, reason| CollectiveError::Handshake {
            peer,
            field,
            reason,
        };
        let theirs = Hello::read(&mut &stream).map_err(|e| match e {
            HelloError::Bad { field, reason } => handshake(field, reason),
            HelloError::Io(e) => handshake("hello", format!("reading the hello: {e}")),
        })?;
        theirs
            .check(ours, prev_rank)
            .map_err(|(field, reason)| handshake(field, reason))?;
        (&stream)
            .write_all(&ours.encode())
            .map_err(|e| handshake("reply", format!("sending our reply: {e}")))?;
        Ok(Some(stream))
    })();
    result.unwrap_or_else(|e| {
        first.record(e);
        None
    })
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

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_err(op: &'static str, e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Io {
        op,
        reason: e.to_string(),
    }
}
