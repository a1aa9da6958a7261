//! The gRPC health service (`grpc.health.v1`, tonic-health) on the coordinator's port, for
//! Kubernetes' gRPC probes.
//!
//! # Contract
//! * `""` and `ringtrain.v1.Coordinator`: SERVING while the coordinator serves (startup and
//!   readiness probes).
//! * `liveness`: SERVING unless a round has been running for `stall_timeout_s` without any
//!   step progress (the highest step any rank reported in a heartbeat, or a finished epoch):
//!   then NOT_SERVING, so the kubelet restarts the coordinator, which resumes from its last
//!   checkpoint (`--auto-resume`). Waiting for workers is not a stall (the rendezvous has its
//!   own timeout), nor is a finished or failed run.
//!
//! Tests: `tests` at the bottom ([`Stall`]); `coordinator/tests/health.rs` (a real client).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::shared::Shared;
use crate::state::Status;

/// The health service name the liveness probe asks for.
pub const LIVENESS: &str = "liveness";
/// The name of the coordinator service.
pub const COORDINATOR: &str = "ringtrain.v1.Coordinator";

/// Tracks step progress of running rounds.
#[derive(Debug, Clone)]
pub struct Stall {
    timeout: Duration,
    last: Option<(u64, Instant)>,
}

impl Stall {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            last: None,
        }
    }

    /// Whether the run counts as alive, given its status and progress now.
    pub fn alive(&mut self, status: Status, progress: u64, now: Instant) -> bool {
        if status != Status::Running {
            self.last = None;
            return true;
        }
        match self.last {
            Some((p, _)) if progress > p => self.last = Some((progress, now)),
            None => self.last = Some((progress, now)),
            _ => {}
        }
        self.last
            .is_none_or(|(_, since)| now.saturating_duration_since(since) < self.timeout)
    }
}

/// Starts the health service's status updates; returns the service to add to the server.
pub(crate) async fn start(
    shared: Arc<Shared>,
    stall_timeout: Duration,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tokio::task::JoinHandle<()>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in ["", COORDINATOR, LIVENESS] {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let task = tokio::spawn(watch(shared, reporter, stall_timeout));
    (service, task)
}

async fn watch(shared: Arc<Shared>, reporter: HealthReporter, stall_timeout: Duration) {
    let mut stall = Stall::new(stall_timeout);
    let mut was = true;
    let period = (stall_timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let (status, progress) = shared.read(|s| s.liveness_progress());
        let alive = stall.alive(status, progress, crate::clock::now());
        if alive != was {
            if alive {
                tracing::info!("step progress again: liveness SERVING");
            } else {
                tracing::error!(
                    stall_timeout_s = stall_timeout.as_secs_f64(),
                    step = progress,
                    "no step progress: liveness NOT_SERVING"
                );
            }
            let s = if alive {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(LIVENESS, s).await;
            was = alive;
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_round_without_progress_is_a_stall() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut st = Stall::new(Duration::from_secs(10));
        assert!(st.alive(Status::Rendezvous, 0, s(0)));
        assert!(
            st.alive(Status::Rendezvous, 0, s(100)),
            "waiting for workers is not a stall"
        );
        assert!(st.alive(Status::Running, 5, s(100)));
        assert!(st.alive(Status::Running, 5, s(109)));
        assert!(!st.alive(Status::Running, 5, s(110)), "10 s without a step");
        assert!(
            st.alive(Status::Running, 6, s(111)),
            "progress makes it alive again"
        );
        assert!(st.alive(Status::Finished, 6, s(500)));
        assert!(
            st.alive(Status::Running, 6, s(501)),
            "a new round starts its own clock"
        );
    }
}
