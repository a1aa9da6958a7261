//! Bad datasets through the real `ringtrain-worker` binary: each case is a clear error naming
//! the path (non-zero exit), or, with `--skip-bad` where that makes sense, skipped and counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringtrain_tests::{run, synthetic_folder, write_png, Output};

fn train(data: &Path, tmp: &Path, extra: &[&str], log: &str) -> Output {
    let run_dir = tmp.join("run");
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--no-cache",
        "--model",
        "basic",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    run(
        "ringtrain-worker",
        &args,
        log,
        &[],
        Duration::from_secs(300),
    )
    .unwrap()
}

fn dataset() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_folder(&data, 3, 6).unwrap();
    (tmp, data)
}

/// Fails without --skip-bad naming `bad`; with it, trains on one image fewer and says so.
fn fails_then_skips(data: &Path, tmp: &Path, bad: &Path, log: &str, what: &str) {
    let out = train(data, tmp, &[], &format!("{log}-strict"));
    assert!(!out.success(), "{log}: must fail");
    assert!(
        out.stderr.contains(&bad.display().to_string()),
        "{log}: error must name {}:\n{}",
        bad.display(),
        out.stderr
    );
    assert!(
        out.stderr.contains(what),
        "{log}: error must say '{what}':\n{}",
        out.stderr
    );
    let out = train(data, tmp, &["--skip-bad"], &format!("{log}-skip"));
    assert!(out.success(), "{log} with --skip-bad:\n{}", out.stderr);
    assert!(out.stderr.contains("skipped 1 bad file"), "{}", out.stderr);
    let record = std::fs::read_to_string(tmp.join("run/run.json")).unwrap();
    assert!(
        record.contains(&bad.display().to_string()),
        "run.json lists the skipped file"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("run/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["skipped"], 1);
}

#[test]
fn corrupt_png() {
    let (tmp, data) = dataset();
    let bad = data.join("training/c1/0003.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    fails_then_skips(&data, tmp.path(), &bad, "bad-corrupt", "cannot decode");
}

#[test]
fn truncated_png() {
    let (tmp, data) = dataset();
    let bad = data.join("testing/c2/0001.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 20]).unwrap();
    fails_then_skips(&data, tmp.path(), &bad, "bad-truncated", "cannot decode");
}

#[test]
fn wrong_size() {
    let (tmp, data) = dataset();
    let bad = data.join("training/c0/0002.png");
    write_png(&bad, 32, 28, &[7; 32 * 28]).unwrap();
    fails_then_skips(
        &data,
        tmp.path(),
        &bad,
        "bad-size",
        "is 32x28 pixels, expected 28x28",
    );
}

#[test]
fn non_image_file() {
    let (tmp, data) = dataset();
    let bad = data.join("training/c2/notes.txt");
    std::fs::write(&bad, "hello").unwrap();
    fails_then_skips(
        &data,
        tmp.path(),
        &bad,
        "bad-non-image",
        "is not an image file (.png, .jpg, .jpeg or .webp)",
    );
}

/// Structural problems are errors even with --skip-bad.
fn always_fails(data: &Path, tmp: &Path, names: &Path, what: &str, log: &str) {
    for extra in [&[][..], &["--skip-bad"][..]] {
        let out = train(data, tmp, extra, log);
        assert!(!out.success(), "{log} {extra:?} must fail");
        assert!(
            out.stderr.contains(&names.display().to_string()),
            "{log}: must name {}:\n{}",
            names.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains(what),
            "{log}: must say '{what}':\n{}",
            out.stderr
        );
    }
}

#[test]
fn empty_class_folder() {
    let (tmp, data) = dataset();
    let empty = data.join("training/c9");
    std::fs::create_dir_all(&empty).unwrap();
    always_fails(
        &data,
        tmp.path(),
        &empty,
        "holds no images",
        "bad-empty-class",
    );
}

#[test]
fn class_in_testing_not_in_training() {
    let (tmp, data) = dataset();
    let extra = data.join("testing/c7");
    write_png(&extra.join("0.png"), 28, 28, &[0; 784]).unwrap();
    always_fails(
        &data,
        tmp.path(),
        &extra,
        "no counterpart in the training split",
        "bad-unknown-class",
    );
}

#[test]
fn missing_split_folder() {
    let (tmp, data) = dataset();
    std::fs::remove_dir_all(data.join("testing")).unwrap();
    always_fails(
        &data,
        tmp.path(),
        &data.join("testing"),
        "is missing",
        "bad-missing-split",
    );
}

#[test]
fn missing_dataset_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    always_fails(
        &nowhere,
        tmp.path(),
        &nowhere,
        "does not exist",
        "bad-missing-root",
    );
}

/// Every awkward file of `ringtrain_tests::badimages` in one class folder, at `--image-size
/// 28`: the corrupt ones (truncated JPEG, garbage, empty file) fail the run naming the file or
/// are skipped and counted; the valid ones (alpha, 16-bit, palette, gray and CMYK JPEG, WebP,
/// other sizes) are decoded and trained on, and make the dataset RGB.
#[test]
fn corrupt_images_fail_or_are_skipped_and_awkward_valid_ones_train() {
    use ringtrain_tests::badimages::{all, Expect};
    let (tmp, data) = dataset();
    let class = data.join("training/c1");
    let (mut bad, mut good) = (Vec::new(), 0);
    for f in all() {
        let path = f.write_in(&class).unwrap();
        match f.expect {
            Expect::Corrupt => bad.push(path),
            Expect::Decoded(_) => good += 1,
        }
    }
    let sized = ["--image-size", "28"];
    let out = train(&data, tmp.path(), &sized, "bad-fixtures-strict");
    assert!(!out.success(), "a corrupt image must fail the run");
    assert!(
        bad.iter().any(|p| out
            .stderr
            .contains(&format!("cannot decode {}", p.display()))),
        "names a corrupt file:\n{}",
        out.stderr
    );
    let out = train(
        &data,
        tmp.path(),
        &["--image-size", "28", "--skip-bad"],
        "bad-fixtures-skip",
    );
    assert!(out.success(), "{}", out.stderr);
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("run").join(name)).unwrap())
            .unwrap()
    };
    let summary = read("summary.json");
    assert_eq!(summary["skipped"], bad.len());
    assert_eq!(summary["train_images"], 18 + good);
    let record = read("run.json");
    assert_eq!(
        record["images"],
        serde_json::json!({"channels": 3, "size": 28, "resize": true, "augment": "pad=3"})
    );
    assert_eq!(record["normalize"]["mean"].as_array().unwrap().len(), 3);
    for p in &bad {
        assert!(
            record["skipped"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["path"] == p.display().to_string()),
            "run.json lists {}",
            p.display()
        );
    }
}
