//! Long-running processes under test: start them with logged output, find them by command
//! line, kill them, wait for them with a limit, read the JSON they leave.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bin;

/// Starts binary `bin_name` with `args` and `envs`; stdout and stderr go to
/// `logs/<name>.stdout.txt` and `logs/<name>.stderr.txt`.
pub fn spawn_logged(
    bin_name: &str,
    args: &[&str],
    envs: &[(&str, &Path)],
    logs: &Path,
    name: &str,
) -> Child {
    let file = |ext: &str| {
        std::fs::File::create(logs.join(format!("{name}.{ext}.txt")))
            .expect("the test's log folder is writable")
    };
    let mut cmd = Command::new(bin(bin_name));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin_name}: {e}"))
}

/// Waits for `child` to exit; panics naming `what` after `limit` (a test never hangs).
pub fn wait_with_limit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "{what} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of the processes (not this one) whose command line contains every one of `needles`.
pub fn pids_with(needles: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            (pid != std::process::id() && needles.iter().all(|n| cmd.contains(n))).then_some(pid)
        })
        .collect()
}

/// SIGKILL to `pid`: no handler runs, like a machine or OOM kill.
pub fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -9 {pid} failed");
}

/// A JSON file a run left behind.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
