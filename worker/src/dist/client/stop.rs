//! How the client stops for good (a failed run, an unreachable coordinator, SIGTERM) and the
//! process-wide exit deadline `main` enforces as a backstop.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::RoundCtl;
use crate::train::TrainError;

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq)]
pub enum Fatal {
    /// The coordinator declared the run failed (exit 3).
    RunFailed(String),
    /// The coordinator did not answer for `patience` (exit 1).
    Unreachable(String),
    /// SIGTERM: outside a round at once, in a round after the grace (exit 143).
    Terminated,
}

impl Fatal {
    pub(super) fn into_error(self) -> TrainError {
        match self {
            Fatal::RunFailed(m) => TrainError::RunFailed(m),
            Fatal::Unreachable(m) => TrainError::Coordinator(m),
            Fatal::Terminated => TrainError::Terminated,
        }
    }

    pub(super) fn exit_code(&self) -> i32 {
        match self {
            Fatal::RunFailed(_) => crate::EXIT_ABORTED,
            Fatal::Unreachable(_) => 1,
            Fatal::Terminated => crate::EXIT_TERMINATED,
        }
    }
}

/// The client's stop switch, shared with its tasks.
pub(super) struct Stop {
    pub(super) fatal: Mutex<Option<Fatal>>,
    pub(super) tx: tokio::sync::watch::Sender<bool>,
}

/// How long the training thread gets to notice a stop before `main`'s backstop exits.
pub(super) const STOP_BACKSTOP: Duration = Duration::from_secs(10);

/// When the process must be gone at the latest, and with which exit code: set once the client
/// stopped (or SIGTERM arrived); `main` exits when it passes and the worker has not returned.
pub(super) static EXIT_DEADLINE: std::sync::OnceLock<(Instant, i32)> = std::sync::OnceLock::new();

/// See [`EXIT_DEADLINE`]; `None` while the worker runs normally.
pub fn exit_deadline() -> Option<(Instant, i32)> {
    EXIT_DEADLINE.get().copied()
}

impl Stop {
    /// Stops the client (the first reason wins): aborts the round's collective, cancels calls.
    pub(super) fn stop(&self, why: Fatal, ctl: &Mutex<RoundCtl>) {
        {
            let mut f = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
            if f.is_some() {
                return;
            }
            let _ = EXIT_DEADLINE.set((Instant::now() + STOP_BACKSTOP, why.exit_code()));
            *f = Some(why);
        }
        let mut g = ctl.lock().unwrap_or_else(PoisonError::into_inner);
        g.ended = true;
        g.heartbeat = None;
        if let Some(a) = g.abort.take() {
            a();
        }
        drop(g);
        self.tx.send_replace(true);
    }

    pub(super) fn fatal(&self) -> Option<Fatal> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
