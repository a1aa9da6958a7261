//! Ownership of a communicator that one thread uses and another may abort (NCCL's
//! `ncclCommAbort` from the heartbeat thread while the training thread is inside a collective).
//!
//! Owns the rules, not NCCL: the release function is a parameter, so the logic is tested here
//! without a GPU. `nccl.rs` instantiates it with `ncclCommAbort`.
//!
//! # Contract
//! * The handle is released exactly once, by whoever aborts first: [`CommSlot::abort`] from any
//!   thread, or the drop of the last owner. Nothing ever *destroys* it (`ncclCommDestroy`
//!   waits for peers that may be gone; after an abort the communicator is already freed, and
//!   cudarc's own `Comm` would destroy it again on drop, which is why it is not used).
//! * An abort never waits for a call in flight: the abort path must release a collective that
//!   is blocked because a peer died, so it cannot take a lock the blocked call holds. (NCCL
//!   documents `ncclCommAbort` as the way to release operations other threads wait on; this is
//!   what PyTorch's watchdog does.)
//! * After an abort, [`CommSlot::enter`] refuses new calls without touching the handle, so no
//!   call ever *starts* on a released communicator.
//!
//! ```text
//!   Live ──enter()──▶ Live(in_call+1) ──leave──▶ Live
//!     │                      │
//!     └──abort() / drop──────┴──▶ Aborted (release(handle) once; enter() → Err)
//! ```
//! Tests: `tests` at the bottom (a fake release counts calls; an abort during a blocked call).

use std::sync::{Arc, Mutex, PoisonError};

/// Where the communicator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Usable; `in_call` collectives are running on it.
    Live { in_call: u32 },
    /// Released; no call may start.
    Aborted,
}

/// A communicator handle `H`, released by `release` exactly once.
pub struct CommSlot<H: Copy + Send + Sync + 'static> {
    handle: H,
    phase: Mutex<Phase>,
    release: Box<dyn Fn(H) + Send + Sync>,
}

/// Proof that a call may use the handle; ends the call on drop.
pub struct InCall<'a, H: Copy + Send + Sync + 'static> {
    slot: &'a CommSlot<H>,
}

impl<H: Copy + Send + Sync + 'static> InCall<'_, H> {
    /// The handle, valid for this call.
    pub fn handle(&self) -> H {
        self.slot.handle
    }
}

impl<H: Copy + Send + Sync + 'static> Drop for InCall<'_, H> {
    fn drop(&mut self) {
        let mut p = self.slot.lock();
        if let Phase::Live { in_call } = &mut *p {
            *in_call = in_call.saturating_sub(1);
        }
    }
}

impl<H: Copy + Send + Sync + 'static> CommSlot<H> {
    /// Owns `handle`; `release` frees it (`ncclCommAbort`).
    pub fn new(handle: H, release: impl Fn(H) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            handle,
            phase: Mutex::new(Phase::Live { in_call: 0 }),
            release: Box::new(release),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a call; `None` once aborted.
    pub fn enter(&self) -> Option<InCall<'_, H>> {
        let mut p = self.lock();
        match &mut *p {
            Phase::Live { in_call } => {
                *in_call += 1;
                Some(InCall { slot: self })
            }
            Phase::Aborted => None,
        }
    }

    /// Releases the handle unless that happened already; returns whether this call did it.
    /// Never waits for calls in flight (see the module contract).
    pub fn abort(&self) -> bool {
        {
            let mut p = self.lock();
            if *p == Phase::Aborted {
                return false;
            }
            *p = Phase::Aborted;
        }
        // Outside the lock: a call in flight may hold nothing we need, and `enter` must not
        // wait for a release that can block while NCCL tears down.
        (self.release)(self.handle);
        true
    }

    /// True once released.
    pub fn is_aborted(&self) -> bool {
        *self.lock() == Phase::Aborted
    }

    /// Collectives running now.
    #[cfg(test)]
    pub fn in_flight(&self) -> u32 {
        match *self.lock() {
            Phase::Live { in_call } => in_call,
            Phase::Aborted => 0,
        }
    }
}

impl<H: Copy + Send + Sync + 'static> Drop for CommSlot<H> {
    fn drop(&mut self) {
        // The last owner goes: release unless an abort already did. Never a destroy.
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    fn counted() -> (Arc<CommSlot<u64>>, Arc<AtomicU32>) {
        let releases = Arc::new(AtomicU32::new(0));
        let r = releases.clone();
        let slot = CommSlot::new(7u64, move |h| {
            assert_eq!(h, 7);
            r.fetch_add(1, Ordering::SeqCst);
        });
        (slot, releases)
    }

    #[test]
    fn aborting_twice_and_then_dropping_releases_once() {
        let (slot, releases) = counted();
        let other = slot.clone();
        assert!(other.abort());
        assert!(!slot.abort());
        assert!(!other.abort());
        drop(other);
        drop(slot);
        assert_eq!(releases.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropping_an_unaborted_slot_releases_it_once() {
        let (slot, releases) = counted();
        {
            let call = slot.enter().unwrap();
            assert_eq!(call.handle(), 7);
            assert_eq!(slot.in_flight(), 1);
        }
        assert_eq!(slot.in_flight(), 0);
        drop(slot);
        assert_eq!(releases.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn no_call_starts_after_an_abort() {
        let (slot, releases) = counted();
        slot.abort();
        assert!(slot.enter().is_none());
        assert!(slot.is_aborted());
        assert_eq!(releases.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_abort_does_not_wait_for_a_blocked_call() {
        // The training thread is inside a collective that never completes (a dead peer); the
        // heartbeat thread's abort must go through at once and release the handle.
        let (slot, releases) = counted();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (unblock_tx, unblock_rx) = mpsc::channel::<()>();
        let trainer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                let call = slot.enter().unwrap();
                entered_tx.send(()).unwrap();
                // Blocked "inside NCCL" until the abort released the communicator.
                unblock_rx.recv().unwrap();
                drop(call);
                slot.enter().is_none()
            })
        };
        entered_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let aborter = {
            let slot = slot.clone();
            std::thread::spawn(move || done_tx.send(slot.abort()).unwrap())
        };
        let aborted = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("abort must not wait for the call in flight");
        assert!(aborted);
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        unblock_tx.send(()).unwrap();
        assert!(trainer.join().unwrap(), "no new call after the abort");
        aborter.join().unwrap();
        drop(slot);
        assert_eq!(releases.load(Ordering::SeqCst), 1);
    }
}
