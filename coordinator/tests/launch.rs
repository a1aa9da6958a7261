//! `launch` with fake worker processes: this test binary re-executes itself as the worker (the
//! `fake_worker_process` test below does nothing unless `RINGTRAIN_FAKE_ARGS` is set), behind a
//! small shell script that stands in for `ringtrain-worker`.

mod common;

use ringtrain_coordinator::config::RunConfig;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Behaviour;
use ringtrain_coordinator::{launch, LaunchOptions, Status};

/// Entry point of the fake worker processes; a no-op in a normal test run.
#[test]
fn fake_worker_process() {
    let Ok(args) = std::env::var("RINGTRAIN_FAKE_ARGS") else {
        return;
    };
    let args: Vec<&str> = args.split_whitespace().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1))
            .copied()
            .unwrap_or_default()
            .to_string()
    };
    let (url, worker_id) = (flag("--coordinator"), flag("--worker-id"));
    assert_eq!(args.first(), Some(&"--coordinator"));
    assert_eq!(flag("--threads"), "1");
    assert_eq!(
        (flag("--train-dir"), flag("--valid-dir")),
        ("training".to_string(), "testing".to_string())
    );
    assert_eq!(flag("--collective-listen"), "127.0.0.1:0");
    let data = PathBuf::from(flag("--data"));
    assert!(data.is_absolute(), "{data:?}");
    let fp = ringtrain_common::data::scan_dataset(&data, &Default::default())
        .unwrap()
        .layout_fingerprint();
    // "crash:local-001" crashes that worker only; "hang" hangs all.
    let mode = std::env::var("RINGTRAIN_FAKE_MODE").unwrap_or_default();
    let behaviour = match mode.split_once(':') {
        Some(("crash", who)) if who == worker_id => Behaviour::CrashAfterJoin,
        _ if mode == "hang" => Behaviour::Hang,
        _ => Behaviour::Complete,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(common::fake_worker(&url, &worker_id, &fp, behaviour));
    std::process::exit(code);
}

/// A `ringtrain-worker` stand-in that runs this test binary as the fake worker, on a machine
/// without GPUs.
fn worker_script(dir: &Path, mode: &str) -> PathBuf {
    worker_script_with(dir, mode, r#"{"cuda_devices":0,"gpus":[]}"#)
}

/// The same, answering `devices --json` with `inventory`; it logs every start to calls.txt.
fn worker_script_with(dir: &Path, mode: &str, inventory: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let script = dir.join("fake-worker.sh");
    let text = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = devices ]; then echo '{inventory}'; exit 0; fi\n\
         echo \"CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES $*\" >> {calls}\n\
         RINGTRAIN_FAKE_ARGS=\"$*\" RINGTRAIN_FAKE_MODE={mode} exec {exe} fake_worker_process --exact --nocapture --test-threads 1\n",
        exe = exe.display(),
        calls = dir.join("calls.txt").display(),
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn options(dir: &Path, mode: &str) -> LaunchOptions {
    LaunchOptions {
        threads_per_worker: Some(1),
        worker_bin: Some(worker_script(dir, mode)),
        grace: Duration::from_secs(2),
        pin: true,
        gpus: None,
    }
}

/// What the fake worker got: one line per start, `CUDA_VISIBLE_DEVICES=... ARGS`.
fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.txt"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_all_starts_one_worker_per_gpu_that_sees_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = r#"{"cuda_devices":2,"gpus":[{"index":0,"name":"Fake GPU","uuid":"GPU-f0"},{"index":1,"name":"Fake GPU","uuid":"GPU-f1"}]}"#;
    let mut opts = options(dir.path(), "ok");
    opts.gpus = Some("all".parse().unwrap());
    opts.worker_bin = Some(worker_script_with(dir.path(), "ok", inventory));
    // One worker configured: --gpus all decides the number of workers (2).
    let outcome = launch(common::config(dir.path(), 1), opts, std::future::pending())
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Finished, "{:?}", outcome.reason);
    assert_eq!(outcome.summary.world_size, 2);
    let mut c = calls(dir.path());
    c.sort();
    assert_eq!(c.len(), 2, "{c:?}");
    for (i, line) in c.iter().enumerate() {
        assert!(
            line.starts_with(&format!("CUDA_VISIBLE_DEVICES={i} ")),
            "{line}"
        );
        assert!(line.contains("--device cuda:0"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_on_a_machine_without_one_falls_back_to_cpu_workers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LaunchOptions {
        gpus: Some("0,1".parse().unwrap()),
        ..options(dir.path(), "ok")
    };
    let outcome = launch(common::config(dir.path(), 2), opts, std::future::pending())
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Finished, "{:?}", outcome.reason);
    let c = calls(dir.path());
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c.iter().all(|l| l.contains("--device cpu")), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_workers_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), 2);
    let outcome = launch(config, options(dir.path(), "ok"), std::future::pending())
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Finished, "{:?}", outcome.reason);
    assert_eq!(outcome.summary.world_size, 2);
    let logs = dir.path().join("run/logs");
    assert!(logs.join("worker-0.log").is_file() && logs.join("worker-1.log").is_file());
    assert!(dir.path().join("run/final.safetensors").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_worker_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig {
        max_restarts: 0,
        ..common::config(dir.path(), 2)
    };
    let outcome = launch(
        config,
        options(dir.path(), "crash:local-001"),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let reason = outcome.reason.unwrap();
    let log = dir.path().join("run/logs/worker-1.log");
    assert!(
        reason.starts_with("rank 1 (worker local-001, pid "),
        "{reason}"
    );
    assert!(
        reason.ends_with(&format!(
            ") exited with code 1; see {} (no restarts left: max_restarts = 0)",
            log.display()
        )),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_fails_the_run_and_stops_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    // The fake workers never take the stop checkpoint: the grace period bounds the wait.
    let config = RunConfig {
        stop_grace_s: 1.0,
        ..common::config(dir.path(), 2)
    };
    let started = std::time::Instant::now();
    let interrupt = tokio::time::sleep(Duration::from_secs(2));
    let outcome = launch(config, options(dir.path(), "hang"), interrupt)
        .await
        .unwrap();
    assert_eq!(
        (outcome.status, outcome.reason.as_deref()),
        (
            Status::Failed,
            Some("interrupted; the checkpoints stay: continue with --resume RUN_DIR")
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn missing_worker_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LaunchOptions {
        worker_bin: Some(dir.path().join("nope")),
        ..LaunchOptions::default()
    };
    let err = launch(common::config(dir.path(), 1), opts, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("nope") && err.to_string().contains("RINGTRAIN_WORKER_BIN"),
        "{err}"
    );
}
