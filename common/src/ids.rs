//! Identifier newtypes both sides share, so a rank is never confused with a count and a worker
//! id never with a run id.
//!
//! Owns the types and their text/JSON forms; not how ranks are assigned (the coordinator's
//! rendezvous) nor the wire messages, where they stay plain `uint32`/`string` (`pb`).
//!
//! # Contract
//! * Both serialise transparently (`Rank(3)` is `3`, `WorkerId("w-a")` is `"w-a"`) and display
//!   as their inner value, so logs, JSON files and the wire agree.
//!
//! Tests: `tests` at the bottom.

use serde::{Deserialize, Serialize};

/// Dense position of a worker in the round, `0..world_size`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for WorkerId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_in_json_and_text() {
        assert_eq!(serde_json::to_string(&Rank(3)).unwrap(), "3");
        assert_eq!(serde_json::from_str::<Rank>("3").unwrap(), Rank(3));
        let w = WorkerId::from("w-a".to_string());
        assert_eq!(serde_json::to_string(&w).unwrap(), "\"w-a\"");
        assert_eq!(serde_json::from_str::<WorkerId>("\"w-a\"").unwrap(), w);
        assert_eq!(
            (Rank(7).to_string(), w.to_string()),
            ("7".into(), "w-a".into())
        );
        assert_eq!(Rank(2).index(), 2);
        assert!(
            WorkerId("a".into()) < WorkerId("b".into()),
            "ranks follow the id order"
        );
    }
}
