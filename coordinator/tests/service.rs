//! Service tests: the tonic trait methods called directly, no socket (tonic-health's
//! `make_test_service` style); timeouts driven by `tokio::time::pause`.

mod common;

use std::time::Duration;

use ringtrain_common::pb::{self, coordinator_server::Coordinator};
use ringtrain_coordinator::service::CoordinatorService;
use ringtrain_coordinator::{Run, RunConfig};
use tonic::{Code, Request};

fn prepare(config: RunConfig) -> Run {
    Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap()
}

async fn join(
    svc: &CoordinatorService,
    req: pb::JoinRequest,
) -> Result<pb::JoinReply, tonic::Status> {
    svc.join(Request::new(req)).await.map(|r| r.into_inner())
}

/// Joins `a` and `b` concurrently; returns their replies (rank 0 = a).
async fn join_two(svc: &CoordinatorService, fp: &str) -> (pb::JoinReply, pb::JoinReply) {
    let (b, a) = tokio::join!(
        join(svc, common::join_request("b", fp)),
        join(svc, common::join_request("a", fp))
    );
    (a.unwrap(), b.unwrap())
}

/// Rank `rank`'s report of `epoch` with params hash `hash` (hex, padded to 16 digits), carrying
/// `secret`; rank 0 uploads the fake state.
fn epoch_report(rank: u32, epoch: u32, hash: &str, t: u64, secret: &[u8]) -> pb::EpochReport {
    pb::EpochReport {
        run_id: "test-run".into(),
        round_token: t,
        rank,
        epoch,
        step_losses: vec![0.5; 2],
        valid_loss_sum: 1.0,
        valid_correct: 3,
        valid_count: 4,
        params_hash: format!("{hash:0>16}"),
        train_seconds: 1.0,
        model_safetensors: if rank == 0 {
            common::fake_model(epoch)
        } else {
            vec![]
        },
        optimizer_safetensors: if rank == 0 {
            common::fake_optimizer(epoch)
        } else {
            vec![]
        },
        worker_secret: secret.to_vec(),
        model_digest: common::digest(&common::fake_model(epoch)),
        optimizer_digest: common::digest(&common::fake_optimizer(epoch)),
    }
}

#[tokio::test]
async fn join_refuses_wrong_version_model_fingerprint_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(common::config(dir.path(), 2));
    let svc = run.service();
    let fp = run.fingerprint().to_string();

    let mut r = common::join_request("a", &fp);
    r.protocol_version = 7;
    let e = join(&svc, r).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("version 7") && e.message().contains("version 5"),
        "{}",
        e.message()
    );

    let mut r = common::join_request("a", &fp);
    r.model = "dense".into();
    let e = join(&svc, r).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("dense") && e.message().contains("resnet"),
        "{}",
        e.message()
    );

    let e = join(&svc, common::join_request("a", "0123"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!("dataset mismatch: worker a has fingerprint 0123, coordinator {fp}")
    );

    let mut r = common::join_request("a", &fp);
    r.run_id = "another-run".into();
    assert_eq!(
        join(&svc, r).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // "a" waits for the round; a second "a" is refused while it waits.
    let first = tokio::spawn({
        let svc = svc.clone();
        let fp = fp.clone();
        async move { join(&svc, common::join_request("a", &fp)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !first.is_finished(),
        "Join waits until the round is complete"
    );
    assert_eq!(
        join(&svc, common::join_request("a", &fp))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    join(&svc, common::join_request("b", &fp)).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().rank, 0);
    // The round is closed now.
    assert_eq!(
        join(&svc, common::join_request("c", &fp))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
}

#[tokio::test]
async fn join_assigns_ranks_by_worker_id_and_hands_out_spec_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(common::config(dir.path(), 2));
    let svc = run.service();
    let (a, b) = join_two(&svc, run.fingerprint()).await;
    assert_eq!((a.rank, b.rank, a.world_size, a.round), (0, 1, 2, 1));
    assert_eq!(
        a.peers,
        vec!["127.0.0.1:40001".to_string(), "127.0.0.1:40001".to_string()]
    );
    assert_eq!(a.run_id, "test-run");
    let spec = a.spec.unwrap();
    assert_eq!(
        (
            spec.global_batch,
            spec.batch_per_worker,
            spec.steps_per_epoch,
            spec.epochs
        ),
        (4, 2, 4, 2)
    );
    assert_eq!(
        (spec.image_size, spec.seed, spec.model.as_str()),
        (28, 42, "resnet")
    );
    assert_eq!(spec.classes, vec!["c0", "c1"]);
    let (sa, sb) = (a.shard.unwrap(), b.shard.unwrap());
    assert_eq!(
        (
            sa.train.len(),
            sb.train.len(),
            sa.valid.len() + sb.valid.len()
        ),
        (8, 8, 16)
    );
    assert_eq!(sa.train[0].path, "training/c0/000.png");
    assert_eq!(
        (sb.train[0].path.as_str(), sb.train[7].label),
        ("training/c0/001.png", 1)
    );
}

#[tokio::test(start_paused = true)]
async fn barriers_wait_for_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(common::config(dir.path(), 2));
    let svc = run.service();
    let (a, b) = join_two(&svc, run.fingerprint()).await;
    let t = a.round_token;
    let secrets = [a.worker_secret.clone(), b.worker_secret.clone()];
    // One image per rank: rank 0's all white, rank 1's all black.
    let px = move |rank: u32, white: bool| pb::PixelStatsReport {
        run_id: "test-run".into(),
        round_token: t,
        rank,
        skipped: vec![],
        channels: vec![pb::ChannelSums {
            sum: if white { 255 * 784 } else { 0 },
            sum_sq: if white { 255 * 255 * 784 } else { 0 },
            count: 784,
        }],
        worker_secret: secrets[rank as usize].clone(),
    };
    let first = tokio::spawn({
        let svc = svc.clone();
        let req = px(0, true);
        async move { svc.report_pixel_stats(Request::new(req)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!first.is_finished(), "the pixel barrier waits for rank 1");
    let second = svc
        .report_pixel_stats(Request::new(px(1, false)))
        .await
        .unwrap()
        .into_inner();
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(first, second);
    assert_eq!((first.mean, first.count), (vec![0.5], 2 * 784));

    let plan = svc
        .get_epoch_plan(Request::new(pb::EpochPlanRequest {
            run_id: "test-run".into(),
            round_token: t,
            rank: 1,
            epoch: 1,
            worker_secret: b.worker_secret.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plan.first_step, plan.lr.len(), plan.beta1.len()),
        (4, 4, 4)
    );

    let mut r = epoch_report(0, 0, "1234", t, &a.worker_secret);
    r.step_losses = vec![0.5; 4];
    let e0 = tokio::spawn({
        let svc = svc.clone();
        let r = r.clone();
        async move { svc.report_epoch(Request::new(r)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!e0.is_finished(), "the epoch barrier waits for rank 1");
    r.rank = 1;
    r.worker_secret = b.worker_secret.clone();
    r.model_safetensors.clear();
    r.optimizer_safetensors.clear();
    let v1 = svc
        .report_epoch(Request::new(r))
        .await
        .unwrap()
        .into_inner();
    let v0 = e0.await.unwrap().unwrap().into_inner();
    assert_eq!(
        (v0.status, v1.status),
        (pb::RunStatus::Running as i32, pb::RunStatus::Running as i32)
    );
}

#[tokio::test]
async fn different_hashes_fail_both_ranks_with_the_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), 2);
    config.recipe.batch_size = 8;
    let run = prepare(config);
    let svc = run.service();
    let (a, b) = join_two(&svc, run.fingerprint()).await;
    let t = a.round_token;
    let (v0, v1) = tokio::join!(
        svc.report_epoch(Request::new(epoch_report(
            0,
            0,
            "aaaa",
            t,
            &a.worker_secret
        ))),
        svc.report_epoch(Request::new(epoch_report(
            1,
            0,
            "bbbb",
            t,
            &b.worker_secret
        )))
    );
    for v in [v0.unwrap().into_inner(), v1.unwrap().into_inner()] {
        assert_eq!(v.status, pb::RunStatus::Failed as i32);
        assert_eq!(
            v.reason,
            "replicas diverged after epoch 0: rank 0 000000000000aaaa, rank 1 000000000000bbbb"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn silent_rank_fails_the_run_and_releases_waiting_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), 2);
    config.recipe.batch_size = 8;
    let run = prepare(config);
    let svc = run.service();
    let _watchdog = run.spawn_watchdog();
    let a = join_two(&svc, run.fingerprint()).await.0;
    let t = a.round_token;
    // Rank 0 reports and waits in the barrier (alive); rank 1 ("b") never calls again.
    let waiting = tokio::spawn({
        let svc = svc.clone();
        let r = epoch_report(0, 0, "1234", t, &a.worker_secret);
        async move { svc.report_epoch(Request::new(r)).await }
    });
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(!waiting.is_finished(), "3 × 5 s have not passed yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(v.status, pb::RunStatus::Failed as i32);
    assert!(
        v.reason.starts_with("rank 1 (b) missed 3 heartbeats"),
        "{}",
        v.reason
    );
    let hb = pb::HeartbeatRequest {
        run_id: "test-run".into(),
        round_token: t,
        rank: 0,
        worker_id: "a".into(),
        epoch: 0,
        step: 0,
        worker_secret: a.worker_secret.clone(),
        ..Default::default()
    };
    let reply = svc.heartbeat(Request::new(hb)).await.unwrap().into_inner();
    assert_eq!(
        (reply.status, reply.reason),
        (pb::RunStatus::Failed as i32, v.reason)
    );
}

#[tokio::test(start_paused = true)]
async fn rendezvous_timeout_fails_waiting_joins() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(RunConfig {
        join_timeout_s: 10.0,
        ..common::config(dir.path(), 2)
    });
    let svc = run.service();
    let _watchdog = run.spawn_watchdog();
    let e = join(&svc, common::join_request("a", run.fingerprint()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("1 of 2 workers"), "{}", e.message());
    assert_eq!(
        join(&svc, common::join_request("b", run.fingerprint()))
            .await
            .unwrap_err()
            .code(),
        Code::DeadlineExceeded
    );
}

#[tokio::test]
async fn leave_with_failure_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(common::config(dir.path(), 2));
    let svc = run.service();
    let (a, b) = join_two(&svc, run.fingerprint()).await;
    let t = a.round_token;
    let leave = pb::LeaveRequest {
        run_id: "test-run".into(),
        round_token: t,
        rank: 1,
        ok: false,
        reason: "out of memory".into(),
        weights_safetensors: vec![],
        recoverable: false,
        worker_secret: b.worker_secret.clone(),
        ..Default::default()
    };
    let v = svc.leave(Request::new(leave)).await.unwrap().into_inner();
    assert_eq!(
        (v.status, v.reason.as_str()),
        (pb::RunStatus::Failed as i32, "rank 1 (b): out of memory")
    );
    // Other calls now fail fast: pixel stats has no status field, so FAILED_PRECONDITION
    // marked as a failed run (ABORTED means "re-join").
    let px = pb::PixelStatsReport {
        run_id: "test-run".into(),
        round_token: t,
        rank: 0,
        skipped: vec![],
        channels: vec![pb::ChannelSums {
            sum: 0,
            sum_sq: 0,
            count: 784,
        }],
        worker_secret: a.worker_secret.clone(),
    };
    let e = svc.report_pixel_stats(Request::new(px)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.metadata().get("ringtrain-run-status").unwrap(), "failed");
    let bad = pb::HeartbeatRequest {
        run_id: "test-run".into(),
        round_token: t,
        rank: 5,
        worker_id: "a".into(),
        epoch: 0,
        step: 0,
        ..Default::default()
    };
    assert_eq!(
        svc.heartbeat(Request::new(bad)).await.unwrap_err().code(),
        Code::NotFound
    );
}
