//! `ringtrain launch`: one machine, one command: the coordinator in-process plus N worker
//! processes, supervised (torchrun's local agent).
//!
//! Owns spawning, supervising and killing worker processes; not the run's rules (`state`) or
//! serving (`server.rs`).
//!
//! # Contract
//! * The coordinator listens on 127.0.0.1:0; worker `i` (0-based) runs
//!   `ringtrain-worker --coordinator http://127.0.0.1:PORT --worker-id local-00i --threads T
//!   --collective-listen 127.0.0.1:0 --data DATA --train-dir TRAIN --valid-dir VALID` (DATA
//!   absolute), ids zero-padded so that sorted order (= rank order) is spawn order; its stdout and
//!   stderr go to `RUN_DIR/logs/worker-<i>.log`.
//! * With `--gpus` (`launch/gpus.rs`), worker `i` also gets `--device cuda:0` and
//!   `CUDA_VISIBLE_DEVICES=<its GPU>`, and the number of selected GPUs is the number of workers;
//!   on a machine without a GPU, `--device cpu` and `workers` processes, said on stderr.
//! * A worker that dies (non-zero exit other than 3, or a signal) is started again with the
//!   same worker id, up to `max_restarts` times in total over the run; the coordinator ends the
//!   round and the next one resumes from the last checkpoint with the replacement. Its log is
//!   appended to. With no restart left, the death fails the run at once: "rank R (worker
//!   local-00i, pid P) exited with code C; see RUN_DIR/logs/worker-i.log (no restarts left …)".
//! * `interrupt` (Ctrl-C, SIGTERM): the ranks take a stop checkpoint (up to `stop_grace_s`),
//!   then SIGINT to every worker (each in its own process group, so a terminal's Ctrl-C
//!   reaches only the launcher), and the run ends "interrupted", resumable with `--resume`.
//! * When the run ended, workers get [`LaunchOptions::grace`] (5 s) to exit, then SIGKILL.
//!   Children also die with the launcher: `PR_SET_PDEATHSIG(SIGKILL)` covers a killed launcher,
//!   the [`Children`] guard covers every exit path of this function (error, panic included).
//!
//! Processes live in `launch/children.rs`, GPU placement in `launch/gpus.rs`.
//!
//! Tests: `coordinator/tests/launch.rs` (fake workers).

mod children;
pub mod gpus;

use std::future::Future;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use ringtrain_common::auth::Token;
use tokio::net::TcpListener;

use crate::config::RunConfig;
use crate::server::{Run, RunOutcome, ServeError};
use children::{allowed_cpus, spawn_worker, Children, WorkerArgs};
use gpus::{GpuError, GpuPlacement, GpuSelection};

/// The worker's exit code after the coordinator told it the run failed.
pub const EXIT_ABORTED: i32 = 3;

/// Launcher knobs beyond the run's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOptions {
    /// libtorch threads per worker (default: max(1, cores / workers)).
    pub threads_per_worker: Option<usize>,
    /// The worker binary (default: `ringtrain-worker` next to the current executable).
    pub worker_bin: Option<PathBuf>,
    /// How long workers may take to exit after the run ended.
    pub grace: Duration,
    /// Pin worker i to its own `threads_per_worker` cores when they fit on this machine (keeps
    /// each worker's caches warm instead of letting the scheduler migrate it).
    pub pin: bool,
    /// One worker per selected GPU (`--gpus`); `None`: `workers` processes, each with the
    /// worker's own `--device` default (auto, or `RINGTRAIN_DEVICE`).
    pub gpus: Option<GpuSelection>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            threads_per_worker: None,
            worker_bin: None,
            grace: Duration::from_secs(5),
            pin: true,
            gpus: None,
        }
    }
}

/// Why the launcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Preparing or serving the run failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The worker binary is missing.
    #[error("worker binary {path} not found (build it with `cargo build --release --bins`, or set RINGTRAIN_WORKER_BIN)")]
    WorkerBinary { path: PathBuf },
    /// A worker process could not be started.
    #[error("cannot start worker {index} ({path}): {reason}")]
    Spawn {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    /// `--gpus` cannot be honoured.
    #[error(transparent)]
    Gpus(#[from] GpuError),
    /// Local I/O (listener, log folder).
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |e| LaunchError::Io {
        what,
        reason: e.to_string(),
    }
}

/// `local-003` for `i = 3` of `n`: wide enough that string order is numeric order.
pub fn worker_id(i: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len().max(3);
    format!("local-{i:0width$}")
}

/// `code 1`, `signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGINT => " (SIGINT)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("signal {sig}{name}")
        }
        (None, None) => "an unknown status".into(),
    }
}

/// `explicit`, or `ringtrain-worker` next to this executable; an error unless it is a file.
pub fn resolve_worker_bin(explicit: Option<PathBuf>) -> Result<PathBuf, LaunchError> {
    let path = match explicit {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe().map_err(io_err("locating the current executable"))?;
            exe.with_file_name("ringtrain-worker")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LaunchError::WorkerBinary { path })
    }
}

/// Where the workers go, what `--device` they get, and the lines that tell the person.
type Placement = (Vec<GpuPlacement>, Option<&'static str>, Vec<String>);

/// With `--gpus`: one worker per selected GPU (sets `config.workers`), or CPU workers when the
/// machine has none, which a notice says. Returns the placements, the `--device` flag and the
/// notices (shown once the run's output is open).
async fn place_workers(
    config: &mut RunConfig,
    opts: &LaunchOptions,
    bin: &std::path::Path,
) -> Result<Placement, LaunchError> {
    let Some(sel) = &opts.gpus else {
        return Ok((Vec::new(), None, Vec::new()));
    };
    let visible = gpus::probe(bin).await?;
    let inherited = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let placements = gpus::place(sel, &visible, inherited.as_deref())?;
    if placements.is_empty() {
        let line = format!(
            "ringtrain: --gpus: no CUDA device visible to {}; running {} CPU worker(s) instead",
            bin.display(),
            config.workers
        );
        return Ok((placements, Some("cpu"), vec![line]));
    }
    config.workers = placements.len() as u32;
    let lines = placements
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "ringtrain: worker {i} on {} (CUDA_VISIBLE_DEVICES={})",
                p.label, p.visible_devices
            )
        })
        .collect();
    Ok((placements, Some("cuda:0"), lines))
}

/// Runs `config` with `config.workers` local worker processes. `interrupt` resolving (Ctrl-C)
/// fails the run with "interrupted" and forwards SIGINT to the workers.
pub async fn launch(
    mut config: RunConfig,
    opts: LaunchOptions,
    interrupt: impl Future<Output = ()>,
) -> Result<RunOutcome, LaunchError> {
    let bin = resolve_worker_bin(opts.worker_bin.clone())?;
    let (placements, device, placement_notices) = place_workers(&mut config, &opts, &bin).await?;
    // Local workers either all start or the launcher reports which one did not.
    config.min_workers = Some(config.workers);
    config.listen = "127.0.0.1:0".into();
    let n = config.workers as usize;
    let mut run = Run::prepare(config)?;
    for line in placement_notices {
        run.handle().notice(line);
    }
    if run.has_tls() {
        return Err(LaunchError::Io {
            what: "--tls-cert/--tls-key".into(),
            reason: "TLS is for `ringtrain serve`; launch's workers reach it on 127.0.0.1".into(),
        });
    }
    // Local runs are authenticated too: a token per run unless one is configured.
    let token = match run.token() {
        Some(t) => t.clone(),
        None => {
            let t = Token::random().map_err(io_err("making the run's auth token"))?;
            run.set_token(Some(t.clone()));
            t
        }
    };
    // Children that cannot hear the verdict are killed after `grace` anyway.
    run.set_linger(opts.grace);
    let logs = run.run_dir().join("logs");
    std::fs::create_dir_all(&logs).map_err(io_err(format!("creating {}", logs.display())))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io_err("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the listen address"))?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    if let Some(line) = room_to_grow(&run, &url, &token)? {
        run.handle().notice(line);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = opts.threads_per_worker.unwrap_or((cores / n.max(1)).max(1));
    let cpus = allowed_cpus();
    let pin_cpus = (opts.pin && n * threads <= cpus.len()).then_some(cpus);
    tracing::info!(workers = n, threads, pinned = pin_cpus.is_some(), coordinator = %url,
        logs = %logs.display(), "launching workers");
    let c = run.config();
    let data = [
        "--data",
        run.data_root(),
        "--train-dir",
        &c.train_dir,
        "--valid-dir",
        &c.valid_dir,
    ]
    .map(String::from);
    // Workers on this machine decode their shards at once: each may use an equal share of
    // the smallest of $RINGTRAIN_MEMORY_LIMIT, this cgroup's limit and MemAvailable.
    let total = std::env::var("RINGTRAIN_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.parse::<ringtrain_common::data::memory::Bytes>().ok());
    let memory_share =
        ringtrain_common::data::memory::process_limit(total).map(|l| l.bytes.0 / n.max(1) as u64);
    let args = WorkerArgs {
        bin,
        url,
        threads,
        data,
        logs,
        pin_cpus,
        placements,
        device,
        token,
        memory_share,
    };
    let handle = run.handle();
    let max_restarts = run.config().max_restarts;
    let stop_grace = Duration::from_secs_f64(run.config().stop_grace_s);
    let mut restarts = 0u32;
    let mut server = tokio::spawn(run.serve(listener, std::future::pending()));
    // Spawned from this task (a runtime worker thread that lives as long as the runtime): the
    // death signal follows the spawning thread, not the process.
    let mut children = Children(Vec::with_capacity(n));
    for i in 0..n {
        match spawn_worker(&args, i, n) {
            Ok(p) => children.0.push(p),
            Err(e) => {
                handle.fail(e.to_string());
                let _ = server.await;
                return Err(e);
            }
        }
    }
    let mut interrupt = std::pin::pin!(interrupt);
    let mut interrupted = false;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let served = loop {
        tokio::select! {
            res = &mut server => break res,
            _ = poll.tick() => {
                for (i, status) in children.poll_exits() {
                    let p = &children.0[i];
                    let reason = format!(
                        "rank {i} (worker {}, pid {}) exited with {}; see {}",
                        p.worker_id, p.pid, describe_exit(status), p.log.display()
                    );
                    tracing::info!(worker_id = %p.worker_id, pid = p.pid, status = %describe_exit(status), "worker exited");
                    let aborted = status.code() == Some(EXIT_ABORTED);
                    let died = !status.success() && !aborted;
                    let worker_id = p.worker_id.clone();
                    if died && restarts < max_restarts && !handle.is_over() {
                        restarts += 1;
                        handle.notice(format!("ringtrain: {reason}; restarting it (restart {restarts} of {max_restarts})"));
                        handle.process_exited(&worker_id, false, false, reason);
                        match spawn_worker(&args, i, n) {
                            Ok(p) => children.0[i] = p,
                            Err(e) => handle.fail(e.to_string()),
                        }
                    } else if died {
                        // First as an exit (it may be the root cause of a peer's report), then
                        // as the end: nobody will take its place.
                        handle.process_exited(&worker_id, false, false, reason.clone());
                        handle.fail(format!("{reason} (no restarts left: max_restarts = {max_restarts})"));
                    } else {
                        handle.process_exited(&worker_id, status.success(), aborted, reason.clone());
                        if aborted && !handle.is_over() {
                            // Gave up although the run goes on: nobody will take its place.
                            handle.fail(reason);
                        }
                    }
                }
            }
            () = &mut interrupt, if !interrupted => {
                interrupted = true;
                handle.stop_at_checkpoint(stop_grace).await;
                children.signal(libc::SIGINT);
                handle.fail(crate::server::INTERRUPTED);
            }
        }
    };
    let deadline = tokio::time::Instant::now() + opts.grace;
    while children.running() && tokio::time::Instant::now() < deadline {
        children.poll_exits();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    children.kill_and_reap();
    let outcome = served.map_err(|e| ServeError::Server(format!("coordinator task: {e}")))??;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::children::pin_mask;
    use super::*;

    #[test]
    fn pin_masks_give_each_worker_its_own_cores() {
        let cpus = [0, 1, 4, 5];
        let m = pin_mask(&cpus, 1, 2).unwrap();
        // SAFETY: reading a plain cpu_set_t.
        let set: Vec<usize> = (0..8)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &m) })
            .collect();
        assert_eq!(set, vec![4, 5]);
        assert!(
            pin_mask(&cpus, 2, 2).is_none(),
            "a third worker does not fit"
        );
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn worker_ids_sort_in_spawn_order() {
        assert_eq!(worker_id(3, 4), "local-003");
        let ids: Vec<String> = (0..1200).map(|i| worker_id(i, 1200)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(worker_id(7, 1200), "local-0007");
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "code 1");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }
}

/// With `--max-workers` above `--workers`, how more workers join this launch: the coordinator's
/// URL in `RUN_DIR/coordinator.url`, and (for a per-run token) the token in `RUN_DIR/auth-token`
/// (mode 0600); the line that tells the person.
fn room_to_grow(run: &Run, url: &str, token: &Token) -> Result<Option<String>, LaunchError> {
    let c = run.config();
    let room = c.max_workers().saturating_sub(c.workers);
    if room == 0 {
        return Ok(None);
    }
    let dir = run.run_dir();
    let write = |name: &str, text: &str, mode: u32| -> Result<std::path::PathBuf, LaunchError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(io_err(format!("writing {}", path.display())))?;
        f.write_all(text.as_bytes())
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(path)
    };
    write("coordinator.url", &format!("{url}\n"), 0o644)?;
    let token_file = match &c.auth_token_file {
        Some(p) => p.clone(),
        None => write("auth-token", token.expose(), 0o600)?,
    };
    Ok(Some(format!(
        "room for {room} more worker(s), admitted at the next epoch end: RINGTRAIN_AUTH_TOKEN_FILE={} ringtrain-worker --coordinator {url} --data {}",
        token_file.display(),
        run.data_root()
    )))
}
