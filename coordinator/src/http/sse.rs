//! `GET /events`: the run as a server-sent event stream, for the dashboard.
//!
//! Owns the stream's framing and lifetime; not what an update holds (`crate::dashboard`).
//!
//! # Contract
//! * `200`, `Content-Type: text/event-stream`, no length (`Connection: close` ends the body);
//!   first `retry: 2000` (the browser reconnects after 2 s), then `event: status` with one line
//!   of JSON ([`crate::dashboard::live_json`]) at once, on every published state change, and
//!   at least every second (heartbeat ages and steps move without a state change).
//! * `event: history` (`GET /history`'s JSON) at once and whenever an epoch completed, before
//!   the `status` that counts it: the page never has to fetch it while the run may be ending.
//! * Once the run finished or failed: its last `status`, then `event: end` (same JSON) and the
//!   stream closes; the page shows the end instead of reconnecting.
//! * The task ends when the client disconnects (its read side closes) or a write does not
//!   complete within `WRITE_TIMEOUT` (a client that stopped reading), so streams never pile up.
//!
//! Tests: `coordinator/tests/dashboard.rs` (framing, updates, end, disconnects).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server::WRITE_TIMEOUT;
use crate::dashboard::live_json;
use crate::shared::Shared;

/// Longest time between two events.
const PERIOD: Duration = Duration::from_secs(1);

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n\
retry: 2000\n\n";

/// One event in the wire format (`data` is one JSON line, so one `data:` field).
fn frame(event: &str, data: &serde_json::Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Streams the run to `conn` until the run ends or the client goes.
pub(super) async fn stream(mut conn: TcpStream, shared: Arc<Shared>) {
    let mut changes = shared.subscribe();
    let (mut reader, mut writer) = conn.split();
    if !send(&mut writer, HEAD).await {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scratch = [0u8; 256];
    let mut epochs_sent = None;
    loop {
        drop(changes.borrow_and_update());
        // One moment's state and history, so a status never counts an epoch the page lacks.
        let (update, over, history) = shared.read_with_history(|s, h| {
            let (status, reason) = s.verdict();
            let m = s.metrics(crate::server::now(), super::routes::unix_ms());
            let history = (epochs_sent != Some(h.epochs()))
                .then(|| (h.epochs(), h.json(super::routes::HISTORY_POINTS)));
            (live_json(&m, &reason), status.is_terminal(), history)
        });
        if let Some((epochs, history)) = history {
            if !send(&mut writer, frame("history", &history).as_bytes()).await {
                return;
            }
            epochs_sent = Some(epochs);
        }
        if !send(&mut writer, frame("status", &update).as_bytes()).await {
            return;
        }
        if over {
            let _ = send(&mut writer, frame("end", &update).as_bytes()).await;
            let _ = writer.shutdown().await;
            return;
        }
        // Wait for the next reason to send; bytes from the client are no reason.
        loop {
            tokio::select! {
                _ = tick.tick() => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                read = reader.read(&mut scratch) => {
                    // A client sends nothing after its request: 0 bytes (or an error) means it
                    // left.
                    if matches!(read, Ok(0) | Err(_)) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_event_and_one_data_line() {
        let f = frame("status", &serde_json::json!({"a": "x\ny", "b": [1, 2]}));
        assert!(f.starts_with("event: status\ndata: {"), "{f}");
        assert!(f.ends_with("}\n\n"), "{f}");
        assert_eq!(
            f.lines().count(),
            3,
            "newlines inside strings are escaped: {f}"
        );
    }
}
