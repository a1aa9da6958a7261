//! Distributed worker: join the coordinator's run, load this rank's shard, train with the round's
//! collective (the TCP ring, host-staged for CUDA tensors, or NCCL after the id exchange).
//!
//! ```text
//! Join ──▶ rank, peers, spec, shard ──▶ decode shard ──▶ ring connect | NCCL id + init ──▶ pixel stats (barrier)
//!   ──▶ per epoch: plan ▶ steps (all-reduce per step) ▶ BN average ▶ validate ▶ report (barrier)
//!   ──▶ Leave (rank 0 sends the final weights)
//! ```
//! Hyper-parameters all come from the coordinator; the worker only executes. Heartbeats run on
//! the RPC runtime; a failed run ends the process (exit code 3). When the coordinator ends the
//! round (a peer was lost, or the coordinator restarted) or the ring breaks, the worker re-joins
//! and continues from the checkpoint in the new JoinReply; rank 0 sends the model and optimizer
//! state with every epoch report, which the coordinator writes as the epoch's checkpoint.
//!
//! Tests: `tests/tests/distributed.rs` (real binaries, 2 and 3 workers, failures), `resume.rs`,
//! `elastic.rs` and `stop.rs` (rounds, restarts, stop checkpoints).

mod advertise;
mod client;
mod driver;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringtrain_common::data::{load_index, scan_dataset, DatasetIndex, LoadOptions, ScanOptions};
use ringtrain_common::devices::CollectiveKind;
use ringtrain_common::pb::{self, ProtocolVersion};
use tch::Device;

use crate::amp::Precision;
use crate::collective::nccl::{self, Nccl};
use crate::collective::ring::{Ring, RingConfig};
use crate::collective::staged::HostStaged;
use crate::collective::{AbortHandle, Collective};
use crate::device::DeviceRequest;
use crate::model::Arch;
use crate::optim::AdamConfig;
use crate::train::progress::Progress;
use crate::train::state::ResumeState;
use crate::train::{run_replica, ReplicaSpec, TrainError};
pub use client::{exit_deadline, Client, Fatal, RoundCtl, Security};
use driver::Distributed;

/// How this worker process takes part in a run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub coordinator: String,
    pub data: PathBuf,
    pub worker_id: String,
    pub threads: Option<usize>,
    pub device: DeviceRequest,
    pub collective_listen: SocketAddr,
    pub advertise_host: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub model: Option<Arch>,
    pub run_id: Option<String>,
    pub connect_timeout: Duration,
    /// After SIGTERM, exit at the latest this much later (stop checkpoint or not).
    pub stop_grace: Duration,
    pub scan: ScanOptions,
    pub progress: bool,
    /// Overrides the announced protocol version (tests only).
    pub protocol_version: Option<u32>,
    /// The run's token and TLS settings.
    pub security: client::Security,
}

impl WorkerOptions {
    /// The options as JSON (`--print-config`); the token shows as its length only.
    pub fn describe(&self) -> String {
        serde_json::json!({
            "coordinator": self.coordinator,
            "data": self.data,
            "worker_id": self.worker_id,
            "threads": self.threads,
            "device": self.device.to_string(),
            "collective_listen": self.collective_listen.to_string(),
            "advertise_host": self.advertise_host,
            "cache_dir": self.cache_dir,
            "model": self.model.map(|m| m.to_string()),
            "run_id": self.run_id,
            "connect_timeout_s": self.connect_timeout.as_secs_f64(),
            "stop_grace_s": self.stop_grace.as_secs_f64(),
            "train_dir": self.scan.train_dir,
            "valid_dir": self.scan.valid_dir,
            "auth_token": self.security.token.as_ref().map(|t| format!("<{} chars>", t.expose().len())),
            "tls_ca": self.security.tls_ca,
            "tls_domain": self.security.tls_domain,
        })
        .to_string()
    }
}

/// Runs one worker to the end of the run: joins, trains the round, and when the coordinator
/// ends a round (a peer was lost) or the ring breaks, re-joins and continues from the
/// coordinator's checkpoint. On an error of its own, tells the coordinator before returning.
pub fn run_worker(opts: &WorkerOptions) -> Result<(), TrainError> {
    if let Some(t) = opts.threads {
        tch::set_num_threads(t as i32);
    }
    // Before anything else: asking for a GPU that is not there is an error at start.
    let device = crate::device::select(opts.device)?;
    let gpu = match device {
        Device::Cuda(i) => crate::device::gpu_info(i),
        _ => None,
    };
    tracing::info!(device = %crate::device::name(device), gpu = ?gpu.as_ref().map(|g| &g.name), "device");
    let dev = JoinDevice {
        device,
        uuid: gpu.map(|g| g.uuid).unwrap_or_default(),
    };
    let ctl = Arc::new(Mutex::new(RoundCtl::default()));
    let client = Client::connect(
        &opts.coordinator,
        opts.connect_timeout,
        &opts.security,
        ctl.clone(),
    )?;
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
    let fingerprint = local.layout_fingerprint();
    let progress = Arc::new(Progress::default());
    let terminated = Arc::new(AtomicBool::new(false));
    client.watch_sigterm(terminated.clone(), opts.stop_grace);
    let mut heartbeats = false;
    // Issued by the first JoinReply; every later call and re-join carries it.
    let mut secret: Vec<u8> = Vec::new();
    loop {
        if let Some(e) = client.stopped() {
            return Err(e);
        }
        if terminated.load(Ordering::SeqCst) {
            return Err(TrainError::Terminated);
        }
        // A fresh listener per round: connections a peer made in an ended round die with the
        // old one instead of waiting in the backlog of the new one.
        let listener = TcpListener::bind(opts.collective_listen).map_err(|e| {
            TrainError::Coordinator(format!(
                "cannot listen on {} for the collective: {e}",
                opts.collective_listen
            ))
        })?;
        let reply = join(opts, &client, &fingerprint, &listener, &dev, &secret)?;
        secret = reply.worker_secret.clone();
        let spec = reply
            .spec
            .clone()
            .ok_or_else(|| TrainError::Coordinator("join reply without a run spec".into()))?;
        let shard = reply.shard.clone().unwrap_or_default();
        tracing::info!(run_id = %reply.run_id, rank = reply.rank, world_size = reply.world_size, round = reply.round,
            train = shard.train.len(), valid = shard.valid.len(),
            resume_epoch = reply.resume.as_ref().map(|r| r.epoch), "joined");
        {
            let mut g = lock(&ctl);
            g.heartbeat = Some(pb::HeartbeatRequest {
                run_id: reply.run_id.clone(),
                rank: reply.rank,
                worker_id: opts.worker_id.clone(),
                epoch: 0,
                step: 0,
                round_token: reply.round_token,
                worker_secret: secret.clone(),
                ..Default::default()
            });
            g.ended = false;
            g.stop = false;
            g.abort = None;
        }
        if !heartbeats {
            client.start_heartbeats(
                Duration::from_secs_f64(spec.heartbeat_interval_s.max(0.05)),
                progress.clone(),
            );
            heartbeats = true;
        }
        let round = Round {
            client: &client,
            reply: &reply,
            spec: &spec,
            shard: &shard,
            ctl: &ctl,
            terminated: &terminated,
            progress: progress.clone(),
            device,
            token: opts.security.token.as_ref(),
            secret: &secret,
        };
        let result = train_round(opts, &round, listener);
        let ended = {
            let mut g = lock(&ctl);
            g.heartbeat = None;
            g.abort = None;
            g.ended
        };
        let leave = |ok: bool, recoverable: bool, reason: String| {
            let _ = client.leave(pb::LeaveRequest {
                run_id: reply.run_id.clone(),
                round_token: reply.round_token,
                rank: reply.rank,
                ok,
                recoverable,
                reason,
                weights_safetensors: Vec::new(),
                worker_secret: secret.clone(),
            });
        };
        match result {
            Ok(()) => return Ok(()),
            // The client stopped for good (run failed, coordinator gone, SIGTERM's grace over).
            Err(_) if client.stopped().is_some() => {
                let e = client.stopped().unwrap_or(TrainError::Terminated);
                if matches!(e, TrainError::Terminated) {
                    leave(false, true, "preempted (SIGTERM)".into());
                }
                return Err(e);
            }
            Err(_) if terminated.load(Ordering::SeqCst) => {
                // Whatever broke, this worker was told to go: say so and exit.
                leave(false, true, "preempted (SIGTERM)".into());
                return Err(TrainError::Terminated);
            }
            Err(TrainError::RoundEnded(why)) => {
                tracing::warn!(reason = %why, "round ended; re-joining");
            }
            Err(TrainError::Collective(e)) if ended => {
                tracing::warn!(error = %e, "round ended by the coordinator; re-joining");
            }
            Err(TrainError::Collective(e)) => {
                // A lost or stalled peer: this round cannot finish, the run can.
                tracing::warn!(error = %e, "collective failed; ending the round and re-joining");
                leave(false, true, format!("collective: {e}"));
            }
            Err(e @ TrainError::RunFailed(_)) => return Err(e),
            Err(e) => {
                leave(false, false, e.to_string());
                return Err(e);
            }
        }
    }
}

fn lock(ctl: &Mutex<RoundCtl>) -> std::sync::MutexGuard<'_, RoundCtl> {
    ctl.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Joins the next round, retrying while the coordinator is unreachable, a round is in progress
/// (ALREADY_EXISTS: wait for the next one) or the round ended before it started.
/// The device this worker joins with.
struct JoinDevice {
    device: Device,
    /// The GPU's UUID, empty on CPU.
    uuid: String,
}

fn join(
    opts: &WorkerOptions,
    client: &Client,
    fingerprint: &str,
    listener: &TcpListener,
    dev: &JoinDevice,
    secret: &[u8],
) -> Result<pb::JoinReply, TrainError> {
    let port = listener
        .local_addr()
        .map_err(|e| TrainError::Coordinator(e.to_string()))?
        .port();
    let host = advertise::ring_host(
        opts.advertise_host.as_deref(),
        opts.collective_listen.ip(),
        &opts.coordinator,
    )
    .map_err(TrainError::Coordinator)?;
    let collective_addr = advertise::join_host_port(&host, port);
    tracing::info!(%collective_addr, "ring address announced to peers");
    let req = pb::JoinRequest {
        protocol_version: opts
            .protocol_version
            .unwrap_or(ProtocolVersion::Current as u32),
        worker_id: opts.worker_id.clone(),
        run_id: opts.run_id.clone().unwrap_or_default(),
        model: opts.model.map(|m| m.to_string()).unwrap_or_default(),
        dataset_fingerprint: fingerprint.to_string(),
        collective_addr,
        device: crate::device::name(dev.device),
        device_uuid: dev.uuid.clone(),
        worker_secret: secret.to_vec(),
    };
    let mut backoff = client::Backoff::new(client.patience());
    loop {
        if let Some(e) = client.stopped() {
            return Err(e);
        }
        let status = match client.join_once(req.clone()) {
            Ok(reply) => return Ok(reply),
            Err(s) => s,
        };
        if let Some(e) = client.stopped() {
            return Err(e);
        }
        let retry = matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::AlreadyExists
        );
        tracing::info!(code = ?status.code(), reason = %status.message(), "cannot join yet");
        if !retry || !backoff.wait() {
            let unreachable = matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            );
            if unreachable {
                return Err(TrainError::Coordinator(format!(
                    "join: the coordinator at {} did not answer within --connect-timeout-s {:.0} s: {}",
                    client.url(),
                    client.patience().as_secs_f64(),
                    status.message()
                )));
            }
            return Err(match client::classify("join", client.url(), status) {
                TrainError::RoundEnded(m) => TrainError::Coordinator(m),
                e => e,
            });
        }
    }
}

/// One round as the coordinator described it.
struct Round<'a> {
    client: &'a Client,
    reply: &'a pb::JoinReply,
    spec: &'a pb::RunSpec,
    shard: &'a pb::Shard,
    ctl: &'a Mutex<RoundCtl>,
    terminated: &'a AtomicBool,
    progress: Arc<Progress>,
    device: Device,
    token: Option<&'a ringtrain_common::auth::Token>,
    /// This worker's secret, for every call of the round.
    secret: &'a [u8],
}

fn train_round(opts: &WorkerOptions, r: &Round, listener: TcpListener) -> Result<(), TrainError> {
    let (reply, spec, shard) = (r.reply, r.spec, r.shard);
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
    let kind: CollectiveKind = reply.collective.parse().map_err(TrainError::Coordinator)?;
    let precision: Precision = spec.precision.parse().map_err(TrainError::Coordinator)?;
    tracing::info!(collective = %kind, %precision, "round's collective");
    let (mut collective, abort) = connect_collective(kind, r, listener)?;
    {
        let mut g = lock(r.ctl);
        if g.ended {
            return Err(TrainError::RoundEnded(format!(
                "ended while connecting the {kind} collective"
            )));
        }
        g.abort = Some(abort);
    }
    let resume = reply.resume.as_ref().map(|x| ResumeState {
        epoch: x.epoch,
        global_step: x.global_step,
        model: x.model_safetensors.clone(),
        optimizer: x.optimizer_safetensors.clone(),
        step_in_epoch: x.step_in_epoch,
        epoch_losses: x.epoch_losses.clone(),
    });
    if let Some(x) = &reply.resume {
        tracing::info!(checkpoint = %x.checkpoint, epoch = x.epoch, step = x.global_step, "continuing from checkpoint");
    }
    r.progress
        .set_step(resume.as_ref().map_or(0, |x| x.global_step));
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
        device: r.device,
        precision,
        progress: false,
        progress_counters: Some(r.progress.clone()),
        resume,
        // Every rank serialises its state at checkpoints: all report its digest, rank 0 also
        // uploads the bytes, and the coordinator accepts them only when the digests agree.
        save_state: true,
        checkpoint_every: spec.checkpoint_every_steps,
        lr_find_stop_div: (spec.lr_find_stop_div > 0.0).then_some(spec.lr_find_stop_div),
    };
    let mut driver = Distributed::new(
        r.client,
        r.ctl,
        r.terminated,
        reply.run_id.clone(),
        reply.round_token,
        reply.rank,
        spec.steps_per_epoch as usize,
        r.secret.to_vec(),
    );
    run_replica(&replica, &ds, collective.as_mut(), &mut driver)?;
    Ok(())
}

/// Connects the round's collective: the TCP ring (host-staged for CUDA tensors), or NCCL after
/// the id exchange through the coordinator. Returns it with the handle that aborts it.
fn connect_collective(
    kind: CollectiveKind,
    r: &Round,
    listener: TcpListener,
) -> Result<(Box<dyn Collective>, AbortHandle), TrainError> {
    let reply = r.reply;
    match kind {
        CollectiveKind::Ring => {
            let peers: Result<Vec<SocketAddr>, TrainError> =
                reply.peers.iter().map(|p| resolve(p)).collect();
            let timeout = Duration::from_secs_f64(r.spec.collective_timeout_s.max(0.1));
            // The round is part of the ring's identity: a peer of an ended round is refused.
            let ring_id = format!("{}/round-{}", reply.run_id, reply.round);
            let mut cfg = RingConfig::new(ring_id, reply.rank, reply.world_size, peers?, timeout);
            cfg.auth_key = ringtrain_common::auth::ring_key(r.token);
            let ring = Ring::connect(listener, cfg)?;
            let a = ring.abort_handle();
            Ok((Box::new(HostStaged::new(ring)), Box::new(move || a.abort())))
        }
        CollectiveKind::Nccl => {
            drop(listener);
            // Rank 0 makes the id (its process hosts NCCL's bootstrap); the others get it back
            // from the coordinator.
            let own = if reply.rank == 0 {
                nccl::unique_id()?
            } else {
                Vec::new()
            };
            let shared = r.client.share_nccl_id(pb::NcclIdRequest {
                run_id: reply.run_id.clone(),
                round_token: reply.round_token,
                rank: reply.rank,
                unique_id: own,
                worker_secret: r.secret.to_vec(),
            })?;
            let comm = Nccl::init(&shared.unique_id, reply.rank, reply.world_size, r.device)?;
            tracing::info!(
                rank = reply.rank,
                world_size = reply.world_size,
                "NCCL communicator ready"
            );
            let a = comm.abort_handle();
            Ok((Box::new(comm), Box::new(move || a.abort())))
        }
    }
}

/// `host:port` to a socket address (DNS names allowed, for clusters).
fn resolve(addr: &str) -> Result<SocketAddr, TrainError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| TrainError::Coordinator(format!("cannot resolve peer address {addr}: {e}")))?
        .next()
        .ok_or_else(|| TrainError::Coordinator(format!("peer address {addr} resolves to nothing")))
}
