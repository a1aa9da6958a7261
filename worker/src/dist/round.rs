//! One round as the coordinator described it: load this rank's shard, connect the round's
//! collective (the TCP ring, host-staged for CUDA tensors, or NCCL after the id exchange), and
//! train the replica with the distributed driver.
//!
//! Owns turning a JoinReply into a `ReplicaSpec` and a collective; not joining (`join.rs`) nor
//! what happens when the round ends (`mod.rs`).
//!
//! Tests: `tests/tests/distributed.rs`, `resume.rs`, `elastic.rs` and `stop.rs` (real binaries).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringtrain_common::data::{
    load_index, memory, Augment, DatasetIndex, Geometry, ImageOptions, LoadOptions, MemoryCheck,
    ScanOptions,
};
use ringtrain_common::devices::CollectiveKind;
use ringtrain_common::pb;
use tch::Device;

use super::driver::Distributed;
use super::{lock, Client, RoundCtl, WorkerOptions};
use crate::amp::Precision;
use crate::collective::nccl::{self, Nccl};
use crate::collective::ring::{Ring, RingConfig};
use crate::collective::staged::HostStaged;
use crate::collective::{AbortHandle, Collective};
use crate::model::Arch;
use crate::optim::AdamConfig;
use crate::train::progress::Progress;
use crate::train::state::ResumeState;
use crate::train::{run_replica, ReplicaSpec, TrainError};

/// One round as the coordinator described it.
pub(super) struct Round<'a> {
    pub(super) client: &'a Client,
    pub(super) reply: &'a pb::JoinReply,
    pub(super) spec: &'a pb::RunSpec,
    pub(super) shard: &'a pb::Shard,
    pub(super) ctl: &'a Mutex<RoundCtl>,
    pub(super) terminated: &'a AtomicBool,
    pub(super) progress: Arc<Progress>,
    pub(super) device: Device,
    pub(super) token: Option<&'a ringtrain_common::auth::Token>,
    /// This worker's secret, for every call of the round.
    pub(super) secret: &'a [u8],
}

pub(super) fn train_round(
    opts: &WorkerOptions,
    r: &Round,
    listener: TcpListener,
) -> Result<(), TrainError> {
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
    let geometry = Geometry {
        // 0: a coordinator from before issue 18, whose runs were grayscale.
        channels: spec.channels.max(1),
        size: spec.image_size,
        resize: spec.resize,
    };
    let augment: Augment = if spec.augment.is_empty() {
        Augment::default()
    } else {
        spec.augment.parse().map_err(TrainError::Coordinator)?
    };
    let scan = ScanOptions {
        skip_bad: spec.skip_bad,
        ..opts.scan.clone()
    };
    let ds = load_index(
        &index,
        geometry,
        &LoadOptions {
            scan,
            image: ImageOptions::default(),
            cache_dir: opts.cache_dir.clone(),
            progress: opts.progress,
            memory: Some(MemoryCheck {
                limit: memory::process_limit(opts.memory_limit),
                pad: augment.pad,
                tensors_on_host: !r.device.is_cuda(),
                what: format!("rank {}'s shard", reply.rank),
            }),
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
        geometry,
        augment,
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
        r.progress.clone(),
    );
    // The coordinator lists them in run.json and counts them in summary.json.
    driver.skipped = ds
        .skipped
        .iter()
        .map(|s| pb::SkippedFile {
            path: s
                .path
                .strip_prefix(&opts.data)
                .unwrap_or(&s.path)
                .to_string_lossy()
                .into_owned(),
            reason: s.reason.to_string(),
        })
        .collect();
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
