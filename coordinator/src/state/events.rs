//! What goes in and out of the run state machine: the events it applies, the actions it asks
//! its caller to take, the refusals it answers with, and the snapshot waiters observe.
//!
//! Owns these types only; their meaning is the state machine's (`mod.rs` and its parts).

use std::sync::Arc;

use ringtrain_common::data::PixelStats;
use ringtrain_common::devices::CollectiveKind;

use super::epoch::EpochReport;
use super::identity::Secret;
use super::metrics::Work;
use super::midepoch::MidReport;
use super::rounds::ResumePoint;
use super::{Failure, Status};
use crate::ids::{Rank, WorkerId};
use crate::plan::RunPlan;
use crate::rendezvous::{Candidate, Membership, RendezvousError};
use crate::state::output::Output;

/// What waiters observe; published after every change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    pub failure: Option<Arc<Failure>>,
    pub membership: Option<Arc<Membership>>,
    pub plan: Option<Arc<RunPlan>>,
    /// Per channel.
    pub norm: Option<Vec<PixelStats>>,
    pub epochs_done: u32,
    /// The current round and its token (requests of other rounds are stale).
    pub round: u32,
    pub round_token: u64,
    /// Where the current round starts from (`None`: the beginning).
    pub resume: Option<Arc<ResumePoint>>,
    /// Global step of the last checkpoint taken inside an epoch.
    pub checkpoint_step: u64,
    /// The coordinator asked for a stop checkpoint.
    pub stop_requested: bool,
    /// That stop checkpoint is complete (or there was nothing to checkpoint).
    pub stopped: bool,
    /// The current round's collective (`None` before its rendezvous closed).
    pub collective: Option<CollectiveKind>,
    /// The current round's NCCL id, once rank 0 shared it.
    pub nccl_id: Option<Arc<Vec<u8>>>,
}

/// A Join request, as the state machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinArgs {
    pub protocol_version: u32,
    pub run_id: String,
    pub model: String,
    pub dataset_fingerprint: String,
    pub candidate: Candidate,
    /// The secret an earlier Join gave this worker (empty on its first Join).
    pub secret: Vec<u8>,
    /// The secret to issue if this Join gets a new one (random, chosen by the caller).
    pub fresh_secret: Secret,
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker asks to join.
    Join(JoinArgs),
    /// A waiting Join call went away before the round closed.
    AbandonJoin(WorkerId),
    /// A rank is alive (its epoch/step are for logs).
    Heartbeat {
        run_id: String,
        round_token: u64,
        rank: Rank,
        worker_id: WorkerId,
        epoch: u32,
        step: u64,
        /// Its work since its process started (cumulative), with its step timings.
        work: Work,
        /// Its training thread is inside the gradient all-reduce.
        in_collective: bool,
    },
    /// A rank's pixel sums.
    PixelStats {
        run_id: String,
        round_token: u64,
        rank: Rank,
        /// One per channel of the run.
        stats: Vec<PixelStats>,
        /// Files of the rank's shard its decoding left out (`skip_bad`): (path relative to
        /// the data root, the worker's message).
        skipped: Vec<(String, String)>,
    },
    /// A rank's epoch report.
    Epoch {
        run_id: String,
        round_token: u64,
        report: EpochReport,
    },
    /// A rank's last word in its round; `recoverable` failures end the round, not the run.
    Leave {
        run_id: String,
        round_token: u64,
        rank: Rank,
        ok: bool,
        recoverable: bool,
        reason: String,
        weights: Vec<u8>,
        /// The worker's final work counters (a successful Leave), as in its heartbeats.
        work: Option<Work>,
    },
    /// A rank's checkpoint inside an epoch.
    Checkpoint {
        run_id: String,
        round_token: u64,
        report: MidReport,
    },
    /// A rank's part of the NCCL rendezvous (rank 0 brings the id; see [`nccl`]).
    NcclId {
        run_id: String,
        round_token: u64,
        rank: Rank,
        unique_id: Vec<u8>,
    },
    /// The coordinator is stopping: ask the ranks for a stop checkpoint.
    RequestStop,
    /// A barrier call of `rank` started waiting.
    WaitStart(Rank),
    /// A barrier call of `rank` ended (replied or dropped).
    WaitEnd(Rank),
    /// A worker process the launcher started has exited; `aborted` means it obeyed a FAILED
    /// verdict (exit code 3), so it is a consequence, never a cause.
    ProcessExited {
        worker_id: WorkerId,
        success: bool,
        aborted: bool,
        reason: String,
    },
    /// Something outside the protocol failed the run (interrupt, unwritable run folder).
    Fail(String),
    /// Time passed: timeouts and the heartbeat watchdog.
    Tick,
}

/// What the caller must do, in order, before releasing the lock.
#[derive(Debug)]
pub enum Action {
    /// Publish a fresh [`RunState::snapshot`].
    Publish,
    /// Hand this to the output writer.
    Output(Output),
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The worker speaks another protocol version.
    #[error("protocol version mismatch: worker {worker_id} speaks version {got}, coordinator speaks version {want}")]
    VersionMismatch {
        worker_id: WorkerId,
        got: u32,
        want: u32,
    },
    /// The request names another run.
    #[error("run id mismatch: request is for run {got:?}, this coordinator serves run {want:?}")]
    RunIdMismatch { got: String, want: String },
    /// The worker wants another model.
    #[error("model mismatch: worker {worker_id} wants {got}, the run trains {want}")]
    ModelMismatch {
        worker_id: WorkerId,
        got: String,
        want: String,
    },
    /// The worker sees another dataset.
    #[error("dataset mismatch: worker {worker_id} has fingerprint {got}, coordinator {want}")]
    DatasetMismatch {
        worker_id: WorkerId,
        got: String,
        want: String,
    },
    /// Refused by the rendezvous (closed, timed out, duplicate id).
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// The call needs a running round.
    #[error("the run is {status:?}; this call needs a running round")]
    NotRunning { status: Status },
    /// No such rank in the round.
    #[error("rank {rank} does not exist (world size {world_size})")]
    UnknownRank { rank: Rank, world_size: u32 },
    /// The rank belongs to another worker.
    #[error("rank {rank} is worker {expected}, not {got}")]
    WrongWorker {
        rank: Rank,
        expected: WorkerId,
        got: WorkerId,
    },
    /// A malformed request (wrong epoch, wrong number of losses, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The run has failed.
    #[error("run failed: {reason}")]
    Failed { reason: String },
    /// The coordinator is stopping (after its stop checkpoint): try again later.
    #[error("the coordinator is stopping; retry (a restarted coordinator resumes the run)")]
    Stopping,
    /// The request belongs to a round that ended (or to another coordinator process).
    #[error("round over: the request is for another round; this is round {round}, re-join")]
    StaleRound { round: u32 },
    /// A Join with a worker id that a live worker holds, without that worker's secret.
    #[error("worker id {worker_id} belongs to a live worker ({holder}); a re-join must carry its worker secret, else wait until that worker is declared lost")]
    IdentityHeld { worker_id: WorkerId, holder: String },
    /// A call for a rank without the secret of the worker holding it.
    #[error("rank {rank} is worker {worker_id}; the call does not carry its worker secret")]
    NotAuthenticated { rank: Rank, worker_id: WorkerId },
    /// A Join while a round runs with room to grow: the worker is admitted at the next epoch
    /// end (or checkpoint step); it keeps asking until then.
    #[error("the run is training with {world_size} of at most {max_workers} workers; {worker_id} is admitted at its next {at}: keep joining")]
    Queued {
        worker_id: WorkerId,
        world_size: u32,
        max_workers: u32,
        at: &'static str,
    },
}
