//! Identifier newtypes of the coordinator's domain, so a rank is never confused with a count.
//!
//! Defined once in `ringtrain_common::ids` (the worker and the plan use them too) and
//! re-exported here, where the state machine names them; on the wire they are plain
//! `uint32`/`string`.

pub use ringtrain_common::ids::{Rank, WorkerId};
