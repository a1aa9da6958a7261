//! What each path of the HTTP endpoint answers: the axum [`Router`].
//!
//! Owns the routing table and response headers; not sockets or connection limits (`server.rs`)
//! or the event stream itself (`sse.rs`).
//!
//! # Contract
//! * `GET /`, `/index.html`, `/dashboard.css`, `/dashboard.js`, `/favicon.svg`: the dashboard
//!   (`crate::dashboard`), with its Content-Security-Policy.
//! * `GET /metrics` (Prometheus text), `GET /status` (JSON), `GET /history` (the dashboard's
//!   epochs and steps, at most [`dashboard::HISTORY_POINTS`] steps; `?points=N` asks for fewer or more, up
//!   to 20,000; a `points` that is not a number is ignored).
//! * `GET /events`: an event stream while fewer than [`MAX_STREAMS`] are open, else `503`.
//! * `HEAD` on every path answers like `GET` without the body (axum's `get`). Another method on
//!   a known path: `405` with `Allow: GET,HEAD`; an unknown path: `404`.
//! * At most [`MAX_REQUESTS`] answers are computed at once (a tower concurrency limit shared by
//!   every route); the rest wait their turn on their connection.
//! * Every answer says `Cache-Control: no-store` (the numbers change) and `nosniff`.
//!
//! Tests: `coordinator/tests/dashboard.rs` and `coordinator/tests/metrics.rs` (over HTTP).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::dashboard::{self, Asset};
use crate::shared::Shared;

/// Event streams open at once (each holds one of the server's connections).
pub(super) const MAX_STREAMS: usize = 32;
const MAX_HISTORY_POINTS: usize = 20_000;
/// Answers computed at once. Each reads the run's state under the lock the gRPC handlers take,
/// so a burst of scrapes queues here instead of in front of the workers' calls.
pub(super) const MAX_REQUESTS: usize = 16;

const NOT_FOUND: &str = "not found: try / (dashboard), /metrics, /status, /history or /events\n";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// What every handler reads.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
}

/// The endpoint's routes over `shared`.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/history", get(history))
        .route("/events", get(events));
    for asset in &dashboard::ASSETS {
        router = router.route(asset.path, get(move || async move { page(asset) }));
    }
    router
        .route("/index.html", get(|| async { page(&dashboard::ASSETS[0]) }))
        .fallback(|| async { text(StatusCode::NOT_FOUND, NOT_FOUND) })
        // Innermost first: the headers go on every answer, 404 and 405 included.
        .layer(axum::middleware::map_response(common_headers))
        .layer(GlobalConcurrencyLimitLayer::new(MAX_REQUESTS))
        .with_state(Ctx {
            shared,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        })
}

/// A plain-text answer.
pub(super) fn text(code: StatusCode, body: &'static str) -> Response {
    typed(code, "text/plain; charset=utf-8", Body::from(body))
}

/// `503` for a connection over the server's cap, with the headers every answer has.
pub(super) fn busy() -> Response {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    add_common_headers(&mut r);
    r
}

fn typed(code: StatusCode, content_type: &'static str, body: Body) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

fn add_common_headers(r: &mut Response) {
    let h = r.headers_mut();
    // `insert`, not `append`: axum's `Sse` says `no-cache`, which still lets a proxy store it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

async fn common_headers(mut r: Response) -> Response {
    add_common_headers(&mut r);
    r
}

fn page(asset: &Asset) -> Response {
    let mut r = typed(StatusCode::OK, asset.content_type, Body::from(asset.body));
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY),
    );
    r
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let m = ctx
        .shared
        .read(|s| s.metrics(crate::clock::now(), crate::clock::unix_ms()));
    let body = crate::exposition::scrape(&m, &ctx.shared.guards());
    typed(StatusCode::OK, PROMETHEUS_TEXT, Body::from(body))
}

async fn status(State(ctx): State<Ctx>) -> Response {
    let m = ctx
        .shared
        .read(|s| s.metrics(crate::clock::now(), crate::clock::unix_ms()));
    let json = crate::exposition::status_json(&m).to_string();
    typed(StatusCode::OK, JSON, Body::from(json))
}

async fn history(State(ctx): State<Ctx>, RawQuery(query): RawQuery) -> Response {
    let points = query
        .as_deref()
        .and_then(|q| param(q, "points"))
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(dashboard::HISTORY_POINTS)
        .clamp(2, MAX_HISTORY_POINTS);
    let json = ctx.shared.history(|h| h.json(points)).to_string();
    typed(StatusCode::OK, JSON, Body::from(json))
}

async fn events(State(ctx): State<Ctx>) -> Response {
    match ctx.streams.clone().try_acquire_owned() {
        Ok(permit) => super::sse::stream(ctx.shared, permit).into_response(),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "too many event streams\n"),
    }
}

/// The value of `name` in the query string `query` (our parameters are plain numbers, so no
/// percent-decoding).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(param("points=10&x=1", "points"), Some("10"));
        assert_eq!(param("x=1&points=7", "points"), Some("7"));
        assert_eq!(param("points", "points"), None);
        assert_eq!(param("", "points"), None);
    }

    #[test]
    fn the_busy_answer_carries_the_common_headers() {
        let r = busy();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    }
}
