//! Per-step compute and wait times, for straggler detection: **compute** runs from a step's
//! start until it enters the gradient all-reduce (batch, forward, backward), **wait** is the
//! all-reduce itself (on the ring: moving the gradients and waiting for the slowest peer).
//! A slow rank has a long compute time; its peers' wait times grow instead.
//!
//! # Contract
//! * CPU: host clocks ([`Instant`]); a step's times are ready when its all-reduce returns.
//! * CUDA: kernels run asynchronously, so host clocks would time the launches, not the work.
//!   Three CUDA events per step are recorded on the legacy default stream (libtorch's and
//!   NCCL's, `collective/nccl.rs`): at the step's start, before and after the all-reduce.
//!   [`StepClock::drain`] hands out the times of the steps whose last event completed, without
//!   ever waiting (`cuEventQuery`); at most [`MAX_PENDING`] steps are in flight, later ones go
//!   untimed until the device catches up. If events cannot be made (no driver API context),
//!   the clock times nothing: no number is better than a wrong one.
//!
//! Tests: `tests` at the bottom (the host clock); the CUDA clock runs in
//! `scripts/gpu-check.sh` (heartbeats carry its times).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tch::Device;

/// Steps whose events may be outstanding on the device at once.
pub const MAX_PENDING: usize = 64;

/// Times the phases of each step.
pub enum StepClock {
    Host(HostClock),
    Cuda(cuda::EventClock),
    Off,
}

/// Host timing of the current step.
#[derive(Default)]
pub struct HostClock {
    start: Option<Instant>,
    reduce: Option<Instant>,
    done: Vec<(Duration, Duration)>,
}

impl StepClock {
    /// The clock for training on `device`.
    pub fn for_device(device: Device) -> Self {
        if !device.is_cuda() {
            return StepClock::Host(HostClock::default());
        }
        match cuda::EventClock::new() {
            Ok(c) => StepClock::Cuda(c),
            Err(e) => {
                tracing::warn!(error = %e, "no CUDA events for step timing; this rank reports no compute times (straggler detection skips it)");
                StepClock::Off
            }
        }
    }

    /// The step starts.
    pub fn step_start(&mut self) {
        match self {
            StepClock::Host(h) => {
                h.start = Some(Instant::now());
                h.reduce = None;
            }
            StepClock::Cuda(c) => c.mark(0),
            StepClock::Off => {}
        }
    }

    /// The step enters its gradient all-reduce.
    pub fn reduce_start(&mut self) {
        match self {
            StepClock::Host(h) => h.reduce = Some(Instant::now()),
            StepClock::Cuda(c) => c.mark(1),
            StepClock::Off => {}
        }
    }

    /// The all-reduce returned (on a GPU: was enqueued).
    pub fn reduce_end(&mut self) {
        match self {
            StepClock::Host(h) => {
                if let (Some(s), Some(r)) = (h.start.take(), h.reduce.take()) {
                    let now = Instant::now();
                    h.done.push((r - s, now - r));
                }
            }
            StepClock::Cuda(c) => c.mark(2),
            StepClock::Off => {}
        }
    }

    /// Calls `f(compute, wait)` for every step timed since the last drain, oldest first.
    pub fn drain(&mut self, mut f: impl FnMut(Duration, Duration)) {
        match self {
            StepClock::Host(h) => h.done.drain(..).for_each(|(c, w)| f(c, w)),
            StepClock::Cuda(c) => c.drain(&mut f),
            StepClock::Off => {}
        }
    }
}

mod cuda {
    //! CUDA events through cudarc's driver API (libcuda loaded at run time, only on GPUs).
    use super::{Duration, VecDeque, MAX_PENDING};
    use cudarc::driver::result::event;
    use cudarc::driver::sys;

    /// Three events of one step: start, before and after the all-reduce.
    struct Triple([sys::CUevent; 3]);

    pub struct EventClock {
        /// The step being recorded, and how many of its events are recorded.
        current: Option<(Triple, usize)>,
        pending: VecDeque<Triple>,
        free: Vec<Triple>,
    }

    // The events are handles owned by this clock alone, used on the training thread only.
    unsafe impl Send for EventClock {}

    #[derive(Debug, thiserror::Error)]
    #[error("cuEventCreate: {0:?}")]
    pub struct NoEvents(cudarc::driver::DriverError);

    impl EventClock {
        pub fn new() -> Result<Self, NoEvents> {
            let mut clock = Self {
                current: None,
                pending: VecDeque::new(),
                free: Vec::new(),
            };
            // One triple up front: an error here (no context on this thread) turns timing off.
            let t = clock.fresh().map_err(NoEvents)?;
            clock.free.push(t);
            Ok(clock)
        }

        fn fresh(&mut self) -> Result<Triple, cudarc::driver::DriverError> {
            let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
            Ok(Triple([
                event::create(flags)?,
                event::create(flags)?,
                event::create(flags)?,
            ]))
        }

        /// Records event `i` of the current step on the legacy default stream.
        pub fn mark(&mut self, i: usize) {
            if i == 0 {
                if let Some((t, _)) = self.current.take() {
                    self.free.push(t); // an unfinished step: reuse its events
                }
                if self.pending.len() >= MAX_PENDING {
                    return; // the device is far behind: this step goes untimed
                }
                let t = match self.free.pop() {
                    Some(t) => t,
                    None => match self.fresh() {
                        Ok(t) => t,
                        Err(_) => return,
                    },
                };
                self.current = Some((t, 0));
            }
            let Some((t, n)) = self.current.as_mut() else {
                return;
            };
            if *n != i {
                return;
            }
            // SAFETY: the event was created by `event::create` and is not destroyed; the null
            // stream is the legacy default stream of the current context.
            if unsafe { event::record(t.0[i], std::ptr::null_mut()) }.is_err() {
                if let Some((t, _)) = self.current.take() {
                    self.free.push(t);
                }
                return;
            }
            *n += 1;
            if *n == 3 {
                if let Some((t, _)) = self.current.take() {
                    self.pending.push_back(t);
                }
            }
        }

        pub fn drain(&mut self, f: &mut dyn FnMut(Duration, Duration)) {
            while let Some(t) = self.pending.front() {
                // SAFETY: live events of this clock.
                if unsafe { event::query(t.0[2]) }.is_err() {
                    return; // not complete yet (or an error: try again later)
                }
                let ms = |a, b| unsafe { event::elapsed(a, b) }.unwrap_or(0.0);
                let compute = ms(t.0[0], t.0[1]);
                let wait = ms(t.0[1], t.0[2]);
                let secs = |x: f32| Duration::from_secs_f64(f64::from(x.max(0.0)) / 1e3);
                f(secs(compute), secs(wait));
                if let Some(t) = self.pending.pop_front() {
                    self.free.push(t);
                }
            }
        }
    }

    impl Drop for EventClock {
        fn drop(&mut self) {
            let all = self
                .current
                .take()
                .map(|(t, _)| t)
                .into_iter()
                .chain(self.pending.drain(..))
                .chain(self.free.drain(..));
            for t in all {
                for e in t.0 {
                    // SAFETY: each event is destroyed once; destroying an incomplete event does
                    // not block.
                    let _ = unsafe { event::destroy(e) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_clock_splits_a_step_at_the_all_reduce() {
        let mut c = StepClock::for_device(Device::Cpu);
        c.step_start();
        std::thread::sleep(Duration::from_millis(30));
        c.reduce_start();
        std::thread::sleep(Duration::from_millis(10));
        c.reduce_end();
        // A step that never reached its all-reduce is not timed.
        c.step_start();
        let mut got = Vec::new();
        c.drain(|a, b| got.push((a, b)));
        assert_eq!(got.len(), 1);
        let (compute, wait) = got[0];
        assert!(compute >= Duration::from_millis(30), "{compute:?}");
        assert!(wait >= Duration::from_millis(10), "{wait:?}");
        assert!(compute > wait, "{compute:?} vs {wait:?}");
        let mut again = 0;
        c.drain(|_, _| again += 1);
        assert_eq!(again, 0, "drained once");
    }
}
