//! The NCCL rendezvous through the service: the round's collective in the JoinReply, and rank
//! 0's NCCL id handed to every rank by `ShareNcclId` (no GPU needed: the coordinator only
//! carries the 128 bytes).

mod common;

use std::time::Duration;

use ringtrain_common::devices::CollectiveChoice;
use ringtrain_common::pb::{self, coordinator_server::Coordinator};
use ringtrain_coordinator::service::CoordinatorService;
use ringtrain_coordinator::{Run, RunConfig};
use tonic::{Code, Request};

fn prepare(collective: CollectiveChoice, dir: &std::path::Path) -> Run {
    let config = RunConfig {
        collective,
        ..common::config(dir, 2)
    };
    Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap()
}

fn on(device: &str, uuid: &str, mut req: pb::JoinRequest) -> pb::JoinRequest {
    req.device = device.into();
    req.device_uuid = uuid.into();
    req
}

/// Joins "a" (rank 0) and "b" concurrently with the given devices and UUIDs.
async fn join_two(
    svc: &CoordinatorService,
    fp: &str,
    a: (&str, &str),
    b: (&str, &str),
) -> (
    Result<pb::JoinReply, tonic::Status>,
    Result<pb::JoinReply, tonic::Status>,
) {
    let (rb, ra) = tokio::join!(
        svc.join(Request::new(on(b.0, b.1, common::join_request("b", fp)))),
        svc.join(Request::new(on(a.0, a.1, common::join_request("a", fp))))
    );
    (ra.map(|r| r.into_inner()), rb.map(|r| r.into_inner()))
}

fn share(token: u64, rank: u32, id: Vec<u8>, secret: &[u8]) -> Request<pb::NcclIdRequest> {
    Request::new(pb::NcclIdRequest {
        run_id: "test-run".into(),
        round_token: token,
        rank,
        unique_id: id,
        worker_secret: secret.to_vec(),
    })
}

#[tokio::test(start_paused = true)]
async fn rank_zero_id_reaches_the_other_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(CollectiveChoice::Auto, dir.path());
    let svc = run.service();
    let (a, b) = join_two(
        &svc,
        run.fingerprint(),
        ("cuda:0", "GPU-a"),
        ("cuda:0", "GPU-b"),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.rank, b.rank), (0, 1));
    assert_eq!(
        (a.collective.as_str(), b.collective.as_str()),
        ("nccl", "nccl")
    );
    let t = a.round_token;

    // Rank 1 asks first and waits for rank 0.
    let waiting = tokio::spawn({
        let svc = svc.clone();
        let secret = b.worker_secret.clone();
        async move { svc.share_nccl_id(share(t, 1, vec![], &secret)).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "rank 1 waits for rank 0's id");

    let bad = svc
        .share_nccl_id(share(t, 0, vec![1; 12], &a.worker_secret))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("12 bytes, expected 128"),
        "{}",
        bad.message()
    );

    let id: Vec<u8> = (0..128u8).collect();
    let mine = svc
        .share_nccl_id(share(t, 0, id.clone(), &a.worker_secret))
        .await
        .unwrap()
        .into_inner();
    let theirs = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(mine.unique_id, id);
    assert_eq!(theirs.unique_id, id);
}

#[tokio::test]
async fn one_gpu_for_two_ranks_or_a_cpu_rank_means_the_ring() {
    for b in [("cuda:0", "GPU-a"), ("cpu", "")] {
        let dir = tempfile::tempdir().unwrap();
        let run = prepare(CollectiveChoice::Auto, dir.path());
        let svc = run.service();
        let (ra, _) = join_two(&svc, run.fingerprint(), ("cuda:0", "GPU-a"), b).await;
        let a = ra.unwrap();
        assert_eq!(a.collective, "ring", "b on {b:?}");
        // A ring round has no NCCL id to share.
        let err = svc
            .share_nccl_id(share(a.round_token, 0, vec![0; 128], &a.worker_secret))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn forced_nccl_with_a_cpu_worker_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = prepare(CollectiveChoice::Nccl, dir.path());
    let svc = run.service();
    let (ra, rb) = join_two(&svc, run.fingerprint(), ("cuda:0", "GPU-a"), ("cpu", "")).await;
    for r in [ra, rb] {
        let err = r.unwrap_err();
        assert!(
            err.message()
                .contains("needs every worker on CUDA, but worker b is on cpu"),
            "{}",
            err.message()
        );
    }
}
