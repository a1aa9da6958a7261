//! Progress a replica publishes while it trains, for the heartbeats: the global step, and
//! counters of training images and host-timed all-reduces. One [`Progress`] lives as long as the
//! worker process, so the counters only grow; heartbeats send them as they are and the
//! coordinator derives rates from their differences.
//!
//! Lock-free (relaxed atomics): the training thread only adds, the heartbeat thread only reads;
//! a sample may be one step behind, which the next heartbeat makes up for.
//!
//! Tests: `tests` at the bottom.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_grow_and_untimed_all_reduces_count_images_only() {
        let p = Progress::default();
        assert_eq!(p.sample(), Sample::default());
        for _ in 0..10 {
            p.record(64, Some(Duration::from_millis(3)));
        }
        // Untimed all-reduces (NCCL) count images but no all-reduce.
        p.record(64, None);
        assert_eq!(
            p.sample(),
            Sample {
                images: 704,
                allreduce_nanos: 30_000_000,
                allreduces: 10
            }
        );
    }

    #[test]
    fn step_is_set_and_read() {
        let p = Progress::default();
        p.set_step(470);
        assert_eq!(p.step(), 470);
    }
}
