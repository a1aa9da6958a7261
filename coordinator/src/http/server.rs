//! The HTTP/1.1 listener: accepts connections, reads one request head, hands it to
//! `routes.rs` and writes the answer (or the event stream, `sse.rs`).
//!
//! Owns connection limits and lifetimes; not what is served.
//!
//! # Contract
//! * At most [`MAX_CONNECTIONS`] connections at once; one more is answered `503` at once (a
//!   non-blocking write) and closed.
//! * A request head must arrive within 5 s and fit 8 KiB, else `400`.
//! * One request per connection (`Connection: close`).
//! * Every connection task lives in the listener's `JoinSet`: [`HttpServer::shutdown`] stops
//!   accepting, gives open streams a grace period to send the run's end, then aborts the rest.
//!
//! Tests: `coordinator/tests/dashboard.rs` (limits, disconnects, shutdown over real sockets).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::routes::{respond, Reply, Request};
use crate::shared::Shared;

/// Connections served at once (event streams included).
pub const MAX_CONNECTIONS: usize = 64;
/// Longest request head.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one response (or one event) may take to write before the client counts as gone.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 21\r\nConnection: close\r\nRetry-After: 2\r\n\r\ntoo many connections\n";

/// The running HTTP endpoint.
pub(crate) struct HttpServer {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl HttpServer {
    /// Serves `listener` until [`HttpServer::shutdown`].
    pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        Self { task, stop }
    }

    /// Stops accepting; waits up to `grace` for open connections (an event stream ends by
    /// itself once the run is over), then aborts what is left.
    pub(crate) async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            // Dropping the loop's JoinSet aborts every connection task.
            self.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let streams = Arc::new(Semaphore::new(super::routes::MAX_STREAMS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    let _ = conn.try_write(BUSY);
                    continue;
                };
                let (shared, streams) = (shared.clone(), streams.clone());
                conns.spawn(async move {
                    handle(conn, &shared, &streams).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Reads the request head: `None` when it is too slow, too long or cut off.
async fn read_head(conn: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n");
    tokio::time::timeout(HEAD_TIMEOUT, async {
        while !complete(&head) && head.len() <= MAX_HEAD {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    if !complete(&head) || head.len() > MAX_HEAD {
        return None;
    }
    Request::parse(&String::from_utf8_lossy(&head))
}

async fn handle(mut conn: TcpStream, shared: &Arc<Shared>, streams: &Arc<Semaphore>) {
    let reply = match read_head(&mut conn).await {
        Some(req) => respond(&req, shared, streams),
        None => Reply::text("400 Bad Request", "bad request\n"),
    };
    match reply {
        Reply::Full(r) => {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(&r.to_bytes())).await;
            let _ = conn.shutdown().await;
        }
        Reply::Events(permit) => {
            super::sse::stream(conn, shared.clone()).await;
            drop(permit);
        }
    }
}
