//! The run configuration: one typed struct, defaulted from torchelastic and the lesson, merged
//! from four layers and validated once.
//!
//! Owns the knobs of `ringtrain serve` / `ringtrain launch` and their rules; not the command line
//! itself (`cli.rs`, which produces the flag layer) nor dataset-dependent checks (`plan.rs`).
//!
//! # Contract
//! * Precedence: built-in defaults < `--config job.toml` < `RINGTRAIN_*` environment < flags. The
//!   environment reaches us through clap (`#[arg(env = ...)]`), so it arrives in the same layer as
//!   flags and loses to them; the `config` crate merges the file under that layer.
//! * Unknown keys in the file are errors (`deny_unknown_fields`), never ignored.
//! * [`RunConfig::validate`] checks every rule that needs no dataset; one [`ConfigError`] variant
//!   per rule. [`RunConfig::resolved`] fills the model-dependent and time-dependent defaults, so
//!   `run.json` records what actually ran.
//!
//! Tests: `tests` at the bottom (one per rule, plus the layering).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ringtrain_common::data::ScanOptions;
use ringtrain_common::devices::{CollectiveChoice, Precision};
use ringtrain_common::lr_find::{LrFindError, LrRange};
use ringtrain_common::schedule::{OneCycleConfig, ScheduleError};
use serde::{Deserialize, Serialize};

/// The lesson-7 networks (the worker's `Arch`; the coordinator only names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Plain CNN: 3 epochs at max_lr 0.1 in the lesson.
    Basic,
    /// ResNet-ish: 12 epochs at max_lr 0.05 in the lesson.
    #[default]
    Resnet,
    /// ResNet-ish with concatenating (dense) merges.
    Dense,
}

impl Model {
    /// The name on the wire and in run folders.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Basic => "basic",
            Model::Resnet => "resnet",
            Model::Dense => "dense",
        }
    }

    /// The lesson's `(epochs, max_lr)` for this network.
    pub fn lesson_recipe(self) -> (u32, f64) {
        match self {
            Model::Basic => (3, 0.1),
            Model::Resnet | Model::Dense => (12, 0.05),
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a run is configured by. Field names are the TOML keys and, upper-cased with a
/// `RINGTRAIN_` prefix, the environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Dataset root: `DATA/<train_dir>/<class>/*.png`, `DATA/<valid_dir>/<class>/*.png`.
    pub data: PathBuf,
    /// Training split folder name.
    pub train_dir: String,
    /// Validation split folder name.
    pub valid_dir: String,
    /// Leave out (and report) bad files instead of failing.
    pub skip_bad: bool,
    /// gRPC listen address of `ringtrain serve` (`launch` always uses 127.0.0.1:0).
    pub listen: String,
    /// World size wanted: the round closes as soon as this many workers joined.
    pub workers: u32,
    /// Smallest acceptable world size after `last_call_s` (default: `workers`).
    pub min_workers: Option<u32>,
    /// The run fails when the round has not closed this long after start (torchelastic: 600 s).
    pub join_timeout_s: f64,
    /// Once `min_workers` joined, wait this long for more (torchelastic: 30 s).
    pub last_call_s: f64,
    /// Workers heartbeat this often (torchelastic keep-alive: 5 s).
    pub heartbeat_interval_s: f64,
    /// A rank silent for `heartbeat_interval_s × heartbeat_missed` fails the run (3).
    pub heartbeat_missed: u32,
    /// Read/write timeout of the workers' ring all-reduce.
    pub collective_timeout_s: f64,
    /// Network.
    pub model: Model,
    /// Epochs (default: the lesson's for `model`).
    pub epochs: Option<u32>,
    /// Peak learning rate (default: the lesson's for `model`).
    pub max_lr: Option<f64>,
    /// Global batch, split evenly over the ranks.
    pub batch_size: u32,
    /// Validation batch per rank (speed only).
    pub valid_batch_size: u32,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// One-cycle warm-up fraction.
    pub pct_start: f64,
    /// Start lr = max_lr / div_factor.
    pub div_factor: f64,
    /// Final lr = max_lr / (div_factor · final_div_factor).
    pub final_div_factor: f64,
    /// Adam beta1 at the start/end and at the peak lr.
    pub moms: (f64, f64),
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub wd: f64,
    /// Run folder (default: `runs/<model>-<unix time>`).
    pub run_dir: Option<PathBuf>,
    /// Run id workers must match (default: `<model>-<unix time>-<pid>`).
    pub run_id: Option<String>,
    /// Checkpoints kept besides the best one (the newest ones).
    pub checkpoint_keep: u32,
    /// Round restarts allowed after losing a worker (a dead, silent or preempted rank ends the
    /// round; the next round resumes from the last checkpoint). `launch` also restarts dead
    /// worker processes up to this many times in total. 0: the first loss fails the run.
    pub max_restarts: u32,
    /// Resume from the run folder's latest good checkpoint when it has one, start fresh when it
    /// has none (what a restarted coordinator in a cluster wants). Without it, a run folder
    /// that already holds checkpoints is refused unless `--resume` names it.
    pub auto_resume: bool,
    /// Also checkpoint inside epochs every this many global steps (0: at epoch ends only).
    pub checkpoint_every_steps: u64,
    /// On SIGTERM/Ctrl-C, wait this long for the ranks' stop checkpoint before exiting.
    pub stop_grace_s: f64,
    /// All-reduce between the workers: `auto` (NCCL when every worker is on its own GPU, the
    /// TCP ring otherwise), `nccl` or `ring`.
    pub collective: CollectiveChoice,
    /// Forward-pass arithmetic: `fp32` or `bf16` (autocast; weights and optimiser stay f32).
    pub precision: Precision,
    /// File holding the run's shared token; every call and ring connection must prove it
    /// (else `$RINGTRAIN_AUTH_TOKEN`; neither: no authentication). `launch` makes one per run.
    pub auth_token_file: Option<PathBuf>,
    /// TLS for gRPC (`serve`): certificate chain and private key, PEM.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The health service's `liveness` turns NOT_SERVING when a running round made no step
    /// progress for this long (a restart then resumes from the last checkpoint).
    pub stall_timeout_s: f64,
    /// HTTP endpoint for the dashboard (`/`), Prometheus (`/metrics`) and `ringtrain status`
    /// (`/status`), e.g. `0.0.0.0:29401`; none: off.
    pub http_listen: Option<String>,
    /// Serve gRPC on an address other machines can reach without an auth token. Refused unless
    /// set: only for a trusted, isolated network (see the README's cluster mode).
    pub insecure_no_auth: bool,
    /// Most gRPC connections that have made an authenticated call, at once; past it new
    /// connections are closed at once (`launch`'s and a cluster's workers need one each).
    pub max_connections: u32,
    /// Most gRPC connections still in their handshake (TCP accepted, no authenticated call
    /// yet); past it the oldest is closed to make room.
    pub max_pending_connections: u32,
    /// A gRPC connection must finish TLS, the HTTP/2 preface and its first authenticated call
    /// within this many seconds of being accepted, or it is closed.
    pub handshake_timeout_s: f64,
    /// HTTP/2 keepalive: the server pings every connection this often and closes one whose
    /// ping is not answered within as long again (a dead or paused worker).
    pub keepalive_s: f64,
    /// An LR range test instead of training (`ringtrain lr-find` sets it; as a TOML table
    /// `[lr_find]` with `start_lr`, `end_lr`, `iters`, `stop_div`): one epoch of `iters`
    /// steps on an exponential learning-rate sweep.
    pub lr_find: Option<LrRange>,
    /// Set by `--resume RUN_DIR`: a run folder without a good checkpoint is an error.
    #[serde(skip)]
    pub resume_required: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            train_dir: "training".into(),
            valid_dir: "testing".into(),
            skip_bad: false,
            listen: "127.0.0.1:29400".into(),
            workers: 1,
            min_workers: None,
            join_timeout_s: 600.0,
            last_call_s: 30.0,
            heartbeat_interval_s: 5.0,
            heartbeat_missed: 3,
            collective_timeout_s: 60.0,
            model: Model::Resnet,
            epochs: None,
            max_lr: None,
            batch_size: 128,
            valid_batch_size: 1024,
            seed: 42,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            moms: (0.95, 0.85),
            beta2: 0.99,
            eps: 1e-8,
            wd: 0.01,
            run_dir: None,
            run_id: None,
            checkpoint_keep: 3,
            max_restarts: 3,
            auto_resume: false,
            checkpoint_every_steps: 0,
            stop_grace_s: 20.0,
            collective: CollectiveChoice::Auto,
            precision: Precision::Fp32,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            stall_timeout_s: 300.0,
            http_listen: None,
            insecure_no_auth: false,
            max_connections: 1024,
            max_pending_connections: 256,
            handshake_timeout_s: 10.0,
            keepalive_s: 10.0,
            lr_find: None,
            resume_required: false,
        }
    }
}

/// A configuration rule that does not hold; one variant per rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// No dataset root was given.
    #[error("data is required: the dataset root (--data DIR)")]
    NoData,
    /// `workers` is zero.
    #[error("workers must be at least 1")]
    NoWorkers,
    /// `min_workers` is zero or larger than `workers`.
    #[error("min-workers must be in 1..={workers}, got {min_workers}")]
    BadMinWorkers { min_workers: u32, workers: u32 },
    /// A timeout or period is not a finite number of seconds greater than zero.
    #[error("{field} must be finite and > 0 seconds, got {value}")]
    BadDuration { field: &'static str, value: f64 },
    /// `heartbeat_missed` is zero.
    #[error("heartbeat-missed must be at least 1")]
    NoMissedHeartbeats,
    /// `epochs` is zero.
    #[error("epochs must be at least 1")]
    NoEpochs,
    /// `batch_size` is zero.
    #[error("batch-size must be at least 1")]
    ZeroBatch,
    /// `valid_batch_size` is zero.
    #[error("valid-batch-size must be at least 1")]
    ZeroValidBatch,
    /// The global batch cannot be split evenly over a possible world size.
    #[error("batch-size {batch_size} is not divisible by world size {world_size}; every rank must get the same batch")]
    BatchNotDivisible { batch_size: u32, world_size: u32 },
    /// A one-cycle parameter is out of range.
    #[error("schedule: {0}")]
    Schedule(ScheduleError),
    /// The LR range test's settings break a rule.
    #[error("lr-find: {0}")]
    LrFind(LrFindError),
    /// Adam beta2 outside [0, 1).
    #[error("beta2 must be in [0, 1), got {0}")]
    BadBeta2(f64),
    /// Adam epsilon not finite and > 0.
    #[error("eps must be finite and > 0, got {0}")]
    BadEps(f64),
    /// Weight decay negative or not finite.
    #[error("wd must be finite and >= 0, got {0}")]
    BadWd(f64),
    /// `listen` is not `host:port` with a numeric host.
    #[error("listen must be an IP:port address such as 127.0.0.1:29400, got {0:?}")]
    BadListen(String),
    /// A connection limit is zero.
    #[error("{field} must be at least 1")]
    ZeroLimit { field: &'static str },
    /// An explicit `run_id` is empty or contains whitespace.
    #[error("run-id must be non-empty without whitespace, got {0:?}")]
    BadRunId(String),
}

/// Reading or merging the configuration layers failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is missing, unreadable, not TOML, or has an unknown key or a wrongly typed value.
    #[error("configuration {}: {reason}", path.as_ref().map_or("flags".into(), |p| p.display().to_string()))]
    Invalid {
        path: Option<PathBuf>,
        reason: String,
    },
}

impl RunConfig {
    /// Epochs: explicit or the lesson's.
    pub fn epochs(&self) -> u32 {
        if self.lr_find.is_some() {
            return 1;
        }
        self.epochs.unwrap_or(self.model.lesson_recipe().0)
    }

    /// Peak learning rate: explicit or the lesson's.
    pub fn max_lr(&self) -> f64 {
        self.max_lr.unwrap_or(self.model.lesson_recipe().1)
    }

    /// Smallest world size the round may close with.
    pub fn min_workers(&self) -> u32 {
        self.min_workers.unwrap_or(self.workers)
    }

    /// How the dataset folder is read.
    pub fn scan_options(&self) -> ScanOptions {
        ScanOptions {
            train_dir: self.train_dir.clone(),
            valid_dir: self.valid_dir.clone(),
            skip_bad: self.skip_bad,
        }
    }

    /// The one-cycle config for a run of `total_steps` steps.
    pub fn one_cycle(&self, total_steps: u64) -> OneCycleConfig {
        OneCycleConfig {
            max_lr: self.max_lr(),
            total_steps,
            pct_start: self.pct_start,
            div_factor: self.div_factor,
            final_div_factor: self.final_div_factor,
            moms: self.moms,
        }
    }

    /// Checks every rule that needs no dataset; returns the first violation in field order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data.as_os_str().is_empty() {
            return Err(ConfigError::NoData);
        }
        if self.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        let min = self.min_workers();
        if min == 0 || min > self.workers {
            return Err(ConfigError::BadMinWorkers {
                min_workers: min,
                workers: self.workers,
            });
        }
        for (field, value) in [
            ("join-timeout-s", self.join_timeout_s),
            ("last-call-s", self.last_call_s),
            ("heartbeat-interval-s", self.heartbeat_interval_s),
            ("collective-timeout-s", self.collective_timeout_s),
            ("stop-grace-s", self.stop_grace_s),
            ("stall-timeout-s", self.stall_timeout_s),
            ("handshake-timeout-s", self.handshake_timeout_s),
            ("keepalive-s", self.keepalive_s),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::BadDuration { field, value });
            }
        }
        if self.heartbeat_missed == 0 {
            return Err(ConfigError::NoMissedHeartbeats);
        }
        for (field, value) in [
            ("max-connections", self.max_connections),
            ("max-pending-connections", self.max_pending_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { field });
            }
        }
        if self.epochs() == 0 {
            return Err(ConfigError::NoEpochs);
        }
        if self.batch_size == 0 {
            return Err(ConfigError::ZeroBatch);
        }
        if self.valid_batch_size == 0 {
            return Err(ConfigError::ZeroValidBatch);
        }
        // Every world size the round may close with must split the batch evenly.
        if let Some(world_size) = (min..=self.workers).find(|n| !self.batch_size.is_multiple_of(*n))
        {
            return Err(ConfigError::BatchNotDivisible {
                batch_size: self.batch_size,
                world_size,
            });
        }
        self.one_cycle(1).init().map_err(ConfigError::Schedule)?;
        if let Some(r) = &self.lr_find {
            r.validate().map_err(ConfigError::LrFind)?;
        }
        if !(self.beta2 >= 0.0 && self.beta2 < 1.0) {
            return Err(ConfigError::BadBeta2(self.beta2));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ConfigError::BadEps(self.eps));
        }
        if !(self.wd.is_finite() && self.wd >= 0.0) {
            return Err(ConfigError::BadWd(self.wd));
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::BadListen(self.listen.clone()));
        }
        if let Some(id) = &self.run_id {
            if id.is_empty() || id.chars().any(char::is_whitespace) {
                return Err(ConfigError::BadRunId(id.clone()));
            }
        }
        Ok(())
    }

    /// This (the current invocation's) configuration continuing the run `stored` (from a
    /// checkpoint): everything that defines the run's arithmetic comes from `stored`; how it is
    /// served (listen address, workers, timeouts, restarts, data mount point, run folder) stays.
    pub fn continuing(mut self, stored: &RunConfig) -> Self {
        let s = stored.clone();
        self.train_dir = s.train_dir;
        self.valid_dir = s.valid_dir;
        self.skip_bad = s.skip_bad;
        self.model = s.model;
        self.epochs = s.epochs;
        self.max_lr = s.max_lr;
        self.batch_size = s.batch_size;
        self.valid_batch_size = s.valid_batch_size;
        self.seed = s.seed;
        self.pct_start = s.pct_start;
        self.div_factor = s.div_factor;
        self.final_div_factor = s.final_div_factor;
        self.moms = s.moms;
        self.beta2 = s.beta2;
        self.eps = s.eps;
        self.wd = s.wd;
        self.checkpoint_every_steps = s.checkpoint_every_steps;
        self.precision = s.precision;
        self.run_id = s.run_id;
        self
    }

    /// The same configuration with every default that depends on the model or the clock filled
    /// in (`unix_time` in seconds; the pid keeps two coordinators started in one second apart).
    pub fn resolved(mut self, unix_time: u64) -> Self {
        self.epochs = Some(self.epochs());
        self.max_lr = Some(self.max_lr());
        self.min_workers = Some(self.min_workers());
        let model = self.model;
        let kind = if self.lr_find.is_some() {
            "lr-find-"
        } else {
            ""
        };
        self.run_dir
            .get_or_insert_with(|| PathBuf::from(format!("runs/{kind}{model}-{unix_time}")));
        self.run_id
            .get_or_insert_with(|| format!("{model}-{unix_time}-{}", std::process::id()));
        self
    }
}

/// Merges defaults < `file` < `overrides` (flags and environment, already merged by clap; fields
/// that are not set must be skipped when serialising) into a [`RunConfig`]. Does not validate.
pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> Result<RunConfig, LoadError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(LoadError::Invalid {
                path: Some(path.into()),
                reason: "no such file".into(),
            });
        }
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let flags = config::Config::try_from(overrides).map_err(|e| LoadError::Invalid {
        path: None,
        reason: e.to_string(),
    })?;
    builder
        .add_source(flags)
        .build()
        .and_then(config::Config::try_deserialize::<RunConfig>)
        .map_err(|e| LoadError::Invalid {
            path: file.map(Path::to_path_buf),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> RunConfig {
        RunConfig {
            data: "d".into(),
            ..RunConfig::default()
        }
    }

    #[test]
    fn defaults_follow_torchelastic_and_the_lesson() {
        let c = ok();
        c.validate().unwrap();
        assert_eq!(
            (
                c.join_timeout_s,
                c.last_call_s,
                c.heartbeat_interval_s,
                c.heartbeat_missed
            ),
            (600.0, 30.0, 5.0, 3)
        );
        assert_eq!((c.epochs(), c.max_lr(), c.batch_size), (12, 0.05, 128));
        let basic = RunConfig {
            model: Model::Basic,
            ..ok()
        };
        assert_eq!((basic.epochs(), basic.max_lr()), (3, 0.1));
        let r = ok().resolved(1700000000);
        assert_eq!(r.run_dir, Some(PathBuf::from("runs/resnet-1700000000")));
        assert!(r
            .run_id
            .as_deref()
            .is_some_and(|id| id.starts_with("resnet-1700000000-")));
        assert_eq!(
            (r.epochs, r.max_lr, r.min_workers),
            (Some(12), Some(0.05), Some(1))
        );
    }

    #[test]
    fn each_rule() {
        type Mutate = Box<dyn Fn(&mut RunConfig)>;
        let cases: Vec<(Mutate, ConfigError)> = vec![
            (Box::new(|c| c.data = PathBuf::new()), ConfigError::NoData),
            (Box::new(|c| c.workers = 0), ConfigError::NoWorkers),
            (
                Box::new(|c| c.min_workers = Some(0)),
                ConfigError::BadMinWorkers {
                    min_workers: 0,
                    workers: 1,
                },
            ),
            (
                Box::new(|c| c.min_workers = Some(2)),
                ConfigError::BadMinWorkers {
                    min_workers: 2,
                    workers: 1,
                },
            ),
            (
                Box::new(|c| c.join_timeout_s = 0.0),
                ConfigError::BadDuration {
                    field: "join-timeout-s",
                    value: 0.0,
                },
            ),
            (
                Box::new(|c| c.last_call_s = -1.0),
                ConfigError::BadDuration {
                    field: "last-call-s",
                    value: -1.0,
                },
            ),
            (
                Box::new(|c| c.heartbeat_interval_s = f64::INFINITY),
                ConfigError::BadDuration {
                    field: "heartbeat-interval-s",
                    value: f64::INFINITY,
                },
            ),
            (
                Box::new(|c| c.collective_timeout_s = 0.0),
                ConfigError::BadDuration {
                    field: "collective-timeout-s",
                    value: 0.0,
                },
            ),
            (
                Box::new(|c| c.handshake_timeout_s = 0.0),
                ConfigError::BadDuration {
                    field: "handshake-timeout-s",
                    value: 0.0,
                },
            ),
            (
                Box::new(|c| c.keepalive_s = -2.0),
                ConfigError::BadDuration {
                    field: "keepalive-s",
                    value: -2.0,
                },
            ),
            (
                Box::new(|c| c.heartbeat_missed = 0),
                ConfigError::NoMissedHeartbeats,
            ),
            (
                Box::new(|c| c.max_connections = 0),
                ConfigError::ZeroLimit {
                    field: "max-connections",
                },
            ),
            (
                Box::new(|c| c.max_pending_connections = 0),
                ConfigError::ZeroLimit {
                    field: "max-pending-connections",
                },
            ),
            (Box::new(|c| c.epochs = Some(0)), ConfigError::NoEpochs),
            (Box::new(|c| c.batch_size = 0), ConfigError::ZeroBatch),
            (
                Box::new(|c| c.valid_batch_size = 0),
                ConfigError::ZeroValidBatch,
            ),
            (
                Box::new(|c| c.workers = 3),
                ConfigError::BatchNotDivisible {
                    batch_size: 128,
                    world_size: 3,
                },
            ),
            (
                Box::new(|c| {
                    c.workers = 4;
                    c.min_workers = Some(3);
                }),
                ConfigError::BatchNotDivisible {
                    batch_size: 128,
                    world_size: 3,
                },
            ),
            (
                Box::new(|c| c.max_lr = Some(0.0)),
                ConfigError::Schedule(ScheduleError::BadMaxLr { max_lr: 0.0 }),
            ),
            (
                Box::new(|c| c.pct_start = 1.0),
                ConfigError::Schedule(ScheduleError::BadPctStart { pct_start: 1.0 }),
            ),
            (
                Box::new(|c| c.moms = (1.0, 0.5)),
                ConfigError::Schedule(ScheduleError::BadMoms { moms: (1.0, 0.5) }),
            ),
            (Box::new(|c| c.beta2 = 1.0), ConfigError::BadBeta2(1.0)),
            (Box::new(|c| c.eps = 0.0), ConfigError::BadEps(0.0)),
            (Box::new(|c| c.wd = -0.1), ConfigError::BadWd(-0.1)),
            (
                Box::new(|c| c.listen = "localhost".into()),
                ConfigError::BadListen("localhost".into()),
            ),
            (
                Box::new(|c| c.run_id = Some("a b".into())),
                ConfigError::BadRunId("a b".into()),
            ),
            (
                Box::new(|c| c.run_id = Some(String::new())),
                ConfigError::BadRunId(String::new()),
            ),
        ];
        for (mutate, want) in cases {
            let mut c = ok();
            mutate(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
        // Divisible world sizes pass, including an elastic range.
        let c = RunConfig {
            workers: 4,
            min_workers: Some(2),
            batch_size: 120,
            ..ok()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        epochs: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<PathBuf>,
    }

    #[test]
    fn layers_defaults_file_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(&file, "data = \"/file\"\nepochs = 5\nworkers = 2\nmoms = [0.9, 0.8]\ndiv_factor = 10\nmodel = \"basic\"\n").unwrap();
        let c = load(
            Some(&file),
            &Flags {
                epochs: Some(7),
                data: None,
            },
        )
        .unwrap();
        assert_eq!(c.data, PathBuf::from("/file"));
        assert_eq!(c.epochs, Some(7), "flags win over the file");
        assert_eq!(
            (c.workers, c.moms, c.div_factor, c.model),
            (2, (0.9, 0.8), 10.0, Model::Basic)
        );
        assert_eq!(c.batch_size, 128, "defaults fill the rest");
        let c = load(None, &Flags::default()).unwrap();
        assert_eq!(c, RunConfig::default());
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(&file, "epochz = 5\n").unwrap();
        let err = load(Some(&file), &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("epochz"), "{err}");
        assert!(load(Some(&dir.path().join("nope.toml")), &Flags::default()).is_err());
    }
}
