//! Which device a worker trains on: `--device auto|cpu|cuda|cuda:N`, and what this machine has.
//!
//! * `auto`: the first visible CUDA device when there is one, else the CPU.
//! * `cuda` means `cuda:0`. Asking for CUDA where libtorch sees none, or for an index past the
//!   last visible device, is [`DeviceError`] at start-up, naming the flag and what is visible.
//! * Device indices are relative to `CUDA_VISIBLE_DEVICES`, as in PyTorch (`launch --gpus`
//!   gives each worker one device this way, so every worker uses `cuda:0`).
//!
//! [`GpuInfo`] (name, UUID) comes from the CUDA driver API through cudarc, loaded at run time;
//! the UUID is how the coordinator sees that two ranks share one GPU, which NCCL refuses. What
//! `ringtrain-worker devices` prints is `inventory.rs`.
//!
//! Tests: `tests` at the bottom (parsing and resolution with any number of visible devices).

use std::fmt;
use std::str::FromStr;

use tch::Device;

/// The `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceRequest {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda` (= `cuda:0`) or `cuda:N`.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl From<DeviceRequest> for String {
    fn from(d: DeviceRequest) -> Self {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceRequest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {requested}: libtorch sees no CUDA device (no NVIDIA driver, \
         CUDA_VISIBLE_DEVICES hides them all, or the GPU is not usable); use --device cpu or auto"
    )]
    CudaUnavailable { requested: DeviceRequest },
    #[error(
        "--device {requested}: only {count} CUDA device(s) visible (cuda:0..cuda:{last}); \
         indices count from 0 within CUDA_VISIBLE_DEVICES",
        last = count.saturating_sub(1)
    )]
    NoSuchGpu {
        requested: DeviceRequest,
        count: usize,
    },
}

/// Resolves `--device` given how many CUDA devices libtorch sees.
pub fn resolve(requested: DeviceRequest, cuda_devices: usize) -> Result<Device, DeviceError> {
    match requested {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto if cuda_devices == 0 => Ok(Device::Cpu),
        DeviceRequest::Auto => Ok(Device::Cuda(0)),
        DeviceRequest::Cuda(_) if cuda_devices == 0 => {
            Err(DeviceError::CudaUnavailable { requested })
        }
        DeviceRequest::Cuda(n) if n >= cuda_devices => Err(DeviceError::NoSuchGpu {
            requested,
            count: cuda_devices,
        }),
        DeviceRequest::Cuda(n) => Ok(Device::Cuda(n)),
    }
}

/// How many CUDA devices libtorch sees (0 without a driver or with a CPU-only libtorch).
pub fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

/// Resolves `--device` on this machine.
pub fn select(requested: DeviceRequest) -> Result<Device, DeviceError> {
    resolve(requested, cuda_device_count())
}

/// `cpu`, `cuda:0`: the form used in logs, the protocol and the run folder.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// What the CUDA driver says about one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` prints it.
    pub uuid: String,
}

/// Formats a CUDA UUID the way `nvidia-smi` does.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// Name and UUID of visible CUDA device `index`, from the driver API; `None` when the driver
/// library (`libcuda.so`) is not loadable or the query fails.
pub fn gpu_info(index: usize) -> Option<GpuInfo> {
    use cudarc::driver::{result, sys};
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    result::init().ok()?;
    let dev = result::device::get(i32::try_from(index).ok()?).ok()?;
    let name = result::device::get_name(dev).ok()?;
    let uuid = result::device::get_uuid(dev).ok()?;
    let bytes: [u8; 16] = uuid.bytes.map(|b| b as u8);
    Some(GpuInfo {
        index,
        name,
        uuid: format_uuid(&bytes),
    })
}

/// Makes CUDA device `index` current on the calling thread (its primary context, the one
/// libtorch uses), so NCCL, which takes the device from the thread, uses the right GPU.
pub fn bind_thread(index: usize) -> Result<(), String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { sys::is_culib_present() } {
        return Err("the CUDA driver library libcuda.so cannot be loaded".into());
    }
    let fail = |what: &str, e: cudarc::driver::DriverError| format!("{what}: {e:?}");
    result::init().map_err(|e| fail("cuInit", e))?;
    let ordinal = i32::try_from(index).map_err(|e| e.to_string())?;
    let dev = result::device::get(ordinal).map_err(|e| fail("cuDeviceGet", e))?;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet; retaining the primary context
    // increments its reference count (never released: it lives as long as the process, like
    // libtorch's own), and making it current affects only this thread.
    unsafe {
        let ctx =
            result::primary_ctx::retain(dev).map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
        result::ctx::set_current(ctx).map_err(|e| fail("cuCtxSetCurrent", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_the_rest() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda(3)));
        for bad in ["cuda:", "cuda:-1", "cuda:x", "tpu", ""] {
            let err = bad.parse::<DeviceRequest>().unwrap_err();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
        assert_eq!(DeviceRequest::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn auto_picks_cuda_only_when_there_is_one() {
        assert_eq!(resolve(DeviceRequest::Auto, 0), Ok(Device::Cpu));
        assert_eq!(resolve(DeviceRequest::Auto, 2), Ok(Device::Cuda(0)));
        assert_eq!(resolve(DeviceRequest::Cpu, 8), Ok(Device::Cpu));
    }

    #[test]
    fn cuda_without_a_gpu_or_past_the_last_one_is_a_clear_error() {
        let err = resolve(DeviceRequest::Cuda(0), 0).unwrap_err();
        assert!(err.to_string().contains("--device cuda:0"), "{err}");
        assert!(err.to_string().contains("use --device cpu"), "{err}");
        assert_eq!(resolve(DeviceRequest::Cuda(1), 2), Ok(Device::Cuda(1)));
        let err = resolve(DeviceRequest::Cuda(2), 2).unwrap_err();
        assert_eq!(
            err,
            DeviceError::NoSuchGpu {
                requested: DeviceRequest::Cuda(2),
                count: 2
            }
        );
        assert!(err.to_string().contains("cuda:0..cuda:1"), "{err}");
    }

    #[test]
    fn this_machine_resolves_auto_consistently() {
        // Whatever this machine has, auto never fails and cpu is always cpu.
        let count = cuda_device_count();
        let auto = select(DeviceRequest::Auto).expect("auto always resolves");
        assert_eq!(auto == Device::Cpu, count == 0);
        assert_eq!(name(Device::Cpu), "cpu");
        assert_eq!(name(Device::Cuda(1)), "cuda:1");
    }

    #[test]
    fn uuid_is_formatted_like_nvidia_smi() {
        let b: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(format_uuid(&b), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }
}
