//! `ringtrain status RUN_DIR|URL`: where a run stands, from the terminal.
//!
//! * `URL` (`http://HOST:PORT`, the coordinator's `--http-listen`): its live `/status`.
//! * `RUN_DIR`: the run folder. A `summary.json` means the run ended (finished or failed, with
//!   the reason); otherwise the epochs in `metrics.jsonl` and the newest checkpoint say how far
//!   it got (running, or stopped and resumable with `--resume`).
//!
//! Tests: `coordinator/tests/metrics.rs` (both forms against a real run).

use std::path::Path;

use anyhow::Context as _;

/// Lines describing `target`.
pub fn describe(target: &str) -> anyhow::Result<Vec<String>> {
    if target.starts_with("http://") || target.starts_with("https://") {
        let url = format!("{}/status", target.trim_end_matches('/'));
        let body = ureq::get(&url)
            .call()
            .with_context(|| format!("asking {url}"))?
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading {url}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?;
        return Ok(live(&v));
    }
    folder(Path::new(target))
}

fn num(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    }
}

/// A rate, to the unit (`4752 images/s`, not `4752.4386`).
fn rate(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.0}"))
}

/// Seconds with one decimal.
fn secs(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

/// Seconds as milliseconds with one decimal.
fn millis(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.1} ms", x * 1e3))
}

fn live(v: &serde_json::Value) -> Vec<String> {
    let mut out = vec![
        format!(
            "run {}: {} (round {}, world size {})",
            v["run_id"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?"),
            num(&v["round"]),
            num(&v["world_size"])
        ),
        format!(
            "step {} of {}, epoch {} of {} done, restarts {}",
            num(&v["step"]),
            num(&v["total_steps"]),
            num(&v["epochs_completed"]),
            num(&v["epochs"]),
            num(&v["restarts"])
        ),
        format!(
            "last epoch: train_loss {} valid_loss {} accuracy {} | {} images/s | checkpoint {} s ago",
            num(&v["train_loss"]),
            num(&v["valid_loss"]),
            num(&v["accuracy"]),
            rate(&v["train_images_per_s"]),
            secs(&v["checkpoint_age_s"])
        ),
    ];
    for r in v["ranks"].as_array().into_iter().flatten() {
        let straggler = if r["straggler"].as_bool() == Some(true) {
            format!(
                ", STRAGGLER: {}x the others' compute",
                r["slowdown"]
                    .as_f64()
                    .map_or("-".into(), |x| format!("{x:.2}"))
            )
        } else {
            String::new()
        };
        out.push(format!(
            "  rank {} {} on {} ({}): step {}{}, {} images/s, all-reduce {}, per step: compute {} wait {}, last heartbeat {} s ago, restarts {}{straggler}",
            num(&r["rank"]),
            r["worker_id"].as_str().unwrap_or("?"),
            r["device"].as_str().unwrap_or("?"),
            r["host"].as_str().unwrap_or("?"),
            num(&r["step"]),
            if r["in_collective"].as_bool() == Some(true) {
                " (in the all-reduce)"
            } else {
                ""
            },
            rate(&r["images_per_s"]),
            millis(&r["allreduce_s"]),
            millis(&r["compute_s_per_step"]),
            millis(&r["wait_s_per_step"]),
            secs(&r["heartbeat_age_s"]),
            num(&r["restarts"])
        ));
    }
    out
}

fn folder(dir: &Path) -> anyhow::Result<Vec<String>> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let info: Option<serde_json::Value> =
        read("run.json").and_then(|t| serde_json::from_str(&t).ok());
    let Some(info) = info else {
        anyhow::bail!(
            "{} is not a run folder (no readable run.json)",
            dir.display()
        );
    };
    let epochs = info["config"]["epochs"].as_u64();
    let rows: Vec<serde_json::Value> = read("metrics.jsonl")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = Vec::new();
    let run_id = info["run_id"].as_str().unwrap_or("?");
    match read("summary.json").and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
        Some(s) => out.push(format!(
            "run {run_id}: {}{}",
            s["status"].as_str().unwrap_or("?"),
            s["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
        None => out.push(format!(
            "run {run_id}: not ended (running, or stopped: continue it with --resume {})",
            dir.display()
        )),
    }
    out.push(format!(
        "epochs done: {} of {}",
        rows.len(),
        epochs.map_or("?".into(), |e| e.to_string())
    ));
    if let Some(r) = rows.last() {
        out.push(format!(
            "last epoch {}: train_loss {} valid_loss {} accuracy {} | {} images/s",
            num(&r["epoch"]),
            num(&r["train_loss"]),
            num(&r["valid_loss"]),
            num(&r["accuracy"]),
            rate(&r["train_images_per_s"])
        ));
    }
    let sweep: Option<serde_json::Value> =
        read("lr_find.json").and_then(|t| serde_json::from_str(&t).ok());
    if let Some(r) = sweep {
        // A sweep that never found the edge has `suggested: null` (folders from before issue 17
        // have no such key: their suggestion is the minimum's).
        let suggested = match r.get("suggested") {
            Some(s) => s.as_f64(),
            None => r["minimum"]["lr"].as_f64(),
        };
        let verdict = match suggested {
            Some(x) => format!("suggested max_lr {x:.2e}"),
            None => format!(
                "no suggestion, the range was too short (lowest at lr {}; run again with \
                 --end-lr {})",
                r["no_edge"]["lowest_at_lr"]
                    .as_f64()
                    .map_or("-".into(), |x| format!("{x:.2e}")),
                r["no_edge"]["try_end_lr"]
                    .as_f64()
                    .map_or("-".into(), |x| format!("{x:.0e}")),
            ),
        };
        out.push(format!(
            "LR finder: {verdict} ({} steps; plot {})",
            r["points"].as_array().map_or(0, Vec::len),
            dir.join("plots").join("lr_find.png").display()
        ));
    }
    let latest = std::fs::read_link(dir.join("latest")).ok();
    if let Some(l) = latest {
        out.push(format!("latest checkpoint: {}", dir.join(l).display()));
    }
    Ok(out)
}
