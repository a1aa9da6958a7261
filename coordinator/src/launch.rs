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
//! * With `--gpus` (`gpus.rs`), worker `i` also gets `--device cuda:0` and
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
//! Tests: `coordinator/tests/launch.rs` (fake workers).

use std::future::Future;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use ringtrain_common::auth::Token;

use crate::config::RunConfig;
use crate::gpus::{self, GpuError, GpuPlacement, GpuSelection};
use crate::server::{Run, RunOutcome, ServeError};

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

/// One supervised worker process.
struct Proc {
    index: usize,
    worker_id: String,
    pid: u32,
    log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

/// Kill guard: every child still running when this drops is killed and reaped.
struct Children(Vec<Proc>);

impl Children {
    /// Newly exited children since the last call.
    fn poll_exits(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut out = Vec::new();
        for p in self.0.iter_mut().filter(|p| p.exited.is_none()) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = Some(status);
                out.push((p.index, status));
            }
        }
        out
    }

    fn running(&self) -> bool {
        self.0.iter().any(|p| p.exited.is_none())
    }

    fn signal(&self, sig: libc::c_int) {
        for p in self.0.iter().filter(|p| p.exited.is_none()) {
            // SAFETY: kill(2) has no memory effects; the pid is our unreaped child, so it
            // cannot have been reused.
            unsafe { libc::kill(p.pid as libc::pid_t, sig) };
        }
    }

    fn kill_and_reap(&mut self) {
        for p in self.0.iter_mut().filter(|p| p.exited.is_none()) {
            tracing::warn!(worker_id = %p.worker_id, pid = p.pid, "killing worker");
            let _ = p.child.start_kill();
        }
        // SIGKILL takes effect at once; reaping needs only a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.0.iter().any(|p| p.exited.is_none()) && std::time::Instant::now() < deadline {
            for p in self.0.iter_mut().filter(|p| p.exited.is_none()) {
                if let Ok(Some(s)) = p.child.try_wait() {
                    p.exited = Some(s);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// What every worker process gets on its command line.
struct WorkerArgs {
    bin: PathBuf,
    url: String,
    threads: usize,
    /// `--data`, `--train-dir`, `--valid-dir`: the worker scans the same files before Join.
    data: [String; 6],
    logs: PathBuf,
    /// The CPUs this process may run on, when workers are pinned (worker i gets the i-th run of
    /// `threads` of them).
    pin_cpus: Option<Vec<usize>>,
    /// Worker i's GPU (`--gpus`); empty otherwise.
    placements: Vec<GpuPlacement>,
    /// `--device` for every worker, when the launcher decides it.
    device: Option<&'static str>,
    /// The run's token, passed in the environment (never on the command line).
    token: Token,
}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The affinity mask of worker `index` with `threads` cores each, if the CPUs suffice.
fn pin_mask(cpus: &[usize], index: usize, threads: usize) -> Option<libc::cpu_set_t> {
    let mine = cpus.get(index * threads..(index + 1) * threads)?;
    // SAFETY: cpu_set_t is plain data; CPU_SET only writes inside it (c < CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in mine {
            libc::CPU_SET(c, &mut set);
        }
        Some(set)
    }
}

fn spawn_worker(w: &WorkerArgs, index: usize, n: usize) -> Result<Proc, LaunchError> {
    let (bin, logs) = (&w.bin, &w.logs);
    let worker_id = worker_id(index, n);
    let log = logs.join(format!("worker-{index}.log"));
    // Appended to: a restarted worker (or a resumed run) keeps the earlier log.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("opening {}", log.display())))?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--coordinator",
        &w.url,
        "--worker-id",
        &worker_id,
        "--threads",
        &w.threads.to_string(),
    ])
    .args(["--collective-listen", "127.0.0.1:0"])
    .args(&w.data)
    .args(w.device.iter().flat_map(|d| ["--device", d]))
    .env("RINGTRAIN_AUTH_TOKEN", w.token.expose())
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err)
    .kill_on_drop(true);
    if let Some(p) = w.placements.get(index) {
        cmd.env("CUDA_VISIBLE_DEVICES", &p.visible_devices);
    }
    let mask = w
        .pin_cpus
        .as_deref()
        .and_then(|cpus| pin_mask(cpus, index, w.threads));
    // SAFETY: pid of this process, read before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, setpgid, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Its own process group: a terminal's Ctrl-C reaches the launcher only, which
            // first lets the ranks take a stop checkpoint, then forwards SIGINT.
            libc::setpgid(0, 0);
            // The launcher may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("launcher exited during spawn"));
            }
            // A failed pin only costs speed; the worker runs anyway.
            if let Some(set) = &mask {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| LaunchError::Spawn {
        index,
        path: bin.clone(),
        reason: e.to_string(),
    })?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(worker_id = %worker_id, pid, log = %log.display(), "worker started");
    Ok(Proc {
        index,
        worker_id,
        pid,
        log,
        child,
        exited: None,
    })
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
