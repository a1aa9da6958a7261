//! Hang diagnosis with real processes: `ringtrain serve`, one `ringtrain-worker` and one
//! `ringtrain-worker-failpoints` whose training thread stops before the all-reduce of its 41st
//! step (`FAILPOINTS=before-allreduce=40*off->sleep(600000)`) while its heartbeats go on.
//!
//! * The coordinator's hang check (`--hang-timeout-s 5`) must state where each rank is and
//!   name the stopped rank, with its worker id and host, in the round's failure line.
//! * With a short ring timeout instead (`--collective-timeout-s 3`), the waiting rank's own
//!   collective failure carries the same diagnosis.
//! * The failpoint exists only in the test build: the release `ringtrain-worker` does not
//!   contain it.
//!
//! `make test` builds `ringtrain-worker-failpoints` (worker/Cargo.toml, feature `failpoints`).

mod stall;

use std::time::Duration;

use ringtrain_tests::{bin, log_dir};
use stall::{dataset, stop_all, worker, Coordinator, WorkerSpec};

const HANG: &str = "before-allreduce=40*off->sleep(600000)";

/// Runs the two workers against a coordinator with `extra` flags until `needle` is printed;
/// returns the line that holds it.
fn named_line(test: &str, extra: &[&str], needle: &str) -> String {
    let logs = log_dir(test);
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let mut args = vec!["--workers", "2", "--epochs", "3", "--max-restarts", "1"];
    args.extend_from_slice(extra);
    let mut c = Coordinator::serve(&data, &tmp.path().join("run"), &logs, &args);
    let mut good = worker(
        &c,
        &data,
        &cache,
        &WorkerSpec {
            id: "w-good",
            binary: "ringtrain-worker",
            cpu: None,
            env: &[],
        },
    );
    let mut stuck = worker(
        &c,
        &data,
        &cache,
        &WorkerSpec {
            id: "w-stuck",
            binary: "ringtrain-worker-failpoints",
            cpu: None,
            env: &[("FAILPOINTS", HANG)],
        },
    );
    c.wait_for_line(needle, Duration::from_secs(240));
    stop_all(&mut [&mut c.child, &mut good, &mut stuck]);
    let out = c.stdout();
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_coordinator_names_the_rank_whose_training_thread_stopped() {
    let line = named_line(
        "hang-coordinator",
        &["--hang-timeout-s", "5", "--collective-timeout-s", "120"],
        "hung: no progress for",
    );
    // Ranks sort by id: w-good is rank 0, w-stuck rank 1; the failpoint fires at step 41.
    assert!(
        line.starts_with("round 1 ended: hung: no progress for"),
        "{line}"
    );
    assert!(
        line.contains(
            "the round waits for rank 1 (w-stuck on 127.0.0.1): at step 40, not in the all-reduce, while rank 0 waits"
        ),
        "{line}"
    );
    assert!(line.contains("rank 0 step 40 in the all-reduce"), "{line}");
    assert!(line.contains("rank 1 step 40 working"), "{line}");
}

#[test]
fn a_ring_timeout_names_the_rank_that_held_the_ring_up() {
    let line = named_line(
        "hang-ring",
        &["--hang-timeout-s", "600", "--collective-timeout-s", "3"],
        "round 1 ended: rank 0 (w-good)",
    );
    assert!(
        line.contains("the round waits for rank 1 (w-stuck on 127.0.0.1): at step 40"),
        "{line}"
    );
}

#[test]
fn release_builds_have_no_failpoints() {
    let release = std::fs::read(bin("ringtrain-worker")).unwrap();
    let test_build = std::fs::read(bin("ringtrain-worker-failpoints")).unwrap();
    let has = |b: &[u8]| b.windows(16).any(|w| w == b"before-allreduce");
    assert!(has(&test_build), "the test build has the failpoint");
    assert!(
        !has(&release),
        "the release worker must not contain failpoints"
    );
}
