//! Mixed precision: bf16 autocast around the forward pass (`--precision bf16`).
//!
//! Like `torch.autocast(device_type, dtype=torch.bfloat16)`: inside the region, convolutions
//! and matrix products run in bf16 while parameters, gradients, BatchNorm statistics, the loss
//! (autocast runs it in f32) and Adam stay f32. bf16 has f32's exponent range, so unlike fp16 it
//! needs no loss scaling. The backward runs outside the region, as PyTorch recommends.
//!
//! tch exposes only the CUDA autocast switch with its default dtype (fp16), so this module
//! calls libtorch's own `at::autocast::{set_autocast_enabled, set_autocast_dtype}` with an
//! explicit device type, which also gives CPU autocast (bf16 by default there).
//!
//! Tests: `tests` at the bottom (a convolution runs in bf16 inside the region, f32 after it).

use std::ffi::c_void;
use std::path::PathBuf;

use tch::Device;

pub use ringtrain_common::devices::Precision;

// c10::DeviceType and c10::ScalarType are `enum class : int8_t`; the values are libtorch's.
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
const SCALAR_BFLOAT16: i8 = 15;

extern "C" {
    // at::autocast::set_autocast_enabled(c10::DeviceType, bool)
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device_type: i8, enabled: bool);
    // at::autocast::is_autocast_enabled(c10::DeviceType)
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device_type: i8) -> bool;
    // at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType)
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
}

fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => DEVICE_CUDA,
        _ => DEVICE_CPU,
    }
}

/// Runs `f` (a forward pass) with `precision` on `device`'s autocast.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    if precision == Precision::Fp32 {
        return f();
    }
    let dt = device_type(device);
    // SAFETY: these libtorch functions only read and write thread-local autocast state; the
    // arguments are valid enum values of libtorch's DeviceType and ScalarType.
    let was = unsafe {
        let was = at_is_autocast_enabled(dt);
        at_set_autocast_dtype(dt, SCALAR_BFLOAT16);
        at_set_autocast_enabled(dt, true);
        torch_sys::at_autocast_increment_nesting();
        was
    };
    let out = f();
    // SAFETY: as above; clearing the cast cache when the outermost region ends is what
    // torch.autocast's __exit__ does.
    unsafe {
        if torch_sys::at_autocast_decrement_nesting() == 0 {
            torch_sys::at_autocast_clear_cache();
        }
        at_set_autocast_enabled(dt, was);
    }
    out
}

/// The folder of the loaded `libtorch_cpu.so` (where the wheel's other libraries are found
/// relative to), from the dynamic loader.
pub fn libtorch_dir() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let addr = at_is_autocast_enabled as *const c_void;
    // SAFETY: dladdr only inspects the loader's tables; `info` is a valid out-pointer and its
    // file name string is owned by the loader for as long as the library stays loaded.
    let path = unsafe {
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned()
    };
    PathBuf::from(path).parent().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn bf16_region_runs_convolutions_in_bf16_and_restores_f32() {
        let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 1, 3, 3], (Kind::Float, Device::Cpu));
        let conv = || x.conv2d::<Tensor>(&w, None, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(conv().kind(), Kind::Float);
        assert_eq!(
            autocast(Precision::Bf16, Device::Cpu, conv).kind(),
            Kind::BFloat16
        );
        assert_eq!(
            autocast(Precision::Fp32, Device::Cpu, conv).kind(),
            Kind::Float
        );
        // The region ended: back to f32, and autocast off again.
        assert_eq!(conv().kind(), Kind::Float);
        assert!(!unsafe { at_is_autocast_enabled(DEVICE_CPU) });
    }

    #[test]
    fn finds_the_loaded_libtorch() {
        let dir = libtorch_dir().expect("libtorch is loaded");
        assert!(dir.join("libtorch_cpu.so").is_file(), "{}", dir.display());
    }
}
