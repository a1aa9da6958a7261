//! A coordinator on a real socket against callers that lie: a stranger reusing a member's worker
//! id, calls with another worker's secret, forged pixel sums and epoch numbers, and uploaded
//! state that is not what the ranks agreed on. Each is refused with its reason, and the run
//! goes on (or finishes) exactly as without it.

mod common;

use std::time::Duration;

use ringtrain_common::pb::{self, coordinator_client::CoordinatorClient};
use ringtrain_coordinator::{Run, RunConfig, Status};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Code;

/// A run served on 127.0.0.1:0; returns its URL, fingerprint and the server task.
async fn serve(
    config: RunConfig,
) -> (
    String,
    String,
    tokio::task::JoinHandle<
        Result<ringtrain_coordinator::RunOutcome, ringtrain_coordinator::ServeError>,
    >,
) {
    let run = Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap();
    let fp = run.fingerprint().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    (url, fp, server)
}

async fn client(url: &str) -> CoordinatorClient<Channel> {
    for _ in 0..100 {
        if let Ok(c) = CoordinatorClient::connect(url.to_string()).await {
            return c.max_decoding_message_size(64 << 20);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {url}")
}

/// Joins "a" and "b" (ranks 0 and 1) and returns their replies.
async fn join_two(url: &str, fp: &str) -> (pb::JoinReply, pb::JoinReply) {
    let (mut ca, mut cb) = (client(url).await, client(url).await);
    let (a, b) = tokio::join!(
        ca.join(common::join_request("a", fp)),
        cb.join(common::join_request("b", fp))
    );
    (a.unwrap().into_inner(), b.unwrap().into_inner())
}

fn heartbeat(reply: &pb::JoinReply, secret: &[u8]) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        run_id: reply.run_id.clone(),
        rank: reply.rank,
        round_token: reply.round_token,
        worker_secret: secret.to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_members_id_without_its_secret_cannot_take_the_slot_or_end_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig {
        max_restarts: 1,
        ..common::config(dir.path(), 2)
    };
    let (url, fp, server) = serve(config).await;
    let (a, b) = join_two(&url, &fp).await;
    let mut c = client(&url).await;
    assert_eq!(a.worker_secret.len(), 32);
    assert_ne!(a.worker_secret, b.worker_secret);

    // The ids are public (/status, /metrics); a stranger joins with a's.
    let e = c.join(common::join_request("a", &fp)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("belongs to a live worker")
            && e.message().contains("rank 0 of round 1"),
        "{}",
        e.message()
    );
    // A call for rank 0 with b's secret, or none, is refused too.
    for wrong in [b.worker_secret.clone(), Vec::new(), vec![0; 32]] {
        let e = c.heartbeat(heartbeat(&a, &wrong)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("rank 0 is worker a"),
            "{}",
            e.message()
        );
        let leave = pb::LeaveRequest {
            run_id: a.run_id.clone(),
            rank: 0,
            round_token: a.round_token,
            ok: false,
            recoverable: true,
            reason: "forged".into(),
            worker_secret: wrong,
            ..Default::default()
        };
        assert_eq!(
            c.leave(leave).await.unwrap_err().code(),
            Code::PermissionDenied
        );
    }
    // Nothing happened to the round: a's own heartbeat says running, in round 1.
    let reply = c
        .heartbeat(heartbeat(&a, &a.worker_secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, pb::RunStatus::Running as i32);
    // The real a re-joining (with its secret) is a restart, as before.
    let mut rejoin = common::join_request("a", &fp);
    rejoin.worker_secret = a.worker_secret.clone();
    let again = tokio::spawn(async move { c.join(rejoin).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cb = client(&url).await;
    let stale = cb
        .heartbeat(heartbeat(&b, &b.worker_secret))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "round 1 ended: {stale:?}");
    server.abort();
    again.abort();
}

#[tokio::test]
async fn forged_reports_are_refused_and_never_become_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig {
        max_restarts: 2,
        ..common::config(dir.path(), 2)
    };
    let (url, fp, server) = serve(config).await;
    let (a, b) = join_two(&url, &fp).await;
    let mut c = client(&url).await;
    let shard = a.shard.clone().unwrap();
    let px = |r: &pb::JoinReply, sum: u64, sum_sq: u64, count: u64| pb::PixelStatsReport {
        run_id: r.run_id.clone(),
        rank: r.rank,
        round_token: r.round_token,
        worker_secret: r.worker_secret.clone(),
        skipped: vec![],
        channels: vec![pb::ChannelSums { sum, sum_sq, count }],
    };
    // Sums that wrap a u64 when merged, more pixels than the shard has, impossible moments.
    let n = shard.train.len() as u64 * 784;
    for (sum, sum_sq, count, why) in [
        (u64::MAX, u64::MAX, n, "cannot come from"),
        (0, 0, n + 784, "not a whole number of images of 784 pixels"),
        (255 * n, 0, n, "cannot come from"),
    ] {
        let e = c
            .report_pixel_stats(px(&a, sum, sum_sq, count))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{}", e.message());
    }
    // A skipped-files list naming a file of another rank's shard (or none at all).
    let (s, q, k) = common::fake_pixels(shard.train.len());
    let other = b.shard.clone().unwrap().train[0].path.clone();
    for path in [other, "../../etc/shadow".to_string()] {
        let mut forged = px(&a, s, q, k);
        forged.skipped = vec![pb::SkippedFile {
            path: path.clone(),
            reason: "cannot decode".into(),
        }];
        let e = c.report_pixel_stats(forged).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("is not a file of its shard"),
            "{}",
            e.message()
        );
    }
    // The honest sums go through the barrier.
    let mut cb = client(&url).await;
    let (ra, rb) = tokio::join!(
        c.report_pixel_stats(px(&a, s, q, k)),
        cb.report_pixel_stats(px(&b, s, q, k))
    );
    assert!((ra.unwrap().into_inner().mean[0] - 100.0 / 255.0).abs() < 1e-6);
    rb.unwrap();

    let report = |r: &pb::JoinReply| pb::EpochReport {
        run_id: r.run_id.clone(),
        rank: r.rank,
        round_token: r.round_token,
        worker_secret: r.worker_secret.clone(),
        epoch: 0,
        step_losses: vec![0.5; 4],
        valid_loss_sum: 1.0,
        valid_correct: 4,
        valid_count: 4,
        params_hash: common::fake_hash(0),
        train_seconds: 1.0,
        model_safetensors: if r.rank == 0 {
            common::fake_model(0)
        } else {
            vec![]
        },
        optimizer_safetensors: if r.rank == 0 {
            common::fake_optimizer(0)
        } else {
            vec![]
        },
        model_digest: common::digest(&common::fake_model(0)),
        optimizer_digest: common::digest(&common::fake_optimizer(0)),
    };
    let forged_model = common::fake_model(99);
    let mut cases: Vec<(pb::EpochReport, &str)> = Vec::new();
    let mut r = report(&a);
    r.valid_correct = 5;
    cases.push((r, "valid_correct 5 > valid_count 4"));
    let mut r = report(&a);
    r.valid_count = 1000;
    cases.push((r, "valid_count 1000 outside"));
    let mut r = report(&a);
    r.model_safetensors = forged_model.clone();
    cases.push((r, "its model state hashes to"));
    let mut r = report(&a);
    r.model_safetensors = b"junk".to_vec();
    cases.push((r, "not a valid safetensors file"));
    for (r, why) in cases {
        let e = c.report_epoch(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{}", e.message());
    }
    // Rank 0 uploads state matching its own digest, but the ranks disagree on it: the run
    // fails rather than checkpoint it.
    let mut lying = report(&a);
    lying.model_safetensors = forged_model.clone();
    lying.model_digest = common::digest(&forged_model);
    let (va, vb) = tokio::join!(c.report_epoch(lying), cb.report_epoch(report(&b)));
    for v in [va.unwrap().into_inner(), vb.unwrap().into_inner()] {
        assert_eq!(v.status, pb::RunStatus::Failed as i32);
        assert!(
            v.reason.contains("different training state"),
            "{}",
            v.reason
        );
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let checkpoints = dir.path().join("run/checkpoints");
    let written = std::fs::read_dir(&checkpoints)
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    assert_eq!(written, 0, "no checkpoint from forged state");
    assert!(!dir.path().join("run/best").exists());
}
