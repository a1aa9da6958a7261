//! `/metrics` and `/status` of a running coordinator over real HTTP, and `ringtrain status` on a
//! URL and on a run folder.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Behaviour;
use ringtrain_coordinator::{Run, RunConfig};
use tokio::net::TcpListener;

async fn get(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Parses Prometheus text: every sample is `name{labels} value`, preceded by its HELP and TYPE.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            assert!(
                !kind.eq("counter") || name.ends_with("_total"),
                "counters end in _total: {line}"
            );
            typed.insert(name.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(typed.contains(name), "sample before its TYPE: {line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            samples.insert(series.to_string(), value.parse::<f64>().unwrap());
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_counters_increase_while_a_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = RunConfig {
        http_listen: Some(format!("127.0.0.1:{port}")),
        heartbeat_interval_s: 0.1,
        ..common::config(dir.path(), 1)
    };
    let run = Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap();
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    let base = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = parse(&get(format!("{base}/metrics")).await);
    assert_eq!(before["ringtrain_heartbeats_total"], 0.0);
    assert_eq!(before["ringtrain_world_size"], 0.0);
    assert_eq!(before["ringtrain_run_status{status=\"rendezvous\"}"], 1.0);
    assert_eq!(before["ringtrain_run_status{status=\"running\"}"], 0.0);
    assert!(
        !before.contains_key("ringtrain_run_steps"),
        "unknown before the first round: {before:?}"
    );
    // Both ports' connections; this scrape's own connection was accepted.
    assert!(before["ringtrain_connections_accepted_total{port=\"http\"}"] >= 1.0);
    assert_eq!(
        before["ringtrain_connections{port=\"grpc\",state=\"established\"}"],
        0.0
    );
    assert!(before["process_open_fds"] > 0.0, "{before:?}");
    assert!(before["process_max_fds"] >= before["process_open_fds"]);
    assert!(before["process_resident_memory_bytes"] > 0.0);

    // A worker that joins and heartbeats (without training): heartbeats count up.
    let hang = {
        let url = url.clone();
        tokio::spawn(async move { common::fake_worker(&url, "w0", &fp, Behaviour::Hang).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mid = parse(&get(format!("{base}/metrics")).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = parse(&get(format!("{base}/metrics")).await);
    assert_eq!(mid["ringtrain_world_size"], 1.0);
    assert!(mid["ringtrain_heartbeats_total"] >= 2.0, "{mid:?}");
    assert!(
        later["ringtrain_heartbeats_total"] > mid["ringtrain_heartbeats_total"],
        "{later:?}"
    );
    assert!(
        later.keys().any(|k| k.starts_with(
            "ringtrain_rank_info{rank=\"0\",worker_id=\"w0\",host=\"127.0.0.1\",device=\"cpu\"}"
        )),
        "{later:?}"
    );
    assert!(later.contains_key("ringtrain_rank_global_step{rank=\"0\"}"));
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let beat = later["ringtrain_rank_last_heartbeat_timestamp_seconds{rank=\"0\"}"];
    assert!(
        (unix_now - 5.0..=unix_now).contains(&beat),
        "{beat} vs {unix_now}"
    );
    // The rank's own counters, from its heartbeats: they grow between scrapes.
    let images = "ringtrain_rank_train_images_total{rank=\"0\"}";
    assert!(
        later[images] > mid[images] && mid[images] > 0.0,
        "{later:?}"
    );
    assert_eq!(later["ringtrain_train_images_total"], later[images]);
    let (secs, n) = (
        later["ringtrain_rank_allreduce_seconds_total{rank=\"0\"}"],
        later["ringtrain_rank_allreduces_total{rank=\"0\"}"],
    );
    assert!(
        n >= 2.0 && (secs / n - 0.004).abs() < 1e-9,
        "{secs} s in {n}"
    );
    assert_eq!(later["ringtrain_rank_restarts_total{rank=\"0\"}"], 0.0);
    assert_eq!(later["ringtrain_run_status{status=\"running\"}"], 1.0);
    assert!(
        later.contains_key(&format!(
            "ringtrain_info{{run_id=\"test-run\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        "{later:?}"
    );
    assert_eq!(
        later["ringtrain_connections{port=\"grpc\",state=\"established\"}"],
        1.0
    );

    let lines =
        tokio::task::spawn_blocking(move || ringtrain_coordinator::status_cmd::describe(&base))
            .await
            .unwrap()
            .unwrap();
    assert!(
        lines[0].starts_with("run test-run: running (round 1, world size 1)"),
        "{lines:?}"
    );
    // The coordinator's rates from the counters' differences between heartbeats: the fake
    // worker counts 1000 images a second (timed by the coordinator, so about that).
    let images_per_s = |l: &str| {
        l.split(" images/s")
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    assert!(
        lines.iter().any(|l| l.contains("rank 0 w0 on cpu")
                && images_per_s(l).is_some_and(|r| (500.0..2000.0).contains(&r))
                && l.contains(" images/s, all-reduce 4.0 ms")
                // Ages to a tenth of a second.
                && l.split("last heartbeat ")
                    .nth(1)
                    .and_then(|t| t.split(' ').next())
                    .and_then(|age| age.split_once('.'))
                    .is_some_and(|(_, tenths)| tenths.len() == 1)),
        "{lines:?}"
    );
    hang.abort();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_finished_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run =
        Run::prepare_with_table(common::config(dir.path(), 1), Box::new(std::io::sink())).unwrap();
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    assert_eq!(
        common::fake_worker(&url, "w0", &fp, Behaviour::Complete).await,
        0
    );
    server.await.unwrap().unwrap();
    let lines =
        ringtrain_coordinator::status_cmd::describe(dir.path().join("run").to_str().unwrap())
            .unwrap();
    assert_eq!(lines[0], "run test-run: finished", "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "epochs done: 2 of 2"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("latest checkpoint: ")),
        "{lines:?}"
    );
    let err =
        ringtrain_coordinator::status_cmd::describe(dir.path().to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("is not a run folder"), "{err}");
}
