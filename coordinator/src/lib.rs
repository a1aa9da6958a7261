//! ringtrain-coordinator: the coordinator of a ringtrain run, as a library (`ringtrain serve`,
//! `ringtrain launch` and the tests all use it).
//!
//! A run is one rendezvous round of N workers training the lesson-7 CNN data-parallel: the
//! coordinator admits them, hands out ranks, shards and the run spec, merges their pixel
//! statistics, decides every step's learning rate, checks after each epoch that all replicas
//! hold identical parameters, prints the lesson's table and writes the run folder.
//!
//! Owns rendezvous (`rendezvous`), planning (`plan`), the run state machine (`state`), its gRPC
//! edge (`service`), serving (`server`), output (`artifacts`), configuration (`config`, `cli`)
//! and local launching (`launch`). Never links libtorch; never decodes an image.
//!
//! # Failure semantics
//! All-or-nothing, like torchelastic without restarts: any failure fails the whole run, every
//! worker is told (`FAILED` in its next reply; barrier calls return at once) and exits with code
//! 3, the coordinator exits 1, and `summary.json` records the reason.
//! * **A worker dies or hangs**: its rank misses `heartbeat_missed` heartbeats (default 3 × 5 s;
//!   a rank waiting in a barrier call counts as alive) → the run fails naming the rank and
//!   worker id. Under `ringtrain launch` a worker exiting non-zero fails the run at once, naming
//!   its pid, exit status and log file.
//! * **A worker reports failure** (`Leave ok=false`): the run fails with `rank R (worker): reason`.
//! * **Replicas diverge** (parameter hashes differ after an epoch) or the mean loss is not
//!   finite: the run fails naming every rank's hash, or the step.
//! * **Too few workers**: the round must close within `join_timeout_s` (600 s) or the run fails;
//!   with `min_workers < workers` it closes `last_call_s` (30 s) after the minimum joined.
//! * **A worker that does not fit** (protocol version, run id, model, dataset fingerprint,
//!   a live worker's id without its secret, full round) is refused at Join and the run goes on
//!   without it. A call for a rank without its worker's secret, or a report that cannot be true,
//!   is refused with the reason (`state/identity.rs`, `state/reports.rs`).
//! * **A hostile network**: the gRPC port caps and times out connections that have not made an
//!   authenticated call (`guard.rs`); a coordinator that was paused discounts the pause from the
//!   heartbeat budget; a second coordinator on a run folder is refused (`runlock.rs`).
//! * **The coordinator dies**: workers retry for `--connect-timeout-s`; a coordinator started
//!   again on the same run folder (`--auto-resume`/`--resume`) continues from the latest good
//!   checkpoint and the workers re-join. Ctrl-C/SIGTERM take a stop checkpoint, then stop the run as "interrupted".
//! * **A worker is lost** while restarts are left (`max_restarts`): the round ends and the next
//!   one resumes from the last checkpoint (`state/rounds.rs`); see the README's failure table.
//! * **The disk fails**: a run-folder write that fails fails the run naming the file;
//!   `run.json`, `summary.json` and `final.safetensors` are replaced atomically, never half
//!   written.

pub mod artifacts;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod exposition;
pub mod guard;
pub mod health;
pub mod health_cmd;
pub mod http;
pub mod ids;
pub mod launch;
pub mod output;
pub mod plan;
pub mod rendezvous;
pub mod resume;
pub mod runlock;
pub mod security;
pub mod server;
pub mod service;
mod shared;
pub mod state;
pub mod status_cmd;

pub use config::{Model, RunConfig};
pub use launch::{gpus, launch, LaunchError, LaunchOptions};
pub use server::{serve, Run, RunHandle, RunOutcome, ServeError};
pub use state::{Status, PROTOCOL_VERSION};
