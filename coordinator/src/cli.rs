//! Command-line arguments of `ringtrain serve` and `ringtrain launch` (clap derive).
//!
//! Owns flag names, their `RINGTRAIN_*` variables and help texts of the coordinator's own knobs;
//! the recipe and dataset flags are `ringtrain_common::recipe::args` (shared with
//! `ringtrain-worker train`), flattened in. Every flag is optional and only the ones given (or
//! set in the environment) are serialised into the top configuration layer, so `--config
//! job.toml` and the built-in defaults fill the rest (`config::load`).
//!
//! Tests: `tests` at the bottom (precedence of flags, environment and file).

use std::path::PathBuf;

use clap::Args;
use ringtrain_common::devices::CollectiveChoice;
use ringtrain_common::recipe::args::{DatasetArgs, RecipeArgs};
use serde::Serialize;

use crate::config::{self, LoadError, RunConfig};
use crate::gpus::GpuSelection;
use crate::launch::LaunchOptions;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The run knobs shared by `serve` and `launch`.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct RunArgs {
    /// TOML job file with any of the keys below (snake_case); flags and RINGTRAIN_* win over it.
    #[arg(long, value_name = "FILE", env = "RINGTRAIN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// `--data`, `--skip-bad`, `--train-dir`, `--valid-dir`, `--image-size`, `--channels`,
    /// `--augment`.
    #[command(flatten)]
    #[serde(flatten)]
    pub dataset: DatasetArgs,
    /// Number of workers (world size) to wait for [default: 1].
    #[arg(long, env = "RINGTRAIN_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Smallest world size accepted once --last-call-s passed [default: --workers].
    #[arg(long, env = "RINGTRAIN_MIN_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_workers: Option<u32>,
    /// Largest world size: workers that join a running run are admitted at its next epoch end
    /// (or checkpoint step), re-sharding the same global batch [default: --workers].
    #[arg(long, env = "RINGTRAIN_MAX_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,
    /// Rendezvous must complete within this many seconds, or the run fails [default: 600].
    #[arg(long, env = "RINGTRAIN_JOIN_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_timeout_s: Option<f64>,
    /// Seconds to wait for more workers once --min-workers joined [default: 30].
    #[arg(long, env = "RINGTRAIN_LAST_CALL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_call_s: Option<f64>,
    /// Worker heartbeat period in seconds [default: 5].
    #[arg(long, env = "RINGTRAIN_HEARTBEAT_INTERVAL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_s: Option<f64>,
    /// Missed heartbeats after which a silent rank fails the run [default: 3].
    #[arg(long, env = "RINGTRAIN_HEARTBEAT_MISSED")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_missed: Option<u32>,
    /// Read/write timeout of the workers' ring all-reduce, seconds [default: 60].
    #[arg(long, env = "RINGTRAIN_COLLECTIVE_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collective_timeout_s: Option<f64>,
    /// `--model`, `--epochs`, `--max-lr`, `--batch-size`, ..., `--precision`.
    #[command(flatten)]
    #[serde(flatten)]
    pub recipe: RecipeArgs,
    /// Run folder [default: runs/<model>-<unix time>].
    #[arg(long, value_name = "DIR", env = "RINGTRAIN_RUN_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// Run id workers must match [default: <model>-<unix time>-<pid>].
    #[arg(long, env = "RINGTRAIN_RUN_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Checkpoints kept besides the best one [default: 3].
    #[arg(long, env = "RINGTRAIN_CHECKPOINT_KEEP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_keep: Option<u32>,
    /// Round restarts allowed after losing a worker; launch also restarts dead workers up to
    /// this many times [default: 3].
    #[arg(long, env = "RINGTRAIN_MAX_RESTARTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// Also checkpoint inside epochs every this many steps [default: 0, epoch ends only].
    #[arg(long, env = "RINGTRAIN_CHECKPOINT_EVERY_STEPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_steps: Option<u64>,
    /// On SIGTERM/Ctrl-C, seconds to wait for the stop checkpoint before exiting [default: 20].
    #[arg(long, env = "RINGTRAIN_STOP_GRACE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_s: Option<f64>,
    /// All-reduce: auto (NCCL when every worker has its own GPU, else the TCP ring), nccl or ring
    /// [default: auto].
    #[arg(long, value_name = "auto|nccl|ring", env = "RINGTRAIN_COLLECTIVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collective: Option<CollectiveChoice>,
    /// File holding the run's auth token [default: $RINGTRAIN_AUTH_TOKEN, else none; launch
    /// makes one per run].
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_AUTH_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for gRPC; with --tls-key (serve only).
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for gRPC; with --tls-cert (serve only).
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Liveness (health service "liveness") fails after this long without step progress in a
    /// running round [default: 300].
    #[arg(long, env = "RINGTRAIN_STALL_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_timeout_s: Option<f64>,
    /// Name a rank a straggler when its compute per step exceeds the median of the other ranks'
    /// by more than this fraction [default: 0.25].
    #[arg(long, env = "RINGTRAIN_STRAGGLER_MARGIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub straggler_margin: Option<f64>,
    /// Seconds each rank's compute per step is averaged over for straggler detection
    /// [default: 20].
    #[arg(long, env = "RINGTRAIN_STRAGGLER_WINDOW_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub straggler_window_s: Option<f64>,
    /// A running round without progress for this long is hung: name the rank the others wait
    /// for and restart the round [default: 180].
    #[arg(long, env = "RINGTRAIN_HANG_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hang_timeout_s: Option<f64>,
    /// Serve the live dashboard (/), Prometheus metrics (/metrics) and a JSON status (/status)
    /// over HTTP here, e.g. 127.0.0.1:9100 [default: off].
    #[arg(long, value_name = "IP:PORT", env = "RINGTRAIN_HTTP_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// Most gRPC connections that made an authenticated call, at once [default: 1024].
    #[arg(long, env = "RINGTRAIN_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most gRPC connections still in their handshake; past it the oldest is closed
    /// [default: 256].
    #[arg(long, env = "RINGTRAIN_MAX_PENDING_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_connections: Option<u32>,
    /// Seconds a new gRPC connection has for TLS, the HTTP/2 preface and its first
    /// authenticated call before it is closed [default: 10].
    #[arg(long, env = "RINGTRAIN_HANDSHAKE_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_s: Option<f64>,
    /// HTTP/2 keepalive of the gRPC server: ping period, and how long an answer may take,
    /// in seconds [default: 10].
    #[arg(long, env = "RINGTRAIN_KEEPALIVE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_s: Option<f64>,
    /// Print the effective, validated configuration as JSON and exit (checks a job file or a
    /// command line, e.g. one in a Kubernetes manifest).
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Resume from the run folder's latest good checkpoint if it has one, else start fresh.
    #[arg(long, env = "RINGTRAIN_AUTO_RESUME")]
    #[serde(skip_serializing_if = "is_false")]
    pub auto_resume: bool,
    /// Continue the run in RUN_DIR from its latest good checkpoint (its stored settings win).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "run_dir")]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
}

impl RunArgs {
    /// Merges defaults < `--config` file < environment and flags.
    pub fn load(&self) -> Result<RunConfig, LoadError> {
        let mut c = config::load(self.config.as_deref(), self)?;
        if let Some(dir) = &self.resume {
            c.run_dir = Some(dir.clone());
            c.auto_resume = true;
            c.resume_required = true;
        }
        Ok(c)
    }

    /// True when `--resume` asks to continue an existing run.
    pub fn resume_requested(&self) -> bool {
        self.resume.is_some()
    }
}

/// `ringtrain serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// gRPC listen address [default: 127.0.0.1:29400].
    #[arg(long, value_name = "IP:PORT", env = "RINGTRAIN_LISTEN")]
    pub listen: Option<String>,
    /// Allow --listen on an address other machines can reach without an auth token (refused
    /// otherwise): anyone who reaches the port could then join, report and upload checkpoints.
    #[arg(long, env = "RINGTRAIN_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

impl ServeArgs {
    /// The effective (not yet validated) configuration.
    pub fn load(&self) -> Result<RunConfig, LoadError> {
        let mut c = self.run.load()?;
        if let Some(listen) = &self.listen {
            c.listen = listen.clone();
        }
        c.insecure_no_auth |= self.insecure_no_auth;
        Ok(c)
    }
}

/// `ringtrain launch`.
#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// libtorch threads per worker [default: max(1, cores / workers)].
    #[arg(long, value_name = "T", env = "RINGTRAIN_THREADS_PER_WORKER")]
    pub threads_per_worker: Option<usize>,
    /// Worker binary [default: ringtrain-worker next to this executable].
    #[arg(long, value_name = "PATH", env = "RINGTRAIN_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Do not pin each worker to its own cores (pinning happens only when workers × threads
    /// fit in the CPUs this process may use).
    #[arg(long, env = "RINGTRAIN_NO_PIN")]
    pub no_pin: bool,
    /// One worker per GPU: all, or indices such as 0,1 (each worker sees only its GPU; sets
    /// the number of workers). Without a GPU, falls back to --workers CPU workers.
    #[arg(long, value_name = "all|0,1,...", env = "RINGTRAIN_GPUS")]
    pub gpus: Option<GpuSelection>,
}

impl LaunchArgs {
    /// The launcher's own options.
    pub fn options(&self) -> LaunchOptions {
        LaunchOptions {
            threads_per_worker: self.threads_per_worker,
            worker_bin: self.worker_bin.clone(),
            pin: !self.no_pin,
            gpus: self.gpus.clone(),
            ..LaunchOptions::default()
        }
    }
}

/// `ringtrain lr-find`: a launch whose single epoch is the LR range test.
#[derive(Debug, Clone, Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// First learning rate of the sweep [default: 1e-7].
    #[arg(long, value_name = "LR")]
    pub start_lr: Option<f64>,
    /// Last learning rate of the sweep [default: 100, the lesson's `end_lr`].
    #[arg(long, value_name = "LR")]
    pub end_lr: Option<f64>,
    /// Steps of the sweep (one epoch must hold them) [default: 100].
    #[arg(long, value_name = "N")]
    pub iters: Option<u32>,
    /// Stop once the smoothed loss exceeds this multiple of its minimum [default: 4].
    #[arg(long, value_name = "X")]
    pub stop_div: Option<f64>,
}

impl LrFindArgs {
    /// The launch configuration with the sweep set: built-in defaults < the file's `[lr_find]`
    /// table < these flags. Not validated.
    pub fn load(&self) -> Result<RunConfig, LoadError> {
        let mut c = self.launch.run.load()?;
        let mut r = c.lr_find.unwrap_or_default();
        r.start_lr = self.start_lr.unwrap_or(r.start_lr);
        r.end_lr = self.end_lr.unwrap_or(r.end_lr);
        r.iters = self.iters.unwrap_or(r.iters);
        r.stop_div = self.stop_div.unwrap_or(r.stop_div);
        c.lr_find = Some(r);
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use ringtrain_common::devices::Precision;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn flags_win_over_env_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(
            &file,
            "data = \"/from-file\"\nepochs = 5\nseed = 1\nworkers = 4\ntrain_dir = \"tr\"\n\
             skip_bad = true\nprecision = \"bf16\"\nwd = 0.0\n",
        )
        .unwrap();
        // The only test touching RINGTRAIN_* variables; names not used by any other test.
        std::env::set_var("RINGTRAIN_SEED", "7");
        std::env::set_var("RINGTRAIN_WORKERS", "2");
        let cli = Cli::try_parse_from([
            "t",
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "8",
            "--moms",
            "0.9,0.8",
            "--listen",
            "0.0.0.0:1",
        ])
        .unwrap();
        std::env::remove_var("RINGTRAIN_SEED");
        std::env::remove_var("RINGTRAIN_WORKERS");
        let c = cli.args.load().unwrap();
        assert_eq!(c.data, PathBuf::from("/from-file"), "file over default");
        assert_eq!(c.recipe.epochs, Some(5), "file over default");
        assert_eq!(c.recipe.seed, 7, "env over file");
        assert_eq!(c.workers, 8, "flag over env");
        assert_eq!(
            (c.recipe.moms, c.listen.as_str()),
            ((0.9, 0.8), "0.0.0.0:1")
        );
        // Shared recipe and dataset flags left unset hide nothing of the file.
        assert!(c.skip_bad, "file over an unset flag");
        assert_eq!(c.train_dir, "tr");
        assert_eq!((c.recipe.precision, c.recipe.wd), (Precision::Bf16, 0.0));
        assert_eq!(c.recipe.batch_size, 128, "default");
        assert_eq!(c.lr_find, None, "a launch trains");
    }

    #[test]
    fn lr_find_flags_win_over_the_files_table() {
        #[derive(Debug, Parser)]
        struct LrCli {
            #[command(flatten)]
            args: LrFindArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::write(
            &file,
            "data = \"/d\"\n[lr_find]\nstart_lr = 1e-6\nend_lr = 1.0\niters = 50\nstop_div = 5.0\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["t", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            LrCli::try_parse_from(argv).unwrap().args.load().unwrap()
        };
        let from_file = parse(&[]).lr_find.unwrap();
        assert_eq!(
            (
                from_file.start_lr,
                from_file.end_lr,
                from_file.iters,
                from_file.stop_div
            ),
            (1e-6, 1.0, 50, 5.0)
        );
        let c = parse(&["--end-lr", "100", "--iters", "80"]);
        let r = c.lr_find.unwrap();
        assert_eq!((r.start_lr, r.end_lr, r.iters), (1e-6, 100.0, 80));
        assert_eq!(c.epochs(), 1, "a sweep is one epoch");
        let dir = c.resolved(1_700_000_000).run_dir.unwrap();
        assert_eq!(dir, PathBuf::from("runs/lr-find-resnet-1700000000"));
    }
}
