//! The worker processes of `ringtrain launch`: spawning one (command line, environment, log
//! file, CPU pinning, death with the launcher), polling exits, signalling and killing them all.
//!
//! Same contract as the parent module; split off to keep the supervision loop readable.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use ringtrain_common::auth::Token;
use tokio::process::{Child, Command};

use super::gpus::GpuPlacement;
use super::{io_err, worker_id, LaunchError};

/// One supervised worker process.
pub(super) struct Proc {
    pub(super) index: usize,
    pub(super) worker_id: String,
    pub(super) pid: u32,
    pub(super) log: PathBuf,
    pub(super) child: Child,
    pub(super) exited: Option<ExitStatus>,
}

/// Kill guard: every child still running when this drops is killed and reaped.
pub(super) struct Children(pub(super) Vec<Proc>);

impl Children {
    /// Newly exited children since the last call.
    pub(super) fn poll_exits(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut out = Vec::new();
        for p in self.0.iter_mut().filter(|p| p.exited.is_none()) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = Some(status);
                out.push((p.index, status));
            }
        }
        out
    }

    pub(super) fn running(&self) -> bool {
        self.0.iter().any(|p| p.exited.is_none())
    }

    pub(super) fn signal(&self, sig: libc::c_int) {
        for p in self.0.iter().filter(|p| p.exited.is_none()) {
            // SAFETY: kill(2) has no memory effects; the pid is our unreaped child, so it
            // cannot have been reused.
            unsafe { libc::kill(p.pid as libc::pid_t, sig) };
        }
    }

    pub(super) fn kill_and_reap(&mut self) {
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
pub(super) struct WorkerArgs {
    pub(super) bin: PathBuf,
    pub(super) url: String,
    pub(super) threads: usize,
    /// `--data`, `--train-dir`, `--valid-dir`: the worker scans the same files before Join.
    pub(super) data: [String; 6],
    pub(super) logs: PathBuf,
    /// The CPUs this process may run on, when workers are pinned (worker i gets the i-th run of
    /// `threads` of them).
    pub(super) pin_cpus: Option<Vec<usize>>,
    /// Worker i's GPU (`--gpus`); empty otherwise.
    pub(super) placements: Vec<GpuPlacement>,
    /// `--device` for every worker, when the launcher decides it.
    pub(super) device: Option<&'static str>,
    /// The run's token, passed in the environment (never on the command line).
    pub(super) token: Token,
    /// Each worker's share of this machine's memory (`--memory-limit`): the workers decode
    /// their shards at the same time. `None`: unknown, each worker finds its own limit.
    pub(super) memory_share: Option<u64>,
}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
pub(super) fn allowed_cpus() -> Vec<usize> {
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
pub(super) fn pin_mask(cpus: &[usize], index: usize, threads: usize) -> Option<libc::cpu_set_t> {
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

pub(super) fn spawn_worker(w: &WorkerArgs, index: usize, n: usize) -> Result<Proc, LaunchError> {
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
    .args(
        w.memory_share
            .iter()
            .flat_map(|b| ["--memory-limit".to_string(), b.to_string()]),
    )
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
