//! Progress a replica publishes while it trains, for the heartbeats: the global step, and
//! counters from which the heartbeat thread derives images/s and the mean all-reduce time
//! between two heartbeats.
//!
//! Lock-free (relaxed atomics): the training thread only adds, the heartbeat thread only reads;
//! a sample may be one step behind, which a rate over seconds does not notice.
//!
//! Tests: `tests` at the bottom.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters shared between the training loop and the heartbeat thread.
#[derive(Debug, Default)]
pub struct Progress {
    step: AtomicU64,
    images: AtomicU64,
    allreduce_nanos: AtomicU64,
    allreduces: AtomicU64,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    pub images: u64,
    pub allreduce_nanos: u64,
    pub allreduces: u64,
}

impl Progress {
    /// Global step (a resumed round starts from its checkpoint's).
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    pub fn step(&self) -> u64 {
        self.step.load(Ordering::Relaxed)
    }

    /// One training step of `images` images done; `allreduce`: its all-reduce's host time,
    /// when that measures it.
    pub fn record(&self, images: u64, allreduce: Option<Duration>) {
        self.images.fetch_add(images, Ordering::Relaxed);
        if let Some(d) = allreduce {
            let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            self.allreduce_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.allreduces.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn sample(&self) -> Sample {
        Sample {
            images: self.images.load(Ordering::Relaxed),
            allreduce_nanos: self.allreduce_nanos.load(Ordering::Relaxed),
            allreduces: self.allreduces.load(Ordering::Relaxed),
        }
    }
}

/// Rates between consecutive samples (the heartbeat thread keeps one).
#[derive(Debug, Default)]
pub struct Rates {
    last: Option<(Instant, Sample)>,
}

impl Rates {
    /// `(images per second, mean all-reduce seconds)` since the previous call; 0 where there
    /// is nothing to measure (the first call, no step or no timed all-reduce in between).
    pub fn update(&mut self, now: Instant, s: Sample) -> (f64, f64) {
        let out = match self.last {
            Some((then, prev)) => {
                let secs = now.saturating_duration_since(then).as_secs_f64();
                let images = s.images.saturating_sub(prev.images);
                let n = s.allreduces.saturating_sub(prev.allreduces);
                let nanos = s.allreduce_nanos.saturating_sub(prev.allreduce_nanos);
                (
                    if secs > 0.0 {
                        images as f64 / secs
                    } else {
                        0.0
                    },
                    if n > 0 {
                        nanos as f64 / n as f64 / 1e9
                    } else {
                        0.0
                    },
                )
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, s));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_between_samples() {
        let p = Progress::default();
        let mut r = Rates::default();
        let t0 = Instant::now();
        assert_eq!(r.update(t0, p.sample()), (0.0, 0.0), "no previous sample");
        for _ in 0..10 {
            p.record(64, Some(Duration::from_millis(3)));
        }
        let (ips, ar) = r.update(t0 + Duration::from_secs(2), p.sample());
        assert!((ips - 320.0).abs() < 1e-9, "{ips}");
        assert!((ar - 0.003).abs() < 1e-12, "{ar}");
        // Untimed all-reduces (NCCL) count images but no all-reduce time.
        p.record(64, None);
        let (ips, ar) = r.update(t0 + Duration::from_secs(3), p.sample());
        assert!((ips - 64.0).abs() < 1e-9, "{ips}");
        assert_eq!(ar, 0.0);
    }

    #[test]
    fn step_is_set_and_read() {
        let p = Progress::default();
        p.set_step(470);
        assert_eq!(p.step(), 470);
    }
}
