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
//! Files: `mod.rs` the worker's life (join, train, re-join until the run ends), `join.rs` the
//! JoinRequest and its retries, `round.rs` one round (shard, collective, replica), `client.rs`
//! the coordinator's RPCs, heartbeats and SIGTERM, `driver.rs` the replica's driver,
//! `advertise.rs` the ring address announced to peers.
//!
//! Log lines carry the spans `run{run_id}` > `round{rank round}` (> `epoch{epoch}` while
//! training), so every line of a step says whose it is.
//!
//! Tests: `tests/tests/distributed.rs` (real binaries, 2 and 3 workers, failures), `resume.rs`,
//! `elastic.rs` and `stop.rs` (rounds, restarts, stop checkpoints).

mod advertise;
mod client;
mod driver;
mod join;
mod round;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringtrain_common::data::{scan_dataset, ScanOptions};
use ringtrain_common::pb;
use tch::Device;

use crate::device::DeviceRequest;
use crate::model::Arch;
use crate::train::progress::Progress;
use crate::train::TrainError;
pub use client::{exit_deadline, Client, Fatal, RoundCtl, Security};
use join::{join, JoinDevice};
use round::{train_round, Round};

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
    /// `--memory-limit`: the shard's decoded images must fit (with the cgroup's limit and
    /// `MemAvailable`).
    pub memory_limit: Option<ringtrain_common::data::memory::Bytes>,
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
    // `run_id` is known once the coordinator answers the first Join.
    let run_span = tracing::info_span!("run", run_id = tracing::field::Empty);
    let _run = run_span.enter();
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
        run_span.record("run_id", reply.run_id.as_str());
        let _round = tracing::info_span!("round", rank = reply.rank, round = reply.round).entered();
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
        let request = |ok: bool, recoverable: bool, reason: String| pb::LeaveRequest {
            run_id: reply.run_id.clone(),
            round_token: reply.round_token,
            rank: reply.rank,
            ok,
            recoverable,
            reason,
            weights_safetensors: Vec::new(),
            worker_secret: secret.clone(),
            ..Default::default()
        };
        let leave = |ok: bool, recoverable: bool, reason: String| {
            let _ = client.leave(request(ok, recoverable, reason));
        };
        // On the way out after SIGTERM: one attempt (the coordinator may be stopping too).
        let leave_preempted = || {
            let _ = client.leave_once(request(false, true, "preempted (SIGTERM)".into()));
        };
        match result {
            Ok(()) => return Ok(()),
            // The client stopped for good (run failed, coordinator gone, SIGTERM's grace over).
            Err(_) if client.stopped().is_some() => {
                let e = client.stopped().unwrap_or(TrainError::Terminated);
                if matches!(e, TrainError::Terminated) {
                    leave_preempted();
                }
                return Err(e);
            }
            Err(_) if terminated.load(Ordering::SeqCst) => {
                // Whatever broke, this worker was told to go: say so and exit.
                leave_preempted();
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
