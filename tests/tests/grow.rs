//! Growing the world mid-run, with real processes on all of real MNIST (the lesson's ResNet,
//! 6 epochs): one worker trains; a second one is started by hand after the first epoch; the
//! coordinator admits it at the next epoch end, and the run continues with world size 2 from
//! the third epoch, in the same worker processes, with every epoch trained exactly once.
//!
//! * `serve --workers 1 --max-workers 2` and two `ringtrain-worker`s;
//! * `launch --workers 1 --max-workers 2` and one `ringtrain-worker` started by hand from what
//!   the launch leaves in its run folder (`coordinator.url`, `auth-token`);
//! * the reference: the same run with 2 workers from the start; the grown run's accuracy must
//!   be within 0.2 points of it.
//!
//! The run folder tells the story: `run.json`'s `membership` (world 1 from the start, world 2
//! from epoch 2 "growing the world from 1 to 2 workers"), `metrics.jsonl` with each epoch once.
//! Given that history, a resume from the growth point's checkpoint with 2 workers ends with
//! the grown run's parameters, bit for bit.

mod stall;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ringtrain_tests::{bin, log_dir, mnist_slice, read_json, wait_with_limit};
use stall::{worker, Coordinator, WorkerSpec};

const EPOCHS: &str = "6";
static CPUS: Mutex<()> = Mutex::new(());

/// All of MNIST, written once for the tests of this file.
fn mnist() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("mnist");
        mnist_slice(&data, 60_000, 10_000).unwrap();
        (tmp, data)
    })
    .1
}

/// The recipe on top of what `stall::Coordinator::serve` sets (the lesson's ResNet, max_lr
/// 0.02, heartbeats every 0.5 s).
const SERVE_RECIPE: [&str; 2] = ["--epochs", EPOCHS];

/// The same recipe for `launch`.
fn recipe() -> Vec<&'static str> {
    vec![
        "--model",
        "resnet",
        "--epochs",
        EPOCHS,
        "--max-lr",
        "0.02",
        "--heartbeat-interval-s",
        "0.5",
    ]
}

/// Waits until `run_dir` holds the checkpoint after `epochs` epochs.
fn wait_epochs(run_dir: &Path, epochs: u32, alive: &mut Child, logs: &Path) {
    let want = format!("e{epochs:04}");
    let t0 = Instant::now();
    loop {
        let names: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if names
            .iter()
            .any(|n| n.starts_with('e') && n.as_str() >= want.as_str())
        {
            return;
        }
        assert!(
            alive.try_wait().unwrap().is_none(),
            "the run ended early; see {}",
            logs.display()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no {want}; see {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the run folder must say about a run that grew from 1 to 2 workers after `late` joined.
fn check_story(run_dir: &Path, late: &str) -> f64 {
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "finished", "{summary}");
    assert_eq!(summary["world_size"], 2, "{summary}");
    assert_eq!(
        summary["restarts"], 0,
        "growing is not a restart: {summary}"
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epochs: Vec<u64> = rows.iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    assert_eq!(
        epochs,
        [0, 1, 2, 3, 4, 5],
        "each epoch exactly once: {epochs:?}"
    );
    let info = read_json(&run_dir.join("run.json"));
    let m = info["membership"]
        .as_array()
        .expect("run.json has the membership history");
    assert_eq!(m.len(), 2, "{info}");
    assert_eq!(m[0]["world_size"], 1);
    assert_eq!(m[0]["from_global_step"], 0);
    assert_eq!(m[0]["after"], "start");
    assert_eq!(m[1]["world_size"], 2);
    assert_eq!(
        m[1]["from_epoch"], 2,
        "world size 2 from the third epoch: {info}"
    );
    assert_eq!(m[1]["from_step_in_epoch"], 0);
    let per_epoch = info["steps_per_epoch"].as_u64().unwrap();
    assert_eq!(m[1]["from_global_step"], 2 * per_epoch, "{info}");
    assert!(
        m[1]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == late),
        "{info}"
    );
    assert!(
        m[1]["after"]
            .as_str()
            .unwrap()
            .starts_with("growing the world from 1 to 2 workers"),
        "{info}"
    );
    summary["accuracy"].as_f64().unwrap()
}

/// The reference: 2 workers from the start (`launch`), its accuracy.
fn reference() -> f64 {
    static ACC: OnceLock<f64> = OnceLock::new();
    *ACC.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let mut args = vec![
            "launch",
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
            "--data",
        ];
        let data = mnist().to_str().unwrap();
        args.push(data);
        args.extend(recipe());
        args.extend(["--run-dir", run_dir.to_str().unwrap()]);
        let out = ringtrain_tests::ringtrain(
            &args,
            &tmp.path().join("cache"),
            "grow-reference",
            Duration::from_secs(600),
        );
        assert!(out.success(), "the reference run failed");
        read_json(&run_dir.join("summary.json"))["accuracy"]
            .as_f64()
            .unwrap()
    })
}

fn close_to_reference(acc: f64) {
    let reference = reference();
    eprintln!("grown {acc:.4}, reference (2 workers throughout) {reference:.4}");
    assert!(
        (acc - reference).abs() <= 0.002,
        "accuracy {acc:.4} is more than 0.2 points from the undisturbed run's {reference:.4}"
    );
}

#[test]
fn serve_admits_a_second_worker_at_the_next_epoch_end() {
    let _cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let logs = log_dir("grow-serve");
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    // Every checkpoint kept: the replay starts from the growth point's.
    let mut args = vec![
        "--workers",
        "1",
        "--max-workers",
        "2",
        "--checkpoint-keep",
        "10",
    ];
    args.extend(SERVE_RECIPE);
    let mut c = Coordinator::serve(mnist(), &run_dir, &logs, &args);
    let spec = |id| WorkerSpec {
        id,
        binary: "ringtrain-worker",
        cpu: None,
        env: &[],
    };
    let mut first = worker(&c, mnist(), &cache, &spec("w-first"));
    wait_epochs(&run_dir, 1, &mut c.child, &logs);
    let mut late = worker(&c, mnist(), &cache, &spec("w-late"));
    let status = wait_with_limit(&mut c.child, Duration::from_secs(600), "serve");
    let first_status = wait_with_limit(&mut first, Duration::from_secs(60), "the first worker");
    let late_status = wait_with_limit(&mut late, Duration::from_secs(60), "the late worker");
    assert!(status.success(), "see {}", logs.display());
    assert!(
        first_status.success() && late_status.success(),
        "see {}",
        logs.display()
    );
    let out = c.stdout();
    assert!(
        out.contains("growing the world from 1 to 2 workers (w-late joining)"),
        "{out}"
    );
    // The first worker trained on in its own process: one process, one log, no restart.
    let first_log = std::fs::read_to_string(logs.join("w-first.stderr.txt")).unwrap();
    assert!(
        first_log.matches("ring address announced").count() >= 2,
        "it re-joined in-process"
    );
    let acc = check_story(&run_dir, "w-late");
    close_to_reference(acc);
    replay_from_the_growth_point(&run_dir, &tmp.path().join("replay"), &cache);
}

/// Given the history (world 1 for epochs 0-1, world 2 from epoch 2), a resume from the growth
/// point's checkpoint with 2 workers ends with the grown run's parameters, bit for bit.
fn replay_from_the_growth_point(run_dir: &Path, replay: &Path, cache: &Path) {
    let status = Command::new("cp")
        .args(["-a", run_dir.to_str().unwrap(), replay.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let grown = read_json(&run_dir.join("summary.json"));
    let m = &read_json(&run_dir.join("run.json"))["membership"][1];
    let from = m["from_epoch"].as_u64().unwrap();
    // Keep the checkpoints up to the growth point only.
    for e in std::fs::read_dir(replay.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let epoch = name
            .strip_prefix('e')
            .and_then(|n| n.get(..4))
            .and_then(|n| n.parse::<u64>().ok());
        if epoch.is_some_and(|n| n > from) {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let out = ringtrain_tests::ringtrain(
        &[
            "launch",
            "--resume",
            replay.to_str().unwrap(),
            "--data",
            mnist().to_str().unwrap(),
            "--workers",
            m["world_size"].to_string().as_str(),
            "--threads-per-worker",
            "1",
        ],
        cache,
        "grow-replay",
        Duration::from_secs(600),
    );
    assert!(out.success(), "the replay failed");
    let replayed = read_json(&replay.join("summary.json"));
    assert_eq!(replayed["status"], "finished", "{replayed}");
    assert_eq!(
        replayed["params_hash"], grown["params_hash"],
        "the replay from the growth point ends bit for bit where the grown run ended"
    );
}

#[test]
fn launch_admits_a_worker_started_by_hand() {
    let _cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let logs = log_dir("grow-launch");
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    let data = mnist().to_str().unwrap();
    let mut args = vec![
        "launch",
        "--workers",
        "1",
        "--max-workers",
        "2",
        "--threads-per-worker",
        "1",
        "--data",
        data,
    ];
    args.extend(recipe());
    args.extend(["--run-dir", run_dir.to_str().unwrap()]);
    let file = |name: &str| std::fs::File::create(logs.join(name)).unwrap();
    let mut launch = Command::new(bin("ringtrain"))
        .args(&args)
        .env("RINGTRAIN_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .stdout(file("launch.stdout.txt"))
        .stderr(file("launch.stderr.txt"))
        .spawn()
        .unwrap();
    wait_epochs(&run_dir, 1, &mut launch, &logs);
    // What the launch says and leaves for a person adding a worker.
    let said = std::fs::read_to_string(logs.join("launch.stdout.txt")).unwrap();
    assert!(said.contains("room for 1 more worker(s)"), "{said}");
    let url = std::fs::read_to_string(run_dir.join("coordinator.url")).unwrap();
    let token_file = run_dir.join("auth-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the token file is private");
    let mut by_hand = Command::new(bin("ringtrain-worker"))
        .args([
            "--coordinator",
            url.trim(),
            "--data",
            data,
            "--worker-id",
            "by-hand",
            "--threads",
            "1",
        ])
        .env("RINGTRAIN_AUTH_TOKEN_FILE", &token_file)
        .env("RINGTRAIN_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .stdout(file("by-hand.stdout.txt"))
        .stderr(file("by-hand.stderr.txt"))
        .spawn()
        .unwrap();
    let status = wait_with_limit(&mut launch, Duration::from_secs(600), "launch");
    let hand = wait_with_limit(
        &mut by_hand,
        Duration::from_secs(60),
        "the worker started by hand",
    );
    assert!(status.success() && hand.success(), "see {}", logs.display());
    let acc = check_story(&run_dir, "by-hand");
    close_to_reference(acc);
}
