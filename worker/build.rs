//! Makes `ringtrain-worker` find libtorch at run time without `LD_LIBRARY_PATH`.
//!
//! tch's own link arguments stay inside torch-sys and do not reach dependent binaries, so this
//! script emits them for every binary and test of this crate:
//! * `-Wl,-rpath,<libtorch lib>`: the loader finds libtorch*.so next to the wheel's torch.
//! * `-Wl,--no-as-needed -ltorch`: keeps `libtorch.so` (and through it `libtorch_cuda.so`) in the
//!   binary's NEEDED list. Without it the linker drops the unused library, libtorch_cuda is never
//!   loaded, and CUDA silently reports "unavailable" on GPU machines.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch folder; binaries will need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // The NCCL shipped by the torch wheel lives in site-packages/nvidia/nccl/lib (GPU issue).
    let nccl = std::path::Path::new(&lib).join("../../nvidia/nccl/lib");
    if nccl.is_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", nccl.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
