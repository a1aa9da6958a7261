//! Separate hosts: the coordinator and every worker in its own network namespace of a lab
//! (`ringtrain_tests::netlab`: veth links to a bridge, addresses from 198.18.0.0/15, delay,
//! jitter and loss on the links, partitions). Each run must end with the parameters of the same
//! job undisturbed on loopback, or, where the world changed, say so.
//!
//! Needs root (as in CI) and `scripts/setup-netlab.sh` (iproute2, iptables). The figures these
//! tests print (`--nocapture`) are the README's.

mod cluster;

use std::path::Path;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use cluster::{
    final_hash, reference_hash, serve_cmd, signal, spawn, stderr, summary, wait, worker_cmd, Reaper,
};
use ringtrain_tests::log_dir;
use ringtrain_tests::netlab::{Impairment, Lab};

const PORT: u16 = 29400;

/// `ip netns exec NS`: runs a binary on host `i` of `lab`.
fn on(lab: &Lab, i: usize) -> [String; 4] {
    [
        "ip".into(),
        "netns".into(),
        "exec".into(),
        lab.netns(i).to_string(),
    ]
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The coordinator on host 0 of `lab` for `workers` workers, and its URL as workers see it.
fn start_coordinator(
    lab: &Lab,
    data: &Path,
    run_dir: &Path,
    workers: u32,
    extra: &[&str],
    logs: &Path,
) -> (Child, String) {
    let listen = format!("{}:{PORT}", lab.addr(0));
    let wrap = on(lab, 0);
    let child = spawn(
        serve_cmd(&strs(&wrap), data, run_dir, &listen, workers, extra),
        logs,
        "serve",
    );
    (child, format!("http://{listen}"))
}

/// Worker `i` on host `i` of `lab` (host 0 is the coordinator's), with only the flags a user
/// must give (`extra` besides).
fn start_worker(
    lab: &Lab,
    i: usize,
    url: &str,
    data: &Path,
    tmp: &Path,
    extra: &[&str],
    logs: &Path,
) -> Child {
    let wrap = on(lab, i);
    let cmd = worker_cmd(
        &strs(&wrap),
        url,
        data,
        &tmp.join(format!("cache{i}")),
        extra,
    );
    spawn(cmd, logs, &format!("worker{i}"))
}

/// Waits until the run folder has a checkpoint (training is under way).
fn wait_for_a_checkpoint(run_dir: &Path, serve: &mut Child, logs: &Path) {
    let t = Instant::now();
    loop {
        let any = std::fs::read_dir(run_dir.join("checkpoints"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with('e'))
            })
            .unwrap_or(false);
        if any {
            return;
        }
        assert!(
            serve.try_wait().unwrap().is_none(),
            "serve exited early: {}",
            stderr(logs, "serve")
        );
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "no checkpoint: {}",
            stderr(logs, "serve")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds from `since` until a line containing `needle` shows in `name`'s stderr.
fn seconds_until(logs: &Path, name: &str, needle: &str, since: Instant, limit: Duration) -> f64 {
    loop {
        if stderr(logs, name).contains(needle) {
            return since.elapsed().as_secs_f64();
        }
        assert!(
            since.elapsed() < limit,
            "{name} never logged {needle:?}:\n{}",
            stderr(logs, name)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_hosts_with_default_flags_train_together() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 3);
    let lab = Lab::new("hosts", 4).unwrap();
    let logs = log_dir("netns-three-hosts");
    let run_dir = tmp.path().join("run");
    let (serve, url) = start_coordinator(&lab, &data, &run_dir, 3, &[], &logs);
    let mut procs = Reaper(vec![serve]);
    for i in 1..=3 {
        // `--coordinator` and `--data`: no ring address, no listen address.
        procs
            .0
            .push(start_worker(&lab, i, &url, &data, tmp.path(), &[], &logs));
    }
    let status = wait(&mut procs.0[0], Duration::from_secs(300), "serve");
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    assert_eq!(final_hash(&run_dir), want);
    for i in 1..=3 {
        assert!(wait(&mut procs.0[i], Duration::from_secs(60), "a worker").success());
        // Each announced the address its route to the coordinator leaves from: its own.
        let log = stderr(&logs, &format!("worker{i}"));
        let announced = format!("collective_addr={}:", lab.addr(i));
        assert!(
            log.contains(&announced),
            "worker {i} announced another address:\n{log}"
        );
    }
}

#[test]
fn delay_jitter_and_loss_on_every_link_leave_the_parameters_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let lab = Lab::new("lossy", 3).unwrap();
    lab.impair_all(Impairment {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        loss: 0.005,
    })
    .unwrap();
    let logs = log_dir("netns-lossy");
    let run_dir = tmp.path().join("run");
    let started = Instant::now();
    let (serve, url) = start_coordinator(&lab, &data, &run_dir, 2, &[], &logs);
    let mut procs = Reaper(vec![serve]);
    for i in 1..=2 {
        procs
            .0
            .push(start_worker(&lab, i, &url, &data, tmp.path(), &[], &logs));
    }
    let status = wait(&mut procs.0[0], Duration::from_secs(600), "serve");
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    assert_eq!(final_hash(&run_dir), want);
    assert_eq!(summary(&run_dir)["restarts"], 0);
    eprintln!(
        "netns lossy: 2 ms ± 1 ms, 0.5 % loss on every link: run took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_partitioned_worker_is_dropped_and_rejoins_when_the_link_heals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let lab = Lab::new("split", 3).unwrap();
    let logs = log_dir("netns-partition");
    let run_dir = tmp.path().join("run");
    // Heartbeats every second: a rank silent for 3 s is lost. The round then waits for both
    // workers again (min = max = 2), so the healed one re-joins.
    let (serve, url) = start_coordinator(
        &lab,
        &data,
        &run_dir,
        2,
        &[
            "--heartbeat-interval-s",
            "1",
            "--collective-timeout-s",
            "30",
        ],
        &logs,
    );
    let mut procs = Reaper(vec![serve]);
    for i in 1..=2 {
        procs
            .0
            .push(start_worker(&lab, i, &url, &data, tmp.path(), &[], &logs));
    }
    wait_for_a_checkpoint(&run_dir, &mut procs.0[0], &logs);
    lab.link_down(2).unwrap();
    let cut = Instant::now();
    let detect = seconds_until(&logs, "serve", "round ended", cut, Duration::from_secs(60));
    thread::sleep(Duration::from_secs(8).saturating_sub(cut.elapsed()));
    lab.link_up(2).unwrap();
    let healed = Instant::now();
    let status = wait(&mut procs.0[0], Duration::from_secs(300), "serve");
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    let s = summary(&run_dir);
    assert_eq!(s["restarts"], 1, "{s}");
    assert_eq!(s["world_size"], 2, "{s}");
    // Resumed from the checkpoint before the cut, with the same world: bit for bit the same.
    assert_eq!(final_hash(&run_dir), want);
    eprintln!(
        "netns partition: the coordinator ended the round {detect:.1} s after the link went down (heartbeat budget 3 s); the run finished {:.1} s after it healed",
        healed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_coordinator_paused_for_30_s_loses_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let want = reference_hash(tmp.path(), &data, 2);
    let lab = Lab::new("pause", 3).unwrap();
    let logs = log_dir("netns-pause");
    let run_dir = tmp.path().join("run");
    // A 3 s heartbeat budget: the pause is ten times longer.
    let (serve, url) = start_coordinator(
        &lab,
        &data,
        &run_dir,
        2,
        &["--heartbeat-interval-s", "1"],
        &logs,
    );
    let mut procs = Reaper(vec![serve]);
    for i in 1..=2 {
        procs
            .0
            .push(start_worker(&lab, i, &url, &data, tmp.path(), &[], &logs));
    }
    wait_for_a_checkpoint(&run_dir, &mut procs.0[0], &logs);
    let pid = procs.0[0].id();
    signal(pid, "STOP");
    thread::sleep(Duration::from_secs(30));
    signal(pid, "CONT");
    let status = wait(&mut procs.0[0], Duration::from_secs(300), "serve");
    assert!(status.success(), "{}", stderr(&logs, "serve"));
    assert_eq!(summary(&run_dir)["restarts"], 0, "nobody was lost");
    assert_eq!(final_hash(&run_dir), want);
    for i in 1..=2 {
        let s = wait(&mut procs.0[i], Duration::from_secs(60), "a worker");
        assert!(
            s.success(),
            "worker {i}: {}",
            stderr(&logs, &format!("worker{i}"))
        );
    }
    assert!(stderr(&logs, "serve").contains("the coordinator was not running"));
}

#[test]
fn workers_give_up_on_a_coordinator_stopped_past_their_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cluster::dataset(tmp.path());
    let lab = Lab::new("gone", 3).unwrap();
    let logs = log_dir("netns-stopped");
    let run_dir = tmp.path().join("run");
    let (serve, url) = start_coordinator(
        &lab,
        &data,
        &run_dir,
        2,
        &["--heartbeat-interval-s", "1"],
        &logs,
    );
    let mut procs = Reaper(vec![serve]);
    for i in 1..=2 {
        procs.0.push(start_worker(
            &lab,
            i,
            &url,
            &data,
            tmp.path(),
            &["--connect-timeout-s", "8"],
            &logs,
        ));
    }
    wait_for_a_checkpoint(&run_dir, &mut procs.0[0], &logs);
    signal(procs.0[0].id(), "STOP");
    let stopped = Instant::now();
    let mut took = Vec::new();
    for i in 1..=2 {
        let s = wait(
            &mut procs.0[i],
            Duration::from_secs(60),
            "a worker of a stopped coordinator",
        );
        took.push(stopped.elapsed().as_secs_f64());
        assert_eq!(s.code(), Some(1));
        let log = stderr(&logs, &format!("worker{i}"));
        assert!(
            log.contains("did not answer within --connect-timeout-s 8 s"),
            "{log}"
        );
    }
    let last = took.iter().cloned().fold(0.0, f64::max);
    assert!(last < 8.0 + 6.0, "the workers took {took:?} s to give up");
    eprintln!(
        "netns stopped coordinator: workers with --connect-timeout-s 8 exited after {took:?} s"
    );
    signal(procs.0[0].id(), "KILL");
}
