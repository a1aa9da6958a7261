//! Connection admission for the gRPC and HTTP ports: caps, a handshake deadline, and eviction, so that
//! nobody can exhaust the coordinator's file descriptors through it.
//!
//! Owns accepting TCP connections and deciding how long each may stay; not TLS or HTTP/2 (tonic
//! and hyper run them over the connections handed out here), nor the token check
//! (`security.rs`, which calls [`mark_authenticated`]).
//!
//! # Contract
//! * Every accepted connection starts *pending*. It becomes *established* when it carries its
//!   first call that passed the token check (any Coordinator call when the run has no token).
//! * A pending connection that is not established within `handshake_timeout` (TLS handshake,
//!   HTTP/2 preface and first call together: one deadline, not one per read) is closed. So is
//!   the oldest pending connection when `max_pending` are pending and another arrives: a
//!   legitimate client needs milliseconds to get established, a flood of idle or slow clients
//!   only ever pushes out its own oldest members.
//! * At most `max_connections` are established; a connection that would be one more is closed.
//! * Garbage (anything that is not an HTTP/2 preface or a TLS ClientHello) is refused by hyper or
//!   rustls at once; the connection then closes like any other.
//! * Accept errors never end the server: on `EMFILE`/`ENFILE` the oldest pending connection is
//!   closed and accepting pauses 50 ms.
//! * Closing is `shutdown(2)` on the socket, which wakes whatever reads it (hyper ends the
//!   connection, in-flight calls are dropped like a disconnect); the descriptor itself is closed
//!   by its owner, so it is never closed twice or reused under us.
//! * Refusals are logged with the peer address and the reason, at most 20 per 10 s.
//!
//! ```text
//!   accept ──▶ pending ──first authenticated call──▶ established ──close──▶ gone
//!                 │  ╲── handshake_timeout / evicted (pending full) / garbage ──▶ gone
//!                 └──── established full ──────────────────────────────────────▶ gone
//! ```
//! Tests: `tests` at the bottom; `coordinator/tests/flood.rs` (a run under 1,000 idle and 200
//! garbage connections per second).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ringtrain_common::logging::RateLimit;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    pub max_connections: usize,
    pub max_pending: usize,
    pub handshake_timeout: Duration,
    /// TCP keepalive on accepted sockets (the kernel's probe of a silent peer).
    pub tcp_keepalive: Duration,
}

/// Counters of one listener (for `/metrics` and the README's figures).
#[derive(Debug, Default)]
pub struct GuardStats {
    pub accepted: AtomicU64,
    pub established: AtomicU64,
    pub timed_out: AtomicU64,
    pub evicted: AtomicU64,
    pub refused_full: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// One connection as the guard sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    fd: RawFd,
    peer: SocketAddr,
    accepted: Instant,
    /// `(open, established)`; `open` turns false when the stream is dropped, before its
    /// descriptor is closed, so a shutdown never hits a reused descriptor.
    state: Mutex<(bool, bool)>,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the connection from outside (wakes its reader); no-op once dropped.
    fn shut(&self) {
        let g = self.lock();
        if g.0 {
            // SAFETY: the descriptor is open while `g.0` holds, and the stream's drop waits
            // for this lock before its descriptor is closed.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    pending: VecDeque<Arc<Conn>>,
    established: usize,
}

/// The connections of one listener.
#[derive(Debug)]
pub struct Guard {
    /// Which port this guards ("gRPC", "HTTP"), for log lines and metric labels.
    port: &'static str,
    cfg: GuardConfig,
    counts: Mutex<Counts>,
    next_id: AtomicU64,
    stats: GuardStats,
    log: RateLimit,
}

impl Guard {
    /// A guard with `cfg`'s limits for the port named `port` ("gRPC", "HTTP").
    pub fn new(port: &'static str, cfg: GuardConfig) -> Arc<Self> {
        Arc::new(Self {
            port,
            cfg,
            counts: Mutex::new(Counts::default()),
            next_id: AtomicU64::new(0),
            stats: GuardStats::default(),
            log: RateLimit::new(20, Duration::from_secs(10)),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The port's name, as given to [`Guard::new`].
    pub fn port(&self) -> &'static str {
        self.port
    }

    /// Counters.
    pub fn stats(&self) -> &GuardStats {
        &self.stats
    }

    /// `(pending, established)` now.
    pub fn open(&self) -> (usize, usize) {
        let c = self.counts();
        (c.pending.len(), c.established)
    }

    fn refused(&self, peer: SocketAddr, reason: &str) {
        if let Some(left_out) = self.log.allow() {
            tracing::warn!(port = self.port, %peer, reason, left_out, "connection closed");
        }
    }

    /// Registers a new connection, evicting the oldest pending one when `max_pending` are.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, now: Instant) -> Guarded {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            fd: stream.as_raw_fd(),
            peer,
            accepted: now,
            state: Mutex::new((true, false)),
        });
        let evicted = {
            let mut c = self.counts();
            let evicted = (c.pending.len() >= self.cfg.max_pending)
                .then(|| c.pending.pop_front())
                .flatten();
            c.pending.push_back(conn.clone());
            evicted
        };
        if let Some(old) = evicted {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            self.refused(old.peer, "evicted: too many connections in their handshake");
            old.shut();
        }
        Guarded {
            inner: stream,
            conn,
            guard: self.clone(),
        }
    }

    /// Closes the oldest pending connection (out of descriptors).
    fn evict_oldest(&self) {
        let old = self.counts().pending.pop_front();
        if let Some(old) = old {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            self.refused(old.peer, "evicted: out of file descriptors");
            old.shut();
        }
    }

    /// Closes the pending connections older than the handshake deadline.
    fn expire(&self, now: Instant) {
        let expired: Vec<Arc<Conn>> = {
            let mut c = self.counts();
            let mut out = Vec::new();
            while c.pending.front().is_some_and(|x| {
                now.saturating_duration_since(x.accepted) >= self.cfg.handshake_timeout
            }) {
                out.extend(c.pending.pop_front());
            }
            out
        };
        for x in expired {
            self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            self.refused(x.peer, "no authenticated call within the handshake timeout");
            x.shut();
        }
    }

    /// `conn` carried an authenticated call: established, or closed when that would be one
    /// too many.
    fn establish(&self, conn: &Arc<Conn>) {
        let over = {
            // Lock order conn → counts, and the count changes with the flag under the conn
            // lock: a drop racing with this sees either neither or both.
            let mut g = conn.lock();
            if !g.0 || g.1 {
                return;
            }
            let mut c = self.counts();
            c.pending.retain(|x| x.id != conn.id);
            if c.established >= self.cfg.max_connections {
                true
            } else {
                c.established += 1;
                g.1 = true;
                false
            }
        };
        if over {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            self.refused(conn.peer, "max-connections established connections already");
            conn.shut();
            return;
        }
        self.stats.established.fetch_add(1, Ordering::Relaxed);
    }

    /// `conn`'s stream is gone.
    fn closed(&self, conn: &Conn, established: bool) {
        let mut c = self.counts();
        if established {
            c.established = c.established.saturating_sub(1);
        } else {
            c.pending.retain(|x| x.id != conn.id);
        }
    }
}

/// What a request knows about its connection (a tonic request extension).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    conn: Arc<Conn>,
    guard: Arc<Guard>,
}

/// An accepted connection under the guard's watch.
#[derive(Debug)]
pub struct Guarded {
    inner: TcpStream,
    conn: Arc<Conn>,
    guard: Arc<Guard>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let established = {
            let mut g = self.conn.lock();
            g.0 = false;
            g.1
        };
        self.guard.closed(&self.conn, established);
        // `inner` (the descriptor) closes after this, with nobody left to shut it down.
    }
}

impl Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            remote: self.conn.peer,
            conn: self.conn.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The caller's address, from the connection of `req` (`None` without one: service tests).
pub fn peer_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnInfo>()
        .map(|c| c.remote)
        .or_else(|| req.remote_addr())
}

/// Marks `req`'s connection established (it passed the token check).
pub fn mark_authenticated<T>(req: &tonic::Request<T>) {
    if let Some(c) = req.extensions().get::<ConnInfo>() {
        c.guard.establish(&c.conn);
    }
}

/// Accepts on `listener` under `guard` until `stop` fires; the connections come out of the
/// returned receiver (for `serve_with_incoming_shutdown`). Also runs the deadline reaper.
pub fn accept_loop(
    listener: TcpListener,
    guard: Arc<Guard>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<Guarded>> {
    let (tx, rx) = mpsc::channel(64);
    let reaper = guard.clone();
    let mut reaper_stop = stop.clone();
    let period =
        (guard.cfg.handshake_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => reaper.expire(Instant::now()),
                _ = reaper_stop.changed() => return,
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let sock = socket2::SockRef::from(&stream);
                    let _ = sock.set_tcp_keepalive(
                        &socket2::TcpKeepalive::new().with_time(guard.cfg.tcp_keepalive),
                    );
                    let conn = guard.admit(stream, peer, Instant::now());
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    guard.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if let Some(left_out) = guard.log.allow() {
                        tracing::warn!(port = guard.port, error = %e, left_out, "accept failed");
                    }
                    if out_of_fds {
                        guard.evict_oldest();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
    });
    rx
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime does), so
/// that the connection caps, not the default 1,024, bound what the network can hold open.
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Descriptors kept free of connections for the run folder, data and the runtime.
pub const FD_RESERVE: u64 = 256;

/// `cfg` with its caps lowered so that pending plus established connections leave
/// [`FD_RESERVE`] descriptors of `fd_limit` free.
pub fn fit_to_fd_limit(mut cfg: GuardConfig, fd_limit: u64) -> GuardConfig {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(2) as usize;
    if cfg.max_connections + cfg.max_pending > room {
        cfg.max_pending = cfg.max_pending.min(room / 2).max(1);
        cfg.max_connections = cfg.max_connections.min(room - cfg.max_pending).max(1);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn cfg(max_connections: usize, max_pending: usize, timeout_ms: u64) -> GuardConfig {
        GuardConfig {
            max_connections,
            max_pending,
            handshake_timeout: Duration::from_millis(timeout_ms),
            tcp_keepalive: Duration::from_secs(10),
        }
    }

    /// A listener under a guard, and a way to get its next connection.
    async fn server(
        c: GuardConfig,
    ) -> (
        SocketAddr,
        Arc<Guard>,
        mpsc::Receiver<std::io::Result<Guarded>>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let guard = Guard::new("test", c);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let rx = accept_loop(l, guard.clone(), stop_rx);
        (addr, guard, rx, stop_tx)
    }

    /// True when the server closed `s` (EOF or reset) within `within`.
    async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(within, s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_at_the_handshake_deadline() {
        let (addr, guard, mut rx, _stop) = server(cfg(8, 8, 300)).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let held = rx.recv().await.unwrap().unwrap();
        assert_eq!(guard.open(), (1, 0));
        assert!(closed_by_server(&mut idle, Duration::from_secs(3)).await);
        assert_eq!(guard.stats().timed_out.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(guard.open(), (0, 0));
    }

    #[tokio::test]
    async fn the_oldest_pending_connection_makes_room_for_a_new_one() {
        let (addr, guard, mut rx, _stop) = server(cfg(8, 2, 60_000)).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let a = rx.recv().await.unwrap().unwrap();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = rx.recv().await.unwrap().unwrap();
        let _third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _c = rx.recv().await.unwrap().unwrap();
        assert!(closed_by_server(&mut first, Duration::from_secs(3)).await);
        assert_eq!(guard.stats().evicted.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(guard.open(), (2, 0));
    }

    #[tokio::test]
    async fn established_connections_stay_and_are_capped() {
        let (addr, guard, mut rx, _stop) = server(cfg(1, 8, 300)).await;
        let mut one = tokio::net::TcpStream::connect(addr).await.unwrap();
        let a = rx.recv().await.unwrap().unwrap();
        let info = a.connect_info();
        info.guard.establish(&info.conn);
        info.guard.establish(&info.conn);
        assert_eq!(guard.open(), (0, 1));
        let mut two = tokio::net::TcpStream::connect(addr).await.unwrap();
        let b = rx.recv().await.unwrap().unwrap();
        let info_b = b.connect_info();
        info_b.guard.establish(&info_b.conn);
        assert!(closed_by_server(&mut two, Duration::from_secs(3)).await);
        assert_eq!(guard.stats().refused_full.load(Ordering::Relaxed), 1);
        // The established one outlives the deadline and still carries bytes.
        tokio::time::sleep(Duration::from_millis(600)).await;
        one.write_all(b"x").await.unwrap();
        let mut a = a;
        let mut got = [0u8; 1];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        drop(b);
        drop(a);
        assert_eq!(guard.open(), (0, 0));
    }

    #[test]
    fn caps_fit_under_the_descriptor_limit() {
        let c = cfg(1024, 256, 1);
        assert_eq!(fit_to_fd_limit(c, 1 << 20), c);
        let small = fit_to_fd_limit(c, 1024);
        assert!(small.max_connections + small.max_pending <= 1024 - FD_RESERVE as usize);
        assert!(small.max_pending >= 1 && small.max_connections >= 1);
        assert!(raise_fd_limit() > 0);
    }
}
