//! The job every recovery test runs (2 workers, ResNet-ish, 6 epochs on 480 synthetic images)
//! and what they check it with: every variant must end with the parameters of the undisturbed
//! run, or (fewer workers) near its accuracy.

// Compiled into each test binary that declares `mod recovery;`; each uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ringtrain_tests::{read_json, ringtrain, synthetic_folder, Output};

pub const EPOCHS: u64 = 6;

/// The run's arithmetic: identical in every test, so every run must end with the same hash.
pub fn run_args(data: &Path, run_dir: &Path) -> Vec<String> {
    [
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--workers",
        "2",
        "--model",
        "resnet",
        "--epochs",
        &EPOCHS.to_string(),
        "--batch-size",
        "24",
        "--max-lr",
        "0.02",
        "--heartbeat-interval-s",
        "0.5",
        "--collective-timeout-s",
        "20",
        "--checkpoint-keep",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

/// 3 classes × 160: 480 training images, 20 steps of 24 per epoch.
pub fn dataset(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    synthetic_folder(&data, 3, 160).unwrap();
    data
}

/// `ringtrain launch` with one thread per worker, `args` and `extra`, to completion.
pub fn launch(args: &[String], extra: &[&str], log: &str, cache: &Path) -> Output {
    let mut all: Vec<&str> = vec!["launch", "--threads-per-worker", "1"];
    all.extend(args.iter().map(String::as_str));
    all.extend_from_slice(extra);
    ringtrain(&all, cache, log, Duration::from_secs(600))
}

pub fn summary(run_dir: &Path) -> serde_json::Value {
    read_json(&run_dir.join("summary.json"))
}

/// The parameter hash of a finished run.
pub fn final_hash(run_dir: &Path) -> String {
    let s = summary(run_dir);
    assert_eq!(s["status"], "finished", "{s}");
    s["params_hash"].as_str().unwrap().to_string()
}

/// Checkpoint folder names, oldest first.
pub fn checkpoints(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('e'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until the run folder holds a checkpoint of epoch >= `epoch` (`epoch` epochs done).
pub fn wait_for_checkpoint(run_dir: &Path, epoch: u32, child: &mut Child, logs: &Path) {
    let started = Instant::now();
    let want = format!("e{epoch:04}");
    while !checkpoints(run_dir)
        .iter()
        .any(|n| n.as_str() >= want.as_str())
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before checkpoint {want}; see {}",
            logs.display()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint {want}; see {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reference: the same job, undisturbed, in `tmp/reference`; returns its final hash.
pub fn undisturbed(tmp: &Path, data: &Path) -> String {
    undisturbed_with(tmp, data, &[], "reference")
}

/// [`undisturbed`] with `extra` flags, in `tmp/<name>`.
pub fn undisturbed_with(tmp: &Path, data: &Path, extra: &[&str], name: &str) -> String {
    let run_dir = tmp.join(name);
    let out = launch(
        &run_args(data, &run_dir),
        extra,
        &format!("recovery-{name}"),
        &tmp.join("cache"),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    // One checkpoint per epoch, the newest `--checkpoint-keep` kept plus the best.
    let kept = checkpoints(&run_dir);
    assert!((2..=3).contains(&kept.len()), "{kept:?}");
    assert!(run_dir.join("best/MANIFEST.json").exists());
    assert!(run_dir.join("latest/model.safetensors").exists());
    final_hash(&run_dir)
}

/// Steps per epoch of the job (480 images, global batch 24).
pub const STEPS_PER_EPOCH: u64 = 20;

/// True for the name of a checkpoint taken inside an epoch (`e<epoch>-s<step>`, step not at
/// the epoch's start).
pub fn is_mid_epoch(name: &str) -> bool {
    let parse = || -> Option<(u64, u64)> {
        let (e, s) = name.strip_prefix('e')?.split_once("-s")?;
        Some((e.parse().ok()?, s.parse().ok()?))
    };
    parse().is_some_and(|(e, s)| s != e * STEPS_PER_EPOCH)
}

/// The trainable parameters in a safetensors file (name → bytes), BatchNorm running
/// statistics left out: a stop checkpoint averages those across ranks at a step the undisturbed
/// run did not, which changes their rounding but never the parameters.
pub fn parameters(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out: Vec<(String, Vec<u8>)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            !(k.starts_with("__") || k.contains("running_") || k.contains("num_batches"))
        })
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            (k.clone(), data[a..b].to_vec())
        })
        .collect();
    out.sort();
    assert!(out.len() > 10, "{}: too few tensors", path.display());
    out
}
