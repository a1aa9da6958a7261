//! Running one run: prepare (validate, scan, plan, run folder), serve gRPC until the run ends,
//! report the outcome.
//!
//! Owns preparing a run (`prepare.rs`) and the server's lifetime; not the shared state cell and
//! its tasks (`shared.rs`), the RPC handlers (`service/`) or processes (`launch/`).
//!
//! # Contract
//! * [`Run::prepare`] refuses to start (an error, nothing served) on an invalid config, a bad
//!   dataset, a world size the plan cannot work with, or an unwritable run folder.
//! * [`Run::serve`] returns when the run finished or failed. `shutdown` resolving fails the run
//!   with "interrupted". After a failure the server keeps answering for up to
//!   `2 × heartbeat_interval` (see [`Run::set_linger`]) until every live rank has been told, so
//!   workers exit as "aborted" rather than "coordinator lost".
//! * The outcome is a failure too when the run folder could not be written.
//!
//! Tests: `coordinator/tests/serve.rs` (real sockets on 127.0.0.1:0).

mod prepare;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringtrain_common::auth::Token;
use ringtrain_common::checkpoint::CheckpointError;
use ringtrain_common::data::DataError;
use ringtrain_common::pb::coordinator_server::CoordinatorServer;
use ringtrain_common::report::ReportError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::ServerTlsConfig;

use crate::artifacts::{OutputWriter, Summary};
use crate::config::{ConfigError, RunConfig};
use crate::guard::{self, Guard, GuardConfig};
use crate::plan::PlanError;
use crate::resume::ResumeError;
use crate::runlock::{LockError, RunLock};
use crate::security::{self, CheckToken, SecurityError};
use crate::service::CoordinatorService;
pub use crate::shared::RunHandle;
use crate::shared::{spawn_progress, spawn_ticker, Shared};
use crate::state::{Prepared, Status};

/// Why a run stopped on SIGTERM or Ctrl-C.
pub const INTERRUPTED: &str = "interrupted; the checkpoints stay: continue with --resume RUN_DIR";

/// Largest message either way (the worker's client uses the same limit).
pub use ringtrain_common::wire::MAX_MESSAGE_BYTES;

/// HTTP/2 streams (calls) one connection may have open at once: a worker needs a few.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

// The HTTP endpoint still reads the time through here; `crate::clock` is its home.
pub(crate) use crate::clock::now;

/// Why a run could not start or be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration rule does not hold.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The dataset cannot be scanned.
    #[error("cannot read the dataset")]
    Dataset(#[from] DataError),
    /// The dataset is too small (or the batch unsplittable) for a possible world size.
    #[error("cannot plan a run of world size {world_size}")]
    Plan { world_size: u32, source: PlanError },
    /// The run folder cannot be created or written.
    #[error("cannot create the run folder")]
    RunDir(#[from] ReportError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(String),
    /// The checkpoint folder cannot be written, or a checkpoint cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The run folder cannot be resumed (or must not be overwritten), or it already finished.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// The token or TLS files cannot be used.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// Another coordinator holds the run folder.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `Finished` or `Failed`.
    pub status: Status,
    /// Why it failed.
    pub reason: Option<String>,
    /// What `summary.json` says (plus a late write failure in `reason`).
    pub summary: Summary,
    /// The run folder.
    pub run_dir: PathBuf,
}

impl RunOutcome {
    /// True when the run finished.
    pub fn succeeded(&self) -> bool {
        self.status == Status::Finished
    }

    /// The last line the CLI prints.
    pub fn final_line(&self) -> String {
        let dir = self.run_dir.display();
        match (&self.reason, self.summary.accuracy, self.summary.valid_correct, self.summary.valid_count) {
            (None, Some(acc), Some(correct), Some(count)) => format!(
                "accuracy {acc:.4} ({correct} of {count} validation images) | {:.0} train images/s | world size {} | run folder {dir}",
                self.summary.train_images_per_s, self.summary.world_size
            ),
            (reason, ..) => format!("run failed: {} | run folder {dir}", reason.as_deref().unwrap_or("unknown reason")),
        }
    }
}

/// A prepared run, ready to serve.
pub struct Run {
    shared: Arc<Shared>,
    writer: OutputWriter,
    prepared: Arc<Prepared>,
    linger: Duration,
    token: Option<Token>,
    tls: Option<ServerTlsConfig>,
    /// One coordinator per run folder, until this run is dropped.
    _lock: Option<RunLock>,
}

impl Run {
    /// The run id workers must use.
    pub fn run_id(&self) -> &str {
        &self.prepared.run_id
    }

    /// The run folder.
    pub fn run_dir(&self) -> &std::path::Path {
        &self.prepared.run_dir
    }

    /// The effective configuration.
    pub fn config(&self) -> &RunConfig {
        &self.prepared.config
    }

    /// The dataset root as scanned (absolute).
    pub fn data_root(&self) -> &str {
        &self.prepared.dataset.root
    }

    /// The dataset fingerprint workers must send.
    pub fn fingerprint(&self) -> &str {
        &self.prepared.dataset.fingerprint
    }

    /// How long a failed run keeps serving so live workers hear about it.
    /// Replaces the run's token (`launch` makes one per run when none is configured).
    pub fn set_token(&mut self, token: Option<Token>) {
        self.token = token;
    }

    /// The run's token, if any.
    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// Whether gRPC is served over TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn set_linger(&mut self, linger: Duration) {
        self.linger = linger;
    }

    /// A handle for failing and observing the run from outside.
    pub fn handle(&self) -> RunHandle {
        RunHandle::new(self.shared.clone())
    }

    /// The gRPC service (for tests that call the trait methods directly).
    pub fn service(&self) -> CoordinatorService {
        CoordinatorService::new(self.shared.clone())
    }

    /// Starts the task that ticks the state machine: rendezvous timeouts and the heartbeat
    /// watchdog. [`Run::serve`] starts it itself.
    pub fn spawn_watchdog(&self) -> tokio::task::JoinHandle<()> {
        let period = Duration::from_secs_f64(
            (self.prepared.config.heartbeat_interval_s / 4.0).clamp(0.01, 1.0),
        );
        spawn_ticker(self.shared.clone(), period)
    }

    /// Serves the run on `listener` until it finished or failed (or `shutdown` resolved, which
    /// fails it), then writes the last files and returns the outcome.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunOutcome, ServeError> {
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Server(e.to_string()))?;
        tracing::info!(run_id = %self.prepared.run_id, listen = %addr, workers = self.prepared.config.workers, "coordinator listening");
        let svc = CoordinatorServer::new(self.service())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let svc = InterceptedService::new(svc, CheckToken::new(self.token.clone()));
        let stall = Duration::from_secs_f64(self.prepared.config.stall_timeout_s);
        let (health, health_task) = crate::health::start(self.shared.clone(), stall).await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let c = &self.prepared.config;
        let keepalive = Duration::from_secs_f64(c.keepalive_s);
        // The last-resort bound on any call; barriers end sooner (round over, run failed) and
        // a worker's own deadline (grpc-timeout) is honoured below this.
        let request_cap = Duration::from_secs_f64(c.join_timeout_s.max(c.stall_timeout_s) + 60.0);
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .timeout(request_cap);
        if let Some(tls) = self.tls.clone() {
            builder = builder
                .tls_config(tls)
                .map_err(|e| ServeError::Server(format!("TLS: {e}")))?;
        }
        let mut builder = builder.layer(tower::util::MapResponseLayer::new(
            security::malformed_is_invalid_argument,
        ));
        tracing::info!(
            tls = self.tls.is_some(),
            auth = self.token.is_some(),
            "gRPC security"
        );
        let fd_limit = guard::raise_fd_limit();
        let limits = guard::fit_to_fd_limit(
            GuardConfig {
                max_connections: c.max_connections as usize,
                max_pending: c.max_pending_connections as usize,
                handshake_timeout: Duration::from_secs_f64(c.handshake_timeout_s),
                tcp_keepalive: keepalive,
            },
            fd_limit,
        );
        tracing::info!(
            fd_limit,
            max_connections = limits.max_connections,
            max_pending = limits.max_pending,
            handshake_timeout_s = limits.handshake_timeout.as_secs_f64(),
            keepalive_s = c.keepalive_s,
            "gRPC connection limits"
        );
        let conn_guard = Guard::new("gRPC", limits);
        self.shared.set_guard(conn_guard.clone());
        let (accept_stop_tx, accept_stop_rx) = watch::channel(false);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(guard::accept_loop(
            listener,
            conn_guard,
            accept_stop_rx,
        ));
        let mut server = tokio::spawn(
            builder
                .add_service(health)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                }),
        );
        let http = match &self.prepared.config.http_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|e| {
                    ServeError::Server(format!("cannot listen on {addr} for HTTP: {e}"))
                })?;
                let at = l
                    .local_addr()
                    .map_err(|e| ServeError::Server(e.to_string()))?;
                tracing::info!(url = %format!("http://{at}/"), metrics = %format!("http://{at}/metrics"), "dashboard");
                Some(crate::http::HttpServer::spawn(l, self.shared.clone()))
            }
            None => None,
        };
        let watchdog = self.spawn_watchdog();
        let progress = spawn_progress(self.shared.clone());
        let mut rx = self.shared.subscribe();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut server_done = None;
        let mut interrupted = false;
        tokio::select! {
            _ = rx.wait_for(|s| s.status.is_terminal()) => {}
            () = &mut shutdown => interrupted = true,
            res = &mut server => {
                let why = match &res {
                    Ok(Ok(())) => "stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                self.handle().fail(format!("the gRPC server stopped: {why}"));
                server_done = Some(why);
            }
        }
        if interrupted {
            // Preemption: a stop checkpoint if the ranks manage it in time, then go without
            // telling the workers the run failed: they wait for a coordinator that resumes.
            let grace = Duration::from_secs_f64(self.prepared.config.stop_grace_s);
            self.handle().stop_at_checkpoint(grace).await;
            let _ = stop_tx.send(());
            if tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
            self.handle().fail(INTERRUPTED);
        } else if server_done.is_none() {
            self.linger_until_informed().await;
            let _ = stop_tx.send(());
            // In-flight calls answer at once after the end; a client that holds its connection
            // open must not keep the coordinator alive.
            if tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        let _ = accept_stop_tx.send(true);
        watchdog.abort();
        progress.abort();
        health_task.abort();
        if let Some(h) = http {
            // Open dashboards get the run's end before the endpoint goes.
            h.shutdown(Duration::from_secs(1)).await;
        }
        self.finish().await
    }

    async fn linger_until_informed(&self) {
        let deadline = tokio::time::Instant::now() + self.linger;
        while self
            .shared
            .read(|s| s.verdict().0 == Status::Failed && !s.all_informed())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drains the output writer and builds the outcome.
    async fn finish(self) -> Result<RunOutcome, ServeError> {
        self.shared.close_output();
        let writer = self.writer;
        let errors = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap_or_else(|e| vec![format!("output writer: {e}")]);
        let (status, reason, summary) = self.shared.read(|s| {
            let (status, reason) = s.verdict();
            (
                status,
                (!reason.is_empty()).then_some(reason),
                s.final_summary(now()),
            )
        });
        let (status, reason) = match (status, errors.first()) {
            (Status::Finished, Some(e)) => (Status::Failed, Some(e.clone())),
            _ => (status, reason),
        };
        Ok(RunOutcome {
            status,
            reason,
            summary,
            run_dir: self.prepared.run_dir.clone(),
        })
    }
}

/// Prepares and serves one run on `listener` (`ringtrain serve`): returns when the run finished
/// or failed; `shutdown` (Ctrl-C) fails it with "interrupted".
pub async fn serve(
    listener: TcpListener,
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RunOutcome, ServeError> {
    Run::prepare(config)?.serve(listener, shutdown).await
}
