//! The coordinator process's own metrics, with the names and meanings the Prometheus client
//! libraries give them: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`.
//!
//! Owns reading them from `/proc/self` (Linux); a file that cannot be read leaves its metrics
//! out. Reads a few small files per scrape, no state.
//!
//! Tests: `tests` at the bottom (the parsers on fixed text, and this process).

use super::{Kind, Text};

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// User plus system CPU time.
    cpu_s: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    /// Since boot.
    start_s: f64,
}

/// Parses `/proc/self/stat` (`proc(5)`): utime (field 14), stime (15), starttime (22), vsize
/// (23) and rss (24, in pages). The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn parse_stat(stat: &str, ticks_per_s: f64, page_bytes: u64) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `f[0]` is field 3 (state).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_s: (field(14)? + field(15)?) as f64 / ticks_per_s,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_bytes),
        start_s: field(22)? as f64 / ticks_per_s,
    })
}

/// The boot time in Unix seconds, from `/proc/stat`'s `btime` line.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit on open files, from `/proc/self/limits` (`None` when unlimited).
fn max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `sysconf(name)` when positive.
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// The process's metrics in the text format (empty where `/proc` is missing).
pub(super) fn render() -> String {
    use Kind::{Counter, Gauge};
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut t = Text::default();
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s, ticks, page));
    t.single(
        "process_cpu_seconds_total",
        Counter,
        "Total user and system CPU time spent in seconds.",
        stat.map(|s| s.cpu_s),
    );
    t.single(
        "process_resident_memory_bytes",
        Gauge,
        "Resident memory size in bytes.",
        stat.map(|s| s.resident_bytes as f64),
    );
    t.single(
        "process_virtual_memory_bytes",
        Gauge,
        "Virtual memory size in bytes.",
        stat.map(|s| s.virtual_bytes as f64),
    );
    let boot = read("/proc/stat").and_then(|s| boot_time(&s));
    t.single(
        "process_start_time_seconds",
        Gauge,
        "Start time of the process since unix epoch in seconds.",
        stat.zip(boot).map(|(s, b)| b as f64 + s.start_s),
    );
    let open = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    t.single(
        "process_open_fds",
        Gauge,
        "Number of open file descriptors.",
        open.map(|n| n as f64),
    );
    t.single(
        "process_max_fds",
        Gauge,
        "Maximum number of open file descriptors.",
        read("/proc/self/limits")
            .and_then(|l| max_fds(&l))
            .map(|n| n as f64),
    );
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 50, starttime 1000,
        // vsize 123456789, rss 1000 pages.
        let stat = "4242 (ring (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 8 0 \
                    1000 123456789 1000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        let s = parse_stat(stat, 100.0, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_s: 3.0,
                virtual_bytes: 123_456_789,
                resident_bytes: 4_096_000,
                start_s: 10.0,
            }
        );
        assert_eq!(parse_stat("4242 (short) S 1", 100.0, 4096), None);
    }

    #[test]
    fn boot_time_and_the_soft_fd_limit() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(
            max_fds("Max open files            unlimited            unlimited            files"),
            None
        );
    }

    #[test]
    fn this_process_has_all_six() {
        let t = render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                t.contains(&format!("# TYPE {name} ")),
                "{name} missing: {t}"
            );
        }
    }
}
