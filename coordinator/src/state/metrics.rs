//! What `/metrics` reports about the run: totals kept by the state machine and a snapshot of
//! the current round, in Prometheus terms (`crate::exposition` renders them).
//!
//! Same contract as the parent module; split off only to keep files small. In addition:
//! * Workers report cumulative counts ([`Work`], since their process started); the coordinator
//!   adds up the differences between a worker's consecutive reports per rank slot, so the
//!   per-rank totals only ever grow while this coordinator runs. A count lower than the
//!   worker's previous report is a new worker process, which counts from 0: all of it is new.
//! * Display rates (`/status`, the dashboard) are derived from the differences between two
//!   heartbeats of the same rank in one round, at least half a heartbeat interval apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::straggler::{PerStep, Standing, Timing};
use super::{RunState, Status};
use crate::ids::WorkerId;

/// Totals since this coordinator started (restored runs start again at 0, as Prometheus
/// counters may).
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    pub heartbeats: u64,
    /// Heartbeat intervals that passed without one, summed over every gap longer than 1.5
    /// intervals.
    pub heartbeats_missed: u64,
    pub checkpoints: u64,
    pub last_checkpoint_unix_ms: Option<u64>,
    /// Work done in each rank slot, summed over the workers that held it.
    pub rank_work: Vec<Work>,
    /// Times each rank slot was taken by a worker that re-joined after a round ended.
    pub rank_restarts: Vec<u64>,
    /// Times a rank was named a straggler.
    pub stragglers_named: u64,
    /// Every worker's latest report, which its next one is compared with.
    reported: BTreeMap<WorkerId, Work>,
}

impl Counters {
    /// A heartbeat arrived `gap` after the rank's previous sign of life.
    pub fn heartbeat(&mut self, gap: Duration, interval_s: f64) {
        self.heartbeats += 1;
        let missed = (gap.as_secs_f64() / interval_s.max(1e-3) - 0.5).floor();
        if missed >= 1.0 {
            self.heartbeats_missed += missed as u64;
        }
    }

    /// A round of `world_size` ranks starts: every slot has its series from now on.
    pub fn slots(&mut self, world_size: usize) {
        if self.rank_work.len() < world_size {
            self.rank_work.resize(world_size, Work::default());
            self.rank_restarts.resize(world_size, 0);
        }
    }

    /// Slot `rank` was taken by a worker that re-joined.
    pub fn rejoined(&mut self, rank: usize) {
        self.slots(rank + 1);
        self.rank_restarts[rank] += 1;
    }

    /// `worker`, in slot `rank`, reported `work`: adds what it did since its previous report
    /// (all of `work` for a worker not heard from yet, or a new process).
    pub fn work(&mut self, rank: usize, worker: &WorkerId, work: Work) {
        // A report without step timings (a final Leave carries none) from the same process
        // leaves them as they were, rather than looking like a process that started again.
        let work = match self.reported.get(worker) {
            Some(prev)
                if work.timing == Timing::default()
                    && work.images >= prev.images
                    && work.allreduces >= prev.allreduces =>
            {
                Work {
                    timing: prev.timing,
                    ..work
                }
            }
            _ => work,
        };
        let prev = match self.reported.get_mut(worker) {
            Some(prev) => std::mem::replace(prev, work),
            None => {
                self.reported.insert(worker.clone(), work);
                Work::default()
            }
        };
        let done = work.since(prev);
        self.slots(rank + 1);
        self.rank_work[rank].add(done);
    }
}

/// Training work as a worker reports it in its heartbeats: cumulative since its process
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    /// Training images.
    pub images: u64,
    /// Seconds spent in gradient all-reduces, timed on the host (0 on NCCL ranks).
    pub allreduce_s: f64,
    /// Gradient all-reduces timed into `allreduce_s`.
    pub allreduces: u64,
    /// Per-step compute and wait times (`straggler.rs`).
    pub timing: Timing,
}

impl Work {
    /// From the wire; a negative or non-finite time counts as 0.
    pub fn from_wire(images: u64, allreduce_seconds_total: f64, allreduces: u64) -> Self {
        let s = allreduce_seconds_total;
        Self {
            images,
            allreduce_s: if s.is_finite() && s > 0.0 { s } else { 0.0 },
            allreduces,
            timing: Timing::default(),
        }
    }

    /// With the heartbeat's step timings.
    pub fn with_timing(self, timing: Timing) -> Self {
        Self { timing, ..self }
    }

    /// What was done between the report `prev` and this one: the difference, or all of this
    /// one when any count went down (a new worker process, counting from 0 again).
    pub fn since(self, prev: Work) -> Work {
        let (t, p) = (self.timing, prev.timing);
        let reset = self.images < prev.images
            || self.allreduces < prev.allreduces
            || self.allreduce_s < prev.allreduce_s
            || t.steps < p.steps
            || t.compute_s < p.compute_s
            || t.wait_s < p.wait_s;
        if reset {
            return self;
        }
        Work {
            images: self.images - prev.images,
            allreduce_s: self.allreduce_s - prev.allreduce_s,
            allreduces: self.allreduces - prev.allreduces,
            timing: Timing {
                compute_s: t.compute_s - p.compute_s,
                wait_s: t.wait_s - p.wait_s,
                steps: t.steps - p.steps,
            },
        }
    }

    fn add(&mut self, d: Work) {
        self.images += d.images;
        self.allreduce_s += d.allreduce_s;
        self.allreduces += d.allreduces;
        self.timing.compute_s += d.timing.compute_s;
        self.timing.wait_s += d.timing.wait_s;
        self.timing.steps += d.timing.steps;
    }
}

/// A rank's throughput between two of its heartbeats (`None`: not measured), for display.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankPerf {
    /// Training images per second.
    pub images_per_s: Option<f64>,
    /// Mean seconds per timed gradient all-reduce (none on NCCL ranks).
    pub allreduce_s: Option<f64>,
}

impl RankPerf {
    /// The rates of `done` over `secs` seconds.
    pub fn over(done: Work, secs: f64) -> Self {
        Self {
            images_per_s: (secs > 0.0).then(|| done.images as f64 / secs),
            allreduce_s: (done.allreduces > 0).then(|| done.allreduce_s / done.allreduces as f64),
        }
    }
}

/// One rank of the current round.
#[derive(Debug, Clone, PartialEq)]
pub struct RankMetrics {
    pub rank: u32,
    pub worker_id: String,
    /// The host part of its collective address.
    pub host: String,
    pub device: String,
    /// Global step of its last heartbeat.
    pub step: u64,
    pub heartbeat_age_s: f64,
    /// Unix time of its last sign of life, in milliseconds.
    pub last_seen_unix_ms: u64,
    /// Between its last two heartbeats far enough apart.
    pub images_per_s: Option<f64>,
    pub allreduce_s: Option<f64>,
    /// Rounds its worker re-joined after a round ended (since this coordinator started).
    pub restarts: u32,
    /// Its training thread is inside the gradient all-reduce (last heartbeat).
    pub in_collective: bool,
    /// Mean compute and wait per step over the straggler window.
    pub per_step: Option<PerStep>,
    /// Against the other ranks (`straggler.rs`).
    pub standing: Option<Standing>,
}

/// One rank slot's totals since this coordinator started, over every worker that held it.
#[derive(Debug, Clone, PartialEq)]
pub struct RankTotals {
    pub rank: u32,
    pub work: Work,
    /// Times a worker re-joined into this slot after a round ended.
    pub restarts: u64,
}

/// `host` of `host:port` (`[v6]:port` keeps the brackets off).
pub(super) fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// The run as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub run_id: String,
    pub status: Status,
    pub round: u32,
    pub world_size: u32,
    /// Highest global step any rank reported (or the last finished epoch's).
    pub step: u64,
    /// Steps of the whole run; 0 until a round's plan exists.
    pub total_steps: u64,
    pub epochs_completed: u32,
    pub epochs: u32,
    pub restarts: u32,
    pub heartbeats: u64,
    pub heartbeats_missed: u64,
    pub checkpoints: u64,
    pub checkpoint_age_s: Option<f64>,
    /// Unix time the last checkpoint was written, in milliseconds.
    pub last_checkpoint_unix_ms: Option<u64>,
    /// The last completed epoch's row.
    pub train_loss: Option<f64>,
    pub valid_loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub train_images_per_s: Option<f64>,
    pub lr: Option<f64>,
    /// The current round's ranks.
    pub ranks: Vec<RankMetrics>,
    /// Every rank slot any round had.
    pub rank_totals: Vec<RankTotals>,
    /// Times a rank was named a straggler.
    pub stragglers_named: u64,
}

impl RunState {
    /// The metrics as of `now` (`unix_ms`: the wall clock, for ages and timestamps).
    pub fn metrics(&self, now: Instant, unix_ms: u64) -> Metrics {
        let row = self.agg.rows.last();
        let ranks = self
            .membership
            .iter()
            .flat_map(|m| m.members.iter())
            .zip(&self.ranks)
            .map(|(m, l)| {
                let age = now.saturating_duration_since(l.last_seen);
                RankMetrics {
                    rank: m.rank.0,
                    worker_id: m.candidate.worker_id.0.clone(),
                    host: host_of(&m.candidate.collective_addr),
                    device: m.candidate.device.clone(),
                    step: l.step,
                    heartbeat_age_s: age.as_secs_f64(),
                    last_seen_unix_ms: unix_ms
                        .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
                    images_per_s: l.perf.images_per_s,
                    allreduce_s: l.perf.allreduce_s,
                    restarts: self
                        .rounds_joined
                        .get(&m.candidate.worker_id)
                        .map_or(0, |n| n.saturating_sub(1)),
                    in_collective: l.in_collective,
                    per_step: l.window.per_step(),
                    standing: l.standing,
                }
            })
            .collect();
        let c = &self.counters;
        let rank_totals = c
            .rank_work
            .iter()
            .zip(&c.rank_restarts)
            .enumerate()
            .map(|(r, (work, restarts))| RankTotals {
                rank: r as u32,
                work: *work,
                restarts: *restarts,
            })
            .collect();
        Metrics {
            run_id: self.prepared.run_id.clone(),
            status: self.status,
            round: self.round,
            world_size: self.membership.as_ref().map_or(0, |m| m.world_size()),
            step: self.liveness_progress().1,
            total_steps: self.plan.as_ref().map_or(0, |p| p.total_steps()),
            epochs_completed: self.agg.done(),
            epochs: self.prepared.config.epochs(),
            restarts: self.restarts,
            heartbeats: c.heartbeats,
            heartbeats_missed: c.heartbeats_missed,
            checkpoints: c.checkpoints,
            checkpoint_age_s: c
                .last_checkpoint_unix_ms
                .map(|t| unix_ms.saturating_sub(t) as f64 / 1000.0),
            last_checkpoint_unix_ms: c.last_checkpoint_unix_ms,
            train_loss: row.map(|r| r.train_loss),
            valid_loss: row.map(|r| r.valid_loss),
            accuracy: row.map(|r| r.accuracy),
            train_images_per_s: row.map(|r| r.train_images_per_s),
            lr: row.map(|r| r.lr),
            ranks,
            rank_totals,
            stragglers_named: c.stragglers_named,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_heartbeats_count_whole_intervals_beyond_half_a_beat() {
        let mut c = Counters::default();
        c.heartbeat(Duration::from_millis(1_200), 1.0);
        assert_eq!(
            (c.heartbeats, c.heartbeats_missed),
            (1, 0),
            "a late beat is not a miss"
        );
        c.heartbeat(Duration::from_millis(1_600), 1.0);
        assert_eq!(c.heartbeats_missed, 1);
        c.heartbeat(Duration::from_millis(4_000), 1.0);
        assert_eq!((c.heartbeats, c.heartbeats_missed), (3, 4));
    }

    fn work(images: u64, allreduce_s: f64, allreduces: u64) -> Work {
        Work::from_wire(images, allreduce_s, allreduces)
    }

    #[test]
    fn work_from_the_wire_drops_impossible_times() {
        assert_eq!(
            work(5, 0.5, 2),
            Work {
                images: 5,
                allreduce_s: 0.5,
                allreduces: 2,
                timing: Timing::default(),
            }
        );
        assert_eq!(work(5, f64::NAN, 2).allreduce_s, 0.0);
        assert_eq!(work(5, -1.0, 2).allreduce_s, 0.0);
        assert_eq!(work(5, f64::INFINITY, 2).allreduce_s, 0.0);
    }

    #[test]
    fn slot_totals_add_differences_and_a_new_process_counts_from_zero() {
        let (a, b) = (WorkerId("w-a".into()), WorkerId("w-b".into()));
        let mut c = Counters::default();
        c.slots(2);
        assert_eq!(
            c.rank_work,
            vec![Work::default(); 2],
            "every slot from the start"
        );
        c.work(0, &a, work(100, 1.0, 10));
        c.work(0, &a, work(300, 3.0, 30));
        c.work(1, &b, work(50, 0.0, 0));
        assert_eq!(c.rank_work[0], work(300, 3.0, 30));
        // w-a restarted (counts from 0 again) and got slot 1; w-b now holds slot 0 and goes on
        // from its own last report.
        c.work(1, &a, work(40, 0.5, 4));
        c.work(0, &b, work(80, 0.0, 0));
        assert_eq!(c.rank_work[0], work(330, 3.0, 30));
        assert_eq!(c.rank_work[1], work(90, 0.5, 4));
        // A repeated report adds nothing.
        c.work(1, &a, work(40, 0.5, 4));
        assert_eq!(c.rank_work[1], work(90, 0.5, 4));
        c.rejoined(0);
        c.rejoined(2);
        assert_eq!(c.rank_restarts, vec![1, 0, 1]);
        assert_eq!(c.rank_work.len(), 3);
    }

    #[test]
    fn a_report_without_timings_is_not_a_new_process() {
        let a = WorkerId("w-a".into());
        let mut c = Counters::default();
        let timed = |images, steps| {
            work(images, 1.0, images / 10).with_timing(Timing::from_wire(0.5, 0.1, steps))
        };
        c.work(0, &a, timed(100, 10));
        c.work(0, &a, timed(200, 20));
        // The final Leave: more images, no timings.
        c.work(0, &a, work(260, 1.0, 26));
        assert_eq!(c.rank_work[0].images, 260, "counted once");
        assert_eq!(c.rank_work[0].timing.steps, 20);
        // A new process (counts went down) with no timings yet counts from 0.
        c.work(0, &a, work(10, 0.0, 1));
        assert_eq!(c.rank_work[0].images, 270);
        assert_eq!(c.rank_work[0].timing.steps, 20);
    }

    #[test]
    fn display_rates_are_differences_over_time() {
        let p = RankPerf::over(work(640, 0.03, 10), 2.0);
        assert_eq!(p.images_per_s, Some(320.0));
        assert!((p.allreduce_s.unwrap() - 0.003).abs() < 1e-12);
        // NCCL ranks time no all-reduce; no time passed: nothing measured.
        assert_eq!(RankPerf::over(work(64, 0.0, 0), 1.0).allreduce_s, None);
        assert_eq!(RankPerf::over(work(64, 0.0, 0), 0.0), RankPerf::default());
    }

    #[test]
    fn host_is_the_address_without_its_port() {
        assert_eq!(host_of("10.0.0.7:29500"), "10.0.0.7");
        assert_eq!(host_of("worker-1.ring.svc:7000"), "worker-1.ring.svc");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("nohost"), "nohost");
    }
}
