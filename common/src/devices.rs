//! Devices, collectives and precision as both sides of a run name them, and the one rule that
//! picks the collective of a round from the devices its workers joined with.
//!
//! # The rule (`--collective`)
//! * `ring`: the TCP ring, always possible (CUDA workers stage their gradients through host
//!   memory, which is also how several workers share one GPU).
//! * `nccl`: every worker must be on CUDA, and no two on the same GPU (NCCL refuses two ranks on
//!   one device; GPUs are compared by UUID, so `CUDA_VISIBLE_DEVICES` renumbering is no
//!   obstacle). Anything else is a [`ChoiceError`] naming the workers.
//! * `auto` (default): `nccl` when `nccl` would be accepted, `ring` otherwise; the reason is
//!   logged and recorded in `run.json`.
//!
//! Tests: `tests` at the bottom.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The `--collective` knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectiveChoice {
    #[default]
    Auto,
    Nccl,
    Ring,
}

/// The collective a round uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectiveKind {
    Nccl,
    Ring,
}

/// Arithmetic of the forward pass (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the lesson's default).
    #[default]
    Fp32,
    /// bf16 autocast for the forward pass; f32 weights, gradients, loss and optimiser.
    Bf16,
}

fn unknown(what: &str, got: &str, expected: &str) -> String {
    format!("unknown {what} {got:?}: expected {expected}")
}

impl FromStr for CollectiveChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "nccl" => Ok(Self::Nccl),
            "ring" => Ok(Self::Ring),
            other => Err(unknown("collective", other, "auto, nccl or ring")),
        }
    }
}

impl FromStr for CollectiveKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nccl" => Ok(Self::Nccl),
            // Empty: a coordinator that predates the field, which only knew the ring.
            "ring" | "" => Ok(Self::Ring),
            other => Err(unknown("collective", other, "nccl or ring")),
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(unknown("precision", other, "fp32 or bf16")),
        }
    }
}

impl fmt::Display for CollectiveChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Nccl => "nccl",
            Self::Ring => "ring",
        })
    }
}

impl fmt::Display for CollectiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nccl => "nccl",
            Self::Ring => "ring",
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        })
    }
}

/// The device a worker joined with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDevice {
    pub worker_id: String,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// The GPU's UUID (`GPU-...`), empty on CPU or when the driver could not be asked.
    pub uuid: String,
}

impl WorkerDevice {
    fn is_cuda(&self) -> bool {
        self.device.starts_with("cuda")
    }
}

/// Why `--collective nccl` cannot be used for a round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error(
        "--collective nccl needs every worker on CUDA, but worker {worker_id} is on {device}; \
         use --collective ring or auto"
    )]
    NotCuda { worker_id: String, device: String },
    #[error(
        "--collective nccl cannot put two ranks on one GPU, but workers {first} and {second} \
         share {uuid}; use --collective ring (host-staged) or one worker per GPU"
    )]
    SharedGpu {
        first: String,
        second: String,
        uuid: String,
    },
}

/// Why NCCL does not fit these devices, if it does not.
fn nccl_obstacle(devices: &[WorkerDevice]) -> Option<ChoiceError> {
    if let Some(d) = devices.iter().find(|d| !d.is_cuda()) {
        return Some(ChoiceError::NotCuda {
            worker_id: d.worker_id.clone(),
            device: d.device.clone(),
        });
    }
    for (i, a) in devices.iter().enumerate() {
        if a.uuid.is_empty() {
            continue;
        }
        if let Some(b) = devices[i + 1..].iter().find(|b| b.uuid == a.uuid) {
            return Some(ChoiceError::SharedGpu {
                first: a.worker_id.clone(),
                second: b.worker_id.clone(),
                uuid: a.uuid.clone(),
            });
        }
    }
    None
}

/// The collective for a round of workers on `devices`, with a one-line reason.
pub fn choose(
    choice: CollectiveChoice,
    devices: &[WorkerDevice],
) -> Result<(CollectiveKind, String), ChoiceError> {
    let n = devices.len();
    match (choice, nccl_obstacle(devices)) {
        (CollectiveChoice::Ring, _) => Ok((CollectiveKind::Ring, "--collective ring".into())),
        (CollectiveChoice::Nccl, Some(e)) => Err(e),
        (CollectiveChoice::Nccl, None) => Ok((CollectiveKind::Nccl, "--collective nccl".into())),
        (CollectiveChoice::Auto, None) => Ok((
            CollectiveKind::Nccl,
            format!("auto: all {n} worker(s) on distinct CUDA devices"),
        )),
        (CollectiveChoice::Auto, Some(e)) => Ok((
            CollectiveKind::Ring,
            format!(
                "auto: {}",
                match e {
                    ChoiceError::NotCuda { worker_id, device } =>
                        format!("worker {worker_id} is on {device}"),
                    ChoiceError::SharedGpu {
                        first,
                        second,
                        uuid,
                    } => format!("workers {first} and {second} share {uuid}"),
                }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, device: &str, uuid: &str) -> WorkerDevice {
        WorkerDevice {
            worker_id: id.into(),
            device: device.into(),
            uuid: uuid.into(),
        }
    }

    #[test]
    fn auto_takes_nccl_only_for_distinct_gpus() {
        let gpus = [dev("a", "cuda:0", "GPU-1"), dev("b", "cuda:0", "GPU-2")];
        let (kind, why) = choose(CollectiveChoice::Auto, &gpus).unwrap();
        assert_eq!(kind, CollectiveKind::Nccl);
        assert!(why.contains("all 2 worker(s)"), "{why}");

        let mixed = [dev("a", "cuda:0", "GPU-1"), dev("b", "cpu", "")];
        let (kind, why) = choose(CollectiveChoice::Auto, &mixed).unwrap();
        assert_eq!(kind, CollectiveKind::Ring);
        assert!(why.contains("worker b is on cpu"), "{why}");

        let shared = [dev("a", "cuda:0", "GPU-1"), dev("b", "cuda:0", "GPU-1")];
        let (kind, why) = choose(CollectiveChoice::Auto, &shared).unwrap();
        assert_eq!(kind, CollectiveKind::Ring);
        assert!(why.contains("share GPU-1"), "{why}");

        let one = [dev("a", "cuda:0", "GPU-1")];
        assert_eq!(
            choose(CollectiveChoice::Auto, &one).unwrap().0,
            CollectiveKind::Nccl
        );
        let cpus = [dev("a", "cpu", ""), dev("b", "cpu", "")];
        assert_eq!(
            choose(CollectiveChoice::Auto, &cpus).unwrap().0,
            CollectiveKind::Ring
        );
    }

    #[test]
    fn forced_nccl_names_the_worker_that_breaks_it() {
        let mixed = [dev("w0", "cuda:0", "GPU-1"), dev("w1", "cpu", "")];
        let err = choose(CollectiveChoice::Nccl, &mixed).unwrap_err();
        assert_eq!(
            err,
            ChoiceError::NotCuda {
                worker_id: "w1".into(),
                device: "cpu".into()
            }
        );
        assert!(err.to_string().contains("use --collective ring"), "{err}");

        let shared = [
            dev("w0", "cuda:0", "GPU-9"),
            dev("w1", "cuda:0", "GPU-8"),
            dev("w2", "cuda:1", "GPU-9"),
        ];
        let err = choose(CollectiveChoice::Nccl, &shared).unwrap_err();
        assert!(
            err.to_string().contains("workers w0 and w2 share GPU-9"),
            "{err}"
        );
    }

    #[test]
    fn ring_is_always_possible_and_unknown_uuids_count_as_distinct() {
        let shared = [dev("a", "cuda:0", "GPU-1"), dev("b", "cuda:0", "GPU-1")];
        assert_eq!(
            choose(CollectiveChoice::Ring, &shared).unwrap().0,
            CollectiveKind::Ring
        );
        let unknown = [dev("a", "cuda:0", ""), dev("b", "cuda:0", "")];
        assert_eq!(
            choose(CollectiveChoice::Nccl, &unknown).unwrap().0,
            CollectiveKind::Nccl
        );
    }

    #[test]
    fn names_round_trip_and_bad_ones_are_explained() {
        for c in [
            CollectiveChoice::Auto,
            CollectiveChoice::Nccl,
            CollectiveChoice::Ring,
        ] {
            assert_eq!(c.to_string().parse::<CollectiveChoice>(), Ok(c));
        }
        for p in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert_eq!("".parse::<CollectiveKind>(), Ok(CollectiveKind::Ring));
        assert!("mpi"
            .parse::<CollectiveChoice>()
            .unwrap_err()
            .contains("auto, nccl or ring"));
        assert!("fp16"
            .parse::<Precision>()
            .unwrap_err()
            .contains("fp32 or bf16"));
    }
}
