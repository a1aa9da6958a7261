//! The run configuration: one typed struct, defaulted from torchelastic and the lesson, merged
//! from four layers and validated once.
//!
//! Owns the knobs of `ringtrain serve` / `ringtrain launch` and their rules; not the training
//! recipe (`ringtrain_common::recipe::Recipe`, embedded as `recipe` with its own `validate()`,
//! shared with the worker), the command line itself (`cli.rs`, which produces the flag layer) nor
//! dataset-dependent checks (`plan.rs`).
//!
//! # Contract
//! * Precedence: built-in defaults < `--config job.toml` < `RINGTRAIN_*` environment < flags. The
//!   environment reaches us through clap (`#[arg(env = ...)]`), so it arrives in the same layer as
//!   flags and loses to them; the `config` crate merges the file under that layer.
//! * Unknown keys in the file are errors (`deny_unknown_fields`), never ignored.
//! * The recipe's fields are flattened into the file and `run.json`: a job file says
//!   `epochs = 5`, not `[recipe]`; key and variable names are the recipe's field names.
//! * [`RunConfig::validate`] checks every rule that needs no dataset: the recipe's
//!   ([`ConfigError::Recipe`]) and the coordinator's own, one [`ConfigError`] variant per rule.
//!   [`RunConfig::resolved`] fills the model-dependent and time-dependent defaults, so
//!   `run.json` records what actually ran.
//!
//! Tests: `tests` at the bottom (one per own rule, the recipe's coming through, the layering,
//! unknown keys next to the flattened recipe); the recipe's rules are tested in common.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ringtrain_common::data::{
    geometry::MAX_IMAGE_SIZE, Augment, Channels, ImageOptions, ScanOptions,
};
use ringtrain_common::devices::CollectiveChoice;
use ringtrain_common::lr_find::{LrFindError, LrRange};
pub use ringtrain_common::recipe::{Model, Recipe, RecipeError};
use serde::{Deserialize, Serialize};

/// Everything a run is configured by. Field names are the TOML keys and, upper-cased with a
/// `RINGTRAIN_` prefix, the environment variables.
// serde documents `deny_unknown_fields` as unsupported next to `flatten`; on the outer struct it
// does reject keys that neither this struct nor the recipe takes, which
// `unknown_keys_and_missing_files_are_errors` pins down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Dataset root: `DATA/<train_dir>/<class>/<images>`, `DATA/<valid_dir>/<class>/<images>`
    /// (`.png`, `.jpg`, `.jpeg`, `.webp`).
    pub data: PathBuf,
    /// Training split folder name.
    pub train_dir: String,
    /// Validation split folder name.
    pub valid_dir: String,
    /// Leave out (and report) bad files instead of failing.
    pub skip_bad: bool,
    /// Resize every image to `image_size`×`image_size` (shorter side, then centre crop); none:
    /// the images' own size, which must be square and common to all of them.
    pub image_size: Option<u32>,
    /// Colour channels: `auto` (1 when every image is grayscale, else 3), `1` or `3`.
    pub channels: Channels,
    /// Training augmentation: `pad[=P]`, `flip`, `none`, comma-separated (`pad`: rand_pad 3).
    pub augment: Augment,
    /// gRPC listen address of `ringtrain serve` (`launch` always uses 127.0.0.1:0).
    pub listen: String,
    /// World size wanted: the round closes as soon as this many workers joined.
    pub workers: u32,
    /// Smallest acceptable world size after `last_call_s` (default: `workers`).
    pub min_workers: Option<u32>,
    /// Largest world size: workers that join a running run with room left are admitted at the
    /// next epoch end (or checkpoint step), which closes the round and re-shards; none:
    /// `workers` (torchrun's `--nnodes=MIN:MAX`).
    pub max_workers: Option<u32>,
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
    /// Network and hyper-parameters (`model`, `epochs`, `max_lr`, `batch_size`, ...,
    /// `precision`): flat keys, shared with the worker.
    #[serde(flatten)]
    pub recipe: Recipe,
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
    /// File holding the run's shared token; every call and ring connection must prove it
    /// (else `$RINGTRAIN_AUTH_TOKEN`; neither: no authentication). `launch` makes one per run.
    pub auth_token_file: Option<PathBuf>,
    /// TLS for gRPC (`serve`): certificate chain and private key, PEM.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The health service's `liveness` turns NOT_SERVING when a running round made no step
    /// progress for this long (a restart then resumes from the last checkpoint).
    pub stall_timeout_s: f64,
    /// A rank whose compute per step exceeds the median of the other ranks' by more than this
    /// fraction (0.25: 25%) over `straggler_window_s` is named a straggler.
    pub straggler_margin: f64,
    /// Seconds of heartbeats each rank's compute per step is averaged over.
    pub straggler_window_s: f64,
    /// A running round with no progress (a step, a report) for this long is hung: the
    /// coordinator names the rank the others wait for and restarts the round.
    pub hang_timeout_s: f64,
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
        let scan = ScanOptions::default();
        Self {
            data: PathBuf::new(),
            train_dir: scan.train_dir,
            valid_dir: scan.valid_dir,
            skip_bad: scan.skip_bad,
            image_size: None,
            channels: Channels::Auto,
            augment: Augment::default(),
            listen: "127.0.0.1:29400".into(),
            workers: 1,
            min_workers: None,
            max_workers: None,
            join_timeout_s: 600.0,
            last_call_s: 30.0,
            heartbeat_interval_s: 5.0,
            heartbeat_missed: 3,
            collective_timeout_s: 60.0,
            recipe: Recipe::default(),
            run_dir: None,
            run_id: None,
            checkpoint_keep: 3,
            max_restarts: 3,
            auto_resume: false,
            checkpoint_every_steps: 0,
            stop_grace_s: 20.0,
            collective: CollectiveChoice::Auto,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            stall_timeout_s: 300.0,
            straggler_margin: 0.25,
            straggler_window_s: 20.0,
            hang_timeout_s: 180.0,
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
    /// `image_size` is out of range.
    #[error("image-size must be in 1..={MAX_IMAGE_SIZE}, got {0}")]
    BadImageSize(u32),
    /// `workers` is zero.
    #[error("workers must be at least 1")]
    NoWorkers,
    /// `min_workers` is zero or larger than `workers`.
    #[error("min-workers must be in 1..={workers}, got {min_workers}")]
    BadMinWorkers { min_workers: u32, workers: u32 },
    /// `max_workers` is smaller than `workers`.
    #[error("max-workers must be at least --workers ({workers}), got {max_workers}")]
    BadMaxWorkers { max_workers: u32, workers: u32 },
    /// A timeout, period or margin is not a finite number greater than zero.
    #[error("{field} must be finite and > 0, got {value}")]
    BadDuration { field: &'static str, value: f64 },
    /// `heartbeat_missed` is zero.
    #[error("heartbeat-missed must be at least 1")]
    NoMissedHeartbeats,
    /// A rule of the training recipe (shared with the worker) does not hold.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The global batch cannot be split evenly over a possible world size.
    #[error("batch-size {batch_size} is not divisible by world size {world_size}; every rank must get the same batch")]
    BatchNotDivisible { batch_size: u32, world_size: u32 },
    /// The LR range test's settings break a rule.
    #[error("lr-find: {0}")]
    LrFind(LrFindError),
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
    /// Epochs: explicit or the lesson's; an LR range test is one epoch.
    pub fn epochs(&self) -> u32 {
        if self.lr_find.is_some() {
            return 1;
        }
        self.recipe.epochs()
    }

    /// Smallest world size the round may close with.
    pub fn min_workers(&self) -> u32 {
        self.min_workers.unwrap_or(self.workers)
    }

    /// Largest world size the run may grow to.
    pub fn max_workers(&self) -> u32 {
        self.max_workers.unwrap_or(self.workers).max(self.workers)
    }

    /// How the dataset folder is read.
    pub fn scan_options(&self) -> ScanOptions {
        ScanOptions {
            train_dir: self.train_dir.clone(),
            valid_dir: self.valid_dir.clone(),
            skip_bad: self.skip_bad,
        }
    }

    /// `--channels` and `--image-size` as the dataset loader takes them.
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions {
            channels: self.channels,
            size: self.image_size,
        }
    }

    /// Checks every rule that needs no dataset; returns the first violation in field order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data.as_os_str().is_empty() {
            return Err(ConfigError::NoData);
        }
        if let Some(n) = self.image_size {
            if !(1..=MAX_IMAGE_SIZE).contains(&n) {
                return Err(ConfigError::BadImageSize(n));
            }
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
            ("straggler-margin", self.straggler_margin),
            ("straggler-window-s", self.straggler_window_s),
            ("hang-timeout-s", self.hang_timeout_s),
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
        // The recipe as it will train: an LR range test is one epoch, whatever `epochs` says.
        Recipe {
            epochs: Some(self.epochs()),
            ..self.recipe.clone()
        }
        .validate()?;
        if let Some(max) = self.max_workers.filter(|m| *m < self.workers) {
            return Err(ConfigError::BadMaxWorkers {
                max_workers: max,
                workers: self.workers,
            });
        }
        // Every world size a round may close with (or grow to) must split the batch evenly.
        let batch_size = self.recipe.batch_size;
        if let Some(world_size) =
            (min..=self.max_workers()).find(|n| !batch_size.is_multiple_of(*n))
        {
            return Err(ConfigError::BatchNotDivisible {
                batch_size,
                world_size,
            });
        }
        if let Some(r) = &self.lr_find {
            r.validate().map_err(ConfigError::LrFind)?;
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
        self.image_size = s.image_size;
        self.channels = s.channels;
        self.augment = s.augment;
        self.recipe = s.recipe;
        self.checkpoint_every_steps = s.checkpoint_every_steps;
        self.run_id = s.run_id;
        self
    }

    /// The same configuration with every default that depends on the model or the clock filled
    /// in (`unix_time` in seconds; the pid keeps two coordinators started in one second apart).
    pub fn resolved(mut self, unix_time: u64) -> Self {
        self.recipe.epochs = Some(self.epochs());
        self.recipe.max_lr = Some(self.recipe.max_lr());
        self.min_workers = Some(self.min_workers());
        let model = self.recipe.model;
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
    let invalid = |e: config::ConfigError| LoadError::Invalid {
        path: file.map(Path::to_path_buf),
        reason: e.to_string(),
    };
    let merged = builder.add_source(flags).build().map_err(invalid)?;
    // The recipe through the config crate's own deserializer, and the rest without its keys:
    // through `flatten`, serde would neither name the key of a wrongly typed value nor read a
    // number written as a string, both of which the config crate does for every other key.
    let recipe: Recipe = merged.clone().try_deserialize().map_err(invalid)?;
    let mut rest = config::Source::collect(&merged).map_err(invalid)?;
    for key in recipe_keys() {
        rest.remove(&key);
    }
    let mut c: RunConfig = config::Value::new(None, rest)
        .try_deserialize()
        .map_err(invalid)?;
    c.recipe = recipe;
    Ok(c)
}

/// The recipe's keys in a job file (its field names).
fn recipe_keys() -> Vec<String> {
    match serde_json::to_value(Recipe::default()) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
        // A struct always serialises to an object.
        _ => Vec::new(),
    }
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
        assert_eq!(
            (c.epochs(), c.recipe.max_lr(), c.recipe.batch_size),
            (12, 0.05, 128)
        );
        let basic = RunConfig {
            recipe: Recipe::lesson(Model::Basic),
            ..ok()
        };
        assert_eq!((basic.epochs(), basic.recipe.max_lr()), (3, 0.1));
        let r = ok().resolved(1700000000);
        assert_eq!(r.run_dir, Some(PathBuf::from("runs/resnet-1700000000")));
        assert!(r
            .run_id
            .as_deref()
            .is_some_and(|id| id.starts_with("resnet-1700000000-")));
        assert_eq!(
            (r.recipe.epochs, r.recipe.max_lr, r.min_workers),
            (Some(12), Some(0.05), Some(1))
        );
    }

    use ringtrain_common::schedule::ScheduleError;

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
            (
                Box::new(|c| c.recipe.epochs = Some(0)),
                RecipeError::NoEpochs.into(),
            ),
            (
                Box::new(|c| c.recipe.batch_size = 0),
                RecipeError::ZeroBatch.into(),
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
                Box::new(|c| c.recipe.max_lr = Some(0.0)),
                RecipeError::Schedule(ScheduleError::BadMaxLr { max_lr: 0.0 }).into(),
            ),
            (
                Box::new(|c| c.recipe.wd = -0.1),
                RecipeError::BadWd(-0.1).into(),
            ),
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
        let mut c = RunConfig {
            workers: 4,
            min_workers: Some(2),
            ..ok()
        };
        c.recipe.batch_size = 120;
        assert_eq!(c.validate(), Ok(()));
        // The recipe's rules are the recipe's (every one is tested in ringtrain_common::recipe);
        // its messages come through unchanged.
        let mut c = ok();
        c.recipe.eps = 0.0;
        assert_eq!(
            c.validate().map_err(|e| e.to_string()),
            Err("eps must be finite and > 0, got 0".into())
        );
        // An LR range test is one epoch whatever `epochs` says.
        let mut c = ok();
        c.recipe.epochs = Some(0);
        c.lr_find = Some(LrRange::default());
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
        assert_eq!(c.recipe.epochs, Some(7), "flags win over the file");
        assert_eq!(
            (
                c.workers,
                c.recipe.moms,
                c.recipe.div_factor,
                c.recipe.model
            ),
            (2, (0.9, 0.8), 10.0, Model::Basic)
        );
        assert_eq!(c.recipe.batch_size, 128, "defaults fill the rest");
        // run.json and checkpoints store the configuration as JSON; resume reads it back.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            (json["epochs"].clone(), json["model"].clone()),
            (7.into(), "basic".into())
        );
        assert_eq!(serde_json::from_value::<RunConfig>(json).unwrap(), c);
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
        // Also next to the flattened recipe's keys, and for a recipe key's wrong type.
        std::fs::write(&file, "epochs = 5\nwd = 0.1\nlearning_rate = 0.1\n").unwrap();
        let err = load(Some(&file), &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
        std::fs::write(&file, "wd = \"lots\"\n").unwrap();
        let err = load(Some(&file), &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("`wd`"), "{err}");
        // The config crate reads numbers written as strings, recipe keys included.
        std::fs::write(&file, "wd = \"0.5\"\nworkers = \"2\"\n").unwrap();
        let c = load(Some(&file), &Flags::default()).unwrap();
        assert_eq!((c.recipe.wd, c.workers), (0.5, 2));
        assert_eq!(recipe_keys().len(), 14, "{:?}", recipe_keys());
        assert!(load(Some(&dir.path().join("nope.toml")), &Flags::default()).is_err());
    }

    #[test]
    fn image_keys_from_a_file_as_numbers_or_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(
            &file,
            "image_size = 64\nchannels = 3\naugment = \"pad,flip\"\n",
        )
        .unwrap();
        let c = load(Some(&file), &Flags::default()).unwrap();
        assert_eq!(
            (c.image_size, c.channels, c.augment.to_string().as_str()),
            (Some(64), Channels::Rgb, "pad=3,flip")
        );
        std::fs::write(&file, "image_size = \"32\"\nchannels = \"auto\"\n").unwrap();
        let c = load(Some(&file), &Flags::default()).unwrap();
        assert_eq!((c.image_size, c.channels), (Some(32), Channels::Auto));
        for bad in ["channels = 2\n", "augment = \"rotate\"\n"] {
            std::fs::write(&file, bad).unwrap();
            assert!(load(Some(&file), &Flags::default()).is_err(), "{bad}");
        }
        let c = RunConfig {
            data: "/d".into(),
            image_size: Some(0),
            ..RunConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::BadImageSize(0)));
        // Stored settings win on resume.
        let stored = RunConfig {
            image_size: Some(48),
            channels: Channels::Gray,
            ..RunConfig::default()
        };
        let c = RunConfig::default().continuing(&stored);
        assert_eq!((c.image_size, c.channels), (Some(48), Channels::Gray));
    }
}
