//! The HTTP/1.1 listener: admits connections through `crate::guard` and runs hyper's HTTP/1
//! connection over each, with the routes (`routes.rs`) as its service.
//!
//! Owns connection limits and lifetimes; not what is served.
//!
//! # Contract
//! * A connection is *pending* until hyper has read a complete request head, then
//!   *established* (the gRPC port's guard, with a complete head where gRPC has an
//!   authenticated call). At most [`MAX_PENDING`] are pending: one more closes the oldest, so
//!   idle and garbage connections only ever push out each other, while a real client, which
//!   sends its head at once, is established within milliseconds.
//! * A head must be complete within [`HEAD_TIMEOUT`] (hyper's header-read timeout, and the
//!   guard's deadline counted from accept) and fit [`MAX_HEAD`] (else hyper answers 431);
//!   anything that is not HTTP/1 gets hyper's 400. Either way the connection closes.
//! * At most [`MAX_CONNECTIONS`] are established; a request on one more is answered `503`
//!   (`Retry-After: 2`) and its connection closes.
//! * One request per connection (`Connection: close`), so an established connection is always
//!   busy: computing an answer, writing it, or streaming events.
//! * A write that makes no progress for [`WRITE_TIMEOUT`] ends the connection
//!   (`write_timeout.rs`).
//! * Every connection task lives in the listener's `JoinSet`: [`HttpServer::shutdown`] stops
//!   accepting, gives open streams a grace period to send the run's end, then aborts the rest.
//!
//! ```text
//!   accept ──▶ pending ──complete head──▶ established ──answer written──▶ gone
//!                 │  ╲── 5 s / evicted (256 pending) / not HTTP / head over 8 KiB ──▶ gone
//!                 └──── 64 established already: 503 ────────────────────────────────▶ gone
//! ```
//!
//! Tests: `tests` at the bottom (caps, eviction, deadline over real sockets);
//! `coordinator/tests/dashboard.rs` (limits, disconnects, shutdown of a serving run).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::server::Connected as _;
use tower::ServiceExt as _;

use super::routes;
use super::write_timeout::WriteTimeout;
use crate::guard::{self, ConnInfo, Guard, GuardConfig, Guarded};
use crate::shared::Shared;

/// Connections with a request under way at once (event streams included).
pub(super) const MAX_CONNECTIONS: usize = 64;
/// Connections still sending their request head.
pub(super) const MAX_PENDING: usize = 256;
/// How long a client may take to send its request head.
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head (hyper's smallest buffer).
const MAX_HEAD: usize = 8192;
/// How long one write may make no progress before the client counts as gone.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const LIMITS: GuardConfig = GuardConfig {
    max_connections: MAX_CONNECTIONS,
    max_pending: MAX_PENDING,
    handshake_timeout: HEAD_TIMEOUT,
    // The kernel's probe of a silent peer; an event stream also writes every second.
    tcp_keepalive: Duration::from_secs(10),
};

/// The running HTTP endpoint.
pub(crate) struct HttpServer {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    /// Its connections (counted in `/metrics`).
    guard: Arc<Guard>,
}

impl HttpServer {
    /// Serves `listener` until [`HttpServer::shutdown`].
    pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        // The gRPC port's caps are fitted the same way; when both cannot fit, the guards'
        // out-of-descriptors handling (close the oldest pending) is what is left.
        let limits = guard::fit_to_fd_limit(LIMITS, guard::raise_fd_limit());
        tracing::info!(
            max_connections = limits.max_connections,
            max_pending = limits.max_pending,
            head_timeout_s = HEAD_TIMEOUT.as_secs_f64(),
            write_timeout_s = WRITE_TIMEOUT.as_secs_f64(),
            max_requests = routes::MAX_REQUESTS,
            max_streams = routes::MAX_STREAMS,
            "HTTP connection limits"
        );
        let server = Self::serve(listener, routes::router(shared.clone()), limits);
        shared.set_http_guard(server.guard.clone());
        server
    }

    /// Serves `app` on `listener` under `limits`.
    fn serve(listener: TcpListener, app: Router, limits: GuardConfig) -> Self {
        let guard = Guard::new("HTTP", limits);
        let (stop, stopped) = watch::channel(false);
        let incoming = guard::accept_loop(listener, guard.clone(), stopped.clone());
        let conn = Conn {
            app,
            guard: guard.clone(),
            head_timeout: limits.handshake_timeout,
            cap: limits.max_connections,
        };
        let task = tokio::spawn(accept(incoming, conn, stopped));
        Self { task, stop, guard }
    }

    /// Stops accepting; waits up to `grace` for open connections (an event stream ends by
    /// itself once the run is over), then aborts what is left.
    pub(crate) async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            // Dropping the loop's JoinSet aborts every connection task.
            self.task.abort();
        }
    }
}

/// What each connection needs.
#[derive(Clone)]
struct Conn {
    app: Router,
    guard: Arc<Guard>,
    head_timeout: Duration,
    cap: usize,
}

async fn accept(
    mut incoming: mpsc::Receiver<std::io::Result<Guarded>>,
    conn: Conn,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Also when the server is dropped without `shutdown`.
            _ = stopped.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            next = incoming.recv() => match next {
                Some(Ok(stream)) => {
                    conns.spawn(conn.clone().serve(stream));
                }
                Some(Err(_)) => {}
                None => break,
            }
        }
    }
    // The guard's accept loop saw the stop too: once it is gone the listener is closed, and
    // what it accepted meanwhile is dropped unanswered.
    while incoming.recv().await.is_some() {}
    while conns.join_next().await.is_some() {}
}

impl Conn {
    /// Serves the one request of `stream`.
    async fn serve(self, stream: Guarded) {
        let info = stream.connect_info();
        let io = TokioIo::new(WriteTimeout::new(stream, WRITE_TIMEOUT));
        let head_timeout = self.head_timeout;
        // Hyper calls this once it has a complete head, which is what establishes the connection.
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let app = self.admit(&info).then(|| self.app.clone());
            async move {
                Ok::<_, Infallible>(match app {
                    Some(app) => app.oneshot(req).await.unwrap_or_else(|e| match e {}),
                    None => routes::busy(),
                })
            }
        });
        // Errors are the client's (timeouts, resets, bad requests, stopped reading); hyper
        // already answered what could be answered.
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_buf_size(MAX_HEAD)
            .keep_alive(false)
            .serve_connection(io, service)
            .await;
    }

    /// Counts `info`'s connection established: true, or false when [`Conn::cap`] are already
    /// (the request gets 503). Two racing for the last slot: the guard closes the loser.
    fn admit(&self, info: &ConnInfo) -> bool {
        if self.guard.open().1 >= self.cap {
            return false;
        }
        // The guard's public way in is a request carrying the connection, as tonic's are.
        let mut marker = tonic::Request::new(());
        marker.extensions_mut().insert(info.clone());
        guard::mark_authenticated(&marker);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use tokio::sync::Notify;

    /// A server with `/` (answers at once) and `/hold` (answers when `release` is notified).
    async fn server(limits: GuardConfig) -> (SocketAddr, Arc<Notify>, HttpServer) {
        let release = Arc::new(Notify::new());
        let held = release.clone();
        let app = Router::new().route("/", get(|| async { "ok" })).route(
            "/hold",
            get(move || {
                let held = held.clone();
                async move {
                    held.notified().await;
                    "released"
                }
            }),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (addr, release, HttpServer::serve(l, app, limits))
    }

    fn limits(max_connections: usize, max_pending: usize, head_ms: u64) -> GuardConfig {
        GuardConfig {
            max_connections,
            max_pending,
            handshake_timeout: Duration::from_millis(head_ms),
            tcp_keepalive: Duration::from_secs(10),
        }
    }

    async fn send(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s
    }

    /// Everything until the server closes (empty when it closed without an answer).
    async fn answer(mut s: TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn one_request_over_the_established_cap_is_answered_503() {
        let (addr, release, _server) = server(limits(1, 8, 5000)).await;
        let holder = send(addr, "/hold").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = answer(send(addr, "/").await).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("retry-after: 2"), "{refused}");
        release.notify_one();
        let held = answer(holder).await;
        assert!(held.starts_with("HTTP/1.1 200"), "{held}");
        assert!(held.contains("connection: close"), "{held}");
        let again = answer(send(addr, "/").await).await;
        assert!(
            again.starts_with("HTTP/1.1 200"),
            "the slot came back: {again}"
        );
    }

    #[tokio::test]
    async fn idle_connections_push_out_each_other_not_a_request() {
        let (addr, _release, _server) = server(limits(4, 3, 60_000)).await;
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let ok = answer(send(addr, "/").await).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        // The first ones were evicted long before their deadline.
        let first = idle.remove(0);
        assert_eq!(answer(first).await, "");
    }

    #[tokio::test]
    async fn a_late_head_is_closed_and_garbage_is_refused() {
        let (addr, _release, _server) = server(limits(4, 8, 300)).await;
        let started = std::time::Instant::now();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(answer(slow).await, "");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"\x16\x03\x01 hello\r\n\r\n").await.unwrap();
        let refused = answer(junk).await;
        assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
        let mut huge = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        let _ = huge.write_all(head.as_bytes()).await;
        let refused = answer(huge).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    }

    #[tokio::test]
    async fn shutdown_closes_the_listener_and_waits_for_answers() {
        let (addr, release, server) = server(limits(4, 8, 5000)).await;
        let holder = send(addr, "/hold").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let notify = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            release.notify_one();
        });
        server.shutdown(Duration::from_secs(3)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
        assert!(answer(holder).await.starts_with("HTTP/1.1 200"));
        notify.await.unwrap();
    }
}
