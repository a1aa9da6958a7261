//! Surviving failures with the real binaries: a killed worker is replaced and the run ends
//! exactly as if undisturbed; a killed coordinator restarts and its workers re-join; a worker
//! gone for good leaves a smaller world that finishes the run.

mod recovery;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use recovery::{dataset, final_hash, run_args, summary, undisturbed, wait_for_checkpoint};
use ringtrain_tests::{free_listen, kill9, log_dir, pids_with, spawn_logged, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(300);

/// `ringtrain-worker` processes joining `url` with the given ids.
fn workers(url: &str, data: &Path, ids: &[&str], logs: &Path, cache: &Path) -> Vec<Child> {
    ids.iter()
        .map(|id| {
            spawn_logged(
                "ringtrain-worker",
                &[
                    "--coordinator",
                    url,
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
                ],
                &[("RINGTRAIN_CACHE_DIR", cache)],
                logs,
                id,
            )
        })
        .collect()
}

#[test]
fn a_killed_worker_is_replaced_and_the_run_ends_as_if_undisturbed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("killed-worker");
    let logs = log_dir("elastic-killed-worker");
    let args = run_args(&data, &run_dir);
    let mut launch_args: Vec<&str> =
        vec!["launch", "--threads-per-worker", "1", "--max-restarts", "2"];
    launch_args.extend(args.iter().map(String::as_str));
    let mut child = spawn_logged(
        "ringtrain",
        &launch_args,
        &[("RINGTRAIN_CACHE_DIR", &cache)],
        &logs,
        "launch",
    );
    wait_for_checkpoint(&run_dir, 2, &mut child, &logs);
    // Mid-epoch: a few steps into the epoch after the checkpoint.
    std::thread::sleep(Duration::from_millis(150));
    let victim = pids_with(&[data.to_str().unwrap(), "local-001", "ringtrain-worker"]);
    kill9(*victim.first().expect("worker 1 runs"));
    let status = wait_with_limit(&mut child, LIMIT, "launch after a killed worker");
    let stderr = std::fs::read_to_string(logs.join("launch.stderr.txt")).unwrap();
    let stdout = std::fs::read_to_string(logs.join("launch.stdout.txt")).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    // Notices for the person are output (stdout, with the table), not log lines.
    assert!(
        stdout.contains("restarting it (restart 1 of 2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("round 2 resumes from checkpoint"),
        "{stdout}"
    );
    // Same world size, same shards, resumed from the last checkpoint: the same parameters,
    // bit for bit, so the same accuracy as the undisturbed run.
    assert_eq!(final_hash(&run_dir), reference);
    let acc = |d: &Path| summary(d)["accuracy"].as_f64().unwrap();
    assert!((acc(&run_dir) - acc(&tmp.path().join("reference"))).abs() <= 0.002);
}

#[test]
fn a_killed_coordinator_restarts_and_its_workers_rejoin() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("killed-coordinator");
    let logs = log_dir("elastic-killed-coordinator");
    let listen = free_listen();
    let mut serve_args: Vec<String> = vec!["serve".into(), "--listen".into(), listen.clone()];
    serve_args.extend(run_args(&data, &run_dir));
    serve_args.push("--auto-resume".into());
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let env = [("RINGTRAIN_CACHE_DIR", cache.as_path())];
    let mut serve = spawn_logged("ringtrain", &serve_args, &env, &logs, "serve-1");
    let url = format!("http://{listen}");
    let ws = workers(&url, &data, &["w0", "w1"], &logs, &cache);
    wait_for_checkpoint(&run_dir, 2, &mut serve, &logs);
    kill9(serve.id());
    serve.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The same command again: it finds the checkpoints and continues the run.
    let mut serve = spawn_logged("ringtrain", &serve_args, &env, &logs, "serve-2");
    let status = wait_with_limit(&mut serve, LIMIT, "the restarted coordinator");
    assert!(status.success(), "see {}", logs.display());
    for mut w in ws {
        let s = wait_with_limit(&mut w, LIMIT, "a worker");
        assert!(s.success(), "a worker failed; see {}", logs.display());
    }
    let stdout = std::fs::read_to_string(logs.join("serve-2.stdout.txt")).unwrap();
    assert!(stdout.contains("resuming run"), "{stdout}");
    assert_eq!(final_hash(&run_dir), reference);
}

#[test]
fn a_worker_gone_for_good_leaves_a_smaller_world_that_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("shrunk");
    let logs = log_dir("elastic-shrink");
    let listen = free_listen();
    let mut serve_args: Vec<String> = vec!["serve".into(), "--listen".into(), listen.clone()];
    serve_args.extend(run_args(&data, &run_dir));
    serve_args.extend(["--min-workers", "1", "--last-call-s", "1"].map(String::from));
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let env = [("RINGTRAIN_CACHE_DIR", cache.as_path())];
    let mut serve = spawn_logged("ringtrain", &serve_args, &env, &logs, "serve");
    let url = format!("http://{listen}");
    let mut ws = workers(&url, &data, &["w0", "w1"], &logs, &cache);
    wait_for_checkpoint(&run_dir, 2, &mut serve, &logs);
    std::thread::sleep(Duration::from_millis(150));
    kill9(ws[1].id());
    let status = wait_with_limit(&mut serve, LIMIT, "serve after a worker was lost");
    assert!(status.success(), "see {}", logs.display());
    let s = wait_with_limit(&mut ws[0], LIMIT, "the surviving worker");
    assert!(s.success(), "see {}", logs.display());
    let _ = ws[1].wait();
    // The survivor re-joined alone and trained the rest with the whole global batch.
    let done = summary(&run_dir);
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["world_size"], 1, "{done}");
    assert_eq!(done["epochs"], recovery::EPOCHS, "{done}");
    let run_info = ringtrain_tests::read_json(&run_dir.join("run.json"));
    assert_eq!(run_info["round"], 2, "{run_info}");
    assert_eq!(run_info["batch_per_worker"], 24, "{run_info}");
    let reference = summary(&tmp.path().join("reference"));
    let gap = (done["accuracy"].as_f64().unwrap() - reference["accuracy"].as_f64().unwrap()).abs();
    assert!(gap <= 0.002, "accuracy {done} vs undisturbed {reference}");
}
