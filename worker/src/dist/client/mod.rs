//! The gRPC client of the coordinator, for a training thread that is not async.
//!
//! Owns a small tokio runtime; blocking calls run `Handle::block_on` on the caller's (training)
//! thread, which is not a runtime thread, so this never blocks inside an async task. Heartbeats
//! run as a task on the same runtime.
//!
//! # Contract
//! * A call that cannot reach the coordinator (UNAVAILABLE, a broken connection, no answer
//!   within its deadline) is retried with backoff (0.1 s doubling to 2 s, with jitter) for up
//!   to `patience` (`--connect-timeout-s`): a restarted coordinator is waited for. Barrier
//!   calls are idempotent, so a retry is safe.
//! * Every attempt has a deadline: [`SHORT_CALL`] for calls the coordinator answers at once
//!   (heartbeats: their interval), [`WAIT_CALL`] for barriers and Join, which wait for other
//!   workers. A coordinator that stops answering on an open connection (a paused VM, a
//!   partition without RST) is found by HTTP/2 keepalive pings every `keepalive` (a quarter
//!   of `patience`, 1–10 s) that must be answered within as long again; the call then fails
//!   and is retried like any unreachable coordinator. Connecting (TCP, TLS, HTTP/2) is bounded
//!   the same way, so no call ever outlives `patience` plus one deadline. The exception is a
//!   worker leaving after SIGTERM ([`Client::leave_once`]): one attempt, at most 5 s.
//! * ABORTED → [`TrainError::RoundEnded`] (re-join); FAILED_PRECONDITION marked
//!   `ringtrain-run-status: failed` → [`TrainError::RunFailed`]; anything else →
//!   [`TrainError::Coordinator`].
//! * Heartbeats follow the current round in [`RoundCtl`]: a stale round aborts the round's ring
//!   (its blocked all-reduce fails at once). A failed run, a coordinator unreachable for
//!   `patience`, and SIGTERM past its grace (or outside a round) *stop* the client: the round's
//!   collective is aborted, every call in flight is cancelled and every later one returns
//!   [`Client::stopped`]'s error, so the worker returns a typed error that `main` turns into the
//!   exit code (3, 1, 143). No `process::exit` here; `main` keeps one backstop
//!   ([`exit_deadline`]) for a training thread that cannot be interrupted.

mod channel;
mod retry;
mod stop;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ringtrain_common::pb::coordinator_client::CoordinatorClient;
use ringtrain_common::pb::{self, RunStatus};
use tokio::runtime::Runtime;

use channel::{endpoint, Rpc};
pub use channel::{keepalive_for, Authorize, Security, MAX_MESSAGE_BYTES};
use retry::{attempt, rpc_error, run_failed, transient};
pub(super) use retry::{classify, Backoff};
pub use stop::{exit_deadline, Fatal};
use stop::{Stop, EXIT_DEADLINE, STOP_BACKSTOP};

use crate::collective::AbortHandle;
use crate::train::progress::Progress;
use crate::train::TrainError;

/// The round this worker is in, shared with the heartbeat task.
#[derive(Default)]
pub struct RoundCtl {
    /// What to send (rank, round token); `None` between rounds.
    pub heartbeat: Option<pb::HeartbeatRequest>,
    /// Ends the round's collective (ring sockets shut, or the NCCL communicator aborted).
    pub abort: Option<AbortHandle>,
    /// Set by the heartbeat task when the coordinator said the round is over.
    pub ended: bool,
    /// Set by the heartbeat task when the coordinator asks for a stop checkpoint.
    pub stop: bool,
}

/// Deadline of one attempt of a call the coordinator answers at once.
pub const SHORT_CALL: Duration = Duration::from_secs(30);
/// Deadline of one attempt of a call that waits for other workers (Join, barriers); liveness
/// meanwhile comes from HTTP/2 keepalive.
pub const WAIT_CALL: Duration = Duration::from_secs(15 * 60);
/// Deadline of [`Client::leave_once`].
pub const LEAVE_ONCE_CALL: Duration = Duration::from_secs(5);

/// A connected coordinator client.
pub struct Client {
    rt: Runtime,
    inner: Rpc,
    url: String,
    patience: Duration,
    stop: Arc<Stop>,
    /// The round the heartbeats follow; shared with the worker's loop.
    ctl: Arc<Mutex<RoundCtl>>,
}

impl Client {
    /// Connects to `url`, retrying with backoff for up to `patience` (the coordinator may start
    /// after its workers, or restart). `ctl` is the round the heartbeats will follow.
    pub fn connect(
        url: &str,
        patience: Duration,
        sec: &Security,
        ctl: Arc<Mutex<RoundCtl>>,
    ) -> Result<Self, TrainError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("ringtrain-rpc")
            .build()
            .map_err(|e| TrainError::Coordinator(format!("cannot start the RPC runtime: {e}")))?;
        let ep = endpoint(url, sec, patience)?;
        let authorize = Authorize::new(sec.token.as_ref())?;
        let mut backoff = Backoff::new(patience);
        // TCP, TLS and the HTTP/2 handshake: one bound per attempt, so a coordinator that
        // accepts but never answers is retried like one that refuses.
        let per_attempt = keepalive_for(patience) * 2;
        let channel = loop {
            let tried = rt.block_on(async {
                tokio::time::timeout(
                    per_attempt.min(backoff.left().max(Duration::from_millis(100))),
                    ep.connect(),
                )
                .await
            });
            let err = match tried {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:.0} s", per_attempt.as_secs_f64()),
            };
            if !backoff.wait() {
                return Err(TrainError::Coordinator(format!(
                    "connect: the coordinator at {url} did not answer within --connect-timeout-s {:.0} s: {err}",
                    patience.as_secs_f64()
                )));
            }
            tracing::debug!(%url, error = %err, "coordinator not reachable yet; retrying");
        };
        // Large replies (shards of 60,000 paths, weights) exceed tonic's 4 MB default.
        let inner = CoordinatorClient::with_interceptor(channel, authorize)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, _) = tokio::sync::watch::channel(false);
        Ok(Self {
            rt,
            inner,
            url: url.to_string(),
            patience,
            stop: Arc::new(Stop {
                fatal: Mutex::new(None),
                tx,
            }),
            ctl,
        })
    }

    /// Why the client stopped for good, as the error the worker returns (`None`: it did not).
    pub fn stopped(&self) -> Option<TrainError> {
        self.stop.fatal().map(Fatal::into_error)
    }

    /// Runs one unary call to completion on the RPC runtime, from the (non-async) caller thread,
    /// retrying while the coordinator cannot be reached.
    fn call<Req: Clone, T, F>(
        &self,
        what: &str,
        deadline: Duration,
        req: &Req,
        rpc: impl Fn(Rpc, Req) -> F,
    ) -> Result<T, TrainError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = Backoff::new(self.patience);
        loop {
            if let Some(e) = self.stopped() {
                return Err(e);
            }
            let stopped = self.stop.tx.subscribe();
            match self
                .rt
                .block_on(attempt(deadline, stopped, rpc(self.inner.clone(), req.clone())))
            {
                Ok(r) => return Ok(r.into_inner()),
                Err(_) if self.stopped().is_some() => {}
                Err(s) if transient(&s) && backoff.wait() => {
                    tracing::warn!(url = %self.url, call = what, error = %s.message(), "coordinator unreachable; retrying");
                }
                Err(s) if transient(&s) => {
                    return Err(TrainError::Coordinator(format!(
                        "{what}: the coordinator at {} did not answer within --connect-timeout-s {:.0} s: {}",
                        self.url,
                        self.patience.as_secs_f64(),
                        s.message()
                    )))
                }
                Err(s) => return Err(rpc_error(&self.url, what, s)),
            }
        }
    }

    /// One Join attempt (the caller decides what to retry); it waits for the round to close.
    pub fn join_once(&self, req: pb::JoinRequest) -> Result<pb::JoinReply, tonic::Status> {
        let stopped = self.stop.tx.subscribe();
        self.rt
            .block_on(attempt(WAIT_CALL, stopped, self.inner.clone().join(req)))
            .map(tonic::Response::into_inner)
    }

    /// One Leave, no retries, at most [`LEAVE_ONCE_CALL`]: for a worker on its way out after
    /// SIGTERM. Its stop checkpoint (when there was one) is already the coordinator's; a
    /// coordinator that stopped with it (Slurm's requeue signals every process of a job) must
    /// not hold the worker's exit for the rest of its grace period.
    pub fn leave_once(&self, req: pb::LeaveRequest) -> Result<pb::Verdict, tonic::Status> {
        let stopped = self.stop.tx.subscribe();
        self.rt
            .block_on(attempt(
                LEAVE_ONCE_CALL,
                stopped,
                self.inner.clone().leave(req),
            ))
            .map(tonic::Response::into_inner)
    }

    /// How long calls keep retrying an unreachable coordinator.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pixel_stats(&self, req: pb::PixelStatsReport) -> Result<pb::NormStats, TrainError> {
        self.call("pixel stats", WAIT_CALL, &req, |mut c, r| async move {
            c.report_pixel_stats(r).await
        })
    }

    pub fn epoch_plan(&self, req: pb::EpochPlanRequest) -> Result<pb::EpochPlan, TrainError> {
        self.call("epoch plan", SHORT_CALL, &req, |mut c, r| async move {
            c.get_epoch_plan(r).await
        })
    }

    pub fn report_epoch(&self, req: pb::EpochReport) -> Result<pb::Verdict, TrainError> {
        self.call("epoch report", WAIT_CALL, &req, |mut c, r| async move {
            c.report_epoch(r).await
        })
    }

    pub fn share_nccl_id(&self, req: pb::NcclIdRequest) -> Result<pb::NcclIdReply, TrainError> {
        self.call("NCCL id", WAIT_CALL, &req, |mut c, r| async move {
            c.share_nccl_id(r).await
        })
    }

    pub fn leave(&self, req: pb::LeaveRequest) -> Result<pb::Verdict, TrainError> {
        self.call("leave", SHORT_CALL, &req, |mut c, r| async move {
            c.leave(r).await
        })
    }

    /// On SIGTERM: sets `terminated` (the training loop then stops at a checkpoint the ranks
    /// agree on and the worker returns [`TrainError::Terminated`]). Outside a round (joining, or
    /// waiting for a coordinator) there is nothing to checkpoint, so the client stops at once;
    /// in a round it stops after `grace` if the worker has not returned by then.
    pub fn watch_sigterm(&self, terminated: Arc<std::sync::atomic::AtomicBool>, grace: Duration) {
        let (stop, ctl) = (self.stop.clone(), self.ctl.clone());
        self.rt.spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            term.recv().await;
            terminated.store(true, std::sync::atomic::Ordering::SeqCst);
            let in_round = ctl
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .heartbeat
                .is_some();
            if !in_round {
                tracing::warn!("SIGTERM outside a round: nothing to checkpoint; stopping");
                stop.stop(Fatal::Terminated, &ctl);
                return;
            }
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "SIGTERM: stopping at the next step with a checkpoint"
            );
            let _ = EXIT_DEADLINE.set((
                Instant::now() + grace + STOP_BACKSTOP,
                crate::EXIT_TERMINATED,
            ));
            tokio::time::sleep(grace).await;
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "no stop checkpoint within the grace period; stopping"
            );
            stop.stop(Fatal::Terminated, &ctl);
        });
    }

    /// A checkpoint inside an epoch (waits for every rank).
    pub fn checkpoint(&self, req: pb::CheckpointReport) -> Result<pb::Verdict, TrainError> {
        self.call("checkpoint", WAIT_CALL, &req, |mut c, r| async move {
            c.checkpoint(r).await
        })
    }

    /// Starts heartbeats every `interval` for whatever round `ctl` holds; each carries the
    /// current global step and `progress`'s counters (cumulative since this process started;
    /// the coordinator derives rates from them).
    pub fn start_heartbeats(&self, interval: Duration, progress: Arc<Progress>) {
        let (stop, ctl) = (self.stop.clone(), self.ctl.clone());
        let mut c = self.inner.clone();
        let url = self.url.clone();
        let patience = self.patience.max(interval);
        self.rt.spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let req = {
                    let g = ctl.lock().unwrap_or_else(PoisonError::into_inner);
                    g.heartbeat.clone()
                };
                let Some(mut req) = req else {
                    last_ok = tokio::time::Instant::now();
                    continue;
                };
                req.step = progress.step();
                let done = progress.sample();
                req.images_trained = done.images;
                req.allreduce_seconds_total = done.allreduce_nanos as f64 / 1e9;
                req.allreduces = done.allreduces;
                req.compute_seconds_total = done.compute_nanos as f64 / 1e9;
                req.wait_seconds_total = done.wait_nanos as f64 / 1e9;
                req.timed_steps = done.timed_steps;
                req.in_collective = progress.in_collective();
                match tokio::time::timeout(interval, c.heartbeat(req.clone())).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        last_ok = tokio::time::Instant::now();
                        if reply.stop {
                            let mut g = ctl.lock().unwrap_or_else(PoisonError::into_inner);
                            if g.heartbeat.as_ref().map(|h| h.round_token) == Some(req.round_token)
                            {
                                g.stop = true;
                            }
                        }
                        if reply.status == RunStatus::Failed as i32 {
                            tracing::error!(rank = req.rank, reason = %reply.reason, "coordinator stopped the run");
                            stop.stop(Fatal::RunFailed(reply.reason), &ctl);
                            return;
                        }
                    }
                    Ok(Err(status)) if status.code() == tonic::Code::Aborted => {
                        last_ok = tokio::time::Instant::now();
                        let mut g = ctl.lock().unwrap_or_else(PoisonError::into_inner);
                        if g.heartbeat.as_ref().map(|h| h.round_token) == Some(req.round_token) {
                            tracing::warn!(rank = req.rank, reason = %status.message(), "the coordinator ended this round; stopping it");
                            g.ended = true;
                            g.heartbeat = None;
                            if let Some(a) = g.abort.take() {
                                a();
                            }
                        }
                    }
                    Ok(Err(status)) if run_failed(&status) => {
                        stop.stop(Fatal::RunFailed(status.message().to_string()), &ctl);
                        return;
                    }
                    Ok(Err(status)) => tracing::warn!(%url, error = %status, "heartbeat failed"),
                    Err(_) => tracing::warn!(%url, "heartbeat timed out"),
                }
                if last_ok.elapsed() > patience {
                    let line = format!(
                        "heartbeat: the coordinator at {url} did not answer within --connect-timeout-s {:.0} s (last answer {:.1} s ago); giving up",
                        patience.as_secs_f64(),
                        last_ok.elapsed().as_secs_f64()
                    );
                    tracing::error!(%url, "{line}");
                    stop.stop(Fatal::Unreachable(line), &ctl);
                    return;
                }
            }
        });
    }
}
