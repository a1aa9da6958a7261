//! Slurm, for real: a one-node cluster on this machine (a real `munged`, `slurmctld` and
//! `slurmd` from a generated `slurm.conf`, the node with this machine's CPUs and two GPUs that
//! are `/dev/null` and `/dev/zero`, so `--gpus-per-task` allocates as on a GPU cluster while the
//! workers train on the CPU) runs `deploy/slurm/ringtrain.sbatch` as a user submits it, with `sbatch --wait`:
//!
//! * the lesson's plain CNN for 1 epoch on real MNIST finishes at 97% or more, one worker per
//!   task, ids `slurm-<job>-<task>`;
//! * a 4-epoch job requeued mid-run (`scontrol requeue`) starts again under the same job id,
//!   resumes from the checkpoint in its run folder (`serve --auto-resume`) and finishes;
//! * a job whose batch shell alone gets SIGTERM (`--signal=B:TERM@N` before a time limit)
//!   stops at a checkpoint, and the next job on the same run folder continues it.
//!
//! Needs root (as in CI) and `scripts/setup-slurm.sh` (Debian's slurm-wlm and munge, installed
//! once). The daemons use their own files, ports on 127.0.0.1 and node name; the test stops
//! them, and every process its jobs started, however it ends. Logs, `slurm.conf` and the jobs'
//! output stay in `target/test-logs/slurm/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ringtrain_tests::{
    bin, log_dir, pids_with, read_json, shared_mnist_idx, wait_with_limit, workspace_root,
};

const NODE: &str = "ringtrain-test-node";

/// A free TCP port on 127.0.0.1 (free when asked; the daemons bind it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

fn short_hostname() -> String {
    let out = Command::new("hostname")
        .arg("-s")
        .output()
        .expect("hostname(1) runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The cluster: its daemons run as children of the test and die with the lab.
struct Lab {
    logs: PathBuf,
    conf: PathBuf,
    state: tempfile::TempDir,
    daemons: Vec<(&'static str, Child)>,
    /// Ports the jobs' coordinators use: whatever still runs with one of them is the test's.
    job_ports: Vec<u16>,
}

impl Lab {
    fn start(logs: &Path) -> Lab {
        let setup = Command::new("bash")
            .arg(workspace_root().join("scripts/setup-slurm.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("bash runs scripts/setup-slurm.sh");
        assert!(
            setup.status.success(),
            "scripts/setup-slurm.sh failed:\n{}",
            String::from_utf8_lossy(&setup.stderr)
        );
        // Short paths: the munge socket's must fit in sun_path.
        let state = tempfile::Builder::new()
            .prefix("rt-slurm-")
            .tempdir_in("/tmp")
            .expect("a folder in /tmp");
        let s = state.path();
        for d in ["munge", "ctld", "spool"] {
            std::fs::create_dir_all(s.join(d)).expect("creating the lab's folders");
        }
        let key = s.join("munge/munge.key");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "head -c 1024 /dev/urandom > {k} && chmod 400 {k}",
                k = key.display()
            ))
            .status()
            .expect("sh runs");
        assert!(ok.success(), "writing the munge key");
        let socket = s.join("munge/munge.sock");
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        let conf = logs.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=ringtrain-test\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
                 SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
                 StateSaveLocation={s}/ctld\nSlurmdSpoolDir={s}/spool\n\
                 SlurmctldPidFile={s}/slurmctld.pid\nSlurmdPidFile={s}/slurmd.pid\n\
                 SlurmctldLogFile={logs}/slurmctld.log\nSlurmdLogFile={logs}/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n\
                 SchedulerType=sched/backfill\nReturnToService=2\nMpiDefault=none\n\
                 JobRequeue=1\nKillWait=30\nGresTypes=gpu\n\
                 NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} Gres=gpu:2 State=UNKNOWN\n\
                 PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n",
                host = short_hostname(),
                socket = socket.display(),
                s = s.display(),
                logs = logs.display(),
                cpus = thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        )
        .expect("writing slurm.conf");
        // Two GPUs for --gpus-per-task: device files that exist everywhere and that nothing
        // opens (task/none binds no devices; Slurm only counts them and sets
        // CUDA_VISIBLE_DEVICES per task, and libtorch then finds no CUDA device).
        std::fs::write(
            logs.join("gres.conf"),
            format!(
                "NodeName={NODE} Name=gpu File=/dev/null\nNodeName={NODE} Name=gpu File=/dev/zero\n"
            ),
        )
        .expect("writing gres.conf");
        let mut lab = Lab {
            logs: logs.to_path_buf(),
            conf,
            state,
            daemons: Vec::new(),
            job_ports: Vec::new(),
        };
        let log = |name: &str| {
            std::fs::File::create(logs.join(format!("{name}.stderr.txt")))
                .expect("the test's log folder is writable")
        };
        let munged = Command::new("munged")
            .arg("-F")
            .arg("-f")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--log-file={}", logs.join("munged.log").display()))
            .arg(format!(
                "--pid-file={}",
                lab.state().join("munge/munged.pid").display()
            ))
            .arg(format!(
                "--seed-file={}",
                lab.state().join("munge/seed").display()
            ))
            .stdin(Stdio::null())
            .stderr(log("munged"))
            .spawn()
            .expect("munged starts");
        lab.daemons.push(("munged", munged));
        lab.wait_for("munged's socket", Duration::from_secs(10), |_| {
            socket.exists()
        });
        let ctld = Command::new("slurmctld")
            .args(["-D", "-i", "-f"])
            .arg(&lab.conf)
            .stdin(Stdio::null())
            .stderr(log("slurmctld"))
            .spawn()
            .expect("slurmctld starts");
        lab.daemons.push(("slurmctld", ctld));
        let slurmd = Command::new("slurmd")
            .args(["-D", "-N", NODE, "-f"])
            .arg(&lab.conf)
            .stdin(Stdio::null())
            .stderr(log("slurmd"))
            .spawn()
            .expect("slurmd starts");
        lab.daemons.push(("slurmd", slurmd));
        lab.wait_for("the node to be idle", Duration::from_secs(60), |lab| {
            let out = lab.slurm("sinfo", &["-h", "-n", NODE, "-o", "%T"]);
            String::from_utf8_lossy(&out.stdout).trim() == "idle"
        });
        lab
    }

    fn state(&self) -> &Path {
        self.state.path()
    }

    /// A Slurm client command against this cluster.
    fn slurm(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new(cmd)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd} runs: {e}"))
    }

    fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut(&Lab) -> bool) {
        let start = Instant::now();
        while !done(self) {
            // A daemon that exited (a zombie until reaped): say so instead of waiting.
            for (name, d) in &self.daemons {
                let stat =
                    std::fs::read_to_string(format!("/proc/{}/stat", d.id())).unwrap_or_default();
                let state = stat.rsplit(") ").next().and_then(|t| t.chars().next());
                assert!(
                    matches!(state, Some(c) if c != 'Z'),
                    "{name} exited while waiting for {what}; see {}",
                    self.logs.display()
                );
            }
            assert!(
                start.elapsed() < limit,
                "no {what} after {limit:?}; see {}",
                self.logs.display()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `sbatch --wait deploy/slurm/ringtrain.sbatch` with the job's environment; the child
    /// exits with the job's exit code.
    fn submit(&mut self, name: &str, run: &str, data: &Path, epochs: u32) -> (Child, PathBuf) {
        let port = free_port();
        self.job_ports.push(port);
        let run_dir = self.logs.join(format!("{run}-run"));
        let bin_dir = bin("ringtrain")
            .parent()
            .expect("binaries live in a folder")
            .to_path_buf();
        let out = std::fs::File::create(self.logs.join(format!("{name}.sbatch.txt")))
            .expect("the test's log folder is writable");
        let child = Command::new("sbatch")
            .arg("--wait")
            .arg(format!("--job-name={name}"))
            .arg(format!("--output={}/{name}-%j.out", self.logs.display()))
            .arg(format!("--chdir={}", self.logs.display()))
            .arg(workspace_root().join("deploy/slurm/ringtrain.sbatch"))
            .env("SLURM_CONF", &self.conf)
            .env("RINGTRAIN_BIN", &bin_dir)
            .env("RINGTRAIN_DATA", data)
            .env("RINGTRAIN_RUN_DIR", &run_dir)
            .env("RINGTRAIN_COORDINATOR_HOST", "127.0.0.1")
            .env("RINGTRAIN_PORT", port.to_string())
            .env("RINGTRAIN_LISTEN", format!("127.0.0.1:{port}"))
            .env("RINGTRAIN_MODEL", "basic")
            .env("RINGTRAIN_EPOCHS", epochs.to_string())
            .env("RINGTRAIN_MAX_LR", "0.1")
            .env("RINGTRAIN_CACHE_DIR", self.logs.join("cache"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file handle"))
            .stderr(out)
            .spawn()
            .expect("sbatch starts");
        (child, run_dir)
    }

    /// The id of the job named `name`, once the controller has it.
    fn job_id(&self, name: &str) -> String {
        let mut id = String::new();
        self.wait_for(
            &format!("job {name} in squeue"),
            Duration::from_secs(30),
            |lab| {
                let out = lab.slurm("squeue", &["-h", "-n", name, "-o", "%i"]);
                id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                !id.is_empty()
            },
        );
        id
    }

    /// Everything the job printed (all its starts: `--open-mode=append`).
    fn job_output(&self, name: &str, id: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}-{id}.out"))).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Jobs first (slurmd's steps end them), then the daemons, then any process a job left.
        let _ = self.slurm("scancel", &["--full", "-p", "test"]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let out = self.slurm("squeue", &["-h"]);
            if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        for (_, d) in self.daemons.iter_mut().rev() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for port in &self.job_ports {
            for pid in pids_with(&[&format!(":{port}")]) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        for pid in pids_with(&["slurmstepd", NODE]) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Real MNIST in the mnist_png layout, converted from the shared idx files.
fn mnist(dest: &Path) {
    if dest.join("testing").is_dir() {
        return;
    }
    let out = Command::new(bin("ringtrain"))
        .args(["data", "fetch", "mnist", "--from-idx"])
        .arg(shared_mnist_idx())
        .arg("--dest")
        .arg(dest)
        .stdin(Stdio::null())
        .output()
        .expect("ringtrain data fetch runs");
    assert!(
        out.status.success(),
        "converting MNIST: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The run folder holds the first epoch's checkpoint.
fn first_checkpoint(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("e0001"))
        })
        .unwrap_or(false)
}

#[test]
fn the_sbatch_script_trains_on_a_real_cluster_and_a_requeued_job_resumes() {
    let logs = log_dir("slurm");
    // Job ids start at 1 in every lab and job output is appended (--open-mode=append): a
    // previous run's files would answer this run's questions. The data and its cache stay.
    for e in std::fs::read_dir(&logs).expect("the log folder").flatten() {
        let keep = ["mnist_png", "cache"].contains(&e.file_name().to_string_lossy().as_ref());
        if !keep {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
    let mut lab = Lab::start(&logs);
    let data = logs.join("mnist_png");
    mnist(&data);

    // 1. One job, two tasks: the lesson's plain CNN for one epoch.
    let started = Instant::now();
    let (mut job, run_dir) = lab.submit("rt-basic", "rt-basic", &data, 1);
    let id = lab.job_id("rt-basic");
    let status = wait_with_limit(&mut job, Duration::from_secs(300), "the 1-epoch job");
    let output = lab.job_output("rt-basic", &id);
    assert!(status.success(), "job {id} failed ({status}):\n{output}");
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "finished", "{summary}");
    assert_eq!(summary["world_size"], 2);
    let accuracy = summary["accuracy"].as_f64().unwrap_or(0.0);
    assert!(accuracy >= 0.97, "accuracy {accuracy}");
    let run = read_json(&run_dir.join("run.json"));
    let ids: Vec<&str> = run["ranks"]
        .as_array()
        .expect("run.json lists the ranks")
        .iter()
        .filter_map(|r| r["worker_id"].as_str())
        .collect();
    assert_eq!(ids, [format!("slurm-{id}-000"), format!("slurm-{id}-001")]);
    // sbatch --wait polls with growing intervals: its time is an upper bound of the job's.
    eprintln!(
        "slurm: 1-epoch job {id}: {:.2}% in {:.1} s from sbatch to its return",
        accuracy * 100.0,
        started.elapsed().as_secs_f64()
    );

    // 2. Requeued mid-run: the same job starts again and resumes from its run folder.
    let started = Instant::now();
    let (mut job, run_dir) = lab.submit("rt-requeue", "rt-requeue", &data, 4);
    let id = lab.job_id("rt-requeue");
    lab.wait_for("first checkpoint", Duration::from_secs(180), |_| {
        first_checkpoint(&run_dir)
    });
    let out = lab.slurm("scontrol", &["requeue", &id]);
    assert!(
        out.status.success(),
        "scontrol requeue {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Slurm holds a requeued job for a while (BeginTime); let it start as soon as it can.
    lab.wait_for(
        "the requeued job to be pending",
        Duration::from_secs(60),
        |lab| {
            let out = lab.slurm("squeue", &["-h", "-j", &id, "-o", "%T"]);
            String::from_utf8_lossy(&out.stdout).trim() == "PENDING"
        },
    );
    let _ = lab.slurm(
        "scontrol",
        &["update", &format!("JobId={id}"), "StartTime=now"],
    );
    let status = wait_with_limit(&mut job, Duration::from_secs(300), "the requeued job");
    let output = lab.job_output("rt-requeue", &id);
    assert!(status.success(), "job {id} failed ({status}):\n{output}");
    assert!(
        output.contains(&format!("job {id} start 1:")),
        "the job did not start a second time:\n{output}"
    );
    assert!(
        output.contains("continuing from checkpoint"),
        "the second start did not resume:\n{output}"
    );
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "finished", "{summary}");
    let accuracy = summary["accuracy"].as_f64().unwrap_or(0.0);
    assert!(accuracy >= 0.97, "accuracy {accuracy}");
    assert_eq!(summary["epochs"], 4, "{summary}");
    eprintln!(
        "slurm: 4-epoch job {id} requeued after its first checkpoint: {:.2}% in {:.1} s from sbatch to its return",
        accuracy * 100.0,
        started.elapsed().as_secs_f64()
    );

    // 3. SIGTERM to the batch shell only (what `--signal=B:TERM@120` sends before a time
    // limit): the shell passes it on, the ranks write a stop checkpoint and the job ends; the
    // next job with the same run folder continues from it.
    let (mut job, run_dir) = lab.submit("rt-signal", "rt-signal", &data, 4);
    let id = lab.job_id("rt-signal");
    lab.wait_for("first checkpoint", Duration::from_secs(180), |_| {
        first_checkpoint(&run_dir)
    });
    let out = lab.slurm("scancel", &["--batch", "--signal=TERM", &id]);
    assert!(
        out.status.success(),
        "scancel --batch --signal=TERM {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = wait_with_limit(&mut job, Duration::from_secs(120), "the signalled job");
    let output = lab.job_output("rt-signal", &id);
    assert!(
        !status.success(),
        "an interrupted run is not a success:\n{output}"
    );
    assert!(
        output.contains("stop checkpoint at step"),
        "no stop checkpoint:\n{output}"
    );
    let (mut job, _) = lab.submit("rt-signal-2", "rt-signal", &data, 4);
    let id2 = lab.job_id("rt-signal-2");
    let status = wait_with_limit(&mut job, Duration::from_secs(300), "the continuing job");
    let output = lab.job_output("rt-signal-2", &id2);
    assert!(status.success(), "job {id2} failed ({status}):\n{output}");
    assert!(
        output.contains("continuing from checkpoint"),
        "job {id2} did not continue job {id}'s run:\n{output}"
    );
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(
        (&summary["status"], &summary["epochs"]),
        (&serde_json::json!("finished"), &serde_json::json!(4)),
        "{summary}"
    );
}
