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

/// A log budget for events a stranger can trigger at will (refused connections, bad calls):
/// at most `burst` lines per `period`, then silence until the period ends, when the next line
/// reports how many were left out. Thread-safe; never blocks on I/O.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    period: std::time::Duration,
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl RateLimit {
    /// `burst` lines per `period`.
    pub fn new(burst: u32, period: std::time::Duration) -> Self {
        Self {
            burst,
            period,
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were left out since the last
    /// logged one; `None` when it must not.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, used, dropped) = &mut *g;
        if now.saturating_duration_since(*start) >= self.period {
            *start = now;
            *used = 0;
        }
        if *used < self.burst {
            *used += 1;
            return Some(std::mem::take(dropped));
        }
        *dropped += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rate_limit_allows_a_burst_then_counts_what_it_left_out() {
        let r = RateLimit::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.allow_at(t), Some(0));
        assert_eq!(r.allow_at(t), Some(0));
        assert_eq!(r.allow_at(t), None);
        assert_eq!(r.allow_at(t + Duration::from_secs(1)), None);
        assert_eq!(r.allow_at(t + Duration::from_secs(11)), Some(2));
        assert_eq!(r.allow_at(t + Duration::from_secs(11)), Some(0));
    }
}
