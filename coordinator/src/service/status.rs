//! The one mapping from the state's errors to gRPC statuses and verdicts, and the logging of
//! refused calls.

use ringtrain_common::pb;
// Metadata marking a status as "the run failed" (the worker exits with code 3).
use ringtrain_common::wire::{RUN_FAILED, RUN_STATUS_KEY};
use tonic::{Request, Status};

use crate::rendezvous::RendezvousError;
use crate::state::{self, RunError, Snapshot};

/// The one translation from domain errors to gRPC.
pub(super) fn to_status(e: RunError) -> Status {
    let msg = e.to_string();
    match e {
        RunError::VersionMismatch { .. }
        | RunError::RunIdMismatch { .. }
        | RunError::ModelMismatch { .. }
        | RunError::DatasetMismatch { .. }
        | RunError::NotRunning { .. } => Status::failed_precondition(msg),
        RunError::Rendezvous(RendezvousError::Closed { .. } | RendezvousError::Duplicate(_)) => {
            Status::already_exists(msg)
        }
        RunError::Rendezvous(RendezvousError::Timeout { .. }) => Status::deadline_exceeded(msg),
        RunError::Rendezvous(RendezvousError::EmptyWorkerId) | RunError::BadRequest(_) => {
            Status::invalid_argument(msg)
        }
        RunError::UnknownRank { .. } | RunError::WrongWorker { .. } => Status::not_found(msg),
        RunError::Failed { .. } => run_failed(msg),
        RunError::StaleRound { .. } => Status::aborted(msg),
        RunError::Stopping => Status::unavailable(msg),
        // Not an error: come back, the run grows at its next epoch end or checkpoint step.
        RunError::Queued { .. } => Status::resource_exhausted(msg),
        // Retryable: the id frees up once its holder is declared lost.
        RunError::IdentityHeld { .. } => Status::already_exists(msg),
        RunError::NotAuthenticated { .. } => Status::permission_denied(msg),
    }
}

/// Who sent `req`: the TCP peer address, or "unknown" (service tests call without a socket).
pub(crate) fn peer<T>(req: &Request<T>) -> String {
    crate::guard::peer_addr(req).map_or_else(|| "unknown".into(), |a| a.to_string())
}

/// Refusals a stranger can cause at will are logged at most this often.
pub(super) static REFUSALS: std::sync::LazyLock<ringtrain_common::logging::RateLimit> =
    std::sync::LazyLock::new(|| {
        ringtrain_common::logging::RateLimit::new(20, std::time::Duration::from_secs(10))
    });

/// Logs a refused call with the caller's address and the reason (rate-limited), and turns it
/// into its status.
pub(super) fn refuse(call: &str, peer: &str, e: RunError) -> Status {
    let log = !matches!(
        e,
        RunError::Stopping | RunError::StaleRound { .. } | RunError::Failed { .. }
    );
    if log {
        if let Some(left_out) = REFUSALS.allow() {
            tracing::warn!(%peer, call, reason = %e, left_out, "call refused");
        }
    }
    to_status(e)
}

pub(super) fn run_failed(msg: String) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        RUN_STATUS_KEY,
        tonic::metadata::MetadataValue::from_static(RUN_FAILED),
    );
    Status::with_metadata(tonic::Code::FailedPrecondition, msg, md)
}

pub(super) fn stale(snap: &Snapshot) -> Status {
    to_status(RunError::StaleRound { round: snap.round })
}

pub(super) fn wire_status(s: state::Status) -> pb::RunStatus {
    match s {
        state::Status::Rendezvous => pb::RunStatus::Rendezvous,
        state::Status::Running => pb::RunStatus::Running,
        state::Status::Finished => pb::RunStatus::Finished,
        state::Status::Failed => pb::RunStatus::Failed,
    }
}

pub(super) fn failed_verdict(reason: String) -> pb::Verdict {
    pb::Verdict {
        status: pb::RunStatus::Failed as i32,
        reason,
    }
}

pub(super) fn failure_reason(s: &Snapshot) -> String {
    s.failure
        .as_ref()
        .map(|f| f.reason.clone())
        .unwrap_or_default()
}
