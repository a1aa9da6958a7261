//! Plumbing under [`super::Lab`]: running `ip`/`iptables`, naming and deleting namespaces, finding
//! and killing the processes inside them, entering one from a thread.
//!
//! Owns every external command the lab runs and the namespace naming scheme; not the topology
//! (`mod.rs`) nor packet timing (`delay.rs`).
//!
//! # Contract
//! * Namespace names are `rtlab<pid>-<n>-<tag>-<role>`: `<pid>` is the creating test process, so
//!   [`remove_stale`] can delete what a killed run left behind without touching live labs.
//! * A failed command is an error naming the command line, its exit status and its stderr.
//! * Nothing here touches the root network namespace: every command carries `-n NS` or runs
//!   under `ip netns exec NS`.
//!
//! Tests: `tests/tests/netlab.rs` (needs root).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Prefix of every namespace a lab creates.
pub const PREFIX: &str = "rtlab";
/// Where `ip netns add` pins namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Absolute path of `ip`, resolved once (tests may run with a PATH lacking /usr/sbin).
pub fn ip() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| which("ip"))
}

/// Absolute path of `bridge` (iproute2), resolved once.
pub fn bridge() -> &'static Path {
    static BRIDGE: OnceLock<PathBuf> = OnceLock::new();
    BRIDGE.get_or_init(|| which("bridge"))
}

/// Absolute path of `iptables`, resolved once.
pub fn iptables() -> &'static Path {
    static IPT: OnceLock<PathBuf> = OnceLock::new();
    IPT.get_or_init(|| which("iptables"))
}

fn which(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `program args`, feeding `stdin` when given; an error names the command and its stderr.
pub fn run(program: &Path, args: &[&OsStr], stdin: Option<&str>) -> anyhow::Result<String> {
    let line = || {
        std::iter::once(program.as_os_str())
            .chain(args.iter().copied())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", line()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, text.as_bytes())
            .with_context(|| format!("feeding `{}`", line()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", line()))?;
    if !out.status.success() {
        let input = stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default();
        bail!(
            "`{}` failed ({}): {}{input}",
            line(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` (each whitespace-separated word one argument).
pub fn ip_cmd(args: &str) -> anyhow::Result<String> {
    let words: Vec<&OsStr> = args.split_whitespace().map(OsStr::new).collect();
    run(ip(), &words, None)
}

/// `bridge -n NS ARGS`.
pub fn bridge_cmd(ns: &str, args: &str) -> anyhow::Result<()> {
    let mut words: Vec<&OsStr> = vec![OsStr::new("-n"), OsStr::new(ns)];
    words.extend(args.split_whitespace().map(OsStr::new));
    run(bridge(), &words, None).map(|_| ())
}

/// `ip -n NS -batch -` with `script` (one ip command per line) on stdin.
pub fn ip_batch(ns: &str, script: &str) -> anyhow::Result<()> {
    let args = ["-n", ns, "-batch", "-"].map(OsStr::new);
    run(ip(), &args, Some(script)).map(|_| ())
}

/// `iptables -w ARGS` inside namespace `ns`.
pub fn iptables_in(ns: &str, args: &str) -> anyhow::Result<()> {
    let mut words: Vec<&OsStr> = ["netns", "exec", ns].map(OsStr::new).to_vec();
    words.push(iptables().as_os_str());
    words.push(OsStr::new("-w"));
    words.extend(args.split_whitespace().map(OsStr::new));
    run(ip(), &words, None).map(|_| ())
}

/// Path of namespace `ns`'s pin.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Moves the calling thread (only it) into the namespace pinned at `path`.
pub fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns(2) on a descriptor we hold open; CLONE_NEWNET changes only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {}", path.display()));
    }
    Ok(())
}

/// Pids of the processes (other than this one) whose network namespace is the one at `path`.
pub fn pids_in(path: &Path) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            // Exited processes (zombies) have no namespace link, so they do not count.
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .collect()
}

/// SIGKILLs every process inside the namespace at `path` until none is left (children forked
/// meanwhile included); an error after 5 s names the survivors.
pub fn kill_all_in(path: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let pids = pids_in(path);
        if pids.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("processes {pids:?} survive SIGKILL in {}", path.display());
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from /proc; a pid that exited meanwhile gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what runs inside namespace `ns`, then deletes it; a namespace already gone is fine.
pub fn delete_netns(ns: &str) -> anyhow::Result<()> {
    let path = netns_path(ns);
    if !path.exists() {
        return Ok(());
    }
    let killed = kill_all_in(&path);
    let deleted = ip_cmd(&format!("netns del {ns}")).map(|_| ());
    killed.and(deleted)
}

/// The pid in a lab namespace name (`rtlab<pid>-...`).
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// Deletes lab namespaces whose creating process is gone (a test run that was killed).
/// Best effort: another process may be deleting the same ones.
pub fn remove_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for name in dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks whether `pid` exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = delete_netns(&name);
        }
    }
}

/// Checks once per process that labs can be built: root; `ip`, `bridge` and `iptables`
/// (nf_tables variant) present; a namespace creatable, and an NFQUEUE rule accepted inside it.
pub fn check_available() -> anyhow::Result<()> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| probe().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| {
            anyhow!("network lab unavailable: {e}\n(fix: run scripts/setup-netlab.sh as root)")
        })
}

fn probe() -> anyhow::Result<()> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("network namespaces and iptables need root; run the tests as root");
    }
    ip_cmd("-V").context("`ip` (iproute2) is missing")?;
    run(bridge(), &[OsStr::new("-V")], None).context("`bridge` (iproute2) is missing")?;
    let version =
        run(iptables(), &[OsStr::new("--version")], None).context("`iptables` is missing")?;
    if !version.contains("nf_tables") {
        bail!("`iptables --version` says {version:?}; the lab needs the nf_tables variant");
    }
    let ns = format!("{PREFIX}{}-0-probe", std::process::id());
    ip_cmd(&format!("netns add {ns}")).context("cannot create a network namespace")?;
    let rule = iptables_in(
        &ns,
        "-t mangle -A PREROUTING -i eth0 -s 198.18.0.10 -j NFQUEUE --queue-num 0 --queue-bypass",
    )
    .context("iptables cannot add an NFQUEUE rule inside a namespace");
    let deleted = delete_netns(&ns);
    rule.and(deleted)
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_only_lab_names() {
        assert_eq!(owner_pid("rtlab1234-7-dist-h0"), Some(1234));
        assert_eq!(owner_pid("rtlab99-0-probe"), Some(99));
        assert_eq!(owner_pid("rtlabx-1-sw"), None);
        assert_eq!(owner_pid("docker-1"), None);
    }
}
