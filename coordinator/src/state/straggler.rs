//! Straggler detection: which rank computes its steps slower than its peers.
//!
//! Data-parallel ranks wait for each other in every all-reduce, so their wall time per step is
//! the same and a slow rank is invisible in it. Its **compute** time per step (from the step's
//! start until it enters the all-reduce, measured by the worker: `worker/src/train/
//! step_clock.rs`) is not: the others' compute stays the same while their wait grows.
//!
//! # Contract
//! * Each rank's heartbeats carry cumulative [`Timing`]; [`Window`] keeps the samples of the
//!   last `straggler_window_s` seconds, from the [`WARMUP_STEPS`]th step of the round on, and gives the mean compute and wait per step over them
//!   ([`PerStep`]), once at least [`MIN_STEPS`] steps were timed in it. A count that goes down
//!   is a new worker process: the window starts again.
//! * [`judge`]: a rank becomes a straggler when its compute per step exceeds the **median of
//!   the other ranks'** by more than `margin` (0.25: 25%); its slowdown is that ratio. It stays
//!   one until its slowdown falls to 1 + margin/2 or below (hysteresis: a rank hovering at the
//!   margin is not named and cleared every few seconds). Ranks without a measurement (too few
//!   steps, or a GPU rank without CUDA events) are neither judged nor part of the others'
//!   median; a world of one has no stragglers.
//!
//! Tests: `tests` at the bottom; `tests/tests/straggler.rs` (real workers, one slowed down).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Steps a window must hold before its rank is judged.
pub const MIN_STEPS: u64 = 5;

/// Steps of each round a rank's window leaves out: the first steps of a process (or of a round
/// after a re-join) are slow for everyone (allocations, caches), and not a straggler's sign.
pub const WARMUP_STEPS: u64 = 20;

/// Cumulative step timings of one worker process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Seconds of compute (step start until the all-reduce).
    pub compute_s: f64,
    /// Seconds inside the all-reduce.
    pub wait_s: f64,
    /// Steps timed into both.
    pub steps: u64,
}

impl Timing {
    /// From the wire; a negative or non-finite time counts as 0.
    pub fn from_wire(compute_s: f64, wait_s: f64, steps: u64) -> Self {
        let ok = |s: f64| if s.is_finite() && s > 0.0 { s } else { 0.0 };
        Self {
            compute_s: ok(compute_s),
            wait_s: ok(wait_s),
            steps,
        }
    }

    fn went_down(self, prev: Timing) -> bool {
        self.steps < prev.steps || self.compute_s < prev.compute_s || self.wait_s < prev.wait_s
    }
}

/// Mean times per step over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerStep {
    pub compute_s: f64,
    pub wait_s: f64,
    /// Steps in the window.
    pub steps: u64,
}

/// The samples of one rank's last `span` seconds.
#[derive(Debug, Clone, Default)]
pub struct Window {
    samples: VecDeque<(Instant, Timing)>,
}

impl Window {
    /// Adds the heartbeat of `now`; keeps one sample at or before `now - span` as the base.
    pub fn push(&mut self, now: Instant, t: Timing, span: Duration) {
        if self
            .samples
            .back()
            .is_some_and(|&(_, last)| t.went_down(last))
        {
            self.samples.clear();
        }
        self.samples.push_back((now, t));
        let Some(start) = now.checked_sub(span) else {
            return;
        };
        while self.samples.len() > 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
    }

    /// Mean compute and wait per step across the window; `None` under [`MIN_STEPS`] steps.
    pub fn per_step(&self) -> Option<PerStep> {
        let (_, first) = *self.samples.front()?;
        let (_, last) = *self.samples.back()?;
        let steps = last.steps.checked_sub(first.steps)?;
        if steps < MIN_STEPS {
            return None;
        }
        Some(PerStep {
            compute_s: (last.compute_s - first.compute_s) / steps as f64,
            wait_s: (last.wait_s - first.wait_s) / steps as f64,
            steps,
        })
    }
}

/// One rank's standing against the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Its compute per step over the median of the other ranks'.
    pub slowdown: f64,
    /// That median, in seconds per step.
    pub others_median_s: f64,
    /// Named: `slowdown` exceeds 1 + margin, or 1 + margin/2 for a rank named before.
    pub straggler: bool,
}

/// The standing of every rank (`None`: not measured, or no other rank measured); `named[i]`:
/// rank `i` is a straggler now (a missing entry: it is not).
pub fn judge(ranks: &[Option<PerStep>], margin: f64, named: &[bool]) -> Vec<Option<Standing>> {
    ranks
        .iter()
        .enumerate()
        .map(|(i, me)| {
            let me = (*me)?;
            let mut others: Vec<f64> = ranks
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(_, p)| p.map(|p| p.compute_s))
                .collect();
            let median = median(&mut others)?;
            if median <= 0.0 {
                return None;
            }
            let slowdown = me.compute_s / median;
            let bar = if named.get(i).copied().unwrap_or(false) {
                1.0 + margin / 2.0
            } else {
                1.0 + margin
            };
            Some(Standing {
                slowdown,
                others_median_s: median,
                straggler: slowdown > bar,
            })
        })
        .collect()
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, s: f64) -> Instant {
        base + Duration::from_secs_f64(s)
    }

    fn per(compute_s: f64) -> Option<PerStep> {
        Some(PerStep {
            compute_s,
            wait_s: 0.0,
            steps: 10,
        })
    }

    #[test]
    fn the_window_covers_its_span_and_restarts_with_a_new_process() {
        let t0 = Instant::now();
        let span = Duration::from_secs(10);
        let mut w = Window::default();
        assert_eq!(w.per_step(), None);
        // 10 steps a second, 30 ms compute and 10 ms wait each.
        for i in 0..=30u64 {
            let t = Timing::from_wire(i as f64 * 0.3, i as f64 * 0.1, i * 10);
            w.push(at(t0, i as f64), t, span);
        }
        let p = w.per_step().unwrap();
        assert_eq!(p.steps, 100, "ten seconds of steps");
        assert!((p.compute_s - 0.03).abs() < 1e-9 && (p.wait_s - 0.01).abs() < 1e-9);
        // A new process counts from 0: the old samples must not make a negative difference.
        w.push(at(t0, 31.0), Timing::from_wire(0.1, 0.0, 2), span);
        assert_eq!(w.per_step(), None, "too few steps since the restart");
        w.push(at(t0, 32.0), Timing::from_wire(0.9, 0.1, 12), span);
        assert!((w.per_step().unwrap().compute_s - 0.08).abs() < 1e-9);
    }

    #[test]
    fn a_rank_slower_than_the_median_of_the_others_by_the_margin_is_named() {
        let s = judge(&[per(0.010), per(0.011), per(0.025), per(0.009)], 0.25, &[]);
        let named: Vec<bool> = s.iter().map(|x| x.unwrap().straggler).collect();
        assert_eq!(named, [false, false, true, false]);
        let slow = s[2].unwrap();
        assert!((slow.others_median_s - 0.010).abs() < 1e-12);
        assert!((slow.slowdown - 2.5).abs() < 1e-9);
        // 20% slower is inside a 25% margin.
        let s = judge(&[per(0.010), per(0.012)], 0.25, &[]);
        assert!(s.iter().all(|x| !x.unwrap().straggler), "{s:?}");
        // ... but a rank named before stays named until it is within half the margin.
        let s = judge(&[per(0.010), per(0.012)], 0.25, &[false, true]);
        assert!(s[1].unwrap().straggler, "{s:?}");
        let s = judge(&[per(0.010), per(0.0112)], 0.25, &[false, true]);
        assert!(!s[1].unwrap().straggler, "{s:?}");
        // Two ranks: each is compared with the other; only the slow one is named.
        let s = judge(&[per(0.020), per(0.010)], 0.25, &[]);
        assert!(s[0].unwrap().straggler && !s[1].unwrap().straggler);
    }

    #[test]
    fn unmeasured_ranks_are_neither_judged_nor_counted() {
        assert_eq!(judge(&[per(0.5)], 0.25, &[]), vec![None], "a world of one");
        let s = judge(&[per(0.010), None, per(0.030)], 0.25, &[]);
        assert_eq!(s[1], None);
        assert!(s[2].unwrap().straggler);
        assert_eq!(judge(&[None, None], 0.25, &[]), vec![None, None]);
        assert_eq!(judge(&[per(0.0), per(0.0)], 0.25, &[]), vec![None, None]);
    }
}
