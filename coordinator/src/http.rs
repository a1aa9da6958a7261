//! The coordinator's HTTP endpoint (`--http-listen IP:PORT`): the live dashboard for people,
//! Prometheus metrics and a JSON status for scrapers and `ringtrain status URL`.
//!
//! `http/server.rs` accepts and limits connections, `http/routes.rs` maps paths to answers,
//! `http/sse.rs` streams events, `crate::dashboard` holds the page and `crate::exposition`
//! renders the numbers.
//!
//! # Contract
//! * `GET /`: the dashboard (HTML, CSS, JS and icon compiled into the binary; nothing external).
//! * `GET /events`: server-sent events, `event: status` with `/status`'s JSON (plus `reason`)
//!   on connect, on every state change and at least every second; `event: end` once the run is
//!   over, then the stream closes. At most 32 streams at once (then 503).
//! * `GET /history`: every completed epoch's row and the steps' loss (raw and smoothed), lr and
//!   beta1, downsampled to at most 2,000 points (`?points=N`), so a reloaded page is complete.
//! * `GET /metrics`: Prometheus text format 0.0.4. Names follow Prometheus conventions
//!   (`ringtrain_` prefix, base units, `_total` for counters, `_seconds`, `_ratio`); per-rank
//!   series carry `rank` and `worker_id` labels.
//! * `GET /status`: the same numbers as one JSON object.
//! * Unknown path: 404; other method: 405; a request head over 8 KiB, later than 5 s or not
//!   HTTP: 400; over 64 connections: 503. One request per connection (`Connection: close`).
//!   No token: it exposes numbers, never weights or paths beyond the run id; bind it where only
//!   people and the scraper reach it (a NetworkPolicy on a cluster).
//!
//! Tests: `coordinator/tests/metrics.rs` (scraped from a running server, counters increase);
//! `coordinator/tests/dashboard.rs` (page, history, event framing, limits);
//! `tests/tests/dashboard.rs` (headless chromium on a real run).

mod routes;
mod server;
mod sse;

pub(crate) use server::HttpServer;
