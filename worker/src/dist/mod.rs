//! Distributed worker: join the coordinator's run, load this rank's shard, train with the ring.
//!
//! ```text
//! Join ──▶ rank, peers, spec, shard ──▶ decode shard ──▶ ring connect ──▶ pixel stats (barrier)
//!   ──▶ per epoch: plan ▶ steps (all-reduce per step) ▶ BN average ▶ validate ▶ report (barrier)
//!   ──▶ Leave (rank 0 sends the final weights)
//! ```
//! Hyper-parameters all come from the coordinator; the worker only executes. Heartbeats run on
//! the RPC runtime; a failed run ends the process (exit code 3).
//!
//! Tests: `tests/tests/distributed.rs` (real binaries, 2 and 3 workers, failures).

mod client;
mod driver;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use ringtrain_common::data::{load_index, scan_dataset, DatasetIndex, LoadOptions, ScanOptions};
use ringtrain_common::pb::{self, ProtocolVersion};
use tch::Device;

use crate::collective::ring::{Ring, RingConfig};
use crate::model::Arch;
use crate::optim::AdamConfig;
use crate::train::{run_replica, ReplicaSpec, TrainError};
pub use client::Client;
use driver::Distributed;

/// How this worker process takes part in a run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub coordinator: String,
    pub data: PathBuf,
    pub worker_id: String,
    pub threads: Option<usize>,
    pub collective_listen: SocketAddr,
    pub advertise_host: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub model: Option<Arch>,
    pub run_id: Option<String>,
    pub connect_timeout: Duration,
    pub scan: ScanOptions,
    pub progress: bool,
    /// Overrides the announced protocol version (tests only).
    pub protocol_version: Option<u32>,
}

/// Runs one worker to the end of the run. On error, tells the coordinator before returning.
pub fn run_worker(opts: &WorkerOptions) -> Result<(), TrainError> {
    if let Some(t) = opts.threads {
        tch::set_num_threads(t as i32);
    }
    let client = Client::connect(&opts.coordinator, opts.connect_timeout)?;
    // The fingerprint proves this worker sees the same files as the coordinator.
    // skip_bad here: its scan then equals the coordinator's whether or not the run skips bad
    // files (with skip_bad off the coordinator itself refuses a dataset with bad files).
    let local = scan_dataset(
        &opts.data,
        &ScanOptions {
            skip_bad: true,
            ..opts.scan.clone()
        },
    )?;
    let listener = TcpListener::bind(opts.collective_listen).map_err(|e| {
        TrainError::Coordinator(format!(
            "cannot listen on {} for the collective: {e}",
            opts.collective_listen
        ))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| TrainError::Coordinator(e.to_string()))?
        .port();
    let host = opts.advertise_host.clone().unwrap_or_else(|| {
        let ip = opts.collective_listen.ip();
        if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            ip.to_string()
        }
    });
    let reply = client.join(pb::JoinRequest {
        protocol_version: opts
            .protocol_version
            .unwrap_or(ProtocolVersion::Current as u32),
        worker_id: opts.worker_id.clone(),
        run_id: opts.run_id.clone().unwrap_or_default(),
        model: opts.model.map(|m| m.to_string()).unwrap_or_default(),
        dataset_fingerprint: local.layout_fingerprint(),
        collective_addr: format!("{host}:{port}"),
        device: "cpu".into(),
    })?;
    let spec = reply
        .spec
        .clone()
        .ok_or_else(|| TrainError::Coordinator("join reply without a run spec".into()))?;
    let shard = reply.shard.clone().unwrap_or_default();
    tracing::info!(run_id = %reply.run_id, rank = reply.rank, world_size = reply.world_size, round = reply.round,
        train = shard.train.len(), valid = shard.valid.len(), "joined");
    let step_counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    client.start_heartbeats(
        pb::HeartbeatRequest {
            run_id: reply.run_id.clone(),
            rank: reply.rank,
            worker_id: opts.worker_id.clone(),
            epoch: 0,
            step: 0,
        },
        Duration::from_secs_f64(spec.heartbeat_interval_s.max(0.05)),
        3,
        step_counter.clone(),
        u64::from(spec.steps_per_epoch),
    );
    let result = train_shard(opts, &client, &reply, &spec, &shard, listener, step_counter);
    // Tell the coordinator why this rank stops, unless the coordinator stopped the run.
    if let Err(err) = &result {
        if !matches!(err, TrainError::RunFailed(_)) {
            let _ = client.leave(pb::LeaveRequest {
                run_id: reply.run_id.clone(),
                rank: reply.rank,
                ok: false,
                reason: err.to_string(),
                weights_safetensors: Vec::new(),
            });
        }
    }
    result
}

fn train_shard(
    opts: &WorkerOptions,
    client: &Client,
    reply: &pb::JoinReply,
    spec: &pb::RunSpec,
    shard: &pb::Shard,
    listener: TcpListener,
    step_counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), TrainError> {
    let model: Arch = spec.model.parse().map_err(TrainError::Coordinator)?;
    let refs = |files: &[pb::ImageRef]| {
        files
            .iter()
            .map(|f| (f.path.clone(), f.label))
            .collect::<Vec<_>>()
    };
    let index = DatasetIndex::from_files(
        &opts.data,
        spec.classes.clone(),
        &refs(&shard.train),
        &refs(&shard.valid),
    )?;
    let size = spec.image_size;
    let scan = ScanOptions {
        skip_bad: spec.skip_bad,
        ..opts.scan.clone()
    };
    let ds = load_index(
        &index,
        &LoadOptions {
            scan,
            image_size: (size, size),
            cache_dir: opts.cache_dir.clone(),
            progress: opts.progress,
        },
    )?;
    if !ds.skipped.is_empty() {
        tracing::warn!(
            skipped = ds.skipped.len(),
            "bad files skipped in this shard"
        );
    }
    let peers: Result<Vec<SocketAddr>, TrainError> =
        reply.peers.iter().map(|p| resolve(p)).collect();
    let timeout = Duration::from_secs_f64(spec.collective_timeout_s.max(0.1));
    let mut ring = Ring::connect(
        listener,
        RingConfig::new(
            reply.run_id.clone(),
            reply.rank,
            reply.world_size,
            peers?,
            timeout,
        ),
    )?;
    let replica = ReplicaSpec {
        model,
        epochs: spec.epochs,
        batch_size: spec.batch_per_worker as usize,
        steps_per_epoch: spec.steps_per_epoch as usize,
        valid_batch_size: spec.valid_batch_size as usize,
        seed: spec.seed,
        rank: reply.rank,
        adam: AdamConfig {
            beta2: spec.adam_beta2,
            eps: spec.adam_eps,
            weight_decay: spec.weight_decay,
        },
        image_size: size,
        device: Device::Cpu,
        progress: false,
        step_counter: Some(step_counter),
    };
    let mut driver = Distributed::new(
        client,
        reply.run_id.clone(),
        reply.rank,
        spec.steps_per_epoch as usize,
    );
    run_replica(&replica, &ds, &mut ring, &mut driver)?;
    Ok(())
}

/// `host:port` to a socket address (DNS names allowed, for clusters).
fn resolve(addr: &str) -> Result<SocketAddr, TrainError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| TrainError::Coordinator(format!("cannot resolve peer address {addr}: {e}")))?
        .next()
        .ok_or_else(|| TrainError::Coordinator(format!("peer address {addr} resolves to nothing")))
}
