//! Compiles `proto/ringtrain/v1/*.proto` with a vendored `protoc`, so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-ish: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("..")
        .join("proto");
    // The folder too: adding a .proto file must re-run this script.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("ringtrain/v1").display()
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("ringtrain/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
