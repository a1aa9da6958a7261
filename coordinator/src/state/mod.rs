//! The run state machine: everything the coordinator knows about one run, changed only by
//! [`RunState::on_event`].
//!
//! Owns admission checks, the barriers (pixel statistics, epochs), liveness, the run's status and
//! what must be written; not networking or waiting (`service.rs`), time (`now` comes in), or I/O
//! (it emits [`Action::Output`]s, whose types are `output.rs`, for `artifacts.rs` to write).
//!
//! # Contract
//! * `Rendezvous → Running` when the round closes and the plan works for its world size;
//!   `Running → Finished` when every rank left with ok = true after the last epoch;
//!   `any non-terminal → Failed` on the first failure, whose reason is kept and shown to every
//!   caller afterwards. Terminal states never change.
//! * A barrier completes when every rank of the round made the same report; reports are
//!   idempotent (a retry of a completed barrier just sees the result).
//! * A rank is alive while it has a barrier call in flight; otherwise it must be heard from
//!   (any call) at least every `heartbeat_interval × heartbeat_missed`, until it left.
//! * Pure and synchronous, like torchelastic's `_RendezvousOpExecutor`: the caller holds it in a
//!   `std::sync::Mutex`, applies the returned actions before unlocking, and publishes
//!   [`RunState::snapshot`] on a `watch` channel for waiters.
//!
//! * A lost rank ends the round instead of the run while restarts are left (`rounds.rs`):
//!   `Running → Rendezvous` with the next round, resuming from the last checkpoint.
//!
//! ```text
//!        ┌──── lost rank (silent, exited, recoverable Leave, member re-joins) ◀───┐
//!        ▼                                                                       │
//!   Rendezvous ──round closed──▶ Running ──all left ok──▶ Finished               │
//!        │                         │  └──────────────────────────────────────────┘
//!        └──timeout / error────────┴──divergence, Leave(ok=false), no restarts left──▶ Failed
//! ```
//! Tests: `tests.rs` beside this file.

mod admission;
pub mod epoch;
mod events;
mod growth;
#[cfg(test)]
mod growth_tests;
mod hang;
pub mod identity;
mod metrics;
pub mod midepoch;
mod nccl;
pub mod output;
mod records;
mod reports;
#[cfg(test)]
mod round_tests;
mod rounds;
mod skips;
#[cfg(test)]
mod stall_tests;
mod stalls;
pub mod straggler;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod throughput_tests;

use ringtrain_common::devices::CollectiveKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringtrain_common::data::PixelStats;

use crate::config::RunConfig;
use crate::ids::{Rank, WorkerId};
use crate::plan::{DatasetView, EpochSchedule, RunPlan};
use crate::rendezvous::{Membership, Rendezvous, RendezvousEvent, RendezvousSettings};
use crate::state::output::Output;
use epoch::{EpochAggregator, EpochReport};
pub use events::{Action, Event, JoinArgs, RunError, Snapshot};
pub use identity::{Admission, Secret};
pub use metrics::{Metrics, RankMetrics, RankPerf, RankTotals, Work};
pub use rounds::{Progress, ResumePoint, Resumed};

/// The wire protocol version this coordinator speaks (`PROTOCOL_VERSION_CURRENT`).
pub const PROTOCOL_VERSION: u32 = ringtrain_common::pb::ProtocolVersion::Current as u32;

/// The immutable inputs of a run, decided before the server starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Effective configuration (`RunConfig::resolved`).
    pub config: RunConfig,
    /// The run's id.
    pub run_id: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The scanned dataset.
    pub dataset: DatasetView,
}

/// The run's status (the wire's `RunStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Rendezvous,
    Running,
    Finished,
    Failed,
}

impl Status {
    /// Finished or failed: nothing changes any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Finished | Status::Failed)
    }
}

/// Why the run failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// One line for people; names the rank, file or rule.
    pub reason: String,
    /// The rendezvous did not complete in time (Join callers get `DeadlineExceeded`).
    pub rendezvous_timeout: bool,
    /// The rank whose Leave(ok = false) failed the run, if that was the cause.
    pub reported_by: Option<Rank>,
    /// When the run failed.
    pub at: Instant,
}

/// What failed the run, for [`RunState::fail`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    RendezvousTimeout,
    /// A rank's own failure report.
    Report(Rank),
    Other,
}

/// A worker process that dies takes its ring connections with it, so a peer's "peer lost"
/// report can beat the launcher's exit notice by a few milliseconds; an unexpected exit this
/// soon after such a report is the root cause and replaces the reason.
pub const ROOT_CAUSE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Liveness {
    last_seen: Instant,
    /// Global step from the rank's last heartbeat (progress display only).
    step: u64,
    /// Throughput between its heartbeats (display only).
    perf: RankPerf,
    /// The heartbeat the next rate is measured from: when, and the work it reported.
    rate_base: Option<(Instant, Work)>,
    waiting: u32,
    left: bool,
    gone: bool,
    informed: bool,
    /// Its training thread was inside the gradient all-reduce at its last heartbeat.
    in_collective: bool,
    /// Its step timings over the straggler window.
    window: straggler::Window,
    /// Its standing against the other ranks, as of the last judgement.
    standing: Option<straggler::Standing>,
}

impl Liveness {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            step: 0,
            perf: RankPerf::default(),
            rate_base: None,
            waiting: 0,
            left: false,
            gone: false,
            informed: false,
            in_collective: false,
            window: straggler::Window::default(),
            standing: None,
        }
    }
}

/// The run.
#[derive(Debug)]
pub struct RunState {
    prepared: Arc<Prepared>,
    started: Instant,
    rdzv: Rendezvous,
    status: Status,
    failure: Option<Arc<Failure>>,
    membership: Option<Arc<Membership>>,
    plan: Option<Arc<RunPlan>>,
    ranks: Vec<Liveness>,
    pixel: BTreeMap<Rank, Vec<PixelStats>>,
    norm: Option<Vec<PixelStats>>,
    /// Files workers left out while decoding (`skip_bad`), by path relative to the data root,
    /// over every round: listed in `run.json`, counted in `summary.json`.
    decode_skipped: BTreeMap<String, String>,
    reports: BTreeMap<Rank, EpochReport>,
    epoch_started: Instant,
    agg: EpochAggregator,
    round: u32,
    round_token: u64,
    restarts: u32,
    resume: Option<Arc<ResumePoint>>,
    /// Where the running round started: the epoch and its steps already done then (from the
    /// checkpoint it resumed), fixed for the round. Unlike `resume`, which every checkpoint
    /// inside an epoch moves on, this says which of the epoch's steps the round itself trained
    /// (and its ranks timed), for images/s.
    round_from: (u32, u32),
    /// Steps done by the last completed epoch.
    global_step: u64,
    best: Option<(f64, String)>,
    /// Pending reports of a checkpoint inside an epoch.
    mid: BTreeMap<Rank, midepoch::MidReport>,
    checkpoint_step: u64,
    stop_requested: bool,
    stopped: bool,
    /// The current round's collective and why it was chosen.
    collective: Option<(CollectiveKind, String)>,
    nccl_id: Option<Arc<Vec<u8>>>,
    /// Totals for `/metrics`.
    counters: metrics::Counters,
    /// Rounds each worker was admitted to by this coordinator (its restarts: that minus 1).
    rounds_joined: BTreeMap<WorkerId, u32>,
    /// Every worker's secret, and whether its holder is alive.
    identities: identity::Identities,
    /// The previous `Tick`: a gap far longer than the ticker's period means this process was
    /// not running (SIGSTOP, a paused VM), which must not count against the workers.
    last_tick: Option<Instant>,
    /// The running round's last progress (a step, a report, a barrier), and whether any rank
    /// has stepped in it yet (the hang check starts then: loading data is not a hang).
    last_progress: Instant,
    stepped: bool,
    /// The global step the running round started from.
    round_start_step: u64,
    /// Workers that asked to join the running round, and when they last asked (`growth.rs`).
    queued: BTreeMap<WorkerId, Instant>,
    /// The world size the open round grows to (closes at), when it was opened to grow.
    grow_to: Option<u32>,
    /// The membership history, and why the last round ended (for the next segment).
    history: Vec<output::Segment>,
    round_after: String,
}

type Actions = Result<Vec<Action>, RunError>;

impl RunState {
    /// A run waiting for its workers from `now`.
    pub fn new(prepared: Arc<Prepared>, now: Instant) -> Self {
        Self::resuming(prepared, now, None)
    }

    /// A run waiting for its workers from `now`, continuing `resumed` when given.
    pub fn resuming(prepared: Arc<Prepared>, now: Instant, resumed: Option<Resumed>) -> Self {
        let c = &prepared.config;
        let settings = RendezvousSettings {
            min_workers: c.min_workers(),
            max_workers: c.workers,
            join_timeout: Duration::from_secs_f64(c.join_timeout_s),
            last_call: Duration::from_secs_f64(c.last_call_s),
        };
        let round = resumed.as_ref().map_or(1, |r| r.round + 1);
        let history = resumed
            .as_ref()
            .map_or_else(Vec::new, |r| r.progress.membership.clone());
        let round_after = if resumed.is_some() {
            "the coordinator resumed from a checkpoint"
        } else {
            "start"
        }
        .to_string();
        let (agg, best, restarts) = resumed
            .as_ref()
            .map_or_else(|| (EpochAggregator::default(), None, 0), rounds::restored);
        Self {
            round,
            round_token: rounds::round_token(round),
            restarts,
            // Steps done by the last completed epoch (a checkpoint may sit inside an epoch).
            global_step: resumed.as_ref().map_or(0, |r| {
                r.point.global_step - u64::from(r.point.step_in_epoch)
            }),
            checkpoint_step: resumed.as_ref().map_or(0, |r| r.point.global_step),
            round_from: (0, 0),
            resume: resumed.map(|r| Arc::new(r.point)),
            best,
            agg,
            mid: BTreeMap::new(),
            stop_requested: false,
            stopped: false,
            collective: None,
            nccl_id: None,
            counters: metrics::Counters::default(),
            rounds_joined: BTreeMap::new(),
            identities: identity::Identities::default(),
            last_tick: None,
            last_progress: now,
            stepped: false,
            round_start_step: 0,
            queued: BTreeMap::new(),
            grow_to: None,
            history,
            round_after,
            rdzv: Rendezvous::with_round(settings, now, round),
            prepared,
            started: now,
            status: Status::Rendezvous,
            failure: None,
            membership: None,
            plan: None,
            ranks: Vec::new(),
            pixel: BTreeMap::new(),
            norm: None,
            decode_skipped: BTreeMap::new(),
            reports: BTreeMap::new(),
            epoch_started: now,
        }
    }

    /// What waiters observe.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            status: self.status,
            failure: self.failure.clone(),
            membership: self.membership.clone(),
            plan: self.plan.clone(),
            norm: self.norm.clone(),
            epochs_done: self.agg.done(),
            round: self.round,
            round_token: self.round_token,
            resume: self.resume.clone(),
            checkpoint_step: self.checkpoint_step,
            stop_requested: self.stop_requested,
            stopped: self.stopped,
            collective: self.collective.as_ref().map(|c| c.0),
            nccl_id: self.nccl_id.clone(),
        }
    }

    /// The inputs.
    pub fn prepared(&self) -> &Arc<Prepared> {
        &self.prepared
    }

    /// Status and failure reason (empty unless failed), as Heartbeat and Leave reply.
    pub fn verdict(&self) -> (Status, String) {
        (
            self.status,
            self.failure
                .as_ref()
                .map(|f| f.reason.clone())
                .unwrap_or_default(),
        )
    }

    /// Status and step progress (the highest step a rank reported, or the steps of finished
    /// epochs), for the health service's liveness.
    pub fn liveness_progress(&self) -> (Status, u64) {
        let ranks = self.ranks.iter().map(|r| r.step).max().unwrap_or(0);
        (
            self.status,
            ranks.max(self.global_step).max(self.checkpoint_step),
        )
    }

    /// True when every rank has been told the run's end, left, or is gone; a failed coordinator
    /// keeps serving until then (bounded by the caller) so workers exit with "aborted".
    pub fn all_informed(&self) -> bool {
        self.ranks.iter().all(|l| l.left || l.gone || l.informed)
    }

    /// The learning rates and beta1 of one epoch, for `rank` of run `run_id` (a query).
    pub fn epoch_plan(
        &self,
        run_id: &str,
        round_token: u64,
        rank: Rank,
        epoch: u32,
    ) -> Result<EpochSchedule, RunError> {
        let plan = self.running_rank(run_id, round_token, rank)?;
        plan.epoch_schedule(epoch).ok_or_else(|| {
            RunError::BadRequest(format!(
                "epoch {epoch} does not exist; the run has {} epochs",
                plan.epochs
            ))
        })
    }

    /// Progress for display while running: (epoch, steps done in it, steps per epoch), paced by
    /// the slowest rank's last heartbeat. `None` before the plan exists or after the end.
    pub fn progress(&self) -> Option<(u32, u64, u32)> {
        let plan = self.plan.as_ref()?;
        if self.status.is_terminal() || self.ranks.is_empty() || plan.steps_per_epoch == 0 {
            return None;
        }
        let step = self.ranks.iter().map(|l| l.step).min()?;
        let per = u64::from(plan.steps_per_epoch);
        Some(((step / per) as u32, step % per, plan.steps_per_epoch))
    }

    /// Applies one event; on `Ok`, the caller must apply the actions in order.
    pub fn on_event(&mut self, ev: Event, now: Instant) -> Actions {
        match ev {
            Event::Join(args) => self.join(args, now),
            Event::AbandonJoin(id) => {
                self.rdzv.on_event(RendezvousEvent::Abandon(id), now)?;
                Ok(vec![])
            }
            Event::Heartbeat {
                run_id,
                round_token,
                rank,
                worker_id,
                epoch,
                step,
                work,
                in_collective,
            } => {
                self.check_rank(&run_id, round_token, rank)?;
                let expected = self.worker_id(rank);
                // An empty id is accepted: the rank alone identifies the caller.
                if !worker_id.0.is_empty() && worker_id != expected {
                    return Err(RunError::WrongWorker {
                        rank,
                        expected,
                        got: worker_id,
                    });
                }
                tracing::debug!(rank = rank.0, epoch, step, "heartbeat");
                let interval = self.prepared.config.heartbeat_interval_s;
                self.counters.work(rank.index(), &expected, work);
                let window = Duration::from_secs_f64(self.prepared.config.straggler_window_s);
                let l = &mut self.ranks[rank.index()];
                self.counters
                    .heartbeat(now.saturating_duration_since(l.last_seen), interval);
                l.last_seen = now;
                let stepped = step > l.step;
                l.step = l.step.max(step);
                l.in_collective = in_collective;
                if step >= self.round_start_step + straggler::WARMUP_STEPS {
                    l.window.push(now, work.timing, window);
                }
                // Rates over at least half an interval: two beats that arrive bunched up
                // would make a spike.
                match l.rate_base {
                    Some((at, base)) => {
                        let secs = now.saturating_duration_since(at).as_secs_f64();
                        if secs >= interval / 2.0 {
                            l.perf = RankPerf::over(work.since(base), secs);
                            l.rate_base = Some((now, work));
                        }
                    }
                    None => l.rate_base = Some((now, work)),
                }
                l.informed |= self.status.is_terminal();
                if stepped && self.status == Status::Running {
                    self.stepped = true;
                    self.last_progress = now;
                }
                Ok(self.judge_stragglers())
            }
            Event::PixelStats {
                run_id,
                round_token,
                rank,
                stats,
                skipped,
            } => self.pixel_stats(&run_id, round_token, rank, stats, skipped, now),
            Event::Epoch {
                run_id,
                round_token,
                report,
            } => self.epoch(&run_id, round_token, report, now),
            Event::Checkpoint {
                run_id,
                round_token,
                report,
            } => self.mid_checkpoint(&run_id, round_token, report, now),
            Event::NcclId {
                run_id,
                round_token,
                rank,
                unique_id,
            } => self.nccl_id(&run_id, round_token, rank, unique_id, now),
            Event::RequestStop => {
                if self.stop_requested {
                    return Ok(vec![]);
                }
                self.stop_requested = true;
                // Nothing runs that could take a checkpoint: stopped already.
                self.stopped = self.status != Status::Running;
                tracing::warn!(run_id = %self.prepared.run_id, stopped = self.stopped, "stop requested; asking the ranks for a stop checkpoint");
                Ok(vec![Action::Publish])
            }
            Event::Leave {
                run_id,
                round_token,
                rank,
                ok,
                recoverable,
                reason,
                weights,
                work,
            } => {
                // The final counters (a successful Leave): the totals include the steps after
                // the last heartbeat. Only from the rank's own worker, as on a heartbeat.
                if let Some(work) = work {
                    if self.check_rank(&run_id, round_token, rank).is_ok() {
                        let id = self.worker_id(rank);
                        self.counters.work(rank.index(), &id, work);
                    }
                }
                self.leave(
                    &run_id,
                    round_token,
                    rank,
                    reports::LeaveArgs {
                        ok,
                        recoverable,
                        reason,
                        weights,
                    },
                    now,
                )
            }
            Event::WaitStart(rank) => {
                self.last_progress = now;
                if let Some(l) = self.ranks.get_mut(rank.index()) {
                    l.waiting += 1;
                }
                Ok(vec![])
            }
            Event::WaitEnd(rank) => {
                self.last_progress = now;
                let failed = self.status == Status::Failed;
                if let Some(l) = self.ranks.get_mut(rank.index()) {
                    l.waiting = l.waiting.saturating_sub(1);
                    l.last_seen = now;
                    l.informed |= failed;
                }
                Ok(vec![])
            }
            Event::ProcessExited {
                worker_id,
                success,
                aborted,
                reason,
            } => Ok(self.process_exited(&worker_id, success, aborted, reason, now)),
            Event::Fail(reason) => Ok(self.fail(reason, Cause::Other, now)),
            Event::Tick => self.tick(now),
        }
    }

    /// Checks that a call for `rank` of round `round_token` carries the secret of the worker that
    /// holds the rank. Only that: a call of another round, for a rank that does not exist or
    /// while no round runs passes here and is refused (or answered) by its event as before.
    pub fn authenticate(
        &self,
        round_token: u64,
        rank: Rank,
        secret: &[u8],
    ) -> Result<(), RunError> {
        if round_token != self.round_token {
            return Ok(());
        }
        let Some(member) = self.membership.as_ref().and_then(|m| m.member(rank)) else {
            return Ok(());
        };
        let worker_id = &member.candidate.worker_id;
        if self.identities.verify(worker_id, secret) {
            return Ok(());
        }
        Err(RunError::NotAuthenticated {
            rank,
            worker_id: worker_id.clone(),
        })
    }

    /// The secret of `worker_id`, once a Join issued one.
    pub fn secret_of(&self, worker_id: &WorkerId) -> Option<Secret> {
        self.identities.secret_of(worker_id)
    }

    /// The plan, when `rank` may talk about the running round under `run_id`.
    fn running_rank(
        &self,
        run_id: &str,
        round_token: u64,
        rank: Rank,
    ) -> Result<&Arc<RunPlan>, RunError> {
        self.check_rank(run_id, round_token, rank)?;
        match self.status {
            // `round_closed` sets the plan before it sets Running, and nothing unsets it.
            Status::Running => Ok(self
                .plan
                .as_ref()
                .expect("a running round always has a plan")),
            Status::Failed => Err(RunError::Failed {
                reason: self.verdict().1,
            }),
            status => Err(RunError::NotRunning { status }),
        }
    }

    fn check_rank(&self, run_id: &str, round_token: u64, rank: Rank) -> Result<(), RunError> {
        if run_id != self.prepared.run_id {
            return Err(RunError::RunIdMismatch {
                got: run_id.into(),
                want: self.prepared.run_id.clone(),
            });
        }
        if round_token != self.round_token && self.status != Status::Failed {
            return Err(RunError::StaleRound { round: self.round });
        }
        let Some(m) = &self.membership else {
            return Err(match &self.failure {
                Some(f) => RunError::Failed {
                    reason: f.reason.clone(),
                },
                None => RunError::NotRunning {
                    status: self.status,
                },
            });
        };
        if rank.0 >= m.world_size() {
            return Err(RunError::UnknownRank {
                rank,
                world_size: m.world_size(),
            });
        }
        Ok(())
    }

    fn tick(&mut self, now: Instant) -> Actions {
        self.forgive_own_pause(now);
        if self.status == Status::Rendezvous {
            let acts = self.rdzv.on_event(RendezvousEvent::Tick, now)?;
            return Ok(self.rendezvous_actions(acts, now));
        }
        if self.status != Status::Running {
            return Ok(vec![]);
        }
        if let Some(out) = self.hang_check(now) {
            return Ok(out);
        }
        let c = &self.prepared.config;
        let limit = Duration::from_secs_f64(c.heartbeat_interval_s * f64::from(c.heartbeat_missed));
        let silent = self.ranks.iter().enumerate().find(|(_, l)| {
            !l.left
                && !l.gone
                && l.waiting == 0
                && now.saturating_duration_since(l.last_seen) > limit
        });
        let Some((r, l)) = silent else {
            return Ok(vec![]);
        };
        let rank = Rank(r as u32);
        let reason = format!(
            "rank {rank} ({}) missed {} heartbeats: not heard from for {:.1} s",
            self.worker_id(rank),
            c.heartbeat_missed,
            now.saturating_duration_since(l.last_seen).as_secs_f64()
        );
        // Declared lost: its id is free for whoever joins with it next.
        self.identities.lose(&self.worker_id(rank));
        Ok(self.restart_round(reason, Cause::Other, now))
    }

    /// When the ticks stopped for longer than a heartbeat interval, this process was not
    /// running: the workers' heartbeats could not be heard meanwhile, so that time is added to
    /// every rank's last contact instead of declaring them lost.
    fn forgive_own_pause(&mut self, now: Instant) {
        let Some(prev) = self.last_tick.replace(now) else {
            return;
        };
        let gap = now.saturating_duration_since(prev);
        let interval = Duration::from_secs_f64(self.prepared.config.heartbeat_interval_s);
        if gap <= interval.max(Duration::from_secs(2)) {
            return;
        }
        tracing::warn!(run_id = %self.prepared.run_id, paused_s = gap.as_secs_f64(),
            "the coordinator was not running (paused or stopped); not counting that time against the workers' heartbeats");
        for l in &mut self.ranks {
            l.last_seen = (l.last_seen + gap).min(now);
        }
        self.last_progress = (self.last_progress + gap).min(now);
    }

    fn fail(&mut self, reason: String, cause: Cause, now: Instant) -> Vec<Action> {
        if self.status.is_terminal() {
            return vec![];
        }
        // The one place a run failure is logged; callers only see it in replies.
        tracing::error!(run_id = %self.prepared.run_id, before = ?self.status, after = "failed", %reason, "run failed");
        self.status = Status::Failed;
        let reported_by = match cause {
            Cause::Report(rank) => Some(rank),
            _ => None,
        };
        self.failure = Some(Arc::new(Failure {
            reason,
            rendezvous_timeout: cause == Cause::RendezvousTimeout,
            reported_by,
            at: now,
        }));
        vec![
            Action::Output(Output::Summary(Box::new(self.summary(now)))),
            Action::Publish,
        ]
    }

    fn worker_id(&self, rank: Rank) -> WorkerId {
        self.membership
            .as_ref()
            .and_then(|m| m.member(rank))
            .map_or_else(|| WorkerId("?".into()), |m| m.candidate.worker_id.clone())
    }
}
