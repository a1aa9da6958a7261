//! Shared fixtures of the coordinator's tests: a tiny generated dataset (the coordinator only
//! scans file names and sizes, so the "PNGs" are a few bytes), a run config, and a fake worker
//! that speaks the protocol like `ringtrain-worker` does, without training anything.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ringtrain_common::pb::{self, coordinator_client::CoordinatorClient};
use ringtrain_common::recipe::Recipe;
use ringtrain_coordinator::{RunConfig, PROTOCOL_VERSION};

/// A free port on 127.0.0.1 (for `http_listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `classes` classes of `per_class` files in both splits.
pub fn dataset(root: &Path, classes: usize, per_class: usize) {
    for split in ["training", "testing"] {
        for c in 0..classes {
            let dir = root.join(split).join(format!("c{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                // Real 28×28 grayscale PNGs: the coordinator reads every image's header.
                let pixels = vec![(c * 40 + i) as u8; 784];
                ringtrain_common::fetch::write_png(
                    &dir.join(format!("{i:03}.png")),
                    28,
                    28,
                    &pixels,
                )
                .unwrap();
            }
        }
    }
}

/// 2 classes × 8 images: 16 training images; batch 4 over `workers` ranks; 2 epochs.
pub fn config(dir: &Path, workers: u32) -> RunConfig {
    let data = dir.join("data");
    if !data.exists() {
        dataset(&data, 2, 8);
    }
    RunConfig {
        data,
        workers,
        recipe: Recipe {
            batch_size: 4,
            epochs: Some(2),
            ..Recipe::default()
        },
        run_dir: Some(dir.join("run")),
        run_id: Some("test-run".into()),
        // These tests check the all-or-nothing paths; restarts are tested end to end.
        max_restarts: 0,
        ..RunConfig::default()
    }
}

/// A Join request that fits the run.
pub fn join_request(worker_id: &str, fingerprint: &str) -> pb::JoinRequest {
    pb::JoinRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id.into(),
        run_id: String::new(),
        model: String::new(),
        dataset_fingerprint: fingerprint.into(),
        collective_addr: format!("127.0.0.1:{}", 40000 + worker_id.len()),
        device: "cpu".into(),
        device_uuid: String::new(),
        worker_secret: Vec::new(),
    }
}

/// The params hash the fake workers report after `epoch` (16 hex digits).
pub fn fake_hash(epoch: u32) -> String {
    format!("{:016x}", 0xfeed_0000 + u64::from(epoch))
}

/// The model state the fake workers hold after `epoch` (a valid safetensors file).
pub fn fake_model(epoch: u32) -> Vec<u8> {
    ringtrain_common::checkpoint::digest::f32_safetensors(&[("w", &[2], &[epoch as f32, 1.0])])
}

/// The optimizer state the fake workers hold after `epoch`.
pub fn fake_optimizer(epoch: u32) -> Vec<u8> {
    ringtrain_common::checkpoint::digest::f32_safetensors(&[
        ("exp_avg", &[2], &[epoch as f32, 0.0]),
        ("exp_avg_sq", &[2], &[0.0, 0.0]),
    ])
}

/// Digest of a fake state.
pub fn digest(bytes: &[u8]) -> String {
    ringtrain_common::checkpoint::digest::state_digest(bytes).unwrap()
}

/// Pixel sums of `images` 28×28 images whose every pixel is 100 (plausible, shard-sized).
pub fn fake_pixels(images: usize) -> (u64, u64, u64) {
    let count = images as u64 * 784;
    (100 * count, 10_000 * count, count)
}

/// How a fake worker behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// The whole protocol, weights from rank 0.
    Complete,
    /// Exits with code 1 right after joining.
    CrashAfterJoin,
    /// Joins, then sleeps forever (heartbeating).
    Hang,
    /// The whole protocol, waiting this long before each epoch's report (a run that lasts).
    Slow(Duration),
}

/// The protocol of one worker against `url`; returns its exit code (0 finished, 1 error,
/// 3 told FAILED).
pub async fn fake_worker(
    url: &str,
    worker_id: &str,
    fingerprint: &str,
    behaviour: Behaviour,
) -> i32 {
    // `launch` passes its run's token in the environment, as to real workers.
    let header: Option<tonic::metadata::MetadataValue<_>> = std::env::var("RINGTRAIN_AUTH_TOKEN")
        .ok()
        .map(|t| format!("Bearer {t}").parse().unwrap());
    let mut c = None;
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            let header = header.clone();
            let client =
                CoordinatorClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
                    if let Some(h) = &header {
                        r.metadata_mut().insert("authorization", h.clone());
                    }
                    Ok(r)
                });
            c = Some(client.max_decoding_message_size(256 << 20));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(mut c) = c else { return 1 };
    let reply = match c.join(join_request(worker_id, fingerprint)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            eprintln!("join: {e}");
            return 1;
        }
    };
    let (rank, run_id, token) = (reply.rank, reply.run_id.clone(), reply.round_token);
    let secret = reply.worker_secret.clone();
    let spec = reply.spec.unwrap();
    let shard = reply.shard.unwrap();
    let mut hb = c.clone();
    let mut hb_req = pb::HeartbeatRequest {
        run_id: run_id.clone(),
        rank,
        worker_id: worker_id.into(),
        epoch: 0,
        step: 0,
        round_token: token,
        worker_secret: secret.clone(),
        ..Default::default()
    };
    let interval = Duration::from_secs_f64(spec.heartbeat_interval_s);
    tokio::spawn(async move {
        // What a training rank would report, cumulative: 1000 images a second and one
        // all-reduce of 4 ms per heartbeat (so tests can look for those rates).
        let started = std::time::Instant::now();
        loop {
            hb_req.images_trained = (started.elapsed().as_secs_f64() * 1000.0) as u64;
            hb_req.allreduces += 1;
            hb_req.allreduce_seconds_total = 0.004 * hb_req.allreduces as f64;
            let _ = hb.heartbeat(hb_req.clone()).await;
            tokio::time::sleep(interval).await;
        }
    });
    match behaviour {
        Behaviour::CrashAfterJoin => return 1,
        Behaviour::Hang => std::future::pending::<()>().await,
        Behaviour::Complete | Behaviour::Slow(_) => {}
    }
    let (sum, sum_sq, count) = fake_pixels(shard.train.len());
    let px = pb::PixelStatsReport {
        run_id: run_id.clone(),
        rank,
        skipped: vec![],
        channels: vec![pb::ChannelSums { sum, sum_sq, count }],
        round_token: token,
        worker_secret: secret.clone(),
    };
    if c.report_pixel_stats(px).await.is_err() {
        return 3;
    }
    for epoch in 0..spec.epochs {
        let plan = c
            .get_epoch_plan(pb::EpochPlanRequest {
                run_id: run_id.clone(),
                rank,
                epoch,
                round_token: token,
                worker_secret: secret.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(plan.lr.len() as u32, spec.steps_per_epoch);
        if let Behaviour::Slow(pause) = behaviour {
            tokio::time::sleep(pause).await;
        }
        let n = shard.valid.len() as u64;
        let report = pb::EpochReport {
            run_id: run_id.clone(),
            rank,
            epoch,
            step_losses: vec![1.0 / (epoch + 1) as f32; spec.steps_per_epoch as usize],
            valid_loss_sum: 0.1 * n as f64,
            valid_correct: n,
            valid_count: n,
            params_hash: fake_hash(epoch),
            train_seconds: 0.5,
            round_token: token,
            model_safetensors: if rank == 0 { fake_model(epoch) } else { vec![] },
            optimizer_safetensors: if rank == 0 {
                fake_optimizer(epoch)
            } else {
                vec![]
            },
            worker_secret: secret.clone(),
            model_digest: digest(&fake_model(epoch)),
            optimizer_digest: digest(&fake_optimizer(epoch)),
        };
        let v = c.report_epoch(report).await.unwrap().into_inner();
        if v.status == pb::RunStatus::Failed as i32 {
            return 3;
        }
    }
    let weights = if rank == 0 {
        fake_model(spec.epochs - 1)
    } else {
        vec![]
    };
    let leave = pb::LeaveRequest {
        run_id,
        rank,
        ok: true,
        reason: String::new(),
        weights_safetensors: weights,
        round_token: token,
        recoverable: false,
        worker_secret: secret,
        ..Default::default()
    };
    match c.leave(leave).await {
        Ok(_) => 0,
        Err(_) => 1,
    }
}
