//! `ringtrain lr-find` with the real binaries: the LR range test across 2 workers on real
//! MNIST (the suggestion against the lesson's 0.05), and a sweep that diverges and stops on
//! every rank at the same step.

use std::path::Path;
use std::time::Duration;

use ringtrain_tests::{mnist_slice, read_json, ringtrain, Output};

fn lr_find(data: &Path, run_dir: &Path, extra: &[&str], log: &str) -> Output {
    let mut args = vec![
        "lr-find",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--workers",
        "2",
        "--threads-per-worker",
        "1",
        "--heartbeat-interval-s",
        "0.5",
    ];
    args.extend_from_slice(extra);
    ringtrain(
        &args,
        &run_dir.with_extension("cache"),
        log,
        Duration::from_secs(900),
    )
}

/// The points of `lr_find.json`, checked against the file's own promises: an exponential
/// sweep from start_lr, the smoothed column, and a stop exactly where the rule says.
fn check_sweep(run_dir: &Path) -> serde_json::Value {
    let r = read_json(&run_dir.join("lr_find.json"));
    let pts = r["points"].as_array().unwrap();
    let iters = r["range"]["iters"].as_u64().unwrap() as usize;
    let (start, end) = (
        r["range"]["start_lr"].as_f64().unwrap(),
        r["range"]["end_lr"].as_f64().unwrap(),
    );
    assert!(
        !pts.is_empty() && pts.len() <= iters,
        "{} points",
        pts.len()
    );
    for (k, p) in pts.iter().enumerate() {
        let want = start * (end / start).powf(k as f64 / (iters - 1) as f64);
        let lr = p["lr"].as_f64().unwrap();
        assert!(
            (lr / want - 1.0).abs() < 1e-9,
            "step {k}: lr {lr}, want {want}"
        );
    }
    // The stop rule, replayed on the recorded smoothed losses: no earlier step trips it, and
    // the last one does exactly when the sweep stopped early.
    let sm: Vec<f64> = pts
        .iter()
        .map(|p| p["smoothed"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let div = r["range"]["stop_div"].as_f64().unwrap();
    let mut best = f64::INFINITY;
    let mut tripped = Vec::new();
    for s in &sm {
        best = best.min(*s);
        tripped.push(!s.is_finite() || *s > div * best);
    }
    let early = r["stopped_early"].as_bool().unwrap();
    assert!(
        !tripped[..tripped.len() - 1].iter().any(|t| *t),
        "the sweep went on past a diverged step: {sm:?}"
    );
    assert_eq!(tripped[tripped.len() - 1], early, "{sm:?}");
    assert_eq!(early, pts.len() < iters);
    // The coordinator's own step record matches.
    let steps = std::fs::read_to_string(run_dir.join("steps.csv")).unwrap();
    assert_eq!(steps.lines().count() - 1, pts.len(), "steps.csv");
    let csv = std::fs::read_to_string(run_dir.join("lr_find.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("step,lr,loss,smoothed_loss"));
    assert_eq!(csv.lines().count() - 1, pts.len());
    // The plot is a real PNG.
    let png = std::fs::File::open(run_dir.join("plots/lr_find.png")).unwrap();
    let info = png::Decoder::new(std::io::BufReader::new(png))
        .read_info()
        .unwrap();
    assert!(info.info().width >= 400 && info.info().height >= 300);
    r
}

#[test]
fn the_lessons_range_test_on_real_mnist_suggests_close_to_0_05() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    // 100 steps of 64 per rank need 6,400 images per rank; 16,000 real MNIST images give 125.
    mnist_slice(&data, 16_000, 500).unwrap();
    let run_dir = tmp.path().join("lr");
    // The lesson ran `learn.lr_find(end_lr=100)` before choosing 0.05.
    let out = lr_find(&data, &run_dir, &["--end-lr", "100"], "lr_find_mnist");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let r = check_sweep(&run_dir);
    let suggested = r["minimum"]["lr"].as_f64().unwrap();
    assert!(
        (suggested - r["minimum"]["at_lr"].as_f64().unwrap() / 10.0).abs() < 1e-12,
        "a decade below the minimum: {r}"
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("suggested max_lr {suggested:.2e} | plot ")),
        "{last}"
    );
    // The lesson picked 0.05 by eye from this plot (ResNet-ish, batch 128).
    assert!(
        (0.05 / 3.0..=0.05 * 3.0).contains(&suggested),
        "suggested {suggested}, not within 3x of 0.05; fastai's valley {} steep {}",
        r["valley"]["lr"],
        r["steep"]["lr"]
    );
}

#[test]
fn a_diverging_sweep_stops_on_every_rank_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    mnist_slice(&data, 3_000, 100).unwrap();
    let run_dir = tmp.path().join("lr");
    // Up to lr 1e4 with Adam: the loss explodes long before the 90th step.
    let out = lr_find(
        &data,
        &run_dir,
        &[
            "--model",
            "basic",
            "--batch-size",
            "32",
            "--start-lr",
            "1e-4",
            "--end-lr",
            "1e4",
            "--iters",
            "90",
        ],
        "lr_find_diverge",
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let r = check_sweep(&run_dir);
    assert_eq!(r["stopped_early"], true, "{r}");
    assert!(
        out.stdout.contains("stopped after"),
        "the table says it stopped: {}",
        out.stdout
    );
    // `ringtrain status` of the folder names the suggestion too.
    let status = ringtrain(
        &["status", run_dir.to_str().unwrap()],
        &run_dir.with_extension("cache"),
        "lr_find_status",
        Duration::from_secs(60),
    );
    let want = format!(
        "LR finder: suggested max_lr {:.2e} ({} steps",
        r["minimum"]["lr"].as_f64().unwrap(),
        r["points"].as_array().unwrap().len()
    );
    assert!(status.stdout.contains(&want), "{}", status.stdout);
}

#[test]
fn a_sweep_that_never_diverges_within_its_range_is_reported_without_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    mnist_slice(&data, 3_000, 100).unwrap();
    let run_dir = tmp.path().join("lr");
    // Up to lr 1e-4 the plain CNN hardly learns: a flat, noisy loss that never rises, no edge.
    let out = lr_find(
        &data,
        &run_dir,
        &[
            "--model",
            "basic",
            "--batch-size",
            "32",
            "--end-lr",
            "1e-4",
            "--iters",
            "90",
        ],
        "lr_find_no_edge",
    );
    assert_eq!(
        out.code,
        Some(1),
        "no answer is a failed command:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let r = check_sweep(&run_dir);
    assert_eq!(r["stopped_early"], false, "{r}");
    assert!(r["suggested"].is_null(), "{r}");
    assert!(r["rise"].as_f64().unwrap() < 2.0, "{r}");
    assert_eq!(r["no_edge"]["try_end_lr"].as_f64(), Some(1e-3), "{r}");
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("no suggested max_lr: the range was too short.")
            && last.contains("run again with --end-lr 1e-3 | plot "),
        "{last}"
    );
    assert!(
        !out.stdout
            .lines()
            .any(|l| l.starts_with("suggested max_lr")),
        "{}",
        out.stdout
    );
    let status = ringtrain(
        &["status", run_dir.to_str().unwrap()],
        &run_dir.with_extension("cache"),
        "lr_find_no_edge_status",
        Duration::from_secs(60),
    );
    assert!(
        status
            .stdout
            .contains("LR finder: no suggestion, the range was too short"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_sweep_longer_than_an_epoch_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mnist");
    mnist_slice(&data, 400, 20).unwrap();
    let run_dir = tmp.path().join("lr");
    let out = lr_find(&data, &run_dir, &["--iters", "100"], "lr_find_too_long");
    assert!(!out.success());
    assert!(
        out.stderr.contains("lr-find needs 100 steps"),
        "{}",
        out.stderr
    );
}
