//! The configuration of one rank's ring: who it is, where its neighbours listen, timeouts and
//! chunking, with the rules `Ring::connect` checks first.
//!
//! Tests: `ring.rs` (`config_rules`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{handshake, CollectiveError};

/// Floats per message unless configured otherwise (256 KiB of payload).
pub const DEFAULT_CHUNK_ELEMS: usize = 64 * 1024;
/// Largest chunk a message may carry (64 MiB of payload).
const MAX_CHUNK_ELEMS: usize = 16 * 1024 * 1024;

/// Who this rank is and where its neighbours listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Identifies the run; a peer of another run is rejected in the handshake.
    pub run_id: String,
    /// This rank, in `0..world_size`.
    pub rank: u32,
    /// Number of ranks.
    pub world_size: u32,
    /// Every rank's collective listen address, indexed by rank.
    pub peers: Vec<SocketAddr>,
    /// Bound on every connect, accept, read and write.
    pub timeout: Duration,
    /// Floats per message.
    pub chunk_elems: usize,
    /// Key of the run's auth token (`ringtrain_common::auth::ring_key`); peers prove they hold
    /// it in the handshake.
    pub auth_key: [u8; 32],
}

impl RingConfig {
    /// A configuration with [`DEFAULT_CHUNK_ELEMS`]; [`Ring::connect`] validates it.
    pub fn new(
        run_id: impl Into<String>,
        rank: u32,
        world_size: u32,
        peers: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Self {
        let run_id = run_id.into();
        Self {
            run_id,
            rank,
            world_size,
            peers,
            timeout,
            chunk_elems: DEFAULT_CHUNK_ELEMS,
            auth_key: ringtrain_common::auth::ring_key(None),
        }
    }

    /// Checks the rules [`Ring::connect`] relies on, one message per rule.
    pub fn validate(&self) -> Result<(), CollectiveError> {
        let fail = |reason: String| Err(CollectiveError::Config { reason });
        if self.world_size == 0 {
            return fail("world_size must be at least 1".into());
        }
        if self.rank >= self.world_size {
            return fail(format!(
                "rank {} is not below world_size {}",
                self.rank, self.world_size
            ));
        }
        if self.peers.len() != self.world_size as usize {
            return fail(format!(
                "{} peer addresses for world_size {}",
                self.peers.len(),
                self.world_size
            ));
        }
        for (i, a) in self.peers.iter().enumerate() {
            if let Some(j) = self.peers[..i].iter().position(|b| b == a) {
                return fail(format!("ranks {j} and {i} share the address {a}"));
            }
        }
        if self.run_id.len() > handshake::MAX_RUN_ID_BYTES {
            return fail(format!(
                "run_id is {} bytes, at most {}",
                self.run_id.len(),
                handshake::MAX_RUN_ID_BYTES
            ));
        }
        if self.timeout.is_zero() {
            return fail("timeout must be positive".into());
        }
        if !(1..=MAX_CHUNK_ELEMS).contains(&self.chunk_elems) {
            return fail(format!(
                "chunk_elems {} is not in 1..={MAX_CHUNK_ELEMS}",
                self.chunk_elems
            ));
        }
        Ok(())
    }
}
