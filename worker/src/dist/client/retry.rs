//! Retrying calls: the backoff while the coordinator cannot be reached, one attempt with its
//! deadline, and what a failed call stands for (see the client's contract).

use std::time::{Duration, Instant};

use ringtrain_common::wire::{RUN_FAILED, RUN_STATUS_KEY};

use crate::train::TrainError;

/// Retry pacing while the coordinator cannot be reached: 0.1 s doubling to 2 s, each wait
/// drawn from its upper half at random (so workers do not retry in lockstep after a
/// coordinator restart), for up to `patience` in all.
pub(in crate::dist) struct Backoff {
    started: Instant,
    next: Duration,
    patience: Duration,
    jitter: u64,
}

impl Backoff {
    pub(in crate::dist) fn new(patience: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            started: Instant::now(),
            next: Duration::from_millis(100),
            patience,
            jitter: seed | 1,
        }
    }

    /// Time left of the patience.
    pub(in crate::dist) fn left(&self) -> Duration {
        self.patience.saturating_sub(self.started.elapsed())
    }

    /// Sleeps before the next attempt and returns true, or returns false once `patience` is
    /// spent.
    pub(in crate::dist) fn wait(&mut self) -> bool {
        let left = self.left();
        if left.is_zero() {
            return false;
        }
        // xorshift: a fraction in [0.5, 1) of the current step.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let frac = 0.5 + (self.jitter % 1000) as f64 / 2000.0;
        std::thread::sleep(self.next.mul_f64(frac).min(left));
        self.next = (self.next * 2).min(Duration::from_secs(2));
        true
    }
}

/// Runs one attempt of a call with its deadline; a missed deadline reads as UNAVAILABLE (the
/// coordinator did not answer), which the callers retry.
pub(super) async fn attempt<T>(
    deadline: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    tokio::select! {
        r = tokio::time::timeout(deadline, fut) => match r {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::unavailable(format!(
                "no answer within {:.0} s",
                deadline.as_secs_f64()
            ))),
        },
        // The caller looks at why (Client::stopped) before anything else.
        _ = stopped.wait_for(|s| *s) => Err(tonic::Status::cancelled("the worker is stopping")),
    }
}

/// Errors worth retrying: the coordinator is (re)starting or the connection broke.
pub(super) fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

pub(super) fn run_failed(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(RUN_STATUS_KEY)
        .is_some_and(|v| v == RUN_FAILED)
}

/// The error a failed call stands for (see the module contract).
pub(in crate::dist) fn classify(what: &str, url: &str, status: tonic::Status) -> TrainError {
    rpc_error(url, what, status)
}

pub(super) fn rpc_error(url: &str, what: &str, status: tonic::Status) -> TrainError {
    if status.code() == tonic::Code::Aborted {
        return TrainError::RoundEnded(status.message().to_string());
    }
    if run_failed(&status) {
        return TrainError::RunFailed(status.message().to_string());
    }
    TrainError::Coordinator(format!(
        "{what} at {url}: {} ({:?})",
        status.message(),
        status.code()
    ))
}
