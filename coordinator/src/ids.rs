//! Identifier newtypes of the coordinator's domain, so a rank is never confused with a count.
//!
//! (The worker has its own view of these; on the wire they are plain `uint32`/`string`.)

use serde::Serialize;

/// Dense position of a worker in the round, `0..world_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Rank(pub u32);

impl Rank {
    /// The rank as an index into per-rank vectors.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker process's self-chosen id (e.g. `host-pid`, `local-003`); ranks follow its sort order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkerId(pub String);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
