//! The GPU-facing features on a machine without a GPU, through the real binaries: device
//! selection errors, `launch --gpus` falling back to CPU workers, the collective choice in
//! `run.json`, `--collective nccl` refused with CPU workers, bf16 autocast end to end, and
//! `ringtrain-worker devices`. What needs a GPU is in `gpu.rs` (feature `cuda-tests`).

use std::path::Path;
use std::time::Duration;

use ringtrain_tests::{read_json as json, ringtrain, run, synthetic_folder, Output};

fn has_gpu() -> bool {
    let out = run(
        "ringtrain-worker",
        &["devices", "--json"],
        "gpu-devices",
        &[],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.success(), "devices failed: {}", out.stderr);
    let inv: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    inv["cuda_devices"].as_u64().unwrap() > 0
}

fn launch(data: &Path, run_dir: &Path, extra: &[&str], log: &str) -> Output {
    let mut args = vec![
        "launch",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--workers",
        "2",
        "--threads-per-worker",
        "1",
        "--model",
        "basic",
        "--epochs",
        "3",
        "--batch-size",
        "24",
        "--max-lr",
        "0.05",
        "--heartbeat-interval-s",
        "0.5",
    ];
    args.extend_from_slice(extra);
    ringtrain(
        &args,
        &run_dir.with_extension("cache"),
        log,
        Duration::from_secs(600),
    )
}

#[test]
fn devices_reports_this_machine_and_nccl() {
    let out = run(
        "ringtrain-worker",
        &["devices"],
        "gpu-devices-text",
        &[],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.contains("CUDA devices: "), "{}", out.stdout);
    // Binaries built by `make build` find the torch wheel's NCCL through their run path.
    assert!(out.stdout.contains("NCCL: 2."), "{}", out.stdout);
    assert!(out.stdout.contains("--device auto: "), "{}", out.stdout);
}

#[test]
fn asking_for_cuda_without_a_gpu_is_a_clear_error_at_start() {
    if has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 2, 4).unwrap();
    let d = data.to_str().unwrap();
    for (args, log) in [
        (
            vec!["train", "--data", d, "--device", "cuda"],
            "gpu-train-cuda",
        ),
        // Joining: refused before any connection attempt (the coordinator does not exist).
        (
            vec![
                "--coordinator",
                "http://127.0.0.1:9",
                "--data",
                d,
                "--device",
                "cuda:1",
            ],
            "gpu-join-cuda",
        ),
    ] {
        let out = run("ringtrain-worker", &args, log, &[], Duration::from_secs(60)).unwrap();
        assert!(!out.success());
        assert!(
            out.stderr.contains("libtorch sees no CUDA device")
                && out.stderr.contains("--device cpu"),
            "{log}: {}",
            out.stderr
        );
    }
    let out = run(
        "ringtrain-worker",
        &["train", "--data", d, "--device", "tpu"],
        "gpu-bad-device",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        out.stderr.contains("expected auto, cpu, cuda or cuda:N"),
        "{}",
        out.stderr
    );
}

#[test]
fn gpus_falls_back_to_cpu_workers_and_bf16_changes_the_arithmetic() {
    if has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 3 classes × 48 images: 144 training images, 6 steps per epoch.
    synthetic_folder(&data, 3, 48).unwrap();

    let bf16 = tmp.path().join("bf16");
    let out = launch(
        &data,
        &bf16,
        &["--gpus", "all", "--precision", "bf16"],
        "gpu-fallback-bf16",
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("--gpus: no CUDA device visible")
            && out.stdout.contains("running 2 CPU worker(s) instead"),
        "{}",
        out.stdout
    );
    let info = json(&bf16.join("run.json"));
    assert_eq!(info["config"]["precision"], "bf16");
    assert_eq!(info["collective"], "ring");
    let reason = info["collective_reason"].as_str().unwrap();
    assert!(reason.contains("is on cpu"), "{reason}");
    assert_eq!(info["ranks"][0]["device"], "cpu");
    let log = std::fs::read_to_string(bf16.join("logs/worker-0.log")).unwrap();
    assert!(log.contains("precision=bf16"), "{log}");

    let fp32 = tmp.path().join("fp32");
    let out = launch(&data, &fp32, &[], "gpu-fp32");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let (a, b) = (
        json(&bf16.join("summary.json")),
        json(&fp32.join("summary.json")),
    );
    // Same seed, same data: only the forward arithmetic differs, so the weights must too.
    assert_ne!(
        a["params_hash"], b["params_hash"],
        "bf16 autocast changed nothing"
    );
    let (acc_bf16, acc_fp32) = (
        a["accuracy"].as_f64().unwrap(),
        b["accuracy"].as_f64().unwrap(),
    );
    assert!(
        acc_bf16 >= 0.9 && acc_bf16 >= acc_fp32 - 0.05,
        "bf16 {acc_bf16} vs fp32 {acc_fp32}"
    );
}

#[test]
fn forced_nccl_with_cpu_workers_fails_naming_the_worker() {
    if has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 3, 16).unwrap();
    let run_dir = tmp.path().join("run");
    let out = launch(
        &data,
        &run_dir,
        &["--collective", "nccl"],
        "gpu-forced-nccl",
    );
    assert!(!out.success());
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains(
            "--collective nccl needs every worker on CUDA, but worker local-000 is on cpu"
        ),
        "{all}"
    );
}
