//! ringtrain-common: the pure logic both sides of a ringtrain run need.
//!
//! Owns the wire types (`pb`) and constants (`wire`), the id newtypes (`ids`), the training
//! recipe with its one validation and its shared flags (`recipe`), the run plan (`plan`), the
//! one-cycle schedule, dataset scanning/decoding/caching, the checkpoint store and the MNIST
//! fetch/import paths. Never links libtorch and never needs a
//! tokio runtime: everything here is testable with plain slices and files.
//!
//! # Features
//! Each dependent crate enables only what it uses, so the worker does not compile the downloader.
//! * `fetch`: the `fetch` module (MNIST download, checksums, extraction, idx import) with ureq,
//!   tar, flate2 and md-5; implies `progress`. Enabled by the coordinator (`ringtrain data
//!   fetch`) and the tests crate (idx fixtures).
//! * `plot`: the `plot` module, `report::RunFiles` (which redraws the run's plots) and the LR
//!   finder's chart, with font8x8. Enabled by the coordinator and the worker (standalone run
//!   folders, `show-batch`).
//! * `progress`: progress bars on a terminal (indicatif) while decoding a dataset and fetching;
//!   without it decoding draws none. Enabled by the worker, and by `fetch`.
//! * `cli`: the command-line flags both binaries share (`recipe::args`: the recipe and the
//!   dataset flags) and `recipe::Model` as a clap value, with clap. Enabled by the coordinator
//!   and the worker.
//!
//! All four are on by default, so `cargo test -p ringtrain-common` tests everything; the
//! workspace depends on this crate with `default-features = false`.

pub mod auth;
pub mod checkpoint;
pub mod data;
pub mod devices;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod fsio;
pub mod ids;
pub mod logging;
pub mod lr_find;
pub mod plan;
#[cfg(feature = "plot")]
pub mod plot;
pub mod recipe;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod shard;
pub mod wire;

/// Generated protobuf types, fenced in one module (package `ringtrain.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ringtrain.v1");
}
