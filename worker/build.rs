//! Makes `ringtrain-worker` find libtorch at run time without `LD_LIBRARY_PATH`.
//!
//! tch's own link arguments stay inside torch-sys and do not reach dependent binaries, so this
//! script emits them for every binary and test of this crate:
//! * `-Wl,-rpath,<libtorch lib>`: the loader finds libtorch*.so next to the wheel's torch.
//! * `-Wl,-rpath,$OUT_DIR/nccl`: holds `libnccl.so`, a link to the wheel's `libnccl.so.2`.
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
    // The NCCL shipped by the torch wheel is site-packages/nvidia/nccl/lib/libnccl.so.2, but
    // cudarc opens only `libnccl.so`: link that name to it in OUT_DIR and put the folder on the
    // run path, so binaries built here find NCCL without LD_LIBRARY_PATH.
    let nccl = std::path::Path::new(&lib).join("../../nvidia/nccl/lib/libnccl.so.2");
    if let (true, Ok(out)) = (nccl.is_file(), std::env::var("OUT_DIR")) {
        let dir = std::path::Path::new(&out).join("nccl");
        let link = dir.join("libnccl.so");
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&nccl, &link)
        });
        match made {
            Ok(()) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display()),
            Err(e) => println!("cargo:warning=cannot link {}: {e}", link.display()),
        }
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
