//! What `/metrics` reports about the run: totals kept by the state machine and a snapshot of
//! the current round, in Prometheus terms (`crate::http` renders them).
//!
//! Same contract as the parent module; split off only to keep files small.

use std::time::{Duration, Instant};

use super::{RunState, Status};

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
}

/// A rank's throughput as its last heartbeat reported it (`None`: not measured).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankPerf {
    /// Training images per second since its previous heartbeat.
    pub images_per_s: Option<f64>,
    /// Mean seconds per gradient all-reduce since its previous heartbeat.
    pub allreduce_s: Option<f64>,
}

impl RankPerf {
    /// From the wire, where 0 means "not measured"; negative or non-finite values are dropped.
    pub fn from_wire(images_per_s: f64, allreduce_s: f64) -> Self {
        let keep = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
        Self {
            images_per_s: keep(images_per_s),
            allreduce_s: keep(allreduce_s),
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
    pub images_per_s: Option<f64>,
    pub allreduce_s: Option<f64>,
    /// Rounds it re-joined after a round ended (since this coordinator started).
    pub restarts: u32,
}

/// `host` of `host:port` (`[v6]:port` keeps the brackets off).
fn host_of(addr: &str) -> String {
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
    pub total_steps: u64,
    pub epochs_completed: u32,
    pub epochs: u32,
    pub restarts: u32,
    pub heartbeats: u64,
    pub heartbeats_missed: u64,
    pub checkpoints: u64,
    pub checkpoint_age_s: Option<f64>,
    /// The last completed epoch's row.
    pub train_loss: Option<f64>,
    pub valid_loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub train_images_per_s: Option<f64>,
    pub lr: Option<f64>,
    pub ranks: Vec<RankMetrics>,
}

impl RunState {
    /// The metrics as of `now` (`unix_ms`: the wall clock, for the checkpoint's age).
    pub fn metrics(&self, now: Instant, unix_ms: u64) -> Metrics {
        let row = self.agg.rows.last();
        let ranks = self
            .membership
            .iter()
            .flat_map(|m| m.members.iter())
            .zip(&self.ranks)
            .map(|(m, l)| RankMetrics {
                rank: m.rank.0,
                worker_id: m.candidate.worker_id.0.clone(),
                host: host_of(&m.candidate.collective_addr),
                device: m.candidate.device.clone(),
                step: l.step,
                heartbeat_age_s: now.saturating_duration_since(l.last_seen).as_secs_f64(),
                images_per_s: l.perf.images_per_s,
                allreduce_s: l.perf.allreduce_s,
                restarts: self
                    .rounds_joined
                    .get(&m.candidate.worker_id)
                    .map_or(0, |n| n.saturating_sub(1)),
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
            heartbeats: self.counters.heartbeats,
            heartbeats_missed: self.counters.heartbeats_missed,
            checkpoints: self.counters.checkpoints,
            checkpoint_age_s: self
                .counters
                .last_checkpoint_unix_ms
                .map(|t| unix_ms.saturating_sub(t) as f64 / 1000.0),
            train_loss: row.map(|r| r.train_loss),
            valid_loss: row.map(|r| r.valid_loss),
            accuracy: row.map(|r| r.accuracy),
            train_images_per_s: row.map(|r| r.train_images_per_s),
            lr: row.map(|r| r.lr),
            ranks,
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

    #[test]
    fn perf_from_the_wire_keeps_only_positive_finite_values() {
        let p = RankPerf::from_wire(1234.5, 0.002);
        assert_eq!((p.images_per_s, p.allreduce_s), (Some(1234.5), Some(0.002)));
        let none = RankPerf::from_wire(0.0, f64::NAN);
        assert_eq!(none, RankPerf::default());
        assert_eq!(
            RankPerf::from_wire(-3.0, f64::INFINITY),
            RankPerf::default()
        );
    }

    #[test]
    fn host_is_the_address_without_its_port() {
        assert_eq!(host_of("10.0.0.7:29500"), "10.0.0.7");
        assert_eq!(host_of("worker-1.ring.svc:7000"), "worker-1.ring.svc");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("nohost"), "nohost");
    }
}
