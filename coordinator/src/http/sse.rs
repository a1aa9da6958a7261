//! `GET /events`: the run as a server-sent event stream (axum's [`Sse`]), for the dashboard.
//!
//! Owns which events go out and when; not the wire framing (axum) or what an update holds
//! (`crate::dashboard`).
//!
//! # Contract
//! * `200`, `Content-Type: text/event-stream`; first `retry: 2000` (the browser reconnects after
//!   2 s), then `event: status` with one line of JSON ([`crate::dashboard::live_json`]) at once,
//!   on every published state change, and at least every second (heartbeat ages and steps move
//!   without a state change).
//! * `event: history` (`GET /history`'s JSON) at once and whenever an epoch completed, before
//!   the `status` that counts it: the page never has to fetch it while the run may be ending.
//! * Once the run finished or failed: its last `status`, then `event: end` (same JSON) and the
//!   stream ends; the page shows the end instead of reconnecting.
//! * A keep-alive comment goes out whenever [`KEEP_ALIVE`] passed without an event (a stalled
//!   state lock), so proxies never see an idle stream.
//! * The stream holds its slot among `MAX_STREAMS` until it is dropped: at its end, or when
//!   hyper ends the connection because the client closed it or stopped reading
//!   (`write_timeout.rs`), so streams never pile up.
//!
//! Tests: `coordinator/tests/dashboard.rs` (framing, updates, end, disconnects).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt as _};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{Interval, MissedTickBehavior};

use crate::dashboard::live_json;
use crate::shared::Shared;
use crate::state::Snapshot;

/// Longest time between two status events.
const PERIOD: Duration = Duration::from_secs(1);
/// How long the browser waits before it reconnects.
const RETRY: Duration = Duration::from_secs(2);
/// Longest silence before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The stream of one client, holding `permit` (its slot) while it lasts.
pub(super) fn stream(
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        changes: shared.subscribe(),
        shared,
        tick,
        epochs_sent: None,
        first: true,
        over: false,
        _slot: permit,
    };
    let events = stream::unfold(feed, Feed::next)
        .flat_map(stream::iter)
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// One client's position in the run.
struct Feed {
    shared: Arc<Shared>,
    changes: watch::Receiver<Snapshot>,
    tick: Interval,
    /// Completed epochs the client has the history of.
    epochs_sent: Option<usize>,
    first: bool,
    over: bool,
    _slot: OwnedSemaphorePermit,
}

impl Feed {
    /// The next events: at once the first time, then on the next state change or tick;
    /// `None` after the end.
    async fn next(mut self) -> Option<(Vec<Event>, Self)> {
        if self.over {
            return None;
        }
        let mut out = Vec::with_capacity(4);
        if self.first {
            self.first = false;
            out.push(Event::default().retry(RETRY));
        } else {
            tokio::select! {
                _ = self.tick.tick() => {}
                changed = self.changes.changed() => changed.ok()?,
            }
        }
        drop(self.changes.borrow_and_update());
        // One moment's state and history, so a status never counts an epoch the page lacks.
        let epochs_sent = self.epochs_sent;
        let (update, over, history) = self.shared.read_with_history(|s, h| {
            let (status, reason) = s.verdict();
            let m = s.metrics(crate::clock::now(), crate::clock::unix_ms());
            let history = (epochs_sent != Some(h.epochs()))
                .then(|| (h.epochs(), h.json(crate::dashboard::HISTORY_POINTS)));
            (live_json(&m, &reason), status.is_terminal(), history)
        });
        if let Some((epochs, history)) = history {
            out.push(event("history", &history));
            self.epochs_sent = Some(epochs);
        }
        out.push(event("status", &update));
        if over {
            out.push(event("end", &update));
            self.over = true;
        }
        Some((out, self))
    }
}

/// One event whose data is one line of JSON (serde_json escapes newlines inside strings).
fn event(name: &str, data: &serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse as _;

    #[tokio::test]
    async fn events_are_one_event_line_and_one_data_line() {
        let one = event("status", &serde_json::json!({"a": "x\ny", "b": [1, 2]}));
        let body = Sse::new(stream::iter([Ok::<_, Infallible>(one)]))
            .into_response()
            .into_body();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("event: status\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"), "{text}");
        assert_eq!(
            text.lines().count(),
            3,
            "newlines inside strings are escaped: {text}"
        );
    }
}
