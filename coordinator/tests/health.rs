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
    hang.abort();
    server.abort();
}
