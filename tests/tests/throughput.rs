//! Images/s with the real binaries (issue 17): checkpoints inside epochs do not change the
//! training throughput a run reports, in `metrics.jsonl`, `summary.json` and its last line.
//!
//! Before the fix, `launch --checkpoint-every-steps 100` on MNIST reported 690 train images/s
//! for epochs that trained at about 10,000: each epoch counted only the steps after its last
//! checkpoint. Speeds are not timed assertions in this project; the comparison below is a
//! ratio between runs measured in the same test, because the issue asks for exactly that.

use std::path::Path;
use std::time::Duration;

use ringtrain_tests::{read_json, ringtrain, synthetic_folder, Output};

/// 10 classes × 1,200: 12,000 training images; global batch 128 = 93 steps per epoch.
const CLASSES: usize = 10;
const PER_CLASS: usize = 1_200;
const BATCH: u64 = 128;
const STEPS: u64 = (CLASSES * PER_CLASS) as u64 / BATCH;
const EPOCHS: usize = 3;

fn launch(data: &Path, run_dir: &Path, extra: &[&str], log: &str) -> Output {
    let epochs = EPOCHS.to_string();
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
        // The ResNet-ish: epochs of a second or more here, long enough to time.
        "--model",
        "resnet",
        "--epochs",
        &epochs,
        "--batch-size",
        "128",
        "--max-lr",
        "0.05",
        "--heartbeat-interval-s",
        "0.5",
        "--checkpoint-keep",
        "1000",
    ];
    args.extend_from_slice(extra);
    let out = ringtrain(
        &args,
        &run_dir.with_extension("cache"),
        log,
        Duration::from_secs(600),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    out
}

/// The run's images/s, checked against its own numbers: every epoch row counts all the images
/// of the epoch over its training seconds, and is at least the epoch's wall-clock rate (its
/// `seconds` also hold validation and checkpoints); `summary.json` is the run's images over
/// the sum of those seconds, and the last line prints it. Returns every epoch's images/s.
fn images_per_s(run_dir: &Path, out: &Output) -> Vec<f64> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), EPOCHS, "{text}");
    let images = (STEPS * BATCH) as f64;
    let mut train_seconds = 0.0;
    let mut rates = Vec::new();
    for r in &rows {
        let rate = r["train_images_per_s"].as_f64().unwrap();
        let secs = r["train_seconds"].as_f64().unwrap();
        let wall = r["seconds"].as_f64().unwrap();
        assert!(
            (rate * secs / images - 1.0).abs() < 1e-6,
            "epoch {}: {rate} images/s × {secs} s is not the epoch's {images} images",
            r["epoch"]
        );
        assert!(
            secs > 0.0 && secs <= wall * 1.01,
            "epoch {}: {secs} s of training in {wall} s of epoch",
            r["epoch"]
        );
        train_seconds += secs;
        rates.push(rate);
    }
    let s = read_json(&run_dir.join("summary.json"));
    let run_rate = s["train_images_per_s"].as_f64().unwrap();
    let want = images * EPOCHS as f64 / train_seconds;
    assert!(
        (run_rate / want - 1.0).abs() < 1e-6,
        "summary {run_rate}, rows {want}"
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("| {run_rate:.0} train images/s |")),
        "{last}"
    );
    rates
}

#[test]
fn checkpoints_inside_epochs_leave_images_per_s_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, CLASSES, PER_CLASS).unwrap();
    // 50 validation images per class: validation then takes a small part of an epoch's wall
    // time, which the comparison below leaves no room for.
    for c in 0..CLASSES {
        for i in 50..PER_CLASS {
            let f = data.join(format!("testing/c{c}/{i:04}.png"));
            std::fs::remove_file(&f).unwrap();
        }
    }
    // A checkpoint every 20 global steps: 4 or 5 inside each 93-step epoch.
    let dir = tmp.path().join("checkpointed");
    let out = launch(
        &data,
        &dir,
        &["--checkpoint-every-steps", "20"],
        "throughput-checkpointed",
    );
    let inside: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            // `e<epoch>-s<global step>`: inside an epoch unless the step ends one.
            n.rsplit_once("-s")
                .and_then(|(_, s)| s.parse::<u64>().ok())
                .is_some_and(|s| s % STEPS != 0)
        })
        .collect();
    // Every 20th global step of the 279 that ends no epoch: 20, 40, ..., 260.
    assert_eq!(inside.len(), 13, "checkpoints inside epochs: {inside:?}");
    let with = images_per_s(&dir, &out);
    // Against the epoch's own wall clock (its images over its seconds at the coordinator,
    // validation and checkpoints included), measured over the same seconds, so a neighbour
    // loading the machine slows both alike. Unloaded, the two are 4-7% apart here (the 4-5
    // checkpoints and validation); with other end-to-end tests running beside it, up to 14%
    // (writing checkpoints suffers more), hence 1.5. The bug counted 5 to 13 of the 93 steps:
    // 0.06-0.14 of the wall-clock rate.
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    for (line, rate) in text.lines().zip(&with) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let wall = (STEPS * BATCH) as f64 / r["seconds"].as_f64().unwrap();
        assert!(
            (0.99 * wall..=1.5 * wall).contains(rate),
            "epoch {}: {rate} images/s reported, {wall} by the epoch's wall clock",
            r["epoch"]
        );
    }
    // And against the same run without checkpoints. Two separate runs on a loaded 2-core
    // machine differ by far more than 10% (measured here while other end-to-end tests ran:
    // epochs of the same run at 7,000 and 13,000 images/s), so this margin is generous on
    // purpose: it only has to catch a miscount like the bug's factor of 7 to 19. The fastest
    // epoch of each run is compared, the one least disturbed.
    let dir = tmp.path().join("plain");
    let out = launch(&data, &dir, &[], "throughput-plain");
    let without = images_per_s(&dir, &out);
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let ratio = best(&with) / best(&without);
    assert!(
        (0.75..=1.33).contains(&ratio),
        "with checkpoints {with:?} images/s, without {without:?}: ratio {ratio:.3}"
    );
}
