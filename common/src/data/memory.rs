//! How much memory a shard's decoded images take, and how much this process may use: checked
//! before decoding, so a shard that cannot fit is refused with the numbers instead of the
//! process being killed halfway.
//!
//! # The estimate (bytes; also in the README)
//! ```text
//! image   = C · N²                                  (u8, planar)
//! decoded = (n_train + n_valid) · image             (the decoded split buffers)
//! peak    = 2 · decoded                             (+ the cache file's copy while it is written)
//!         + n_train · C · (N + 2P)²                 (the padded training tensor, CPU device only)
//!         + n_train · image + 5 · n_valid · image   (tensor copies; validation as f32, CPU only)
//! ```
//! `P` is the `rand_pad` padding. On a CUDA device the tensors live in GPU memory and only the
//! first line counts against the host.
//!
//! # The limit
//! The smallest of: `--memory-limit` (or `RINGTRAIN_MEMORY_LIMIT`), the cgroup's `memory.max`
//! (v2) or `memory.limit_in_bytes` (v1) — a Kubernetes container's limit — and the machine's
//! `MemAvailable`. `launch` gives each of its workers an equal share of `MemAvailable`.
//!
//! Tests: `tests` at the bottom.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, Geometry};

/// A byte count that prints as KiB/MiB/GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0 as f64;
        const K: f64 = 1024.0;
        if b >= K * K * K {
            write!(f, "{:.1} GiB", b / (K * K * K))
        } else if b >= K * K {
            write!(f, "{:.1} MiB", b / (K * K))
        } else if b >= K {
            write!(f, "{:.1} KiB", b / K)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

impl std::str::FromStr for Bytes {
    type Err = String;

    /// `1073741824`, `512MiB`, `8GiB`, `8G` (binary units; K/M/G/T with or without `iB`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("expected a size such as 8GiB or 512MiB, got {s:?}"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kib" | "kb" => 10,
            "m" | "mib" | "mb" => 20,
            "g" | "gib" | "gb" => 30,
            "t" | "tib" | "tb" => 40,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {s:?} (use KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(1u64 << shift)
            .map(Bytes)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

/// The estimate for one process's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The decoded split buffers alone.
    pub decoded: Bytes,
    /// The peak while decoding and building tensors (the module's formula).
    pub peak: Bytes,
}

/// The module's formula for `n_train` + `n_valid` images of geometry `g` with padding `pad`;
/// `tensors_on_host`: the training device is the CPU.
pub fn estimate(
    n_train: u64,
    n_valid: u64,
    g: Geometry,
    pad: u32,
    tensors_on_host: bool,
) -> Estimate {
    let image = u128::from(g.image_bytes());
    let (nt, nv) = (u128::from(n_train), u128::from(n_valid));
    let decoded = (nt + nv) * image;
    let mut peak = 2 * decoded;
    if tensors_on_host {
        let padded = u128::from(g.size) + 2 * u128::from(pad);
        peak += nt * u128::from(g.channels) * padded * padded + nt * image + 5 * nv * image;
    }
    let clamp = |v: u128| Bytes(u64::try_from(v).unwrap_or(u64::MAX));
    Estimate {
        decoded: clamp(decoded),
        peak: clamp(peak),
    }
}

/// How much memory this process may use, and where that number comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub bytes: Bytes,
    /// E.g. `--memory-limit`, `cgroup memory.max`, `MemAvailable`.
    pub source: String,
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The cgroup memory limit of this process (v2 `memory.max`, else v1), `None` when unlimited
/// or unknown. `root` is `/` except in tests.
fn cgroup_limit(root: &Path) -> Option<(u64, &'static str)> {
    let own = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = rel.trim_start_matches('/');
        let (file, name) = if controllers.is_empty() {
            ("sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let text = std::fs::read_to_string(root.join(file).join(rel).join(name)).ok()?;
        let v: u64 = text.trim().parse().ok()?;
        // v1 reports "unlimited" as a huge page-rounded number.
        if v < (1 << 60) {
            return Some((
                v,
                if name == "memory.max" {
                    "cgroup memory.max"
                } else {
                    "cgroup memory.limit_in_bytes"
                },
            ));
        }
    }
    None
}

/// The limit from `explicit` (`--memory-limit`), this process's cgroup and `MemAvailable`,
/// whichever is smallest; `None` when none is known.
pub fn process_limit(explicit: Option<Bytes>) -> Option<Limit> {
    limit_under(Path::new("/"), explicit)
}

fn limit_under(root: &Path, explicit: Option<Bytes>) -> Option<Limit> {
    let mut best: Option<Limit> = explicit.map(|b| Limit {
        bytes: b,
        source: "--memory-limit".into(),
    });
    let mut offer = |bytes: u64, source: &str| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes.0) {
            best = Some(Limit {
                bytes: Bytes(bytes),
                source: source.into(),
            });
        }
    };
    if let Some((v, source)) = cgroup_limit(root) {
        offer(v, source);
    }
    if let Some(v) = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .as_deref()
        .and_then(mem_available)
    {
        offer(v, "MemAvailable");
    }
    best
}

/// Refuses when `est.peak` exceeds `limit`; `what` names the images (e.g. "rank 1's shard of
/// 30,000 + 5,000 images at 3x64x64").
pub fn check(what: &str, est: Estimate, limit: Option<&Limit>) -> Result<(), DataError> {
    match limit {
        Some(l) if est.peak > l.bytes => Err(DataError::OutOfMemory {
            what: what.to_string(),
            need: est.peak,
            limit: l.bytes,
            source_of_limit: l.source.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_parse_and_print() {
        assert_eq!("512MiB".parse::<Bytes>().unwrap(), Bytes(512 << 20));
        assert_eq!("8G".parse::<Bytes>().unwrap(), Bytes(8 << 30));
        assert_eq!("1000".parse::<Bytes>().unwrap(), Bytes(1000));
        assert!("8 parsecs".parse::<Bytes>().is_err());
        assert!("99999999999T".parse::<Bytes>().is_err());
        assert_eq!(Bytes(3 << 30).to_string(), "3.0 GiB");
        assert_eq!(Bytes(1536 << 10).to_string(), "1.5 MiB");
    }

    #[test]
    fn the_formula() {
        let g = Geometry::MNIST;
        // MNIST on 2 workers: 30,000 + 5,000 images of 784 bytes each.
        let e = estimate(30_000, 5_000, g, 3, true);
        assert_eq!(e.decoded, Bytes(35_000 * 784));
        let want = 2 * 35_000 * 784 + 30_000 * 34 * 34 + 30_000 * 784 + 5 * 5_000 * 784;
        assert_eq!(e.peak, Bytes(want));
        assert_eq!(
            estimate(30_000, 5_000, g, 3, false).peak,
            Bytes(2 * 35_000 * 784)
        );
        let big = Geometry {
            channels: 3,
            size: 4096,
            resize: true,
        };
        assert!(
            estimate(u64::MAX, 1, big, 3, true).peak.0 == u64::MAX,
            "saturates"
        );
    }

    #[test]
    fn check_refuses_with_the_numbers_and_the_fix() {
        let g = Geometry {
            channels: 3,
            size: 256,
            resize: true,
        };
        let est = estimate(100_000, 10_000, g, 3, true);
        let limit = Limit {
            bytes: Bytes(8 << 30),
            source: "cgroup memory.max".into(),
        };
        let err = check("rank 0's shard", est, Some(&limit)).unwrap_err();
        let msg = err.to_string();
        for part in [
            "rank 0's shard",
            "8.0 GiB",
            "cgroup memory.max",
            "more workers",
            "--image-size",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        assert!(check("x", estimate(10, 1, g, 3, true), Some(&limit)).is_ok());
        assert!(check("x", est, None).is_ok());
    }

    #[test]
    fn cgroup_v2_and_v1_and_meminfo() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let put = |rel: &str, text: &str| {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put(
            "proc/meminfo",
            "MemTotal: 100 kB\nMemAvailable:    2048 kB\n",
        );
        assert_eq!(
            limit_under(r, None).unwrap(),
            Limit {
                bytes: Bytes(2 << 20),
                source: "MemAvailable".into()
            }
        );
        put("proc/self/cgroup", "0::/kubepods/pod1\n");
        put("sys/fs/cgroup/kubepods/pod1/memory.max", "1048576\n");
        assert_eq!(limit_under(r, None).unwrap().source, "cgroup memory.max");
        assert_eq!(limit_under(r, None).unwrap().bytes, Bytes(1 << 20));
        assert_eq!(
            limit_under(r, Some(Bytes(1000))).unwrap().source,
            "--memory-limit"
        );
        put("sys/fs/cgroup/kubepods/pod1/memory.max", "max\n");
        assert_eq!(limit_under(r, None).unwrap().source, "MemAvailable");
        put("proc/self/cgroup", "5:cpu:/x\n4:memory:/job\n");
        put("sys/fs/cgroup/memory/job/memory.limit_in_bytes", "4096\n");
        assert_eq!(limit_under(r, None).unwrap().bytes, Bytes(4096));
        put(
            "sys/fs/cgroup/memory/job/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(limit_under(r, None).unwrap().source, "MemAvailable");
    }
}
