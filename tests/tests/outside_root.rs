//! A coordinator that names a file outside the worker's data root (a compromised or buggy
//! coordinator): the real worker refuses it before opening anything, says so in its Leave and
//! exits with an error naming the path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringtrain_common::pb::{
    self, coordinator_server::Coordinator, coordinator_server::CoordinatorServer,
};
use ringtrain_tests::{run, synthetic_folder};
use tonic::{Request, Response, Status};

/// Answers Join with a shard that escapes the data root; records Leave reasons.
#[derive(Clone, Default)]
struct Hostile {
    left: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl Coordinator for Hostile {
    async fn join(&self, r: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let r = r.into_inner();
        Ok(Response::new(pb::JoinReply {
            worker_secret: vec![7; 32],
            run_id: "hostile".into(),
            round: 1,
            rank: 0,
            world_size: 1,
            peers: vec![r.collective_addr],
            spec: Some(pb::RunSpec {
                model: "basic".into(),
                epochs: 1,
                global_batch: 2,
                batch_per_worker: 2,
                steps_per_epoch: 1,
                image_size: 28,
                channels: 1,
                resize: false,
                augment: "pad=3".into(),
                valid_batch_size: 2,
                classes: vec!["c0".into(), "c1".into()],
                adam_beta2: 0.99,
                adam_eps: 1e-8,
                collective_timeout_s: 5.0,
                heartbeat_interval_s: 1.0,
                ..Default::default()
            }),
            shard: Some(pb::Shard {
                train: vec![
                    pb::ImageRef {
                        path: "training/c0/0000.png".into(),
                        label: 0,
                    },
                    pb::ImageRef {
                        path: "../secret.png".into(),
                        label: 1,
                    },
                ],
                valid: vec![pb::ImageRef {
                    path: "testing/c0/0000.png".into(),
                    label: 0,
                }],
            }),
            round_token: 1,
            resume: None,
            collective: "ring".into(),
        }))
    }
    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        Ok(Response::new(pb::HeartbeatReply {
            status: pb::RunStatus::Running as i32,
            ..Default::default()
        }))
    }
    async fn report_pixel_stats(
        &self,
        _: Request<pb::PixelStatsReport>,
    ) -> Result<Response<pb::NormStats>, Status> {
        Err(Status::unimplemented("never reached"))
    }
    async fn get_epoch_plan(
        &self,
        _: Request<pb::EpochPlanRequest>,
    ) -> Result<Response<pb::EpochPlan>, Status> {
        Err(Status::unimplemented("never reached"))
    }
    async fn report_epoch(
        &self,
        _: Request<pb::EpochReport>,
    ) -> Result<Response<pb::Verdict>, Status> {
        Err(Status::unimplemented("never reached"))
    }
    async fn leave(&self, r: Request<pb::LeaveRequest>) -> Result<Response<pb::Verdict>, Status> {
        self.left.lock().unwrap().push(r.into_inner().reason);
        Ok(Response::new(pb::Verdict {
            status: pb::RunStatus::Failed as i32,
            reason: "bye".into(),
        }))
    }
    async fn checkpoint(
        &self,
        _: Request<pb::CheckpointReport>,
    ) -> Result<Response<pb::Verdict>, Status> {
        Err(Status::unimplemented("never reached"))
    }
    async fn share_nccl_id(
        &self,
        _: Request<pb::NcclIdRequest>,
    ) -> Result<Response<pb::NcclIdReply>, Status> {
        Err(Status::unimplemented("never reached"))
    }
}

#[test]
fn a_file_outside_the_data_root_is_refused_by_the_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 2, 2).unwrap();
    // The file the hostile coordinator points at exists, just outside the root.
    std::fs::copy(
        data.join("training/c1/0000.png"),
        tmp.path().join("secret.png"),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hostile = Hostile::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let svc = CoordinatorServer::new(hostile.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let out = run(
        "ringtrain-worker",
        &[
            "--coordinator",
            &url,
            "--data",
            data.to_str().unwrap(),
            "--collective-listen",
            "127.0.0.1:0",
            "--no-cache",
            "--connect-timeout-s",
            "10",
        ],
        "security-outside-root",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.success());
    assert!(
        out.stderr.contains("refused file ../secret.png")
            && out.stderr.contains("only files inside the data root"),
        "{}",
        out.stderr
    );
    let left = hostile.left.lock().unwrap().clone();
    assert!(
        left.iter()
            .any(|r| r.contains("refused file ../secret.png")),
        "{left:?}"
    );
}
