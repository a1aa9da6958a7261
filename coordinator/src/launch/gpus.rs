//! `ringtrain launch --gpus all|0,1,...`: one worker per GPU, each seeing only its own device.
//!
//! The coordinator never links CUDA, so it asks the worker binary what the machine has
//! (`ringtrain-worker devices --json`). Worker `i` then runs with `CUDA_VISIBLE_DEVICES` set to
//! its GPU and `--device cuda:0`, like torchrun's `LOCAL_RANK` convention. GPU numbers are
//! those the launcher itself sees: inside an inherited `CUDA_VISIBLE_DEVICES=2,3`, `--gpus 1`
//! means physical GPU 3. With no GPU visible, the launcher falls back to CPU workers and says so.
//!
//! Tests: `tests` at the bottom (selection and mapping); `tests/tests/gpu_paths.rs` (the CPU
//! fallback through the real binaries).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// The `--gpus` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    All,
    /// Indices among the visible GPUs, in the order given (= rank order).
    List(Vec<usize>),
}

impl FromStr for GpuSelection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let list: Result<Vec<usize>, _> = s.split(',').map(|x| x.trim().parse()).collect();
        match list {
            Ok(l) if !l.is_empty() => {
                let mut seen = l.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != l.len() {
                    return Err(format!("--gpus {s}: a GPU is listed twice"));
                }
                Ok(Self::List(l))
            }
            _ => Err(format!(
                "--gpus {s}: expected all or a comma-separated list of GPU indices (0,1,...)"
            )),
        }
    }
}

/// One visible GPU, as `ringtrain-worker devices --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub uuid: String,
}

#[derive(Debug, Deserialize)]
struct Inventory {
    cuda_devices: usize,
    #[serde(default)]
    gpus: Vec<Gpu>,
}

/// Why `--gpus` cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("--gpus: GPU {index} is not visible; this machine shows {count} (0..{count}) to ringtrain-worker")]
    NotVisible { index: usize, count: usize },
    #[error("cannot ask {bin} which GPUs this machine has: {reason}")]
    Probe { bin: String, reason: String },
}

/// Where worker `i` runs: its `CUDA_VISIBLE_DEVICES` and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuPlacement {
    pub visible_devices: String,
    pub label: String,
}

/// Asks the worker binary how many GPUs it sees (never links CUDA here).
pub async fn probe(bin: &Path) -> Result<Vec<Gpu>, GpuError> {
    let err = |reason: String| GpuError::Probe {
        bin: bin.display().to_string(),
        reason,
    };
    let run = tokio::process::Command::new(bin)
        .args(["devices", "--json"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| err("no answer within 120 s".into()))?
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    parse_inventory(&String::from_utf8_lossy(&out.stdout)).map_err(err)
}

fn parse_inventory(stdout: &str) -> Result<Vec<Gpu>, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("no JSON in its output {stdout:?}"))?;
    let inv: Inventory = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if inv.gpus.len() == inv.cuda_devices {
        return Ok(inv.gpus);
    }
    // The driver API could not name them: indices are still usable.
    Ok((0..inv.cuda_devices)
        .map(|index| Gpu {
            index,
            name: "CUDA device".into(),
            uuid: String::new(),
        })
        .collect())
}

/// The placement of each worker (index = worker = rank order), given what is visible and the
/// launcher's own `CUDA_VISIBLE_DEVICES`. Empty when no GPU is visible (CPU fallback).
pub fn place(
    sel: &GpuSelection,
    visible: &[Gpu],
    inherited: Option<&str>,
) -> Result<Vec<GpuPlacement>, GpuError> {
    if visible.is_empty() {
        return Ok(Vec::new());
    }
    let indices: Vec<usize> = match sel {
        GpuSelection::All => (0..visible.len()).collect(),
        GpuSelection::List(l) => l.clone(),
    };
    let parent: Option<Vec<&str>> = inherited
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::trim).collect());
    indices
        .into_iter()
        .map(|i| {
            let gpu = visible.get(i).ok_or(GpuError::NotVisible {
                index: i,
                count: visible.len(),
            })?;
            // Through the inherited mask when there is one (entries may be UUIDs too).
            let visible_devices = match &parent {
                Some(p) => p.get(i).map_or_else(|| i.to_string(), |s| (*s).to_string()),
                None => i.to_string(),
            };
            Ok(GpuPlacement {
                label: format!(
                    "GPU {i} ({}{})",
                    gpu.name,
                    if gpu.uuid.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", gpu.uuid)
                    }
                ),
                visible_devices,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: usize) -> Vec<Gpu> {
        (0..n)
            .map(|index| Gpu {
                index,
                name: "NVIDIA H100".into(),
                uuid: format!("GPU-{index}"),
            })
            .collect()
    }

    #[test]
    fn parses_all_and_lists() {
        assert_eq!("all".parse(), Ok(GpuSelection::All));
        assert_eq!("2, 0".parse(), Ok(GpuSelection::List(vec![2, 0])));
        assert!("0,0".parse::<GpuSelection>().unwrap_err().contains("twice"));
        assert!("x"
            .parse::<GpuSelection>()
            .unwrap_err()
            .contains("comma-separated"));
        assert!("".parse::<GpuSelection>().is_err());
    }

    #[test]
    fn all_gives_one_worker_per_visible_gpu() {
        let p = place(&GpuSelection::All, &gpus(3), None).unwrap();
        let vis: Vec<&str> = p.iter().map(|x| x.visible_devices.as_str()).collect();
        assert_eq!(vis, ["0", "1", "2"]);
        assert!(p[1].label.contains("NVIDIA H100, GPU-1"), "{}", p[1].label);
    }

    #[test]
    fn lists_map_through_an_inherited_mask_and_unknown_gpus_are_named() {
        let p = place(&GpuSelection::List(vec![1]), &gpus(2), Some("5,7")).unwrap();
        assert_eq!(p[0].visible_devices, "7");
        let err = place(&GpuSelection::List(vec![0, 2]), &gpus(2), None).unwrap_err();
        assert_eq!(err, GpuError::NotVisible { index: 2, count: 2 });
        assert!(err.to_string().contains("GPU 2 is not visible"), "{err}");
    }

    #[test]
    fn no_gpu_means_the_cpu_fallback() {
        assert!(place(&GpuSelection::All, &[], None).unwrap().is_empty());
        assert!(place(&GpuSelection::List(vec![3]), &[], None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn reads_the_worker_inventory() {
        let out = "log line\n{\"cuda_devices\":1,\"gpus\":[{\"index\":0,\"name\":\"NVIDIA H200\",\"uuid\":\"GPU-ab\"}],\"cudnn\":true}\n";
        let g = parse_inventory(out).unwrap();
        assert_eq!(g[0].name, "NVIDIA H200");
        let g = parse_inventory("{\"cuda_devices\":2,\"gpus\":[]}").unwrap();
        assert_eq!(g.len(), 2);
        assert!(parse_inventory("{\"cuda_devices\":0}").unwrap().is_empty());
        assert!(parse_inventory("nothing").is_err());
    }
}
