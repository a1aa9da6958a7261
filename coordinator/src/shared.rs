//! The shared state cell of a run and the tasks that drive it without a request.
//!
//! Owns [`Shared`] (the state machine in a `std::sync::Mutex` never held across `.await`, its
//! `watch` publisher, the output channel and the dashboard's history of completed epochs), [`RunHandle`] (failing and observing the run from
//! outside the protocol), the ticker (rendezvous timeouts, heartbeat watchdog) and the live
//! progress task. Not serving (`server.rs`) or the RPC handlers (`service.rs`).
//!
//! Tests: through `coordinator/tests/{service,serve,launch}.rs`.

use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::artifacts::Output;
use crate::clock::now;
use crate::dashboard::History;
use crate::ids::WorkerId;
use crate::state::{Action, Event, RunError, RunState, Snapshot};

struct Inner {
    state: RunState,
    out: Option<mpsc::Sender<Output>>,
    /// Every completed epoch and step, for the dashboard (`GET /history`).
    history: History,
}

/// The state machine in its mutex, its `watch` publisher and the output channel.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    tx: watch::Sender<Snapshot>,
    /// The gRPC and the HTTP port's connection guards, once serving (their counts go to
    /// `/metrics`).
    grpc_guard: std::sync::OnceLock<Arc<crate::guard::Guard>>,
    http_guard: std::sync::OnceLock<Arc<crate::guard::Guard>>,
}

impl Shared {
    /// `history`: the epochs already done (a resumed run's), empty for a new run.
    pub(crate) fn new(state: RunState, tx: watch::Sender<Snapshot>, history: History) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state,
                out: None,
                history,
            }),
            tx,
            grpc_guard: std::sync::OnceLock::new(),
            http_guard: std::sync::OnceLock::new(),
        }
    }

    /// Records the gRPC port's guard (once).
    pub(crate) fn set_guard(&self, g: Arc<crate::guard::Guard>) {
        let _ = self.grpc_guard.set(g);
    }

    /// Records the HTTP port's guard (once).
    pub(crate) fn set_http_guard(&self, g: Arc<crate::guard::Guard>) {
        let _ = self.http_guard.set(g);
    }

    /// The guards of the ports being served: gRPC, then HTTP.
    pub(crate) fn guards(&self) -> Vec<&Arc<crate::guard::Guard>> {
        [self.grpc_guard.get(), self.http_guard.get()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Connects the output writer; outputs before this are dropped.
    pub(crate) fn open_output(&self, out: mpsc::Sender<Output>) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .out = Some(out);
    }

    /// Applies `ev` now and its actions in order, then reads the state, all under one lock
    /// (never held across `.await`: this function is synchronous).
    pub(crate) fn apply<R>(
        &self,
        ev: Event,
        read: impl FnOnce(&RunState) -> R,
    ) -> Result<R, RunError> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let actions = g.state.on_event(ev, now())?;
        for action in actions {
            match action {
                Action::Publish => {
                    self.tx.send_replace(g.state.snapshot());
                }
                Action::Output(o) => {
                    if let Output::Epoch(r) = &o {
                        g.history.record_epoch(&r.row, &r.steps);
                    }
                    if let Some(tx) = &g.out {
                        // The writer only goes away at shutdown, after the last output.
                        let _ = tx.send(o);
                    }
                }
            }
        }
        Ok(read(&g.state))
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&RunState) -> R) -> R {
        f(&self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state)
    }

    /// Reads the dashboard's history (under the same lock as the state: keep `f` short).
    pub(crate) fn history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        self.read_with_history(|_, h| f(h))
    }

    /// Reads the state and the history as of one moment.
    pub(crate) fn read_with_history<R>(&self, f: impl FnOnce(&RunState, &History) -> R) -> R {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&g.state, &g.history)
    }

    /// Sends `out` to the output writer (dropped once the writer is closed).
    pub(crate) fn emit(&self, out: Output) {
        if let Some(tx) = &self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .out
        {
            let _ = tx.send(out);
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    pub(crate) fn close_output(&self) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .out = None;
    }
}

/// A cloneable handle for code outside the protocol (the launcher) to observe or fail the run.
#[derive(Clone)]
pub struct RunHandle {
    shared: Arc<Shared>,
}

impl RunHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A line for the person watching the run (the output layer writes it after the table's
    /// current lines, on stdout), not a log line.
    pub fn notice(&self, line: impl Into<String>) {
        self.shared.emit(Output::Notice(line.into()));
    }

    /// Fails the run with `reason` (ignored once the run ended).
    pub fn fail(&self, reason: impl Into<String>) {
        let _ = self.shared.apply(Event::Fail(reason.into()), |_| ());
    }

    /// Reports that a worker process exited; fails the run unless it had finished its part.
    /// `aborted`: it exited because it was told the run failed (a consequence, not a cause).
    pub fn process_exited(
        &self,
        worker_id: &str,
        success: bool,
        aborted: bool,
        reason: impl Into<String>,
    ) {
        let ev = Event::ProcessExited {
            worker_id: WorkerId(worker_id.into()),
            success,
            aborted,
            reason: reason.into(),
        };
        let _ = self.shared.apply(ev, |_| ());
    }

    /// Asks the ranks for a stop checkpoint and waits up to `grace` for it (or for the run's
    /// end); returns whether it was taken.
    pub async fn stop_at_checkpoint(&self, grace: Duration) -> bool {
        let _ = self.shared.apply(Event::RequestStop, |_| ());
        let mut rx = self.shared.subscribe();
        let done =
            tokio::time::timeout(grace, rx.wait_for(|s| s.stopped || s.status.is_terminal()))
                .await
                .is_ok();
        let stopped = self.shared.read(|s| s.snapshot().stopped);
        if !done {
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "no stop checkpoint within the grace period; the last checkpoint stays"
            );
        }
        stopped
    }

    /// True once the run finished or failed.
    pub fn is_over(&self) -> bool {
        self.shared.read(|s| s.verdict().0.is_terminal())
    }

    /// The run's observable state, updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.subscribe()
    }
}

/// Ticks the state machine every `period`: rendezvous timeouts and the heartbeat watchdog.
pub(crate) fn spawn_ticker(shared: Arc<Shared>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = shared.apply(Event::Tick, |_| ());
        }
    })
}

/// Emits live progress (from the ranks' heartbeats) once a second when it changed; the table
/// shows each finished epoch.
pub(crate) fn spawn_progress(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = None;
        loop {
            tick.tick().await;
            let now = shared.read(|s| s.progress());
            if let Some((epoch, done, steps)) = now {
                if last != now {
                    shared.emit(Output::Progress { epoch, done, steps });
                }
            }
            last = now;
        }
    })
}
