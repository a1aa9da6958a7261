//! Multi-process runs with the real binaries on 127.0.0.1: `ringtrain launch` with 2 and 3
//! workers, replicas that agree bit for bit, a table that matches a single-process evaluation,
//! a killed worker that fails the run fast (rank named, no orphans), and refused workers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringtrain_tests::{
    bin, kill9, log_dir, pids_with, read_json as json, ringtrain, run, synthetic_folder, Output,
};

fn launch(data: &Path, run_dir: &Path, workers: u32, extra: &[&str], log: &str) -> Output {
    let workers = workers.to_string();
    let mut args = vec![
        "launch",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--workers",
        &workers,
        "--threads-per-worker",
        "1",
        "--model",
        "basic",
        "--batch-size",
        "24",
        "--max-lr",
        "0.05",
        "--heartbeat-interval-s",
        "0.5",
        "--collective-timeout-s",
        "10",
    ];
    args.extend_from_slice(extra);
    ringtrain(
        &args,
        &run_dir.with_extension("cache"),
        log,
        Duration::from_secs(600),
    )
}

#[test]
fn two_and_three_workers_train_agree_and_match_a_single_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 3 classes × 48 images: 144 training images, global batch 24.
    synthetic_folder(&data, 3, 48).unwrap();
    for workers in [2u32, 3] {
        let run_dir = tmp.path().join(format!("run{workers}"));
        let out = launch(
            &data,
            &run_dir,
            workers,
            &["--epochs", "4"],
            &format!("dist-launch-{workers}"),
        );
        assert!(
            out.success(),
            "launch --workers {workers} failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout
                .contains("epoch      train_loss  valid_loss  accuracy   time"),
            "{}",
            out.stdout
        );
        let summary = json(&run_dir.join("summary.json"));
        assert_eq!(summary["world_size"], workers);
        // The coordinator compares every rank's parameter hash after every epoch and fails the
        // run on any difference; here all ranks must have reported one identical hash.
        let hashes = summary["rank_hashes"]
            .as_array()
            .expect("summary lists each rank's hash");
        assert_eq!(hashes.len(), workers as usize);
        assert!(
            hashes.iter().all(|h| h == &hashes[0]),
            "replicas differ: {hashes:?}"
        );

        // The table's accuracy is over every validation image exactly once, and equals what a
        // single process computes with the saved weights on the same files.
        let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert_eq!(last["valid_count"], 144);
        let eval = run(
            "ringtrain-worker",
            &[
                "eval",
                "--run-dir",
                run_dir.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ],
            &format!("dist-eval-{workers}"),
            &[],
            Duration::from_secs(120),
        )
        .unwrap();
        assert!(eval.success(), "{}", eval.stderr);
        let want = format!("({} of 144)", last["valid_correct"]);
        assert!(
            eval.stdout.contains(&want),
            "single process says {}, the table {want}",
            eval.stdout
        );
        assert!(last["accuracy"].as_f64().unwrap() > 0.9, "{last}");
    }
}

#[test]
fn a_killed_worker_fails_the_run_fast_with_its_rank_and_leaves_no_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 3, 400).unwrap();
    let run_dir = tmp.path().join("run-kill");
    let logs = log_dir("dist-kill");
    let mut child = Command::new(bin("ringtrain"))
        .args([
            "launch",
            "--data",
            data.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
            "--model",
            "resnet",
            "--epochs",
            "500",
            "--batch-size",
            "24",
            "--heartbeat-interval-s",
            "0.5",
            "--collective-timeout-s",
            "30",
            "--max-restarts",
            "0",
        ])
        .env("RINGTRAIN_CACHE_DIR", tmp.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(logs.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    // Wait until both workers train (the run folder's steps appear once epoch 0 is reported),
    // or at least until rank 1's process exists and has joined.
    // Workers are started with `--data <data>`: every process of this run mentions that path.
    let needle = data.to_str().unwrap().to_string();
    let started = Instant::now();
    let victim = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "workers never started; see {}",
            logs.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "launch ended early; see {}",
            logs.display()
        );
        let log1 = std::fs::read_to_string(run_dir.join("logs/worker-1.log")).unwrap_or_default();
        if log1.contains("training starts") {
            let pids = pids_with(&[&needle, "local-001"]);
            if let Some(&pid) = pids.first() {
                std::thread::sleep(Duration::from_millis(500));
                break pid;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let killed_at = Instant::now();
    kill9(victim);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "launch hangs after a worker died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = killed_at.elapsed();
    assert!(!status.success());
    assert!(
        waited < Duration::from_secs(20),
        "took {waited:?} to notice"
    );
    let stderr = std::fs::read_to_string(logs.join("stderr.txt")).unwrap();
    assert!(
        stderr.contains("rank 1"),
        "error must name rank 1:\n{stderr}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pids_with(&[&needle]).is_empty(),
        "orphans left: {:?}",
        pids_with(&[&needle])
    );
}

#[test]
fn workers_with_the_wrong_version_or_dataset_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 2, 12).unwrap();
    let other = tmp.path().join("other");
    synthetic_folder(&other, 2, 12).unwrap();
    std::fs::remove_file(other.join("training/c1/0003.png")).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let listen = format!("127.0.0.1:{port}");
    let logs = log_dir("dist-refuse-serve");
    let mut serve = Command::new(bin("ringtrain"))
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--workers",
            "1",
            "--model",
            "basic",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--run-dir",
            tmp.path().join("run").to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(logs.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    let worker = |data: &Path, extra: &[&str], log: &str| {
        let mut args = vec![
            "--coordinator",
            url.as_str(),
            "--data",
            data.to_str().unwrap(),
            "--collective-listen",
            "127.0.0.1:0",
            "--connect-timeout-s",
            "30",
            "--no-cache",
        ];
        args.extend_from_slice(extra);
        run("ringtrain-worker", &args, log, &[], Duration::from_secs(60)).unwrap()
    };
    let out = worker(
        &other,
        &["--worker-id", "wrong-data"],
        "dist-refuse-dataset",
    );
    assert!(!out.success());
    assert!(out.stderr.contains("dataset mismatch"), "{}", out.stderr);
    let out = worker(
        &data,
        &["--worker-id", "wrong-version", "--protocol-version", "99"],
        "dist-refuse-version",
    );
    assert!(!out.success());
    assert!(out.stderr.contains("protocol"), "{}", out.stderr);
    let out = worker(
        &data,
        &["--worker-id", "wrong-model", "--model", "resnet"],
        "dist-refuse-model",
    );
    assert!(!out.success());
    assert!(out.stderr.contains("model"), "{}", out.stderr);
    // A matching worker is still admitted and the run completes.
    let out = worker(
        &data,
        &["--worker-id", "good", "--threads", "1"],
        "dist-refuse-good",
    );
    assert!(out.success(), "{}", out.stderr);
    let status = serve.wait().unwrap();
    assert!(status.success());
    // Every refusal is logged with the worker and the reason.
    let log = std::fs::read_to_string(logs.join("stderr.txt")).unwrap();
    for who in ["wrong-data", "wrong-version", "wrong-model"] {
        assert!(
            log.lines()
                .any(|l| l.contains("join refused") && l.contains(who)),
            "{who}: {log}"
        );
    }
}
