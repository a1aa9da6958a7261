//! The one tracing subscriber setup both binaries call from `main` (libraries only emit events).
//!
//! Logs go to stderr; `RUST_LOG` filters (default given by the caller); `RINGTRAIN_LOG_FORMAT=json`
//! switches to JSON lines for clusters; colours only on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber. A second call leaves the first subscriber in place.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let json = std::env::var("RINGTRAIN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // try_init only fails when a subscriber is already set, which leaves logging working anyway.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
