//! Waiting at barriers: a barrier call counts its rank as alive while it waits and returns as
//! soon as the barrier completes, its round ends or the run fails; a Join dropped before its
//! round closes is withdrawn.

use std::sync::Arc;

use ringtrain_common::pb;
use tonic::Status;

use super::status::{failed_verdict, failure_reason, refuse, stale};
use super::CoordinatorService;
use crate::ids::{Rank, WorkerId};
use crate::shared::Shared;
use crate::state::{self, Event, RunError, Snapshot};

/// How a barrier call ended (see [`CoordinatorService::barrier`]).
pub(super) enum Barrier {
    /// The barrier completed: the snapshot that showed it.
    Done(Snapshot),
    /// The run failed (before or while waiting), with its reason.
    Failed(String),
}

impl Barrier {
    /// The verdict a call with a status field answers.
    pub(super) fn verdict(self) -> pb::Verdict {
        match self {
            Barrier::Done(_) => pb::Verdict {
                status: pb::RunStatus::Running as i32,
                reason: String::new(),
            },
            Barrier::Failed(reason) => failed_verdict(reason),
        }
    }
}

/// Counts `rank` as alive while a barrier call waits; ends the wait on drop (reply or disconnect).
struct Waiting {
    shared: Arc<Shared>,
    rank: Rank,
}

impl Waiting {
    fn start(shared: &Arc<Shared>, rank: Rank) -> Self {
        let _ = shared.apply(Event::WaitStart(rank), |_| ());
        Self {
            shared: shared.clone(),
            rank,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.shared.apply(Event::WaitEnd(self.rank), |_| ());
    }
}

/// Withdraws a Join from the open round when its call is dropped before the round closes.
pub(super) struct PendingJoin {
    shared: Arc<Shared>,
    worker_id: Option<WorkerId>,
}

impl PendingJoin {
    pub(super) fn new(shared: &Arc<Shared>, worker_id: WorkerId) -> Self {
        Self {
            shared: shared.clone(),
            worker_id: Some(worker_id),
        }
    }

    /// The round took the Join (or ended): nothing to withdraw any more.
    pub(super) fn settled(mut self) {
        self.worker_id = None;
    }
}

impl Drop for PendingJoin {
    fn drop(&mut self) {
        if let Some(id) = self.worker_id.take() {
            let _ = self.shared.apply(Event::AbandonJoin(id), |_| ());
        }
    }
}

impl CoordinatorService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Refuses a round-scoped call that does not carry the secret of the worker at `rank`.
    pub(super) fn authenticate(
        &self,
        call: &str,
        peer: &str,
        round_token: u64,
        rank: Rank,
        secret: &[u8],
    ) -> Result<(), Status> {
        self.shared
            .read(|s| s.authenticate(round_token, rank, secret))
            .map_err(|e| refuse(call, peer, e))
    }

    /// The shape every barrier call shares: applies `ev` (the rank's report), then waits,
    /// counting `rank` as alive, until `done` holds, the round `token` ends (`ABORTED`) or the
    /// run fails. A refusal is logged with `peer` and returned as its status.
    pub(super) async fn barrier(
        &self,
        call: &str,
        peer: &str,
        rank: Rank,
        token: u64,
        ev: Event,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Result<Barrier, Status> {
        match self.shared.apply(ev, |_| ()) {
            Ok(()) => {}
            Err(RunError::Failed { reason }) => return Ok(Barrier::Failed(reason)),
            Err(e) => return Err(refuse(call, peer, e)),
        }
        let _alive = Waiting::start(&self.shared, rank);
        let snap = self.wait(token, done).await?;
        if snap.status == state::Status::Failed {
            return Ok(Barrier::Failed(failure_reason(&snap)));
        }
        Ok(Barrier::Done(snap))
    }

    /// Waits until `done` holds, the round `token` ended (then `ABORTED`; 0: any round) or the
    /// run failed; returns the snapshot that ended the wait.
    pub(super) async fn wait(
        &self,
        token: u64,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot, Status> {
        let mut rx = self.shared.subscribe();
        let snap = rx
            .wait_for(|s| {
                done(s)
                    || s.status == state::Status::Failed
                    || (token != 0 && s.round_token != token)
            })
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?
            .clone();
        if token != 0 && snap.round_token != token && snap.status != state::Status::Failed {
            return Err(stale(&snap));
        }
        Ok(snap)
    }
}
