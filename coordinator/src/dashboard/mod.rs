//! The live dashboard served at `GET /` of the HTTP endpoint: a single page (HTML, CSS and JS
//! compiled into the binary, no external URL) fed by `GET /events` (server-sent events).
//!
//! Owns the page's assets, the JSON of one live update and the run's [`History`]; not HTTP
//! (`crate::http`, which routes and streams) or the numbers themselves (`state/metrics.rs`).
//!
//! # Contract
//! * Assets are `&'static str`s (`include_str!`), served with a Content-Security-Policy that
//!   allows nothing but this origin, so the page works offline and cannot reach elsewhere.
//! * One live update ([`live_json`]) is `GET /status`'s object plus `reason` (why the run failed,
//!   `null` otherwise) and `lr`; the history arrives on the same stream (`event: history`, the
//!   JSON of `GET /history`), so a page opened or reloaded mid-run draws the whole run.
//! * The page draws its own charts on `<canvas>` and exposes each chart's point count as
//!   `data-points` (and the workers table's rows as `data-worker-id`), which the browser test reads.
//!
//! Tests: `tests` at the bottom (assets are self-contained); `coordinator/tests/dashboard.rs`
//! (HTTP); `tests/tests/dashboard.rs` (headless chromium against a real run).

mod history;

pub use history::History;

/// Steps `/history` and the event stream send by default (the charts' resolution).
pub const HISTORY_POINTS: usize = 2000;

use serde_json::Value;

use crate::state::Metrics;

/// One static file of the page.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page and its files.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard.css"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard.js"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("favicon.svg"),
    },
];

/// The asset served at `path` (`/index.html` is `/`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// The page may load and connect to its own origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One live update: `/status`'s object plus the failure reason.
pub fn live_json(m: &Metrics, reason: &str) -> Value {
    let mut v = crate::exposition::status_json(m);
    if let Value::Object(o) = &mut v {
        o.insert(
            "reason".into(),
            if reason.is_empty() {
                Value::Null
            } else {
                Value::String(reason.into())
            },
        );
        o.insert("lr".into(), m.lr.map_or(Value::Null, Value::from));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_name_no_external_url() {
        for a in &ASSETS {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                // `xmlns` names a namespace, it is not fetched.
                let hits = a
                    .body
                    .match_indices(needle)
                    .filter(|(i, _)| !a.body[..*i].ends_with("xmlns=\""))
                    .count();
                assert_eq!(hits, 0, "{} contains {needle}", a.path);
            }
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let html = asset("/").unwrap().body;
        for a in ASSETS.iter().skip(1) {
            assert!(
                html.contains(&format!("\"{}\"", a.path)),
                "{} not linked",
                a.path
            );
        }
        assert!(asset("/index.html").is_some());
        assert!(asset("/nope.js").is_none());
        let js = asset("/dashboard.js").unwrap().body;
        for endpoint in ["'/events'", "'history'", "'status'", "'end'"] {
            assert!(js.contains(endpoint), "the script does not use {endpoint}");
        }
    }
}
