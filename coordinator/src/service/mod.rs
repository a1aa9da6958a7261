//! The gRPC edge: `ringtrain.v1.Coordinator` on top of the run state machine.
//!
//! Owns translating requests into [`Event`]s, waiting at barriers, building replies, and the one
//! mapping from domain errors to gRPC status codes; not the rules themselves (`state`).
//!
//! # Contract
//! * Errors: version/run/model/dataset mismatch and "not running yet" → `FAILED_PRECONDITION`;
//!   duplicate worker or closed round → `ALREADY_EXISTS`; rendezvous timeout →
//!   `DEADLINE_EXCEEDED`; unknown rank or a rank used by another worker → `NOT_FOUND`; malformed
//!   request or an impossible report → `INVALID_ARGUMENT`; a call for a rank without its worker's
//!   secret → `PERMISSION_DENIED`; a Join with a live worker's id without its secret →
//!   `ALREADY_EXISTS`; a request of an ended round → `ABORTED` (re-join); a failed
//!   run → `FAILED_PRECONDITION` with the reason and metadata `ringtrain-run-status: failed`,
//!   except where the reply has a status field (Heartbeat, ReportEpoch, Leave), which then says
//!   `FAILED`.
//! * Barrier calls (Join, ReportPixelStats, ReportEpoch) wait on the state's `watch` channel and
//!   return as soon as the barrier completes, the round ends or the run fails: never a hang.
//! * While a barrier call waits, its rank counts as alive; a Join whose caller disconnects
//!   before the round closes is withdrawn from the round.
//!
//! Concurrency: the state lives in a `std::sync::Mutex` taken only for the synchronous
//! `on_event`, never across `.await`. Tests: `coordinator/tests/service.rs` calls these trait
//! methods directly.

mod barrier;
mod reply;
mod status;

use std::sync::Arc;

use ringtrain_common::data::PixelStats;
use ringtrain_common::pb::{self, coordinator_server::Coordinator};
use tonic::{Request, Response, Status};

use barrier::{Barrier, PendingJoin};
use reply::join_reply;
pub(crate) use status::peer;
use status::{
    failed_verdict, failure_reason, refuse, run_failed, stale, to_status, wire_status, REFUSALS,
};

use crate::ids::{Rank, WorkerId};
use crate::rendezvous::Candidate;
use crate::shared::Shared;
use crate::state::epoch::EpochReport;
use crate::state::midepoch::MidReport;
use crate::state::straggler::Timing;
use crate::state::{self, Event, JoinArgs, RunError, Secret, Snapshot, Work};

/// The tonic service; cheap to clone.
#[derive(Clone)]
pub struct CoordinatorService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CoordinatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorService").finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        let worker_id = WorkerId(r.worker_id);
        let fresh_secret = Secret::random()
            .map_err(|e| Status::unavailable(format!("no randomness for a worker secret: {e}")))?;
        let args = JoinArgs {
            protocol_version: r.protocol_version,
            run_id: r.run_id,
            model: r.model,
            dataset_fingerprint: r.dataset_fingerprint,
            candidate: Candidate {
                worker_id: worker_id.clone(),
                collective_addr: r.collective_addr,
                device: r.device,
                device_uuid: r.device_uuid,
            },
            secret: r.worker_secret,
            fresh_secret,
        };
        let (joined_round, secret) = self
            .shared
            .apply(Event::Join(args), |s| {
                (s.snapshot().round, s.secret_of(&worker_id))
            })
            .map_err(|e| {
                // Refused workers (wrong version, run id, model, dataset; a live worker's id
                // without its secret; a full round) are logged: nothing they sent is used.
                if !matches!(e, RunError::Stopping) {
                    if let Some(left_out) = REFUSALS.allow() {
                        tracing::warn!(worker_id = %worker_id, %peer, reason = %e, left_out, "join refused");
                    }
                }
                to_status(e)
            })?;
        let pending = PendingJoin::new(&self.shared, worker_id.clone());
        let snap = self
            .wait(0, |s| {
                s.round != joined_round
                    || (s.plan.is_some()
                        && s.membership
                            .as_ref()
                            .is_some_and(|m| m.rank_of(&worker_id).is_some()))
            })
            .await?;
        pending.settled();
        if snap.status == state::Status::Failed {
            let timed_out = snap.failure.as_ref().is_some_and(|f| f.rendezvous_timeout);
            let reason = failure_reason(&snap);
            return Err(if timed_out {
                Status::deadline_exceeded(reason)
            } else {
                run_failed(format!("run failed: {reason}"))
            });
        }
        let (Some(m), Some(plan)) = (&snap.membership, &snap.plan) else {
            return Err(stale(&snap));
        };
        let rank = m.rank_of(&worker_id).ok_or_else(|| {
            Status::aborted(format!(
                "worker {worker_id} is not part of the closed round"
            ))
        })?;
        let prepared = self.shared.read(|s| s.prepared().clone());
        tracing::info!(run_id = %prepared.run_id, round = m.round, rank = rank.0, world_size = m.world_size(), worker_id = %worker_id, %peer, "rank assigned");
        let mut reply = join_reply(&prepared, &snap, m, plan, rank);
        // The secret issued when it joined; the Join event always leaves one.
        reply.worker_secret = secret.map(|x| x.0.to_vec()).unwrap_or_default();
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        self.authenticate(
            "heartbeat",
            &peer,
            r.round_token,
            Rank(r.rank),
            &r.worker_secret,
        )?;
        let ev = Event::Heartbeat {
            run_id: r.run_id,
            round_token: r.round_token,
            rank: Rank(r.rank),
            worker_id: WorkerId(r.worker_id),
            epoch: r.epoch,
            step: r.step,
            work: Work::from_wire(r.images_trained, r.allreduce_seconds_total, r.allreduces)
                .with_timing(Timing::from_wire(
                    r.compute_seconds_total,
                    r.wait_seconds_total,
                    r.timed_steps,
                )),
            in_collective: r.in_collective,
        };
        match self
            .shared
            .apply(ev, |s| (s.verdict(), s.snapshot().stop_requested))
        {
            Ok(((status, reason), stop)) => Ok(Response::new(pb::HeartbeatReply {
                status: wire_status(status) as i32,
                reason,
                stop,
            })),
            Err(RunError::Failed { reason }) => Ok(Response::new(pb::HeartbeatReply {
                status: pb::RunStatus::Failed as i32,
                reason,
                stop: false,
            })),
            Err(e) => Err(refuse("heartbeat", &peer, e)),
        }
    }

    async fn report_pixel_stats(
        &self,
        request: Request<pb::PixelStatsReport>,
    ) -> Result<Response<pb::NormStats>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        let rank = Rank(r.rank);
        self.authenticate("pixel stats", &peer, r.round_token, rank, &r.worker_secret)?;
        let stats = r
            .channels
            .iter()
            .map(|c| PixelStats {
                sum: c.sum,
                sum_sq: c.sum_sq,
                count: c.count,
            })
            .collect();
        let ev = Event::PixelStats {
            run_id: r.run_id,
            round_token: r.round_token,
            rank,
            stats,
            skipped: r.skipped.into_iter().map(|s| (s.path, s.reason)).collect(),
        };
        let done = |s: &Snapshot| s.norm.is_some();
        match self
            .barrier("pixel stats", &peer, rank, r.round_token, ev, done)
            .await?
        {
            Barrier::Done(Snapshot { norm: Some(n), .. }) => Ok(Response::new(pb::NormStats {
                mean: n.iter().map(|c| c.mean() as f32).collect(),
                std: n.iter().map(|c| c.std() as f32).collect(),
                count: n.first().map_or(0, |c| c.count),
            })),
            Barrier::Done(_) => Err(Status::internal(
                "the pixel barrier ended without statistics",
            )),
            Barrier::Failed(reason) => Err(run_failed(format!("run failed: {reason}"))),
        }
    }

    async fn get_epoch_plan(
        &self,
        request: Request<pb::EpochPlanRequest>,
    ) -> Result<Response<pb::EpochPlan>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        self.authenticate(
            "epoch plan",
            &peer,
            r.round_token,
            Rank(r.rank),
            &r.worker_secret,
        )?;
        let sched = self
            .shared
            .read(|s| s.epoch_plan(&r.run_id, r.round_token, Rank(r.rank), r.epoch))
            .map_err(|e| refuse("epoch plan", &peer, e))?;
        Ok(Response::new(pb::EpochPlan {
            epoch: r.epoch,
            first_step: sched.first_step,
            lr: sched.points.iter().map(|p| p.lr).collect(),
            beta1: sched.points.iter().map(|p| p.beta1).collect(),
        }))
    }

    async fn report_epoch(
        &self,
        request: Request<pb::EpochReport>,
    ) -> Result<Response<pb::Verdict>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        let (rank, epoch) = (Rank(r.rank), r.epoch);
        self.authenticate("epoch report", &peer, r.round_token, rank, &r.worker_secret)?;
        let report = EpochReport {
            rank,
            epoch,
            step_losses: r.step_losses,
            valid_loss_sum: r.valid_loss_sum,
            valid_correct: r.valid_correct,
            valid_count: r.valid_count,
            params_hash: r.params_hash,
            train_seconds: r.train_seconds,
            model: r.model_safetensors,
            optimizer: r.optimizer_safetensors,
            model_digest: r.model_digest,
            optimizer_digest: r.optimizer_digest,
        };
        let token = r.round_token;
        let ev = Event::Epoch {
            run_id: r.run_id,
            round_token: token,
            report,
        };
        let done = |s: &Snapshot| s.epochs_done > epoch;
        let b = self
            .barrier("epoch report", &peer, rank, token, ev, done)
            .await?;
        Ok(Response::new(b.verdict()))
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointReport>,
    ) -> Result<Response<pb::Verdict>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        let (rank, step, token) = (Rank(r.rank), r.global_step, r.round_token);
        self.authenticate("checkpoint", &peer, token, rank, &r.worker_secret)?;
        let report = MidReport {
            rank,
            epoch: r.epoch,
            step_in_epoch: r.step_in_epoch,
            global_step: step,
            step_losses: r.step_losses,
            params_hash: r.params_hash,
            model: r.model_safetensors,
            optimizer: r.optimizer_safetensors,
            model_digest: r.model_digest,
            optimizer_digest: r.optimizer_digest,
            stop: r.stop,
            preempted: r.preempted,
        };
        let ev = Event::Checkpoint {
            run_id: r.run_id,
            round_token: token,
            report,
        };
        let done = |s: &Snapshot| s.checkpoint_step >= step;
        let b = self
            .barrier("checkpoint", &peer, rank, token, ev, done)
            .await?;
        Ok(Response::new(b.verdict()))
    }

    async fn share_nccl_id(
        &self,
        request: Request<pb::NcclIdRequest>,
    ) -> Result<Response<pb::NcclIdReply>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        let (rank, token) = (Rank(r.rank), r.round_token);
        self.authenticate("NCCL id", &peer, token, rank, &r.worker_secret)?;
        let ev = Event::NcclId {
            run_id: r.run_id,
            round_token: token,
            rank,
            unique_id: r.unique_id,
        };
        let done = |s: &Snapshot| s.nccl_id.is_some();
        match self
            .barrier("NCCL id", &peer, rank, token, ev, done)
            .await?
        {
            Barrier::Done(Snapshot {
                nccl_id: Some(id), ..
            }) => Ok(Response::new(pb::NcclIdReply {
                unique_id: id.to_vec(),
            })),
            Barrier::Done(_) => Err(Status::internal("the NCCL barrier ended without an id")),
            Barrier::Failed(reason) => Err(run_failed(format!("run failed: {reason}"))),
        }
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::Verdict>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        self.authenticate(
            "leave",
            &peer,
            r.round_token,
            Rank(r.rank),
            &r.worker_secret,
        )?;
        let ev = Event::Leave {
            run_id: r.run_id,
            round_token: r.round_token,
            rank: Rank(r.rank),
            ok: r.ok,
            recoverable: r.recoverable,
            reason: r.reason,
            weights: r.weights_safetensors,
            work: (r.images_trained > 0 || r.allreduces > 0).then(|| {
                Work::from_wire(r.images_trained, r.allreduce_seconds_total, r.allreduces)
            }),
        };
        match self.shared.apply(ev, |s| s.verdict()) {
            Ok((status, reason)) => Ok(Response::new(pb::Verdict {
                status: wire_status(status) as i32,
                reason,
            })),
            Err(RunError::Failed { reason }) => Ok(Response::new(failed_verdict(reason))),
            Err(e) => Err(refuse("leave", &peer, e)),
        }
    }
}
