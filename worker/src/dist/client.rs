//! The gRPC client of the coordinator, for a training thread that is not async.
//!
//! Owns a small tokio runtime; blocking calls run `Handle::block_on` on the caller's (training)
//! thread, which is not a runtime thread, so this never blocks inside an async task. Heartbeats
//! run as a task on the same runtime.

use std::time::Duration;

use ringtrain_common::pb::coordinator_client::CoordinatorClient;
use ringtrain_common::pb::{self, RunStatus};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::train::TrainError;

/// A connected coordinator client.
pub struct Client {
    rt: Runtime,
    inner: CoordinatorClient<Channel>,
    url: String,
}

fn rpc_error(url: &str, what: &str, status: tonic::Status) -> TrainError {
    if status.code() == tonic::Code::Aborted {
        return TrainError::RunFailed(status.message().to_string());
    }
    TrainError::Coordinator(format!(
        "{what} at {url}: {} ({:?})",
        status.message(),
        status.code()
    ))
}

impl Client {
    /// Connects to `url`, retrying with backoff for up to `patience` (the coordinator may start
    /// after its workers).
    pub fn connect(url: &str, patience: Duration) -> Result<Self, TrainError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("ringtrain-rpc")
            .build()
            .map_err(|e| TrainError::Coordinator(format!("cannot start the RPC runtime: {e}")))?;
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let inner = loop {
            match rt.block_on(CoordinatorClient::connect(url.to_string())) {
                Ok(c) => break c,
                Err(e) if started.elapsed() < patience => {
                    tracing::debug!(%url, error = %e, "coordinator not reachable yet; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(TrainError::Coordinator(format!(
                        "cannot reach {url} within {patience:?}: {e}"
                    )));
                }
            }
        };
        // Large replies (shards of 60,000 paths, weights) exceed tonic's 4 MB default.
        let inner = inner
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Ok(Self {
            rt,
            inner,
            url: url.to_string(),
        })
    }

    /// Runs one unary call to completion on the RPC runtime, from the (non-async) caller thread.
    fn call<T, F>(
        &self,
        what: &str,
        rpc: impl FnOnce(CoordinatorClient<Channel>) -> F,
    ) -> Result<T, TrainError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt
            .block_on(rpc(self.inner.clone()))
            .map(tonic::Response::into_inner)
            .map_err(|s| rpc_error(&self.url, what, s))
    }

    pub fn join(&self, req: pb::JoinRequest) -> Result<pb::JoinReply, TrainError> {
        self.call("join", |mut c| async move { c.join(req).await })
    }

    pub fn pixel_stats(&self, req: pb::PixelStatsReport) -> Result<pb::NormStats, TrainError> {
        self.call("pixel stats", |mut c| async move {
            c.report_pixel_stats(req).await
        })
    }

    pub fn epoch_plan(&self, req: pb::EpochPlanRequest) -> Result<pb::EpochPlan, TrainError> {
        self.call(
            "epoch plan",
            |mut c| async move { c.get_epoch_plan(req).await },
        )
    }

    pub fn report_epoch(&self, req: pb::EpochReport) -> Result<pb::Verdict, TrainError> {
        self.call(
            "epoch report",
            |mut c| async move { c.report_epoch(req).await },
        )
    }

    pub fn leave(&self, req: pb::LeaveRequest) -> Result<pb::Verdict, TrainError> {
        self.call("leave", |mut c| async move { c.leave(req).await })
    }

    /// Starts heartbeats every `interval`. When the coordinator says the run failed, or cannot be
    /// reached for `interval × missed`, the process exits (code 3 or 1): a replica of a failed run
    /// must not keep computing, and it may be blocked in a collective that only its timeout ends.
    /// Each heartbeat carries the current global step from `step` (epoch = step / `steps_per_epoch`).
    pub fn start_heartbeats(
        &self,
        mut req: pb::HeartbeatRequest,
        interval: Duration,
        missed: u32,
        step: std::sync::Arc<std::sync::atomic::AtomicU64>,
        steps_per_epoch: u64,
    ) {
        let mut c = self.inner.clone();
        let url = self.url.clone();
        self.rt.spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                req.step = step.load(std::sync::atomic::Ordering::Relaxed);
                req.epoch = (req.step / steps_per_epoch.max(1)) as u32;
                match tokio::time::timeout(interval, c.heartbeat(req.clone())).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        last_ok = tokio::time::Instant::now();
                        if reply.status == RunStatus::Failed as i32 {
                            tracing::error!(rank = req.rank, reason = %reply.reason, "coordinator stopped the run");
                            eprintln!("ringtrain-worker: run failed: {}", reply.reason);
                            std::process::exit(crate::EXIT_ABORTED);
                        }
                    }
                    Ok(Err(status)) => tracing::warn!(%url, error = %status, "heartbeat failed"),
                    Err(_) => tracing::warn!(%url, "heartbeat timed out"),
                }
                if last_ok.elapsed() > interval * missed.max(1) {
                    tracing::error!(%url, "coordinator unreachable for {:?}; giving up", last_ok.elapsed());
                    eprintln!("ringtrain-worker: coordinator {url} unreachable for {:?}", last_ok.elapsed());
                    std::process::exit(1);
                }
            }
        });
    }
}
