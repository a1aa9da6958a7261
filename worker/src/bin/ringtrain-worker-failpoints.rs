//! `ringtrain-worker` with failpoints compiled in, for fault-injection tests only (the
//! `failpoints` feature; see worker/Cargo.toml): the same program as `src/main.rs`, whose
//! `main` sets up `FAILPOINTS` when the feature is on.

#[path = "../main.rs"]
mod worker_main;

fn main() -> std::process::ExitCode {
    worker_main::main()
}
