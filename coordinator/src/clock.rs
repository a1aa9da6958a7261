//! The coordinator's clock: tokio's, so `tokio::time::pause` drives every timeout in tests.
//!
//! Its own module so that the state cell, the health service and the HTTP endpoint read the
//! time without importing the server.

use std::time::Instant;

/// Now, on tokio's clock (paused and advanced by tests).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
