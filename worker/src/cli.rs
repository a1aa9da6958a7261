//! Command-line interface of `ringtrain-worker` (clap derive). Most flags also read a
//! `RINGTRAIN_*` environment variable; flags win over the environment, which wins over defaults.
//!
//! The training-recipe and dataset flags of `train` (and the dataset flags of `cache` and
//! `show-batch`) are `ringtrain_common::recipe::args`, the same structs `ringtrain serve` /
//! `launch` flatten, so names, variables and help texts are defined once. Joining a run
//! (`JoinArgs`) keeps its own dataset flags on purpose: `--data` reads `RINGTRAIN_WORKER_DATA`
//! (a worker's mount point may differ from the coordinator's `RINGTRAIN_DATA`), and the split
//! names are plain flags that the launcher passes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ringtrain_common::data::memory::Bytes;
use ringtrain_common::recipe::args::{DatasetArgs, RecipeArgs};
use ringtrain_common::recipe::{Recipe, DEFAULT_SEED};

use crate::config::{default_cache_dir, TrainConfig};
use crate::device::DeviceRequest;
use crate::model::Arch;

#[derive(Debug, Parser)]
#[command(
    name = "ringtrain-worker",
    version,
    about = "ringtrain worker: trains the fast.ai lesson-7 MNIST models with libtorch",
    long_about = "ringtrain worker: trains the fast.ai lesson-7 MNIST models with libtorch.\n\n\
        With --coordinator URL it joins a distributed run (the coordinator decides everything);\n\
        the subcommands train standalone, evaluate, or inspect models.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub join: JoinArgs,
}

/// Joining a distributed run: `ringtrain-worker --coordinator URL --data DIR`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Coordinator URL, e.g. http://127.0.0.1:29400.
    #[arg(long, env = "RINGTRAIN_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Dataset root as this worker sees it (must hold the same files as the coordinator's).
    #[arg(long = "data", env = "RINGTRAIN_WORKER_DATA")]
    pub data: Option<PathBuf>,
    /// Unique id of this worker; ranks follow the sorted ids [default: <hostname>-<pid>].
    #[arg(long, env = "RINGTRAIN_WORKER_ID")]
    pub worker_id: Option<String>,
    /// libtorch intra-op threads [default: all cores].
    #[arg(long, env = "RINGTRAIN_THREADS")]
    pub threads: Option<usize>,
    /// Device to train on: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|cpu|cuda|cuda:N",
        env = "RINGTRAIN_DEVICE"
    )]
    pub device: DeviceRequest,
    /// Address to accept the ring predecessor on.
    #[arg(long, default_value = "0.0.0.0:0", env = "RINGTRAIN_COLLECTIVE_LISTEN")]
    pub collective_listen: std::net::SocketAddr,
    /// Host name or IP peers use to reach this worker [default: the listen IP; when that is
    /// 0.0.0.0, the source address of this machine's route to the coordinator].
    #[arg(long, env = "RINGTRAIN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Decoded-image cache folder [default: $RINGTRAIN_CACHE_DIR or ~/.cache/ringtrain/decoded].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Decode this worker's shard every time; write no cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Refuse to join a run of another model.
    #[arg(long)]
    pub model: Option<Arch>,
    /// Refuse to join another run.
    #[arg(long, env = "RINGTRAIN_RUN_ID")]
    pub run_id: Option<String>,
    /// How long to keep trying to reach the coordinator, seconds; also how long a coordinator
    /// that stops answering is waited for before the worker exits 1.
    #[arg(long, default_value_t = 600.0)]
    pub connect_timeout_s: f64,
    /// After SIGTERM, seconds to wait for the stop checkpoint before exiting (code 143).
    #[arg(long, default_value_t = 25.0, env = "RINGTRAIN_WORKER_STOP_GRACE_S")]
    pub stop_grace_s: f64,
    /// Name of the training split folder.
    #[arg(long, default_value = "training")]
    pub train_dir: String,
    /// Name of the validation split folder.
    #[arg(long, default_value = "testing")]
    pub valid_dir: String,
    /// Protocol version to announce (tests use it to check that a mismatch is refused).
    #[arg(long, hide = true)]
    pub protocol_version: Option<u32>,
    /// File holding the run's auth token (else $RINGTRAIN_AUTH_TOKEN; none: calls carry no
    /// token, which a coordinator with a token refuses).
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the coordinator's certificate (for an https:// URL).
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name the coordinator's certificate must carry [default: the URL's host].
    #[arg(long, value_name = "NAME", env = "RINGTRAIN_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Print the effective options as JSON and exit without connecting (checks a command line,
    /// e.g. one in a Kubernetes manifest).
    #[arg(long)]
    pub print_config: bool,
    /// Refuse a shard whose decoded images would not fit in this much memory, e.g. 8GiB
    /// [default: the cgroup's limit or MemAvailable, whichever is smaller].
    #[arg(long, value_name = "SIZE", env = "RINGTRAIN_MEMORY_LIMIT")]
    pub memory_limit: Option<Bytes>,
}

impl JoinArgs {
    /// The distributed worker's options; `--coordinator` and `--data` are required here.
    pub fn into_options(self) -> anyhow::Result<crate::dist::WorkerOptions> {
        let j = self;
        let Some(coordinator) = j.coordinator else {
            anyhow::bail!(
                "nothing to do: give --coordinator URL to join a run, or a subcommand (see --help)"
            );
        };
        let data = j
            .data
            .ok_or_else(|| anyhow::anyhow!("--data DIR is required with --coordinator"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        let opts = crate::dist::WorkerOptions {
            coordinator,
            data,
            worker_id: j
                .worker_id
                .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
            threads: j.threads,
            device: j.device,
            collective_listen: j.collective_listen,
            advertise_host: j.advertise_host,
            cache_dir: if j.no_cache {
                None
            } else {
                j.cache_dir.or_else(crate::config::default_cache_dir)
            },
            model: j.model,
            run_id: j.run_id,
            connect_timeout: std::time::Duration::from_secs_f64(j.connect_timeout_s.max(0.0)),
            stop_grace: std::time::Duration::from_secs_f64(j.stop_grace_s.max(0.0)),
            scan: ringtrain_common::data::ScanOptions {
                train_dir: j.train_dir,
                valid_dir: j.valid_dir,
                skip_bad: false,
            },
            progress: false,
            memory_limit: j.memory_limit,
            protocol_version: j.protocol_version,
            security: crate::dist::Security {
                token: ringtrain_common::auth::Token::load(
                    j.auth_token_file.as_deref(),
                    std::env::var("RINGTRAIN_AUTH_TOKEN").ok().as_deref(),
                )?,
                tls_ca: j.tls_ca,
                tls_domain: j.tls_domain,
            },
        };
        Ok(opts)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What this machine offers: CUDA devices (name, UUID), cuDNN, NCCL, the CPU threads.
    Devices {
        /// One JSON object instead of lines (`ringtrain launch --gpus` reads it).
        #[arg(long)]
        json: bool,
    },
    /// Train standalone (world size 1) on an image-folder dataset.
    Train(TrainArgs),
    /// Scan and decode a dataset into the decoded-image cache, so later starts skip decoding.
    #[command(mut_arg("data", |a| a.required(true)))]
    Cache {
        /// `--data` (required), `--skip-bad`, `--train-dir`, `--valid-dir`, `--image-size`,
        /// `--channels`.
        #[command(flatten)]
        dataset: DatasetArgs,
        /// Decoded-image cache folder [default: $RINGTRAIN_CACHE_DIR or ~/.cache/ringtrain/decoded].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Accuracy and loss of a finished run's weights on a dataset's validation split (one process).
    Eval {
        /// Run folder with run.json (model, classes, normalisation) and final.safetensors.
        #[arg(long)]
        run_dir: PathBuf,
        /// Dataset root.
        #[arg(long)]
        data: PathBuf,
        /// Weights file [default: RUN_DIR/final.safetensors].
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Name of the validation split folder.
        #[arg(long, default_value = "testing")]
        valid_dir: String,
    },
    /// Classify images (PNG, JPEG, WebP) with a checkpoint, like the lesson's `learn.predict`:
    /// each is converted and resized like the run's images.
    Predict {
        /// Checkpoint folder, a link such as RUN_DIR/best, or a run folder (its best checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// One JSON object per image instead of one line of text.
        #[arg(long)]
        json: bool,
        /// Images to classify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Write a PNG grid of one augmented training batch with its labels, like the lesson's
    /// `data.show_batch`: exactly what the model is fed (normalisation undone for display).
    ShowBatch(ShowBatchArgs),
    /// Print the layer table of a model, like fastai's `learn.summary()`.
    Summary {
        /// Network: basic, resnet or dense.
        #[arg(long, default_value = "resnet", env = "RINGTRAIN_MODEL")]
        model: Arch,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: i64,
        /// Input channels (1 grayscale, 3 RGB).
        #[arg(long, default_value_t = 1)]
        channels: i64,
        /// Input size (NxN); above 28 the head ends in global average pooling.
        #[arg(long, default_value_t = 28)]
        image_size: i64,
    },
}

#[derive(Debug, Args)]
#[command(mut_arg("data", |a| a.required(true)))]
pub struct ShowBatchArgs {
    /// `--data` (required), `--skip-bad`, `--train-dir`, `--valid-dir`, `--image-size`,
    /// `--channels`, `--augment` (the validation split is
    /// scanned, not shown).
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Output PNG.
    #[arg(long, default_value = "show_batch.png")]
    pub out: PathBuf,
    /// The grid is ROWS × ROWS images (1 to 16).
    #[arg(long, default_value_t = 4)]
    pub rows: usize,
    /// Pixel scale of each image.
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// Seed of shuffling and augmentation: a run with this seed trains on this batch first.
    #[arg(long, default_value_t = DEFAULT_SEED, env = "RINGTRAIN_SEED")]
    pub seed: u64,
    /// Decoded-image cache folder [default: $RINGTRAIN_CACHE_DIR or ~/.cache/ringtrain/decoded].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(mut_arg("data", |a| a.required(true)))]
pub struct TrainArgs {
    /// `--data` (required), `--skip-bad`, `--train-dir`, `--valid-dir`, `--image-size`,
    /// `--channels`, `--augment`.
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// `--model`, `--epochs`, `--max-lr`, `--batch-size`, ..., `--precision`: the recipe, as
    /// for `ringtrain launch`.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// libtorch intra-op threads [default: all cores].
    #[arg(long, env = "RINGTRAIN_THREADS")]
    pub threads: Option<usize>,
    /// Run folder for metrics, plots and weights [default: runs/<model>-<unix time>].
    #[arg(long, env = "RINGTRAIN_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Decoded-image cache folder [default: $RINGTRAIN_CACHE_DIR or ~/.cache/ringtrain/decoded].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Decode the images every time; write no cache.
    #[arg(long, env = "RINGTRAIN_NO_CACHE")]
    pub no_cache: bool,
    /// Refuse a dataset whose decoded images would not fit in this much memory, e.g. 8GiB
    /// [default: the cgroup's limit or MemAvailable, whichever is smaller].
    #[arg(long, value_name = "SIZE", env = "RINGTRAIN_MEMORY_LIMIT")]
    pub memory_limit: Option<Bytes>,
    /// No progress bars (the table and logs still print).
    #[arg(long, env = "RINGTRAIN_NO_PROGRESS")]
    pub no_progress: bool,
    /// Device to train on: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|cpu|cuda|cuda:N",
        env = "RINGTRAIN_DEVICE"
    )]
    pub device: DeviceRequest,
}

impl TrainArgs {
    /// The typed configuration (not yet validated): the given flags over the lesson's recipe,
    /// with `epochs` and `max_lr` written in.
    pub fn into_config(self) -> anyhow::Result<TrainConfig> {
        let data = required_data(&self.dataset)?;
        let recipe = self.recipe.overlay(Recipe::default()).resolved();
        let mut cfg = TrainConfig::lesson(data, recipe.model);
        cfg.scan = self.dataset.scan_options();
        cfg.image_size = self.dataset.image_size;
        cfg.channels = self.dataset.channels.unwrap_or_default();
        cfg.augment = self.dataset.augment();
        cfg.memory_limit = self.memory_limit;
        cfg.run_dir = self.run_dir.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from(format!("runs/{}-{now}", recipe.model))
        });
        cfg.recipe = recipe;
        cfg.threads = self.threads;
        cfg.device = self.device;
        cfg.cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.or_else(default_cache_dir)
        };
        cfg.progress = !self.no_progress;
        Ok(cfg)
    }
}

/// `--data` of a subcommand that marks it required (clap has already refused a command line
/// without it, so the error is for callers that build the struct themselves).
pub(crate) fn required_data(d: &DatasetArgs) -> anyhow::Result<PathBuf> {
    d.data
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--data DIR is required"))
}
