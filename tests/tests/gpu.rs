//! Tests that need a CUDA GPU (feature `cuda-tests`; CI has none). Run them on a GPU machine
//! with `cargo test --release -p ringtrain-tests --features cuda-tests --test gpu`, or carry the
//! test binary there: `scripts/gpu-check.sh` runs it when it sits next to the binaries.
//!
//! * NCCL with world size 1 (`launch --gpus 0`): the round's collective is NCCL, the data is
//!   on the GPU, the run learns.
//! * Two workers on one GPU: `auto` picks the host-staged ring (NCCL refuses two ranks on a
//!   device), and the replicas agree bit for bit.
//! * `--collective nccl` with two workers on one GPU is refused naming them.
#![cfg(feature = "cuda-tests")]

use std::path::Path;
use std::time::Duration;

use ringtrain_tests::{read_json as json, run, synthetic_folder, Output};

fn launch(data: &Path, run_dir: &Path, extra: &[&str], envs: &[(&str, &str)], log: &str) -> Output {
    let mut args = vec![
        "launch",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--model",
        "resnet",
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
    run("ringtrain", &args, log, envs, Duration::from_secs(600)).unwrap()
}

fn dataset(tmp: &Path) -> std::path::PathBuf {
    let data = tmp.join("data");
    synthetic_folder(&data, 3, 48).unwrap();
    data
}

#[test]
fn one_gpu_worker_trains_over_nccl() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let run_dir = tmp.path().join("nccl1");
    let out = launch(&data, &run_dir, &["--gpus", "0"], &[], "cuda-nccl-1");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let info = json(&run_dir.join("run.json"));
    assert_eq!(info["collective"], "nccl", "{info}");
    assert!(
        info["ranks"][0]["device"]
            .as_str()
            .unwrap()
            .starts_with("cuda"),
        "{info}"
    );
    let log = std::fs::read_to_string(run_dir.join("logs/worker-0.log")).unwrap();
    assert!(log.contains("NCCL communicator ready"), "{log}");
    assert!(
        json(&run_dir.join("summary.json"))["accuracy"]
            .as_f64()
            .unwrap()
            > 0.9
    );
}

#[test]
fn two_workers_on_one_gpu_share_it_over_the_staged_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let run_dir = tmp.path().join("ring2");
    let env = [("RINGTRAIN_DEVICE", "cuda:0")];
    let out = launch(&data, &run_dir, &["--workers", "2"], &env, "cuda-ring-2");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let info = json(&run_dir.join("run.json"));
    assert_eq!(info["collective"], "ring", "{info}");
    assert!(
        info["collective_reason"]
            .as_str()
            .unwrap()
            .contains("share GPU-"),
        "{info}"
    );
    let summary = json(&run_dir.join("summary.json"));
    let hashes = summary["rank_hashes"].as_array().unwrap();
    assert!(hashes.iter().all(|h| h == &hashes[0]), "{hashes:?}");

    let forced = tmp.path().join("forced");
    let out = launch(
        &data,
        &forced,
        &["--workers", "2", "--collective", "nccl"],
        &env,
        "cuda-forced",
    );
    assert!(!out.success());
    assert!(format!("{}{}", out.stdout, out.stderr).contains("cannot put two ranks on one GPU"));
}

#[test]
fn standalone_cuda_and_bf16_train() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    for precision in ["fp32", "bf16"] {
        let run_dir = tmp.path().join(precision);
        let args = [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--device",
            "cuda",
            "--precision",
            precision,
            "--epochs",
            "3",
            "--batch-size",
            "24",
        ];
        let out = run(
            "ringtrain-worker",
            &args,
            &format!("cuda-train-{precision}"),
            &[],
            Duration::from_secs(300),
        )
        .unwrap();
        assert!(out.success(), "{}", out.stderr);
        let info = json(&run_dir.join("run.json"));
        assert_eq!(info["device"], "cuda:0");
        assert!(
            json(&run_dir.join("summary.json"))["final_accuracy"]
                .as_f64()
                .unwrap()
                > 0.9
        );
    }
}
