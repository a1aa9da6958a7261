//! Standalone training with the real `ringtrain-worker` binary: it learns real MNIST, is
//! deterministic, leaves a complete run folder, and reuses its decoded-image cache.

use std::path::Path;
use std::time::Duration;

use ringtrain_tests::{mnist_slice, run, synthetic_folder};

const LIMIT: Duration = Duration::from_secs(600);

fn train(
    data: &Path,
    run_dir: &Path,
    cache: &Path,
    extra: &[&str],
    log: &str,
) -> ringtrain_tests::Output {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    run(
        "ringtrain-worker",
        &args,
        log,
        &[("RUST_LOG", "info")],
        LIMIT,
    )
    .unwrap()
}

fn summary(run_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn learns_a_slice_of_real_mnist() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    mnist_slice(&data, 2_000, 500).unwrap();
    let run_dir = tmp.path().join("run");
    let out = train(
        &data,
        &run_dir,
        &tmp.path().join("cache"),
        &["--model", "resnet", "--epochs", "2"],
        "train-real-mnist",
    );
    assert!(out.success(), "stderr:\n{}", out.stderr);
    // The lesson's table, one row per epoch.
    assert!(
        out.stdout
            .contains("epoch      train_loss  valid_loss  accuracy   time"),
        "{}",
        out.stdout
    );
    let s = summary(&run_dir);
    let acc = s["final_accuracy"].as_f64().unwrap();
    // 2 epochs of 15 steps on 2,000 images; chance is 10%.
    assert!(
        acc > 0.5,
        "accuracy {acc} is not well above chance (measured: 0.754)"
    );
    assert_eq!(s["valid_images"], 500);
    assert_eq!(s["train_images"], 2_000);
    assert_eq!(s["steps"], 30);
    assert_eq!(s["params"], 41_132);

    // The run folder holds everything a user needs afterwards.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    let steps = std::fs::read_to_string(run_dir.join("steps.csv")).unwrap();
    assert_eq!(steps.lines().count(), 1 + 30);
    for plot in ["loss.png", "lr.png", "beta1.png", "accuracy.png"] {
        let bytes = std::fs::read(run_dir.join("plots").join(plot)).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((info.width, info.height), (800, 480), "{plot}");
        // Something was drawn in colour (a series), not only black text on white.
        assert!(
            rgb.chunks(3).any(|p| p[0] != p[1] || p[1] != p[2]),
            "{plot} has no series"
        );
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    let mean = record["normalize"]["mean"].as_f64().unwrap();
    let std = record["normalize"]["std"].as_f64().unwrap();
    // MNIST's well-known statistics (0.1307, 0.3081), computed here from a 2,000-image slice.
    assert!(
        (mean - 0.1307).abs() < 0.01 && (std - 0.3081).abs() < 0.01,
        "mean {mean} std {std}"
    );
    assert_eq!(record["classes"].as_array().unwrap().len(), 10);
    assert!(run_dir.join("final.safetensors").metadata().unwrap().len() > 41_132 * 4);
}

#[test]
fn same_seed_same_weights_other_seed_other_weights_and_cache_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synthetic");
    synthetic_folder(&data, 3, 40).unwrap();
    let cache = tmp.path().join("cache");
    let args = [
        "--model",
        "basic",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--max-lr",
        "0.01",
    ];
    let a = train(
        &data,
        &tmp.path().join("a"),
        &cache,
        &args,
        "train-determinism-a",
    );
    assert!(a.success(), "{}", a.stderr);
    assert!(
        a.stderr.contains("decoded images"),
        "first start decodes: {}",
        a.stderr
    );
    let b = train(
        &data,
        &tmp.path().join("b"),
        &cache,
        &args,
        "train-determinism-b",
    );
    assert!(b.success(), "{}", b.stderr);
    assert!(
        b.stderr.contains("loaded from cache"),
        "second start uses the cache: {}",
        b.stderr
    );
    let (sa, sb) = (
        summary(&tmp.path().join("a")),
        summary(&tmp.path().join("b")),
    );
    assert_eq!(sa["params_hash"], sb["params_hash"]);
    assert_eq!(sa["final_valid_loss"], sb["final_valid_loss"]);
    // The synthetic classes are trivially separable.
    assert!(sa["final_accuracy"].as_f64().unwrap() > 0.9, "{sa}");

    let mut other = args.to_vec();
    other.extend(["--seed", "7"]);
    let c = train(
        &data,
        &tmp.path().join("c"),
        &cache,
        &other,
        "train-determinism-c",
    );
    assert!(c.success(), "{}", c.stderr);
    assert_ne!(
        sa["params_hash"],
        summary(&tmp.path().join("c"))["params_hash"]
    );

    // A corrupt cache file is reported and replaced, not trusted.
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    }
    let d = train(
        &data,
        &tmp.path().join("d"),
        &cache,
        &args,
        "train-determinism-d",
    );
    assert!(d.success(), "{}", d.stderr);
    assert!(
        d.stderr.contains("ignoring decoded-image cache"),
        "{}",
        d.stderr
    );
    assert_eq!(
        summary(&tmp.path().join("d"))["params_hash"],
        sa["params_hash"]
    );
}

#[test]
fn summary_prints_the_layer_table() {
    for (model, total) in [
        ("resnet", "41,132"),
        ("basic", "12,126"),
        ("dense", "52,940"),
    ] {
        let out = run(
            "ringtrain-worker",
            &["summary", "--model", model],
            &format!("summary-{model}"),
            &[],
            LIMIT,
        )
        .unwrap();
        assert!(out.success(), "{}", out.stderr);
        assert!(out.stdout.contains("Layer (type)"), "{}", out.stdout);
        assert!(
            out.stdout.contains(&format!("Total params: {total}")),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn invalid_configuration_is_refused_with_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synthetic");
    synthetic_folder(&data, 2, 4).unwrap();
    let out = train(
        &data,
        &tmp.path().join("r"),
        &tmp.path().join("c"),
        &["--epochs", "0"],
        "train-bad-config",
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("epochs must be at least 1"),
        "{}",
        out.stderr
    );
    let out = train(
        &data,
        &tmp.path().join("r"),
        &tmp.path().join("c"),
        &["--batch-size", "64"],
        "train-batch-too-big",
    );
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("batch-size 64 is larger than the 8 training images"),
        "{}",
        out.stderr
    );
}
