//! The coordinator's clocks: tokio's for timeouts, so `tokio::time::pause` drives every timeout
//! in tests, and the wall clock for the timestamps people and Prometheus read.
//!
//! Its own module so that the state cell, the health service and the HTTP endpoint read the
//! time without importing the server.

use std::time::Instant;

/// Now, on tokio's clock (paused and advanced by tests).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Wall-clock milliseconds since the Unix epoch (0 on a clock before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
