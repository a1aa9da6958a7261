//! Admission and departure in the state machine: Join checks, the rendezvous' outcomes, a
//! closed round becoming a running one, and worker processes exiting.
//!
//! Same contract as the parent module; split off only to keep files small.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Liveness;
use super::{
    Action, Actions, Admission, Cause, Failure, JoinArgs, RunError, RunState, Status,
    PROTOCOL_VERSION, ROOT_CAUSE_WINDOW,
};
use ringtrain_common::devices::{choose, WorkerDevice};

use crate::ids::WorkerId;
use crate::plan::plan_run;
use crate::rendezvous::{Membership, RendezvousAction, RendezvousError, RendezvousEvent};
use crate::state::output::Output;

impl RunState {
    pub(super) fn join(&mut self, a: JoinArgs, now: Instant) -> Actions {
        let worker_id = a.candidate.worker_id.clone();
        match (&self.status, &self.failure) {
            (Status::Failed, Some(f)) if f.rendezvous_timeout => {
                return Err(RendezvousError::Timeout {
                    waited: Duration::from_secs_f64(self.prepared.config.join_timeout_s),
                    joined: self.rdzv.joined(),
                    wanted: self.prepared.config.workers,
                }
                .into());
            }
            (Status::Failed, f) => {
                return Err(RunError::Failed {
                    reason: f.as_ref().map(|f| f.reason.clone()).unwrap_or_default(),
                })
            }
            _ => {}
        }
        if self.stopped {
            return Err(RunError::Stopping);
        }
        if a.protocol_version != PROTOCOL_VERSION {
            return Err(RunError::VersionMismatch {
                worker_id,
                got: a.protocol_version,
                want: PROTOCOL_VERSION,
            });
        }
        if !a.run_id.is_empty() && a.run_id != self.prepared.run_id {
            return Err(RunError::RunIdMismatch {
                got: a.run_id,
                want: self.prepared.run_id.clone(),
            });
        }
        let model = self.prepared.config.recipe.model.as_str();
        if !a.model.is_empty() && a.model != model {
            return Err(RunError::ModelMismatch {
                worker_id,
                got: a.model,
                want: model.into(),
            });
        }
        if a.dataset_fingerprint != self.prepared.dataset.fingerprint {
            return Err(RunError::DatasetMismatch {
                worker_id,
                got: a.dataset_fingerprint,
                want: self.prepared.dataset.fingerprint.clone(),
            });
        }
        if a.candidate.collective_addr.is_empty() {
            return Err(RunError::BadRequest(format!(
                "worker {worker_id} sent no collective_addr"
            )));
        }
        // A newcomer while the round runs with room to grow waits for the next checkpoint.
        if let Some(queued) = self.queue_join(&worker_id, now) {
            return Err(queued);
        }
        // Before anything can change: a caller with a live worker's id but not its secret is
        // refused, so it can neither restart the round nor take the slot.
        let holder = self.identity_holder(&worker_id, now);
        match self.identities.admit(
            &worker_id,
            &a.secret,
            a.fresh_secret,
            || holder.is_some(),
            now,
        ) {
            None => {
                return Err(RunError::IdentityHeld {
                    worker_id,
                    holder: holder.unwrap_or_default(),
                })
            }
            Some(Admission::TakenOver(_)) => {
                tracing::warn!(worker_id = %worker_id, "worker id taken over: its previous holder was declared lost");
            }
            Some(_) => {}
        }
        let mut out = Vec::new();
        let member = self.membership.as_ref().and_then(|m| m.rank_of(&worker_id));
        if let (Status::Running, Some(rank)) = (self.status, member) {
            // A member joining again has left its round (it restarted, or its collective
            // broke): the round cannot complete.
            out = self.restart_round(
                format!("rank {rank} ({worker_id}) re-joined, leaving its round"),
                Cause::Other,
                now,
            );
            if self.status == Status::Failed {
                return Ok(out);
            }
        }
        let acts = self
            .rdzv
            .on_event(RendezvousEvent::Join(a.candidate), now)?;
        out.extend(self.rendezvous_actions(acts, now));
        Ok(out)
    }

    /// Why `id` is held by a live worker right now (`None`: free to take over). Held: waiting in
    /// the open rendezvous; a member of the running round that is not gone and was heard from
    /// (or is inside a barrier call) within the heartbeat budget; or anyone heard from within
    /// that budget between rounds.
    fn identity_holder(&self, id: &WorkerId, now: Instant) -> Option<String> {
        let c = &self.prepared.config;
        let budget =
            Duration::from_secs_f64(c.heartbeat_interval_s * f64::from(c.heartbeat_missed));
        if self.status == Status::Rendezvous && self.rdzv.has(id) {
            return Some("it is waiting in the rendezvous".into());
        }
        let member = self.membership.as_ref().and_then(|m| m.rank_of(id));
        if let (Status::Running, Some(rank)) = (self.status, member) {
            let l = &self.ranks[rank.index()];
            let age = now.saturating_duration_since(l.last_seen);
            return (!l.gone && (l.waiting > 0 || age <= budget)).then(|| {
                format!(
                    "rank {rank} of round {}, heard from {:.1} s ago",
                    self.round,
                    age.as_secs_f64()
                )
            });
        }
        let age = now.saturating_duration_since(self.identities.last_contact(id)?);
        (age <= budget).then(|| format!("heard from {:.1} s ago", age.as_secs_f64()))
    }

    pub(super) fn rendezvous_actions(
        &mut self,
        acts: Vec<RendezvousAction>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        for act in acts {
            match act {
                RendezvousAction::Closed(m) => out.extend(self.round_closed(m, now)),
                RendezvousAction::TimedOut { waited, joined } => {
                    let c = &self.prepared.config;
                    let reason = format!(
                        "rendezvous timed out after {:.0} s: {joined} of {} workers joined (at least {} needed)",
                        waited.as_secs_f64(),
                        c.workers,
                        c.min_workers()
                    );
                    out.extend(self.fail(reason, Cause::RendezvousTimeout, now));
                }
            }
        }
        out
    }

    fn round_closed(&mut self, m: Arc<Membership>, now: Instant) -> Vec<Action> {
        let prepared = self.prepared.clone();
        let d = &prepared.dataset;
        let world_size = m.world_size();
        self.ranks = vec![Liveness::new(now); world_size as usize];
        self.stepped = false;
        self.last_progress = now;
        self.round_start_step = self.resume.as_ref().map_or(0, |p| p.global_step);
        let devices: Vec<WorkerDevice> = m
            .members
            .iter()
            .map(|x| WorkerDevice {
                worker_id: x.candidate.worker_id.0.clone(),
                device: x.candidate.device.clone(),
                uuid: x.candidate.device_uuid.clone(),
            })
            .collect();
        self.counters.slots(world_size as usize);
        for x in &m.members {
            let joined = self
                .rounds_joined
                .entry(x.candidate.worker_id.clone())
                .or_default();
            *joined += 1;
            if *joined > 1 {
                self.counters.rejoined(x.rank.index());
            }
        }
        self.record_membership(&m);
        self.membership = Some(m);
        match choose(self.prepared.config.collective, &devices) {
            Ok((kind, why)) => {
                tracing::info!(run_id = %self.prepared.run_id, round = self.round, collective = %kind, reason = %why, "collective chosen");
                self.collective = Some((kind, why));
            }
            Err(e) => return self.fail(e.to_string(), Cause::Other, now),
        }
        match plan_run(&prepared.config, d.train.len(), d.valid.len(), world_size) {
            Ok(plan) => {
                self.plan = Some(Arc::new(plan));
                self.status = Status::Running;
                self.epoch_started = now;
                self.round_from = self
                    .resume
                    .as_ref()
                    .map_or((0, 0), |p| (p.epoch, p.step_in_epoch));
                tracing::info!(run_id = %self.prepared.run_id, round = self.round, world_size, before = "rendezvous", after = "running", "run state");
                vec![
                    Action::Output(Output::RunInfo(Box::new(self.run_info()))),
                    Action::Publish,
                ]
            }
            Err(e) => self.fail(
                format!("cannot start with world size {world_size}: {e}"),
                Cause::Other,
                now,
            ),
        }
    }

    /// A worker process the launcher started has exited (see [`Event::ProcessExited`]).
    pub(super) fn process_exited(
        &mut self,
        worker_id: &WorkerId,
        success: bool,
        aborted: bool,
        reason: String,
        now: Instant,
    ) -> Vec<Action> {
        let rank = self.membership.as_ref().and_then(|m| m.rank_of(worker_id));
        let left = rank.is_some_and(|r| self.ranks[r.index()].left);
        if let Some(r) = rank {
            self.ranks[r.index()].gone = true;
        }
        // Its process is gone: a restarted one may take the id at once.
        self.identities.lose(worker_id);
        if self.status.is_terminal() {
            let root_cause = self.failure.as_ref().is_some_and(|f| {
                f.reported_by.is_some_and(|by| Some(by) != rank)
                    && now.saturating_duration_since(f.at) <= ROOT_CAUSE_WINDOW
            });
            if success || aborted || !root_cause {
                return vec![];
            }
            tracing::info!(%reason, "a worker exit right after a peer's report is the root cause");
            self.failure = Some(Arc::new(Failure {
                reason,
                rendezvous_timeout: false,
                reported_by: None,
                at: now,
            }));
            return vec![
                Action::Output(Output::Summary(Box::new(self.summary(now)))),
                Action::Publish,
            ];
        }
        if (success && left) || rank.is_none() {
            // Finished its part, or not a member of this round (a process that died
            // waiting in the rendezvous withdrew with its Join call).
            return vec![];
        }
        self.restart_round(reason, Cause::Other, now)
    }
}
