//! ringtrain-common: the pure logic both sides of a ringtrain run need.
//!
//! Owns the wire types (`pb`), the one-cycle schedule, dataset scanning/decoding/caching, the
//! checkpoint store and the MNIST fetch/import paths. Never links libtorch and never needs a
//! tokio runtime: everything here is testable with plain slices and files.

pub mod auth;
pub mod checkpoint;
pub mod data;
pub mod devices;
pub mod fetch;
pub mod fsio;
pub mod logging;
pub mod lr_find;
pub mod plot;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod shard;

/// Generated protobuf types, fenced in one module (package `ringtrain.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ringtrain.v1");
}
