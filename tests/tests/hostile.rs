//! The real binaries on loopback against a hostile network: strangers on the workers' ring
//! ports, a coordinator that accepts connections but never answers, a flood of idle and garbage
//! connections on the gRPC port, and on the HTTP (dashboard) port, during a run, a second
//! coordinator on a run folder, and a coordinator asked to serve the network without a token.
//! (Separate hosts, partitions and lossy links: `netns.rs`.)

mod cluster;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cluster::{
    final_hash, free_port, reference_hash, serve_cmd, signal, spawn, stderr, summary, wait,
    worker_cmd, Reaper,
};
use ringtrain_tests::log_dir;

/// A hello of the ring protocol (version 3) that a stale peer of another round would send.
fn stale_hello(rank: u32, ring_id: &str) -> Vec<u8> {
    let mut b = b"RTRG".to_vec();
    b.extend_from_slice(&3u16.to_le_bytes());
    b.extend_from_slice(&(ring_id.len() as u16).to_le_bytes());
    b.extend_from_slice(&rank.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&[0x5a; 32]);
    b.extend_from_slice(ring_id.as_bytes());
    b
}

/// Until `stop`: every 20 ms a stranger connects to each port and sends one of several kinds of
/// garbage, and one connection per port trickles a byte every 400 ms (reconnecting when
/// closed). Returns how many connections it made.
fn strangers(ports: Vec<u16>, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let payloads: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: scanner\r\n\r\n".to_vec(),
            Vec::new(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            // The previous wire version.
            {
                let mut h = stale_hello(0, "x");
                h[4] = 2;
                h
            },
            stale_hello(0, "some-run/round-0"),
            stale_hello(1, "some-run/round-1"),
        ];
        let mut slow: Vec<Option<TcpStream>> = ports.iter().map(|_| None).collect();
        let (mut made, mut i, mut last_trickle) = (0u64, 0usize, Instant::now());
        while !stop.load(Ordering::Relaxed) {
            for (k, &port) in ports.iter().enumerate() {
                if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                    made += 1;
                    let _ = c.write_all(&payloads[i % payloads.len()]);
                    i += 1;
                }
                if last_trickle.elapsed() > Duration::from_millis(400) {
                    let alive = slow[k].as_mut().is_some_and(|s| s.write_all(b"R").is_ok());
                    if !alive {
                        slow[k] = TcpStream::connect(("127.0.0.1", port)).ok();
                    }
                }
            }
            if last_trickle.elapsed() > Duration::from_millis(400) {
                last_trickle = Instant::now();
            }
            thread::sleep(Duration::from_millis(20));
        }
        made
    })
}

#[test]
fn strangers_on_the_ring_ports_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let logs = log_dir("net-ring-strangers");
    let run_dir = tmp.path().join("run");
    let listen = format!("127.0.0.1:{}", free_port());
    let ring_ports = vec![free_port(), free_port()];
    // The strangers are there before the workers listen and stay until the run is over.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = strangers(ring_ports.clone(), stop.clone());
    let mut procs = Reaper(vec![spawn(
        serve_cmd(
            &[],
            &data,
            &run_dir,
            &listen,
            2,
            &["--heartbeat-interval-s", "1"],
        ),
        &logs,
        "serve",
    )]);
    // Worker 0 listens on its ring port while it waits for worker 1 in the rendezvous, so the
    // strangers' connections are queued ahead of any real peer's.
    for (i, port) in ring_ports.iter().enumerate() {
        let ring = format!("127.0.0.1:{port}");
        let cmd = worker_cmd(
            &[],
            &format!("http://{listen}"),
            &data,
            &tmp.path().join(format!("cache{i}")),
            &[
                "--worker-id",
                &format!("w{i}"),
                "--collective-listen",
                &ring,
            ],
        );
        procs.0.push(spawn(cmd, &logs, &format!("worker{i}")));
        thread::sleep(Duration::from_secs(2));
    }
    let status = wait(&mut procs.0[0], Duration::from_secs(300), "serve");
    stop.store(true, Ordering::Relaxed);
    let made = flood.join().unwrap();
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    let s = summary(&run_dir);
    assert_eq!(s["restarts"], 0, "a stranger ended a round: {s}");
    assert_eq!(final_hash(&run_dir), want);
    assert!(made > 20, "the strangers connected {made} times");
    let refused: usize = (0..2)
        .map(|i| {
            stderr(&logs, &format!("worker{i}"))
                .lines()
                .filter(|l| l.contains("ring connection refused"))
                .count()
        })
        .sum();
    assert!(
        refused > 0,
        "refusals are logged with the peer and the reason"
    );
}

/// A "coordinator" that accepts connections and never says a word (a paused VM, a partition
/// without RST); it holds every connection until dropped.
fn silent_coordinator() -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => held.push(c),
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (url, stop)
}

#[test]
fn a_coordinator_that_never_answers_is_given_up_within_the_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ringtrain_tests::synthetic_folder(&data, 2, 4).unwrap();
    let logs = log_dir("net-silent-coordinator");
    let (url, stop) = silent_coordinator();
    let started = Instant::now();
    let mut w = spawn(
        worker_cmd(
            &[],
            &url,
            &data,
            &tmp.path().join("c"),
            &["--connect-timeout-s", "5"],
        ),
        &logs,
        "worker",
    );
    let status = wait(
        &mut w,
        Duration::from_secs(60),
        "a worker facing a silent coordinator",
    );
    let took = started.elapsed();
    eprintln!(
        "silent coordinator: the worker with --connect-timeout-s 5 gave up after {:.1} s",
        took.as_secs_f64()
    );
    assert!(!status.success());
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(5 + 6),
        "gave up after {took:?}"
    );
    let err = stderr(&logs, "worker");
    assert!(
        err.contains("did not answer within --connect-timeout-s 5 s"),
        "the error names the coordinator and the limit:\n{err}"
    );
    assert!(err.contains(&url), "{err}");

    // SIGTERM while it waits for the coordinator: nothing to checkpoint, so it exits at once.
    let mut w = spawn(
        worker_cmd(
            &[],
            &url,
            &data,
            &tmp.path().join("c"),
            &["--connect-timeout-s", "600"],
        ),
        &logs,
        "worker-term",
    );
    thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    signal(w.id(), "TERM");
    let status = wait(&mut w, Duration::from_secs(20), "a worker told to stop");
    assert_eq!(status.code(), Some(143));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    stop.store(true, Ordering::Relaxed);
}

/// Until `stop`: holds `idle` connections to `port` that never send a byte (re-opening every
/// one the server closes), and on a second thread opens `garbage_per_s` connections a second
/// that send junk. Returns (idle connections re-opened, garbage connections made).
fn flood(
    port: u16,
    idle: usize,
    garbage_per_s: u32,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u64, u64)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let connect = move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok();
    let garbage_stop = stop.clone();
    let garbage = thread::spawn(move || {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let period = Duration::from_secs(1) / garbage_per_s;
        let (mut made, start) = (0u64, Instant::now());
        while !garbage_stop.load(Ordering::Relaxed) {
            if let Some(mut c) = connect() {
                let junk: Vec<u8> = (0..24)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = c.write_all(&junk);
                made += 1;
            }
            // Paced against the clock, so a slow connect does not lower the rate.
            let due = start + period * (made as u32 + 1);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        made
    });
    thread::spawn(move || {
        let mut pool: Vec<Option<TcpStream>> = (0..idle).map(|_| connect()).collect();
        let mut reopened = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for slot in &mut pool {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let closed = slot.as_mut().is_none_or(|c| {
                    let _ = c.set_nonblocking(true);
                    let mut b = [0u8; 1];
                    !matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                if closed {
                    *slot = connect();
                    reopened += 1;
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        (reopened, garbage.join().unwrap_or(0))
    })
}

/// Open descriptors of `pid` now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_run_under_a_connection_flood_finishes_with_the_same_parameters() {
    cluster::raise_fd_limit();
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let logs = log_dir("net-grpc-flood");
    let run_dir = tmp.path().join("run");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{}", free_port());
    // A coordinator with the 1,024 descriptors many systems default to: without a cap the
    // flood alone would exhaust them.
    let mut procs = Reaper(vec![spawn(
        serve_cmd(
            &["prlimit", "--nofile=1024:1024"],
            &data,
            &run_dir,
            &listen,
            2,
            &["--heartbeat-interval-s", "1", "--http-listen", &http],
        ),
        &logs,
        "serve",
    )]);
    let serve_pid = procs.0[0].id();
    let stop = Arc::new(AtomicBool::new(false));
    thread::sleep(Duration::from_millis(500));
    let attack = flood(port, 1000, 200, stop.clone());
    thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        let cmd = worker_cmd(
            &[],
            &format!("http://{listen}"),
            &data,
            &tmp.path().join(format!("cache{i}")),
            &["--worker-id", &format!("w{i}")],
        );
        procs.0.push(spawn(cmd, &logs, &format!("worker{i}")));
    }
    let (mut max_fds, mut scraped) = (0usize, String::new());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = procs.0[0].try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run did not finish under the flood"
        );
        max_fds = max_fds.max(open_fds(serve_pid));
        // Scraped until both workers are established, mid-run.
        if !scraped.contains("ringtrain_connections{port=\"grpc\",state=\"established\"} 2") {
            let now = http_get(&http, "/metrics");
            if now.contains("ringtrain_connections{port=\"grpc\"") {
                scraped = now;
            }
        }
        thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    let (reopened, garbage) = attack.join().unwrap();
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    assert_eq!(final_hash(&run_dir), want);
    assert!(
        garbage > 100,
        "the flood sent {garbage} garbage connections"
    );
    assert!(
        max_fds < 1024 - 100,
        "the coordinator held {max_fds} descriptors"
    );
    eprintln!(
        "flood: coordinator held at most {max_fds} descriptors; the flood re-opened {reopened} idle and sent {garbage} garbage connections"
    );
    let gauge = |state: &str| {
        scraped
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ringtrain_connections{{port=\"grpc\",state=\"{state}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let pending = gauge("pending").expect("the connection gauge is exported");
    assert!(pending <= 256.0, "{scraped}");
    eprintln!(
        "flood: /metrics during the run: pending {pending}, established {:?}",
        gauge("established")
    );
}

/// The same flood on the HTTP port instead: idle and garbage connections there are bounded like
/// on the gRPC port (pending until a complete request head, the oldest closed for a newer one),
/// so the page, `/metrics` and an event stream opened before it keep answering through it.
#[test]
fn a_run_under_a_connection_flood_on_the_http_port_keeps_the_dashboard_answering() {
    cluster::raise_fd_limit();
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let logs = log_dir("net-http-flood");
    let run_dir = tmp.path().join("run");
    let listen = format!("127.0.0.1:{}", free_port());
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let mut procs = Reaper(vec![spawn(
        serve_cmd(
            &["prlimit", "--nofile=1024:1024"],
            &data,
            &run_dir,
            &listen,
            2,
            &["--heartbeat-interval-s", "1", "--http-listen", &http],
        ),
        &logs,
        "serve",
    )]);
    let serve_pid = procs.0[0].id();
    let up = Instant::now();
    while http_get(&http, "/status").is_empty() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "no HTTP endpoint on {http}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // A dashboard that was open before the flood: its stream must carry the run to its end,
    // and its `end` event says when the run is over (the endpoint closes soon after).
    let stream_addr = http.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let end_seen = ended.clone();
    let events = thread::spawn(move || {
        let mut c = TcpStream::connect(&stream_addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = c.read(&mut buf) {
            raw.extend_from_slice(&buf[..n]);
            if raw.windows(10).any(|w| w == b"event: end") {
                end_seen.store(true, Ordering::Relaxed);
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    });
    // Every 100 ms while the run goes on (after its end the endpoint closes): the page and
    // `/metrics` on fresh connections, among the flood's.
    let (mut max_fds, mut probes, mut slowest) = (0usize, 0u32, Duration::ZERO);
    let mut failed = Vec::new();
    let mut check = || {
        max_fds = max_fds.max(open_fds(serve_pid));
        for (path, needle) in [("/", "<canvas"), ("/metrics", "# TYPE ringtrain_")] {
            if ended.load(Ordering::Relaxed) {
                return;
            }
            let asked = Instant::now();
            let answer = probe(&http, path).unwrap_or_else(|e| e);
            probes += 1;
            slowest = slowest.max(asked.elapsed());
            if !answer.contains(needle) {
                failed.push(format!("{path} after {:?}: {answer:.80}", asked.elapsed()));
            }
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let attack = flood(http_port, 1000, 200, stop.clone());
    let flooding = Instant::now();
    while flooding.elapsed() < Duration::from_secs(2) {
        check();
    }
    for i in 0..2 {
        let cmd = worker_cmd(
            &[],
            &format!("http://{listen}"),
            &data,
            &tmp.path().join(format!("cache{i}")),
            &["--worker-id", &format!("w{i}")],
        );
        procs.0.push(spawn(cmd, &logs, &format!("worker{i}")));
    }
    let started = Instant::now();
    let status = loop {
        if let Some(s) = procs.0[0].try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run did not finish under the flood"
        );
        check();
    };
    stop.store(true, Ordering::Relaxed);
    let (reopened, garbage) = attack.join().unwrap();
    let stream = events.join().unwrap();
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    assert_eq!(final_hash(&run_dir), want);
    assert!(
        garbage > 100,
        "the flood sent {garbage} garbage connections"
    );
    assert!(
        max_fds < 1024 - 100,
        "the coordinator held {max_fds} descriptors"
    );
    assert!(probes >= 20, "only {probes} probes during the run");
    assert!(
        failed.is_empty(),
        "{} of {probes} probes failed: {failed:#?}",
        failed.len()
    );
    assert!(
        stream.contains("event: end"),
        "the stream opened before the flood did not reach the run's end: {:.400}",
        stream
    );
    eprintln!(
        "http flood: coordinator held at most {max_fds} descriptors; {probes} probes of / and /metrics answered, the slowest in {slowest:?}; {} status events on the open stream; the flood re-opened {reopened} idle and sent {garbage} garbage connections",
        stream.matches("event: status").count()
    );
}

/// One HTTP/1.1 GET: the body, or what went wrong.
fn probe(addr: &str, path: &str) -> Result<String, String> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut s = String::new();
    c.read_to_string(&mut s)
        .map_err(|e| format!("read: {e} after {s:.80}"))?;
    Ok(s)
}

/// One HTTP/1.1 GET; the body (empty on failure).
fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn a_second_coordinator_on_a_run_folder_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ringtrain_tests::synthetic_folder(&data, 2, 8).unwrap();
    let logs = log_dir("net-run-lock");
    let run_dir = tmp.path().join("run");
    let first_listen = format!("127.0.0.1:{}", free_port());
    let mut procs = Reaper(vec![spawn(
        serve_cmd(&[], &data, &run_dir, &first_listen, 2, &[]),
        &logs,
        "first",
    )]);
    let first = procs.0[0].id();
    let lock = run_dir.join("coordinator.lock");
    let t = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the first never locked {}",
            lock.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut second = spawn(
        serve_cmd(
            &[],
            &data,
            &run_dir,
            &format!("127.0.0.1:{}", free_port()),
            2,
            &["--auto-resume"],
        ),
        &logs,
        "second",
    );
    let status = wait(
        &mut second,
        Duration::from_secs(30),
        "the second coordinator",
    );
    assert!(!status.success());
    let err = stderr(&logs, "second");
    assert!(
        err.contains("is in use by another coordinator")
            && err.contains(&format!("pid {first}"))
            && err.contains(&first_listen),
        "{err}"
    );
    // Killed without a chance to clean up, the first leaves the file but not the lock.
    signal(first, "KILL");
    let _ = procs.0[0].wait();
    let mut third = spawn(
        serve_cmd(
            &[],
            &data,
            &run_dir,
            &format!("127.0.0.1:{}", free_port()),
            1,
            &["--auto-resume", "--join-timeout-s", "1"],
        ),
        &logs,
        "third",
    );
    wait(&mut third, Duration::from_secs(30), "the third coordinator");
    assert!(!stderr(&logs, "third").contains("in use by another coordinator"));
}

#[test]
fn serving_other_machines_needs_a_token_or_the_explicit_opt_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ringtrain_tests::synthetic_folder(&data, 2, 8).unwrap();
    let logs = log_dir("net-safe-default");
    let serve = |extra: &[&str], name: &str| {
        let mut cmd = std::process::Command::new(ringtrain_tests::bin("ringtrain"));
        cmd.arg("serve")
            .args(cluster::run_flags(&data, &tmp.path().join(name), 1))
            .args(["--listen", "0.0.0.0:0", "--join-timeout-s", "1"])
            .args(extra)
            .env_remove("RINGTRAIN_AUTH_TOKEN");
        spawn(cmd, &logs, name)
    };
    let mut open = serve(&[], "no-token");
    let status = wait(&mut open, Duration::from_secs(30), "serve without a token");
    assert!(!status.success());
    let err = stderr(&logs, "no-token");
    assert!(
        err.contains("refusing to serve gRPC on 0.0.0.0:0 without an auth token")
            && err.contains("--insecure-no-auth"),
        "{err}"
    );
    // Opting out starts it (it then times out waiting for workers).
    let mut opted = serve(&["--insecure-no-auth"], "opt-out");
    wait(
        &mut opted,
        Duration::from_secs(30),
        "serve with --insecure-no-auth",
    );
    let err = stderr(&logs, "opt-out");
    assert!(err.contains("coordinator listening"), "{err}");
}

/// A stranger that knows the run's token (a misconfigured duplicate, an insider) reads a member's
/// id off `/status` and joins with it while the round trains. It learns the protocol version the
/// way an attacker would, from the refusal of version 0.
#[test]
fn a_stranger_with_a_members_id_can_neither_take_its_slot_nor_end_the_round() {
    use ringtrain_common::pb::{self, coordinator_client::CoordinatorClient};
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let logs = log_dir("net-stolen-id");
    let run_dir = tmp.path().join("run");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut procs = Reaper(vec![spawn(
        serve_cmd(
            &[],
            &data,
            &run_dir,
            &listen,
            2,
            &["--heartbeat-interval-s", "1"],
        ),
        &logs,
        "serve",
    )]);
    for i in 0..2 {
        let cmd = worker_cmd(
            &[],
            &format!("http://{listen}"),
            &data,
            &tmp.path().join(format!("cache{i}")),
            &["--worker-id", &format!("w{i}")],
        );
        procs.0.push(spawn(cmd, &logs, &format!("worker{i}")));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refusal = rt.block_on(async {
        // The coordinator may not listen yet.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{listen}")).unwrap();
        let t = Instant::now();
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "cannot reach the coordinator: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", cluster::TOKEN).parse().unwrap();
        let mut c =
            CoordinatorClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            });
        let fingerprint = ringtrain_common::data::scan_dataset(&data, &Default::default())
            .unwrap()
            .layout_fingerprint();
        let mut req = pb::JoinRequest {
            worker_id: "w0".into(),
            dataset_fingerprint: fingerprint,
            collective_addr: "127.0.0.1:9".into(),
            device: "cpu".into(),
            ..Default::default()
        };
        let probe = c.join(req.clone()).await.unwrap_err();
        req.protocol_version = probe
            .message()
            .split("coordinator speaks version ")
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .expect("the refusal names the version");
        // Strike while the round trains.
        let t = Instant::now();
        while !stderr(&logs, "serve").contains("after=\"running\"") {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the round never ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::timeout(Duration::from_secs(30), c.join(req)).await
    });
    let status = wait(&mut procs.0[0], Duration::from_secs(300), "serve");
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    match refusal {
        Ok(Err(s)) => {
            assert_eq!(s.code(), tonic::Code::AlreadyExists, "{s:?}");
            assert!(
                s.message().contains("belongs to a live worker"),
                "{}",
                s.message()
            );
        }
        Ok(Ok(reply)) => {
            let r = reply.into_inner();
            panic!("the stolen id got rank {} of round {}", r.rank, r.round)
        }
        Err(_) => panic!("the stolen id's Join was neither refused nor answered in 30 s"),
    }
    assert_eq!(
        summary(&run_dir)["restarts"],
        0,
        "the stranger ended a round"
    );
    assert_eq!(final_hash(&run_dir), want);
    let log = stderr(&logs, "serve");
    assert!(
        log.lines().any(|l| l.contains("join refused")
            && l.contains("worker_id=w0")
            && l.contains("peer=127.0.0.1:")),
        "the refusal is logged with the peer:\n{log}"
    );
}
