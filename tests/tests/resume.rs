//! Checkpoints, exact resume and surviving failures, with the real binaries on 127.0.0.1:
//! a run killed mid-way and resumed (after its newest checkpoint was truncated) ends bit for
//! bit where an undisturbed run ends; a killed worker is replaced and the run still ends there;
//! a killed coordinator restarts and its workers re-join; a read-only checkpoint folder is a
//! clear error that keeps the last good checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringtrain_tests::{bin, log_dir, run, synthetic_folder, Output};

const EPOCHS: &str = "6";

/// The run's arithmetic: identical in every test, so every run must end with the same hash.
fn run_args<'a>(data: &'a Path, run_dir: &'a Path) -> Vec<String> {
    [
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--workers",
        "2",
        "--model",
        "resnet",
        "--epochs",
        EPOCHS,
        "--batch-size",
        "24",
        "--max-lr",
        "0.02",
        "--heartbeat-interval-s",
        "0.5",
        "--collective-timeout-s",
        "20",
        "--checkpoint-keep",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

fn dataset(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    // 3 classes × 160: 480 training images, 20 steps of 24 per epoch.
    synthetic_folder(&data, 3, 160).unwrap();
    data
}

fn launch(args: &[String], extra: &[&str], log: &str, cache: &Path) -> Output {
    let mut all: Vec<&str> = vec!["launch", "--threads-per-worker", "1"];
    all.extend(args.iter().map(String::as_str));
    all.extend_from_slice(extra);
    run(
        "ringtrain",
        &all,
        log,
        &[("RINGTRAIN_CACHE_DIR", cache.to_str().unwrap())],
        Duration::from_secs(600),
    )
    .unwrap()
}

fn spawn(bin_name: &str, args: &[&str], logs: &Path, name: &str, cache: &Path) -> Child {
    Command::new(bin(bin_name))
        .args(args)
        .env("RINGTRAIN_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join(format!("{name}.stdout.txt"))).unwrap())
        .stderr(std::fs::File::create(logs.join(format!("{name}.stderr.txt"))).unwrap())
        .spawn()
        .unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn final_hash(run_dir: &Path) -> String {
    let s = json(&run_dir.join("summary.json"));
    assert_eq!(s["status"], "finished", "{s}");
    s["params_hash"].as_str().unwrap().to_string()
}

fn checkpoints(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('e'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until the run folder holds a checkpoint of epoch >= `epoch` (i.e. `epoch` completed).
fn wait_for_checkpoint(run_dir: &Path, epoch: u32, child: &mut Child, logs: &Path) {
    let started = Instant::now();
    let want = format!("e{epoch:04}");
    loop {
        if checkpoints(run_dir)
            .iter()
            .any(|n| n.as_str() >= want.as_str())
        {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before checkpoint {want}; see {}",
            logs.display()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint {want}; see {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill9(pid: u32) {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

/// Pid of the worker process whose command line has `worker_id`.
fn worker_pid(worker_id: &str, needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).into_owned();
        (cmd.contains(needle) && cmd.contains(worker_id) && cmd.contains("ringtrain-worker"))
            .then_some(pid)
    })
}

/// The reference: the same run, undisturbed.
fn undisturbed(tmp: &Path, data: &Path) -> String {
    let run_dir = tmp.join("reference");
    let out = launch(
        &run_args(data, &run_dir),
        &[],
        "resume-reference",
        &tmp.join("cache"),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    // One checkpoint per epoch, the newest `--checkpoint-keep` kept plus the best.
    let kept = checkpoints(&run_dir);
    assert!((2..=3).contains(&kept.len()), "{kept:?}");
    assert!(run_dir.join("best/MANIFEST.json").exists());
    assert!(run_dir.join("latest/model.safetensors").exists());
    final_hash(&run_dir)
}

#[test]
fn interrupted_run_resumes_bitwise_exact_even_from_an_older_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("interrupted");
    let logs = log_dir("resume-interrupted");
    let args = run_args(&data, &run_dir);
    let mut launch_args: Vec<&str> = vec!["launch", "--threads-per-worker", "1"];
    launch_args.extend(args.iter().map(String::as_str));
    let mut child = spawn("ringtrain", &launch_args, &logs, "launch", &cache);
    wait_for_checkpoint(&run_dir, 3, &mut child, &logs);
    // The launcher dies without a word; its workers die with it (PDEATHSIG).
    kill9(child.id());
    child.wait().unwrap();
    let before = checkpoints(&run_dir);
    let newest = before.last().unwrap().clone();
    assert!(!run_dir.join("summary.json").exists() || final_status(&run_dir) != "finished");
    // A torn write of the newest checkpoint: resume must fall back to the previous one.
    let model = run_dir
        .join("checkpoints")
        .join(&newest)
        .join("model.safetensors");
    let len = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Starting the same run folder again without --resume is refused: nothing is overwritten.
    let refused = launch(&args, &[], "resume-refused", &cache);
    assert!(!refused.success());
    assert!(refused.stderr.contains("--resume"), "{}", refused.stderr);

    let out = run(
        "ringtrain",
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
            "--heartbeat-interval-s",
            "0.5",
        ],
        "resume-resumed",
        &[("RINGTRAIN_CACHE_DIR", cache.to_str().unwrap())],
        Duration::from_secs(600),
    )
    .unwrap();
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&newest),
        "the bad checkpoint is named:\n{}",
        out.stderr
    );
    let previous = &before[before.len() - 2];
    assert!(
        out.stderr.contains(&format!(
            "from {}",
            run_dir.join("checkpoints").join(previous).display()
        )),
        "resumes from the previous checkpoint {previous}:\n{}",
        out.stderr
    );
    assert_eq!(final_hash(&run_dir), reference, "resume is bitwise exact");
    // The metrics cover every epoch exactly once.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, (0..6).collect::<Vec<u64>>());

    // The lesson's inference on the best checkpoint.
    let image = data.join("testing/c1/0000.png");
    let p = run(
        "ringtrain-worker",
        &[
            "predict",
            "--checkpoint",
            run_dir.join("best").to_str().unwrap(),
            image.to_str().unwrap(),
        ],
        "resume-predict",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(p.success(), "{}", p.stderr);
    assert!(p.stdout.contains("c1"), "{}", p.stdout);
}

fn final_status(run_dir: &Path) -> String {
    json(&run_dir.join("summary.json"))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_killed_worker_is_replaced_and_the_run_ends_as_if_undisturbed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("killed-worker");
    let logs = log_dir("resume-killed-worker");
    let args = run_args(&data, &run_dir);
    let mut launch_args: Vec<&str> =
        vec!["launch", "--threads-per-worker", "1", "--max-restarts", "2"];
    launch_args.extend(args.iter().map(String::as_str));
    let mut child = spawn("ringtrain", &launch_args, &logs, "launch", &cache);
    wait_for_checkpoint(&run_dir, 2, &mut child, &logs);
    // Mid-epoch: a few steps into the epoch after the checkpoint.
    std::thread::sleep(Duration::from_millis(150));
    let victim = worker_pid("local-001", data.to_str().unwrap()).expect("worker 1 runs");
    kill9(victim);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "run hangs");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(logs.join("launch.stderr.txt")).unwrap();
    let stdout = std::fs::read_to_string(logs.join("launch.stdout.txt")).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("restarting it (restart 1 of 2)"),
        "{stderr}"
    );
    assert!(
        stdout.contains("round 2 resumes from checkpoint"),
        "{stdout}"
    );
    // Same world size, same shards, resumed from the last checkpoint: the same parameters,
    // bit for bit, so the same accuracy as the undisturbed run.
    assert_eq!(final_hash(&run_dir), reference);
    let acc = |d: &Path| json(&d.join("summary.json"))["accuracy"].as_f64().unwrap();
    assert!((acc(&run_dir) - acc(&tmp.path().join("reference"))).abs() <= 0.002);
}

#[test]
fn a_killed_coordinator_restarts_and_its_workers_rejoin() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let reference = undisturbed(tmp.path(), &data);

    let run_dir = tmp.path().join("killed-coordinator");
    let logs = log_dir("resume-killed-coordinator");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let mut serve_args: Vec<String> = vec!["serve".into(), "--listen".into(), listen.clone()];
    serve_args.extend(run_args(&data, &run_dir));
    serve_args.push("--auto-resume".into());
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let mut serve = spawn("ringtrain", &serve_args, &logs, "serve-1", &cache);
    let workers: Vec<Child> = ["w0", "w1"]
        .iter()
        .map(|id| {
            spawn(
                "ringtrain-worker",
                &[
                    "--coordinator",
                    &url,
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
                &logs,
                id,
                &cache,
            )
        })
        .collect();
    wait_for_checkpoint(&run_dir, 2, &mut serve, &logs);
    kill9(serve.id());
    serve.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The same command again: it finds the checkpoints and continues the run.
    let mut serve = spawn("ringtrain", &serve_args, &logs, "serve-2", &cache);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "restarted coordinator hangs; see {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "see {}", logs.display());
    for mut w in workers {
        let s = w.wait().unwrap();
        assert!(s.success(), "a worker failed; see {}", logs.display());
    }
    let stderr = std::fs::read_to_string(logs.join("serve-2.stderr.txt")).unwrap();
    assert!(stderr.contains("resuming run"), "{stderr}");
    assert_eq!(final_hash(&run_dir), reference);
}

#[test]
fn a_read_only_checkpoint_folder_is_a_clear_error_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let cache = tmp.path().join("cache");
    let run_dir = tmp.path().join("ro");
    let mut args = run_args(&data, &run_dir);
    args[9] = "1".into(); // --epochs 1
    let out = launch(&args, &[], "resume-ro-first", &cache);
    assert!(out.success(), "{}", out.stderr);
    let ckpt = run_dir.join("checkpoints");
    let before = checkpoints(&run_dir);
    let manifest = std::fs::read(ckpt.join(&before[0]).join("MANIFEST.json")).unwrap();
    // Root ignores permission bits: then a read-only bind mount in a private mount namespace.
    let root = unsafe_is_root();
    let cmd = format!(
        "{} launch --resume {} --data {} --workers 2 --threads-per-worker 1",
        bin("ringtrain").display(),
        run_dir.display(),
        data.display()
    );
    let script = if root {
        format!(
            "mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec {cmd}",
            d = ckpt.display()
        )
    } else {
        let mut p = std::fs::metadata(&ckpt).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o555);
        std::fs::set_permissions(&ckpt, p).unwrap();
        format!("exec {cmd}")
    };
    let mut c = if root {
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let out = c
        .env("RINGTRAIN_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(log_dir("resume-ro").join("stderr.txt"), stderr.as_bytes()).unwrap();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write checkpoint folder {}",
            ckpt.display()
        )),
        "{stderr}"
    );
    // The last good checkpoint is untouched and still loads.
    assert_eq!(checkpoints(&run_dir), before);
    assert_eq!(
        std::fs::read(ckpt.join(&before[0]).join("MANIFEST.json")).unwrap(),
        manifest
    );
    let image = data.join("testing/c0/0000.png");
    let p = run(
        "ringtrain-worker",
        &[
            "predict",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
        "resume-ro-predict",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(p.success(), "{}", p.stderr);
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
