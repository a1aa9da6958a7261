//! `/metrics` of a real run through Prometheus' own linter: `ringtrain launch --http-listen`
//! with 2 real workers on a small generated dataset, scraped mid-run and once the run is over,
//! each scrape piped into `promtool check metrics` (Debian's `prometheus` package;
//! `scripts/setup-promtool.sh` installs it when missing). Both scrapes must pass with no
//! finding, name the series the README lists, and no counter may go down between them.
//!
//! The scrape after the end: the coordinator stops accepting connections soon after the run is
//! over, but still answers the connections it accepted (`HttpServer::shutdown`'s grace). So the
//! test keeps a connection open that was accepted but carries no request yet, and sends its
//! request when the event stream says the run ended. Both scrapes stay in
//! `target/test-logs/metrics/` (`mid-run.txt`, `after-end.txt`).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringtrain_tests::{
    free_listen, log_dir, spawn_logged, synthetic_folder, wait_with_limit, workspace_root,
};

/// Runs `scripts/setup-promtool.sh` (idempotent); returns promtool's path.
fn setup_promtool(logs: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/setup-promtool.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/setup-promtool.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(logs.join("setup-promtool.txt"), stderr.as_bytes())
        .expect("the test's log folder is writable");
    assert!(
        out.status.success(),
        "scripts/setup-promtool.sh failed:\n{stderr}"
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    PathBuf::from(path)
}

/// `promtool check metrics` on `text`: its exit status and everything it printed.
fn promtool_check(promtool: &Path, text: &str) -> (i32, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads its input");
    let out = child.wait_with_output().expect("promtool ends");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), printed)
}

/// Sends `GET path` on an open connection; the body of a 200 answer.
fn request(mut c: &TcpStream, path: &str) -> Result<String, String> {
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut s = String::new();
    c.read_to_string(&mut s).map_err(|e| format!("read: {e}"))?;
    match s.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("answer: {s:.200}")),
    }
}

fn get(listen: &str, path: &str) -> Result<String, String> {
    let c = TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
    request(&c, path)
}

/// `series → value` of every sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, v)| Some((series.to_string(), v.parse().ok()?)))
        .collect()
}

#[test]
fn metrics_of_a_live_run_pass_promtool_mid_run_and_after_the_end() {
    let logs = log_dir("metrics");
    let promtool = setup_promtool(&logs);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 4 classes × 500 images, global batch 16: 125 steps per epoch, 4 epochs on 2 workers.
    synthetic_folder(&data, 4, 500).unwrap();
    let listen = free_listen();
    let run_dir = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    let mut launch = spawn_logged(
        "ringtrain",
        &[
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
            "basic",
            "--batch-size",
            "16",
            "--epochs",
            "4",
            "--max-lr",
            "0.05",
            "--heartbeat-interval-s",
            "0.2",
            "--http-listen",
            &listen,
        ],
        &[("RINGTRAIN_CACHE_DIR", &cache)],
        &logs,
        "launch",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(&listen).is_err() {
        assert!(
            launch.try_wait().unwrap().is_none(),
            "launch exited before serving; see {}",
            logs.display()
        );
        assert!(Instant::now() < deadline, "no HTTP endpoint on {listen}");
        thread::sleep(Duration::from_millis(50));
    }

    // The event stream says when the run is over.
    let ended = Arc::new(AtomicBool::new(false));
    let events = {
        let (listen, ended) = (listen.clone(), ended.clone());
        thread::spawn(move || {
            let mut c = TcpStream::connect(&listen).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            write!(c, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
            while let Ok(n @ 1..) = c.read(&mut buf) {
                raw.extend_from_slice(&buf[..n]);
                if raw.windows(10).any(|w| w == b"event: end") {
                    ended.store(true, Ordering::Relaxed);
                    return;
                }
            }
        })
    };

    // Until the end: one scrape once both ranks reported work, and connections held in
    // reserve for the scrape after the end (renewed well within the 5-s head deadline).
    let mut mid_run = None;
    let mut spare: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let started = Instant::now();
    while !ended.load(Ordering::Relaxed) {
        assert!(
            launch.try_wait().unwrap().is_none(),
            "the run ended without the stream's end event; see {}",
            logs.display()
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the run did not end"
        );
        if spare
            .back()
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(2))
        {
            if let Ok(c) = TcpStream::connect(&listen) {
                spare.push_back((Instant::now(), c));
            }
            while spare.len() > 2 {
                spare.pop_front();
            }
        }
        if mid_run.is_none() {
            if let Ok(text) = get(&listen, "/metrics") {
                let s = samples(&text);
                let worked = |r: u32| {
                    s.get(&format!(
                        "ringtrain_rank_train_images_total{{rank=\"{r}\"}}"
                    ))
                    .is_some_and(|v| *v > 0.0)
                };
                if s.get("ringtrain_run_status{status=\"running\"}") == Some(&1.0)
                    && worked(0)
                    && worked(1)
                {
                    mid_run = Some(text);
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    // The newest reserved connection first; an older one may have passed its deadline.
    let after_end = spare
        .iter()
        .rev()
        .find_map(|(_, c)| request(c, "/metrics").ok())
        .expect("a connection accepted before the end gets an answer after it");
    let status = wait_with_limit(&mut launch, Duration::from_secs(60), "ringtrain launch");
    assert!(status.success(), "the run failed; see {}", logs.display());
    events.join().unwrap();
    let mid_run = mid_run.expect("a scrape while both ranks trained");
    std::fs::write(logs.join("mid-run.txt"), &mid_run).unwrap();
    std::fs::write(logs.join("after-end.txt"), &after_end).unwrap();

    for (when, text) in [("mid-run", &mid_run), ("after the end", &after_end)] {
        let (code, printed) = promtool_check(&promtool, text);
        assert!(
            code == 0 && printed.trim().is_empty(),
            "promtool check metrics {when}: exit {code}\n{printed}\n--- scrape:\n{text}"
        );
    }

    let (mid, end) = (samples(&mid_run), samples(&after_end));
    assert_eq!(end["ringtrain_run_status{status=\"finished\"}"], 1.0);
    assert_eq!(end["ringtrain_run_status{status=\"running\"}"], 0.0);
    assert_eq!(end["ringtrain_global_step"], end["ringtrain_run_steps"]);
    assert_eq!(end["ringtrain_epochs_completed"], 4.0);
    assert_eq!(end["ringtrain_run_epochs"], 4.0);
    assert!(end["ringtrain_last_checkpoint_timestamp_seconds"] > 1.6e9);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "ringtrain_connections_accepted_total{port=\"grpc\"}",
        "ringtrain_connections_accepted_total{port=\"http\"}",
        "ringtrain_rank_allreduces_total{rank=\"1\"}",
        "ringtrain_rank_last_heartbeat_timestamp_seconds{rank=\"0\"}",
    ] {
        assert!(mid.contains_key(name) && end.contains_key(name), "{name}");
    }
    // Both ranks' images add up to exactly what the run trained: 4 epochs of the 2,000
    // training images (each rank's final Leave carries the steps after its last heartbeat).
    assert_eq!(end["ringtrain_train_images_total"], 8000.0);
    // Counters never go down.
    for (series, v) in mid.iter().filter(|(k, _)| k.contains("_total")) {
        let later = end.get(series).copied();
        assert!(
            later >= Some(*v),
            "{series}: {v} mid-run, {later:?} after the end"
        );
    }
}
