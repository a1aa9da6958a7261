//! The coordinator's HTTP endpoint (`--http-listen IP:PORT`): the live dashboard for people,
//! Prometheus metrics and a JSON status for scrapers and `ringtrain status URL`.
//!
//! An axum [`Router`](axum::Router) served by hyper's HTTP/1.1 connection, one per accepted
//! socket. `http/server.rs` accepts and limits connections (through `crate::guard`, like the gRPC
//! port), `http/write_timeout.rs` ends a connection whose client stopped reading,
//! `http/routes.rs` maps paths to answers, `http/sse.rs` streams events, `crate::dashboard`
//! holds the page and `crate::exposition` renders the numbers. No HTTP is parsed here.
//!
//! # Contract
//! * `GET /` (and `HEAD`): the dashboard (HTML, CSS, JS and icon compiled into the binary;
//!   nothing external), with a Content-Security-Policy that allows this origin only.
//! * `GET /events`: server-sent events, `event: status` with `/status`'s JSON (plus `reason`)
//!   on connect, on every state change and at least every second; `event: end` once the run is
//!   over, then the stream closes. At most 32 streams at once (then 503).
//! * `GET /history`: every completed epoch's row and the steps' loss (raw and smoothed), lr and
//!   beta1, downsampled to at most 2,000 points (`?points=N`), so a reloaded page is complete.
//! * `GET /metrics`: Prometheus text format 0.0.4 (`crate::exposition`).
//! * `GET /status`: the same numbers as one JSON object.
//! * Unknown path: 404; another method on a known path: 405 with `Allow: GET,HEAD`; a request
//!   that is not HTTP: 400; a head over 8 KiB: 431; a head not complete within 5 s: closed.
//!   One request per connection (`Connection: close`).
//! * Connections: at most 256 that have not sent a complete head (the oldest is closed for a
//!   new one), at most 64 that have (then 503), at most 16 answers computed at once; a
//!   response write that makes no progress for 10 s ends the connection.
//! * No token: it exposes numbers, never weights or paths beyond the run id; bind it where only
//!   people and the scraper reach it (a NetworkPolicy on a cluster).
//!
//! Tests: unit tests in `http/server.rs` (caps, eviction, deadline, 503) and
//! `http/write_timeout.rs`; `coordinator/tests/metrics.rs` (scraped from a running server);
//! `coordinator/tests/dashboard.rs` (page, history, HEAD, 405, event framing, limits);
//! `tests/tests/dashboard.rs` (headless chromium on a real run); `tests/tests/hostile.rs` (a run
//! under a flood of idle and garbage connections on this port).

mod routes;
mod server;
mod sse;
mod write_timeout;

pub(crate) use server::HttpServer;
