//! What each path of the HTTP endpoint answers.
//!
//! Owns the routing table and response headers; not sockets (`server.rs`) or the event stream
//! itself (`sse.rs`).
//!
//! # Contract
//! * `GET /`, `/dashboard.css`, `/dashboard.js`, `/favicon.svg`: the dashboard
//!   (`crate::dashboard`), with its Content-Security-Policy.
//! * `GET /metrics` (Prometheus text), `GET /status` (JSON), `GET /history` (the dashboard's
//!   epochs and steps, at most [`HISTORY_POINTS`] steps; `?points=N` asks for fewer or more, up
//!   to 20,000).
//! * `GET /events`: an event stream while fewer than [`MAX_STREAMS`] are open, else `503`.
//! * Another method on a known path: `405`; an unknown path: `404`.
//! * Every answer says `Cache-Control: no-store` (the numbers change) and `nosniff`.
//!
//! Tests: `coordinator/tests/dashboard.rs` and `coordinator/tests/metrics.rs` (over HTTP).

use std::borrow::Cow;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::dashboard;
use crate::shared::Shared;

/// Event streams open at once (each holds one of the server's connections).
pub const MAX_STREAMS: usize = 32;
/// Steps `/history` returns by default.
pub const HISTORY_POINTS: usize = 2000;
const MAX_HISTORY_POINTS: usize = 20_000;

/// The parts of a request head that matter here.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Request {
    /// Parses the request line of `head`; `None` when it is not `METHOD TARGET HTTP/x`.
    pub fn parse(head: &str) -> Option<Self> {
        let mut parts = head.lines().next()?.split_whitespace();
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        if !version.starts_with("HTTP/") || parts.next().is_some() {
            return None;
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Some(Self {
            method: method.into(),
            path: path.into(),
            query: query.into(),
        })
    }

    /// The value of `name` in the query string.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A complete response.
pub(super) struct Full {
    status: &'static str,
    content_type: &'static str,
    csp: bool,
    body: Cow<'static, str>,
}

impl Full {
    pub fn to_bytes(&self) -> Vec<u8> {
        let csp = if self.csp {
            format!(
                "Content-Security-Policy: {}\r\n",
                dashboard::CONTENT_SECURITY_POLICY
            )
        } else {
            String::new()
        };
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\n{csp}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// What to send back.
pub(super) enum Reply {
    Full(Full),
    /// An event stream, holding its slot among [`MAX_STREAMS`].
    Events(OwnedSemaphorePermit),
}

impl Reply {
    pub fn text(status: &'static str, body: &'static str) -> Self {
        Self::full(status, "text/plain; charset=utf-8", Cow::Borrowed(body))
    }

    fn full(status: &'static str, content_type: &'static str, body: Cow<'static, str>) -> Self {
        Self::Full(Full {
            status,
            content_type,
            csp: false,
            body,
        })
    }
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The answer to `req`.
pub(super) fn respond(req: &Request, shared: &Arc<Shared>, streams: &Arc<Semaphore>) -> Reply {
    let known = matches!(
        req.path.as_str(),
        "/metrics" | "/status" | "/history" | "/events"
    ) || dashboard::asset(&req.path).is_some();
    if req.method != "GET" {
        return if known {
            Reply::text("405 Method Not Allowed", "only GET\n")
        } else {
            Reply::text("404 Not Found", NOT_FOUND)
        };
    }
    let metrics = || shared.read(|s| s.metrics(crate::server::now(), unix_ms()));
    match req.path.as_str() {
        "/metrics" => {
            let mut text = crate::exposition::render(&metrics());
            if let Some(g) = shared.guard() {
                text.push_str(&crate::exposition::render_guard(g));
            }
            Reply::full(
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                Cow::Owned(text),
            )
        }
        "/status" => Reply::full(
            "200 OK",
            "application/json",
            Cow::Owned(crate::exposition::status_json(&metrics()).to_string()),
        ),
        "/history" => {
            let points = req
                .param("points")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(HISTORY_POINTS)
                .clamp(2, MAX_HISTORY_POINTS);
            let json = shared.history(|h| h.json(points));
            Reply::full("200 OK", "application/json", Cow::Owned(json.to_string()))
        }
        "/events" => match streams.clone().try_acquire_owned() {
            Ok(permit) => Reply::Events(permit),
            Err(_) => Reply::text("503 Service Unavailable", "too many event streams\n"),
        },
        path => match dashboard::asset(path) {
            Some(a) => Reply::Full(Full {
                status: "200 OK",
                content_type: a.content_type,
                csp: true,
                body: Cow::Borrowed(a.body),
            }),
            None => Reply::text("404 Not Found", NOT_FOUND),
        },
    }
}

const NOT_FOUND: &str = "not found: try / (dashboard), /metrics, /status, /history or /events\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = Request::parse("GET /history?points=10&x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/history"));
        assert_eq!(r.param("points"), Some("10"));
        assert_eq!(r.param("y"), None);
        assert_eq!(Request::parse("GET /\r\n\r\n"), None);
        assert_eq!(Request::parse("hello there\r\n\r\n"), None);
        assert_eq!(Request::parse(""), None);
    }
}
