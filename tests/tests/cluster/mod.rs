//! The job the network tests run (`ringtrain serve` + separate `ringtrain-worker` processes, the
//! basic CNN for 3 epochs on 512 synthetic images) and the helpers they share: every variant,
//! however hostile its network, must end with the parameters of the undisturbed run.

// Compiled into each test binary that declares `mod cluster;`; each uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringtrain_tests::{bin, read_json, ringtrain, synthetic_folder};

/// The run's shared token (workers get it from `RINGTRAIN_AUTH_TOKEN`).
pub const TOKEN: &str = "netw0rk-tests-0123456789abcdef0123";

/// 2 classes × 256 images: 512 training images, 32 steps of 16 per epoch.
pub fn dataset(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    synthetic_folder(&data, 2, 256).unwrap();
    data
}

/// The arithmetic every network test shares, as `ringtrain serve`/`launch` flags: a global
/// batch of 8 per worker, so any world size splits it.
pub fn run_flags(data: &Path, run_dir: &Path, workers: u32) -> Vec<String> {
    let batch = (8 * workers).to_string();
    [
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--workers",
        &workers.to_string(),
        "--model",
        "basic",
        "--epochs",
        "3",
        "--batch-size",
        &batch,
        "--max-lr",
        "0.05",
    ]
    .map(String::from)
    .to_vec()
}

/// The parameters an undisturbed run of the job ends with (`ringtrain launch` on loopback).
pub fn reference_hash(tmp: &Path, data: &Path, workers: u32) -> String {
    let run_dir = tmp.join("reference");
    let mut args: Vec<String> = vec!["launch".into(), "--threads-per-worker".into(), "1".into()];
    args.extend(run_flags(data, &run_dir, workers));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ringtrain(
        &args,
        &tmp.join("reference-cache"),
        "net-reference",
        Duration::from_secs(600),
    );
    assert!(
        out.success(),
        "reference run: {}\n{}",
        out.stdout,
        out.stderr
    );
    final_hash(&run_dir)
}

pub fn summary(run_dir: &Path) -> serde_json::Value {
    read_json(&run_dir.join("summary.json"))
}

/// The parameter hash of a finished run.
pub fn final_hash(run_dir: &Path) -> String {
    let s = summary(run_dir);
    assert_eq!(s["status"], "finished", "{s}");
    s["params_hash"].as_str().unwrap().to_string()
}

/// `cmd` with stdin closed and output in `logs/<name>.{stdout,stderr}.txt`, started.
pub fn spawn(mut cmd: Command, logs: &Path, name: &str) -> Child {
    let file = |ext: &str| std::fs::File::create(logs.join(format!("{name}.{ext}.txt"))).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"))
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// The stderr a process spawned with [`spawn`] left.
pub fn stderr(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{name}.stderr.txt"))).unwrap_or_default()
}

/// `ringtrain serve` of the job on `listen` for `workers` workers, with the token; `program`
/// wraps it (e.g. `ip netns exec NS`), empty for none.
pub fn serve_cmd(
    wrap: &[&str],
    data: &Path,
    run_dir: &Path,
    listen: &str,
    workers: u32,
    extra: &[&str],
) -> Command {
    let mut cmd = wrapped(wrap, "ringtrain");
    cmd.arg("serve")
        .args(run_flags(data, run_dir, workers))
        .args(["--listen", listen, "--join-timeout-s", "300"])
        .args(extra)
        .env("RINGTRAIN_AUTH_TOKEN", TOKEN);
    cmd
}

/// `ringtrain-worker` for the job against `url`: only what a user must say (coordinator,
/// data), one libtorch thread, and its own decoded-image cache.
pub fn worker_cmd(wrap: &[&str], url: &str, data: &Path, cache: &Path, extra: &[&str]) -> Command {
    let mut cmd = wrapped(wrap, "ringtrain-worker");
    cmd.args([
        "--coordinator",
        url,
        "--data",
        data.to_str().unwrap(),
        "--threads",
        "1",
    ])
    .args(extra)
    .env("RINGTRAIN_AUTH_TOKEN", TOKEN)
    .env("RINGTRAIN_CACHE_DIR", cache);
    cmd
}

fn wrapped(wrap: &[&str], binary: &str) -> Command {
    match wrap.split_first() {
        None => Command::new(bin(binary)),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin(binary));
            c
        }
    }
}

/// Waits for `child`; kills it and panics naming `what` after `limit`.
pub fn wait(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (e.g. "STOP", "CONT", "TERM") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

/// Kills every child still running (a failing test must not leave processes behind).
pub struct Reaper(pub Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Raises this test process's open-file limit to its hard limit (floods open many sockets).
pub fn raise_fd_limit() {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(4096);
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
}
