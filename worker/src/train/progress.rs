//! Progress a replica publishes while it trains, for the heartbeats: the global step, whether the
//! training thread is inside the gradient all-reduce now, and counters of training images,
//! host-timed all-reduces and per-step compute and wait times (`step_clock.rs`). One
//! [`Progress`] lives as long as the worker process, so the counters only grow; heartbeats send
//! them as they are and the coordinator derives rates, and names stragglers, from their
//! differences.
//!
//! Lock-free (relaxed atomics): the training thread only adds, the heartbeat thread only reads;
//! a sample may be one step behind, which the next heartbeat makes up for.
//!
//! Tests: `tests` at the bottom.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Counters shared between the training loop and the heartbeat thread.
#[derive(Debug, Default)]
pub struct Progress {
    step: AtomicU64,
    images: AtomicU64,
    allreduce_nanos: AtomicU64,
    allreduces: AtomicU64,
    compute_nanos: AtomicU64,
    wait_nanos: AtomicU64,
    timed_steps: AtomicU64,
    in_collective: AtomicBool,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    pub images: u64,
    pub allreduce_nanos: u64,
    pub allreduces: u64,
    /// Per step: from its start until it entered the gradient all-reduce.
    pub compute_nanos: u64,
    /// Per step: inside the gradient all-reduce (on GPUs, the NCCL kernel's time).
    pub wait_nanos: u64,
    /// Steps timed into `compute_nanos` and `wait_nanos`.
    pub timed_steps: u64,
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

    /// One step's compute and wait times, measured by the step clock (possibly some steps
    /// after the step itself, on a GPU).
    pub fn record_timing(&self, compute: Duration, wait: Duration) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.compute_nanos
            .fetch_add(nanos(compute), Ordering::Relaxed);
        self.wait_nanos.fetch_add(nanos(wait), Ordering::Relaxed);
        self.timed_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// The training thread enters (`true`) or leaves (`false`) the gradient all-reduce.
    pub fn set_in_collective(&self, inside: bool) {
        self.in_collective.store(inside, Ordering::Relaxed);
    }

    /// Whether the training thread is inside the gradient all-reduce now.
    pub fn in_collective(&self) -> bool {
        self.in_collective.load(Ordering::Relaxed)
    }

    pub fn sample(&self) -> Sample {
        Sample {
            images: self.images.load(Ordering::Relaxed),
            allreduce_nanos: self.allreduce_nanos.load(Ordering::Relaxed),
            allreduces: self.allreduces.load(Ordering::Relaxed),
            compute_nanos: self.compute_nanos.load(Ordering::Relaxed),
            wait_nanos: self.wait_nanos.load(Ordering::Relaxed),
            timed_steps: self.timed_steps.load(Ordering::Relaxed),
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
                allreduces: 10,
                ..Sample::default()
            }
        );
    }

    #[test]
    fn step_timings_add_up_and_the_collective_flag_follows_the_thread() {
        let p = Progress::default();
        p.record_timing(Duration::from_millis(7), Duration::from_millis(2));
        p.record_timing(Duration::from_millis(5), Duration::from_millis(4));
        let s = p.sample();
        assert_eq!(
            (s.compute_nanos, s.wait_nanos, s.timed_steps),
            (12_000_000, 6_000_000, 2)
        );
        assert!(!p.in_collective());
        p.set_in_collective(true);
        assert!(p.in_collective());
        p.set_in_collective(false);
        assert!(!p.in_collective());
    }

    #[test]
    fn step_is_set_and_read() {
        let p = Progress::default();
        p.set_step(470);
        assert_eq!(p.step(), 470);
    }
}
