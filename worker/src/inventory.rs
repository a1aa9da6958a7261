//! `ringtrain-worker devices`: the machine as this binary sees it (CUDA devices and their
//! UUIDs, cuDNN, NCCL, what `--device auto` picks, CPU threads).
//!
//! Owns the probe and its lines; device selection is `device.rs` and the NCCL library check is
//! `collective::nccl`, both of which this module only calls (neither imports it back).

use tch::Device;

use crate::device::{cuda_device_count, gpu_info, name, resolve, DeviceRequest, GpuInfo};

/// What `ringtrain-worker devices` reports: the machine as this binary sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inventory {
    /// CUDA devices libtorch sees (within `CUDA_VISIBLE_DEVICES`).
    pub cuda_devices: usize,
    pub gpus: Vec<GpuInfo>,
    pub cudnn: bool,
    /// NCCL's version (e.g. 22805), or why it cannot be loaded.
    pub nccl_version: Option<i32>,
    pub nccl_error: Option<String>,
    /// `--device auto` resolves to this.
    pub auto_device: String,
    pub torch_threads: i32,
}

impl Inventory {
    /// Probes this machine (never fails: what is missing is reported).
    pub fn probe() -> Self {
        let cuda_devices = cuda_device_count();
        let (nccl_version, nccl_error) = match crate::collective::nccl::check_library() {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            cuda_devices,
            gpus: (0..cuda_devices).filter_map(gpu_info).collect(),
            cudnn: tch::Cuda::cudnn_is_available(),
            nccl_version,
            nccl_error,
            auto_device: name(resolve(DeviceRequest::Auto, cuda_devices).unwrap_or(Device::Cpu)),
            torch_threads: tch::get_num_threads(),
        }
    }

    /// Human-readable lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "CUDA devices: {}{}",
            self.cuda_devices,
            if self.cuda_devices == 0 {
                " (training runs on the CPU)"
            } else {
                ""
            }
        )];
        for g in &self.gpus {
            out.push(format!("  cuda:{} {} {}", g.index, g.name, g.uuid));
        }
        out.push(format!("cuDNN: {}", if self.cudnn { "yes" } else { "no" }));
        out.push(match (self.nccl_version, &self.nccl_error) {
            (Some(v), _) => format!("NCCL: {}.{}.{}", v / 10000, (v / 100) % 100, v % 100),
            (None, Some(e)) => format!("NCCL: unavailable: {e}"),
            (None, None) => "NCCL: unavailable".into(),
        });
        out.push(format!("--device auto: {}", self.auto_device));
        out.push(format!("CPU threads: {}", self.torch_threads));
        out
    }
}
