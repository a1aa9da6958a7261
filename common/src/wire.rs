//! Constants of the gRPC contract that are not in the `.proto`: both ends must agree on them,
//! so they are defined once, here.
//!
//! Owns transport limits and metadata keys; not the messages (`pb`, from
//! `proto/ringtrain/v1/*.proto`) nor the auth header (`auth::AUTH_HEADER`).

/// Largest gRPC message either way, for the coordinator's server and the worker's client alike.
/// Shards of 60,000 paths (about 3 MB) and weights exceed tonic's 4 MiB default; anything larger
/// than this is refused before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Metadata key of a gRPC error status that speaks for the whole run rather than the call.
pub const RUN_STATUS_KEY: &str = "ringtrain-run-status";

/// [`RUN_STATUS_KEY`]'s value meaning "the run failed": the worker stops and exits with code 3
/// instead of retrying or re-joining.
pub const RUN_FAILED: &str = "failed";
