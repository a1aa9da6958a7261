//! Joining a round: the address this worker's ring listens on, the JoinRequest, and the
//! retries while the coordinator is unreachable or a round is under way.
//!
//! Owns what a worker announces about itself; not what it does with the reply (`round.rs`).
//!
//! Tests: `tests/tests/distributed.rs`, `elastic.rs` and `netns.rs` (real binaries).

use std::net::TcpListener;

use ringtrain_common::pb::{self, ProtocolVersion};
use tch::Device;

use super::{advertise, client, Client, WorkerOptions};
use crate::train::TrainError;

/// The device this worker joins with.
pub(super) struct JoinDevice {
    pub(super) device: Device,
    /// The GPU's UUID, empty on CPU.
    pub(super) uuid: String,
}

/// How often a worker queued to join a running run asks again (the coordinator forgets a
/// queued worker that has not asked for 10 s).
const QUEUED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Joins the next round, retrying while the coordinator is unreachable, a round is in progress
/// (ALREADY_EXISTS: wait for the next one; RESOURCE_EXHAUSTED: queued to grow a running run,
/// wait as long as it takes) or the round ended before it started.
pub(super) fn join(
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
    let mut queued = false;
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
        // The run is training with room to grow: admitted at its next epoch end (or
        // checkpoint step). The coordinator answered, so this is not the patience for an
        // unreachable one: keep asking, every second, as long as it takes.
        if status.code() == tonic::Code::ResourceExhausted {
            if !queued {
                tracing::info!(reason = %status.message(), "waiting to join the running run");
                queued = true;
            }
            std::thread::sleep(QUEUED_RETRY);
            backoff = client::Backoff::new(client.patience());
            continue;
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
