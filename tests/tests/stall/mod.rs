//! What the straggler and hang tests share: a slice of real MNIST, `ringtrain serve` with a
//! status endpoint, and `ringtrain-worker` processes (optionally pinned to one CPU with
//! `taskset`, or the failpoint build), each logging into the test's folder.

// Compiled into each test binary that declares `mod stall;`; each uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringtrain_tests::{bin, free_listen, mnist_slice};

/// 12,800 training and 1,000 testing images of real MNIST: 100 steps of 128 per epoch.
pub fn dataset(tmp: &Path) -> PathBuf {
    let data = tmp.join("mnist");
    mnist_slice(&data, 12_800, 1_000).unwrap();
    data
}

/// A coordinator under test.
pub struct Coordinator {
    pub child: Child,
    pub url: String,
    pub http: String,
    pub logs: PathBuf,
}

impl Coordinator {
    /// `ringtrain serve` of the lesson's ResNet on `data`, with `extra` flags (`--workers` among
    /// them).
    pub fn serve(data: &Path, run_dir: &Path, logs: &Path, extra: &[&str]) -> Self {
        let (listen, http) = (free_listen(), free_listen());
        let mut args = vec![
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--listen",
            &listen,
            "--http-listen",
            &http,
            "--model",
            "resnet",
            "--max-lr",
            "0.02",
            "--heartbeat-interval-s",
            "0.5",
        ];
        args.extend_from_slice(extra);
        let child = Command::new(bin("ringtrain"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file(logs, "serve.stdout.txt"))
            .stderr(file(logs, "serve.stderr.txt"))
            .spawn()
            .expect("ringtrain serve starts");
        Self {
            child,
            url: format!("http://{listen}"),
            http: format!("http://{http}"),
            logs: logs.to_path_buf(),
        }
    }

    /// What it printed for people so far (the table and its notices).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.join("serve.stdout.txt")).unwrap_or_default()
    }

    /// Its live `/status`, when it answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        use std::io::{Read as _, Write as _};
        let addr = self.http.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            c,
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        let (head, body) = s.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }

    /// Polls until `stdout` contains `needle`; the elapsed time, or a panic naming the logs.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.stdout().contains(needle) {
                return t0.elapsed();
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the coordinator exited before printing {needle:?}; see {}",
                self.logs.display()
            );
            assert!(
                t0.elapsed() < limit,
                "no {needle:?} within {limit:?}; see {}",
                self.logs.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn file(logs: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(logs.join(name)).expect("the test's log folder is writable")
}

/// How to start one worker.
pub struct WorkerSpec<'a> {
    pub id: &'a str,
    /// The binary: `ringtrain-worker`, or `ringtrain-worker-failpoints`.
    pub binary: &'a str,
    /// Pin it (and its threads) to this CPU.
    pub cpu: Option<usize>,
    pub env: &'a [(&'a str, &'a str)],
}

/// Starts a worker of `c`'s run with one training thread.
pub fn worker(c: &Coordinator, data: &Path, cache: &Path, w: &WorkerSpec) -> Child {
    let exe = bin(w.binary);
    let mut cmd = match w.cpu {
        Some(cpu) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &cpu.to_string()]).arg(exe);
            t
        }
        None => Command::new(exe),
    };
    cmd.args([
        "--coordinator",
        &c.url,
        "--data",
        data.to_str().unwrap(),
        "--worker-id",
        w.id,
        "--threads",
        "1",
        "--collective-listen",
        "127.0.0.1:0",
        "--connect-timeout-s",
        "30",
    ])
    .env("RINGTRAIN_CACHE_DIR", cache)
    .stdin(Stdio::null())
    .stdout(file(&c.logs, &format!("{}.stdout.txt", w.id)))
    .stderr(file(&c.logs, &format!("{}.stderr.txt", w.id)));
    for (k, v) in w.env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start worker {}: {e}", w.id))
}

/// Kills and reaps every process in `children`.
pub fn stop_all(children: &mut [&mut Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
