//! Checkpoints inside epochs with the real binaries: periodic ones resume bit for bit, and
//! SIGTERM (preemption) on a worker or on the coordinator takes a stop checkpoint the ranks
//! agree on, after which the run continues from exactly that step.

mod recovery;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use recovery::{
    checkpoints, dataset, final_hash, is_mid_epoch, parameters, run_args, summary,
    undisturbed_with, wait_for_checkpoint,
};
use ringtrain_tests::{kill9, log_dir, pids_with, ringtrain, spawn_logged, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(300);

fn term(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

fn same_parameters(a: &Path, b: &Path) {
    let (pa, pb) = (
        parameters(&a.join("final.safetensors")),
        parameters(&b.join("final.safetensors")),
    );
    assert_eq!(pa.len(), pb.len());
    for ((na, da), (nb, db)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb);
        assert!(da == db, "parameter {na} differs from the undisturbed run");
    }
}

#[test]
fn checkpoints_inside_epochs_resume_bitwise_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let every = ["--checkpoint-every-steps", "7"];
    let reference = undisturbed_with(tmp.path(), &data, &every, "reference-every-7");

    let run_dir = tmp.path().join("killed");
    let logs = log_dir("stop-periodic");
    let args = run_args(&data, &run_dir);
    let mut all: Vec<&str> = vec!["launch", "--threads-per-worker", "1"];
    all.extend(args.iter().map(String::as_str));
    all.extend_from_slice(&every);
    let env = [("RINGTRAIN_CACHE_DIR", cache.as_path())];
    let mut child = spawn_logged("ringtrain", &all, &env, &logs, "launch");
    wait_for_checkpoint(&run_dir, 2, &mut child, &logs);
    // Until the newest checkpoint is one inside an epoch, then the launcher dies.
    while !checkpoints(&run_dir)
        .last()
        .is_some_and(|n| is_mid_epoch(n))
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended first; see {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill9(child.id());
    child.wait().unwrap();
    let newest = checkpoints(&run_dir).last().unwrap().clone();
    let out = ringtrain(
        &[
            "launch",
            "--resume",
            run_dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
        ],
        &cache,
        "stop-periodic-resumed",
        LIMIT,
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    // The resume notice is output for the person (stdout).
    assert!(
        out.stdout.contains(&newest),
        "resumes from {newest}:\n{}",
        out.stdout
    );
    assert_eq!(final_hash(&run_dir), reference);
}

#[test]
fn sigterm_on_a_worker_takes_a_stop_checkpoint_and_the_run_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    undisturbed_with(tmp.path(), &data, &[], "reference");

    let run_dir = tmp.path().join("preempted-worker");
    let logs = log_dir("stop-worker");
    let args = run_args(&data, &run_dir);
    let mut all: Vec<&str> = vec!["launch", "--threads-per-worker", "1", "--max-restarts", "1"];
    all.extend(args.iter().map(String::as_str));
    let env = [("RINGTRAIN_CACHE_DIR", cache.as_path())];
    let mut child = spawn_logged("ringtrain", &all, &env, &logs, "launch");
    wait_for_checkpoint(&run_dir, 2, &mut child, &logs);
    std::thread::sleep(Duration::from_millis(150));
    let victim = pids_with(&[data.to_str().unwrap(), "local-001", "ringtrain-worker"]);
    term(*victim.first().expect("worker 1 runs"));
    let status = wait_with_limit(&mut child, LIMIT, "launch after SIGTERM to a worker");
    let stdout = std::fs::read_to_string(logs.join("launch.stdout.txt")).unwrap();
    let stderr = std::fs::read_to_string(logs.join("launch.stderr.txt")).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("rank 1 (local-001) preempted (SIGTERM); stop checkpoint at step"),
        "{stdout}"
    );
    assert!(stdout.contains("exited with code 143"), "{stdout}");
    assert!(summary(&run_dir)["status"] == "finished");
    same_parameters(&run_dir, &tmp.path().join("reference"));
}

#[test]
fn sigterm_on_the_coordinator_takes_a_stop_checkpoint_and_a_restart_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    undisturbed_with(tmp.path(), &data, &[], "reference");

    let run_dir = tmp.path().join("preempted-coordinator");
    let logs = log_dir("stop-coordinator");
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let mut serve_args: Vec<String> = vec!["serve".into(), "--listen".into(), listen.clone()];
    serve_args.extend(run_args(&data, &run_dir));
    serve_args.push("--auto-resume".into());
    // The stop request reaches the ranks in a heartbeat reply: at 0.5 s a fast machine trains
    // the remaining epochs before hearing it (the interval does not touch the arithmetic).
    if let Some(i) = serve_args
        .iter()
        .position(|a| a == "--heartbeat-interval-s")
    {
        serve_args[i + 1] = "0.1".into();
    }
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let env = [("RINGTRAIN_CACHE_DIR", cache.as_path())];
    let mut serve = spawn_logged("ringtrain", &serve_args, &env, &logs, "serve-1");
    let url = format!("http://{listen}");
    let mut workers: Vec<_> = ["w0", "w1"]
        .iter()
        .map(|id| {
            let args = [
                "--coordinator",
                url.as_str(),
                "--data",
                data.to_str().unwrap(),
                "--worker-id",
                id,
                "--threads",
                "1",
                "--collective-listen",
                "127.0.0.1:0",
                "--connect-timeout-s",
                "60",
            ];
            spawn_logged("ringtrain-worker", &args, &env, &logs, id)
        })
        .collect();
    wait_for_checkpoint(&run_dir, 1, &mut serve, &logs);
    std::thread::sleep(Duration::from_millis(50));
    term(serve.id());
    let status = wait_with_limit(&mut serve, LIMIT, "serve after SIGTERM");
    assert!(
        !status.success(),
        "an interrupted run is not a finished one"
    );
    let newest = checkpoints(&run_dir).last().unwrap().clone();
    assert!(
        is_mid_epoch(&newest),
        "a stop checkpoint inside the epoch, got {newest}"
    );
    let s = summary(&run_dir);
    assert!(
        s["reason"].as_str().unwrap().starts_with("interrupted"),
        "{s}"
    );

    let mut serve = spawn_logged("ringtrain", &serve_args, &env, &logs, "serve-2");
    let status = wait_with_limit(&mut serve, LIMIT, "the restarted coordinator");
    assert!(status.success(), "see {}", logs.display());
    for w in &mut workers {
        assert!(
            wait_with_limit(w, LIMIT, "a worker").success(),
            "see {}",
            logs.display()
        );
    }
    let stdout = std::fs::read_to_string(logs.join("serve-2.stdout.txt")).unwrap();
    assert!(stdout.contains(&newest), "resumes from {newest}:\n{stdout}");
    same_parameters(&run_dir, &tmp.path().join("reference"));
}
