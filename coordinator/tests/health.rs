//! The gRPC health service on the coordinator's port, as the kubelet's probes use it: open
//! without the run's token, SERVING while the coordinator serves, and `liveness` turning
//! NOT_SERVING when a running round makes no step progress for `stall_timeout_s`.

mod common;

use std::time::Duration;

use common::Behaviour;
use ringtrain_coordinator::{Run, RunConfig};
use tokio::net::TcpListener;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// `ringtrain health --addr URL --service NAME`: (exit code, stdout, stderr).
async fn probe(url: &str, service: &str, timeout_s: &str) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringtrain"));
    cmd.args([
        "health",
        "--addr",
        url,
        "--service",
        service,
        "--timeout-s",
        timeout_s,
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status(url: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = HealthClient::new(channel);
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_when_a_running_round_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "health-token-0123456789").unwrap();
    let config = RunConfig {
        stall_timeout_s: 1.0,
        auth_token_file: Some(token),
        ..common::config(dir.path(), 1)
    };
    let run = Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap();
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // No token needed; waiting for workers is not a stall.
    for service in ["", "ringtrain.v1.Coordinator", "liveness"] {
        assert_eq!(
            status(&url, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let (code, stdout, stderr) = probe(&url, "liveness", "5").await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"liveness\" is SERVING"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&url, "liveness").await, ServingStatus::Serving);

    // A worker that joins and then never steps (it heartbeats, step 0): a stall.
    std::env::set_var("RINGTRAIN_AUTH_TOKEN", "health-token-0123456789");
    let hang = {
        let url = url.clone();
        tokio::spawn(async move { common::fake_worker(&url, "w0", &fp, Behaviour::Hang).await })
    };
    let mut live = ServingStatus::Serving;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        live = status(&url, "liveness").await;
        if live == ServingStatus::NotServing {
            break;
        }
    }
    assert_eq!(
        live,
        ServingStatus::NotServing,
        "liveness must fail after 1 s without steps"
    );
    assert_eq!(
        status(&url, "").await,
        ServingStatus::Serving,
        "readiness stays up"
    );
    // The command-line probe agrees with the kubelet's, and says why.
    let (code, _, stderr) = probe(&url, "liveness", "5").await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("\"liveness\" is NOT_SERVING"), "{stderr}");
    let (code, _, stderr) = probe(&url, "", "5").await;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = probe(&url, "no-such-service", "5").await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("answered the health check with an error"),
        "{stderr}"
    );
    hang.abort();
    server.abort();
}

/// `ringtrain health` against nothing, and against a port that accepts and never answers (a
/// paused coordinator): exit 1 within about its timeout, naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_fails_clearly_when_nobody_answers() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, stderr) = probe(&url, "", "2").await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("cannot connect to {url}")),
        "{stderr}"
    );

    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        loop {
            let (conn, _) = silent.accept().await.unwrap();
            kept.push(conn);
        }
    });
    let t0 = std::time::Instant::now();
    let (code, _, stderr) = probe(&url, "", "1").await;
    assert_eq!(code, 1);
    assert!(stderr.contains(&url), "{stderr}");
    assert!(
        stderr.contains("no answer") || stderr.contains("timed out"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    held.abort();

    let (code, _, stderr) = probe("not a url", "", "1").await;
    assert_eq!(code, 1);
    assert!(stderr.contains("--addr \"not a url\""), "{stderr}");
}
