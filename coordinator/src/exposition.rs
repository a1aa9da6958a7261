//! The run's numbers as text for machines: Prometheus' text exposition format (`GET /metrics`)
//! and the JSON of `GET /status`.
//!
//! Owns metric names, types, help texts and labels; not serving them (`http/`) or computing them
//! (`state/metrics.rs`).
//!
//! # Contract
//! * Prometheus text format 0.0.4. Names follow Prometheus conventions (`ringtrain_` prefix,
//!   base units, `_total` for counters, `_seconds`, `_ratio`); per-rank series carry `rank` and
//!   `worker_id` labels. A value not known yet is left out, never written as 0.
//!
//! Tests: `tests` at the bottom (the text format); `coordinator/tests/metrics.rs` (scraped from a
//! running server).

use std::fmt::Write as _;

use crate::state::{Metrics, RankMetrics, Status};

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Rendezvous => "rendezvous",
        Status::Running => "running",
        Status::Finished => "finished",
        Status::Failed => "failed",
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gRPC port's connections, in the Prometheus text format.
pub fn render_guard(g: &crate::guard::Guard) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let (pending, established) = g.open();
    let st = g.stats();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ringtrain_grpc_connections gRPC connections open now: pending (handshake, no authenticated call yet) or established.\n# TYPE ringtrain_grpc_connections gauge\nringtrain_grpc_connections{{state=\"pending\"}} {pending}\nringtrain_grpc_connections{{state=\"established\"}} {established}"
    );
    let _ = writeln!(
        out,
        "# HELP ringtrain_grpc_connections_accepted_total gRPC connections accepted.\n# TYPE ringtrain_grpc_connections_accepted_total counter\nringtrain_grpc_connections_accepted_total {}",
        st.accepted.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP ringtrain_grpc_connections_closed_total gRPC connections the coordinator closed, by reason.\n# TYPE ringtrain_grpc_connections_closed_total counter"
    );
    for (reason, n) in [
        ("handshake_timeout", st.timed_out.load(Relaxed)),
        ("evicted", st.evicted.load(Relaxed)),
        ("max_connections", st.refused_full.load(Relaxed)),
    ] {
        let _ = writeln!(
            out,
            "ringtrain_grpc_connections_closed_total{{reason=\"{reason}\"}} {n}"
        );
    }
    out
}

/// `m` in the Prometheus text exposition format.
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    let f = |x: u64| Some(x as f64);
    metric(
        "ringtrain_step",
        "gauge",
        "Global training step (the highest any rank reported).",
        f(m.step),
    );
    metric(
        "ringtrain_steps",
        "gauge",
        "Steps of the whole run.",
        f(m.total_steps),
    );
    metric(
        "ringtrain_epoch",
        "gauge",
        "Epochs completed.",
        f(u64::from(m.epochs_completed)),
    );
    metric(
        "ringtrain_epochs",
        "gauge",
        "Epochs of the whole run.",
        f(u64::from(m.epochs)),
    );
    metric(
        "ringtrain_round",
        "gauge",
        "Rendezvous round (1 for the first).",
        f(u64::from(m.round)),
    );
    metric(
        "ringtrain_world_size",
        "gauge",
        "Ranks in the current round.",
        f(u64::from(m.world_size)),
    );
    metric(
        "ringtrain_round_restarts_total",
        "counter",
        "Rounds ended by a lost worker.",
        f(u64::from(m.restarts)),
    );
    metric(
        "ringtrain_heartbeats_total",
        "counter",
        "Heartbeats received.",
        f(m.heartbeats),
    );
    metric(
        "ringtrain_heartbeats_missed_total",
        "counter",
        "Heartbeat intervals that passed without one.",
        f(m.heartbeats_missed),
    );
    metric(
        "ringtrain_checkpoints_total",
        "counter",
        "Checkpoints written by this coordinator.",
        f(m.checkpoints),
    );
    metric(
        "ringtrain_checkpoint_age_seconds",
        "gauge",
        "Seconds since the last checkpoint was written.",
        m.checkpoint_age_s,
    );
    metric(
        "ringtrain_train_loss",
        "gauge",
        "Smoothed training loss after the last completed epoch.",
        m.train_loss,
    );
    metric(
        "ringtrain_valid_loss",
        "gauge",
        "Validation loss of the last completed epoch.",
        m.valid_loss,
    );
    metric(
        "ringtrain_valid_accuracy_ratio",
        "gauge",
        "Validation accuracy of the last completed epoch.",
        m.accuracy,
    );
    metric(
        "ringtrain_train_images_per_second",
        "gauge",
        "Training images per second of the last completed epoch (slowest rank).",
        m.train_images_per_s,
    );
    metric(
        "ringtrain_learning_rate",
        "gauge",
        "Learning rate at the end of the last completed epoch.",
        m.lr,
    );
    let _ = writeln!(
        out,
        "# HELP ringtrain_info The run (value 1).\n# TYPE ringtrain_info gauge\nringtrain_info{{run_id=\"{}\",status=\"{}\"}} 1",
        label(&m.run_id),
        status_name(m.status)
    );
    let ids =
        |r: &RankMetrics| format!("rank=\"{}\",worker_id=\"{}\"", r.rank, label(&r.worker_id));
    rank_family(
        &mut out,
        "ringtrain_rank_step",
        "Global step in the rank's last heartbeat.",
        &m.ranks,
        |r| {
            format!(
                "{},device=\"{}\",host=\"{}\"",
                ids(r),
                label(&r.device),
                label(&r.host)
            )
        },
        |r| Some(r.step.to_string()),
    );
    rank_family(
        &mut out,
        "ringtrain_rank_heartbeat_age_seconds",
        "Seconds since the rank's last sign of life.",
        &m.ranks,
        ids,
        |r| Some(format!("{:.3}", r.heartbeat_age_s)),
    );
    rank_family(
        &mut out,
        "ringtrain_rank_train_images_per_second",
        "Training images per second of the rank since its previous heartbeat.",
        &m.ranks,
        ids,
        |r| r.images_per_s.map(|v| format!("{v:.1}")),
    );
    rank_family(&mut out, "ringtrain_rank_allreduce_seconds",
        "Mean seconds per gradient all-reduce of the rank since its previous heartbeat (host-timed; not reported by NCCL ranks).",
        &m.ranks, ids, |r| r.allreduce_s.map(|v| format!("{v:.6}")));
    rank_family(
        &mut out,
        "ringtrain_rank_restarts",
        "Rounds the rank's worker re-joined after a round ended.",
        &m.ranks,
        ids,
        |r| Some(r.restarts.to_string()),
    );
    out
}

/// One gauge family with a sample per rank that has a value; nothing when none has.
fn rank_family(
    out: &mut String,
    name: &str,
    help: &str,
    ranks: &[RankMetrics],
    labels: impl Fn(&RankMetrics) -> String,
    value: impl Fn(&RankMetrics) -> Option<String>,
) {
    let samples: Vec<(String, String)> = ranks
        .iter()
        .filter_map(|r| value(r).map(|v| (labels(r), v)))
        .collect();
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (l, v) in samples {
        let _ = writeln!(out, "{name}{{{l}}} {v}");
    }
}

/// `m` as the JSON of `GET /status`.
pub fn status_json(m: &Metrics) -> serde_json::Value {
    serde_json::json!({
        "run_id": m.run_id,
        "status": status_name(m.status),
        "round": m.round,
        "world_size": m.world_size,
        "step": m.step,
        "total_steps": m.total_steps,
        "epochs_completed": m.epochs_completed,
        "epochs": m.epochs,
        "restarts": m.restarts,
        "checkpoint_age_s": m.checkpoint_age_s,
        "train_loss": m.train_loss,
        "valid_loss": m.valid_loss,
        "accuracy": m.accuracy,
        "train_images_per_s": m.train_images_per_s,
        "ranks": m.ranks.iter().map(|r| serde_json::json!({
            "rank": r.rank, "worker_id": r.worker_id, "host": r.host, "device": r.device,
            "step": r.step, "heartbeat_age_s": r.heartbeat_age_s,
            "images_per_s": r.images_per_s, "allreduce_s": r.allreduce_s, "restarts": r.restarts,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_help_type_and_labels() {
        let m = Metrics {
            run_id: "run \"1\"".into(),
            status: Status::Running,
            round: 2,
            world_size: 2,
            step: 40,
            total_steps: 100,
            epochs_completed: 1,
            epochs: 3,
            restarts: 1,
            heartbeats: 9,
            heartbeats_missed: 2,
            checkpoints: 1,
            checkpoint_age_s: Some(1.5),
            train_loss: Some(0.25),
            valid_loss: None,
            accuracy: Some(0.9),
            train_images_per_s: Some(5000.0),
            lr: Some(0.01),
            ranks: vec![
                RankMetrics {
                    rank: 0,
                    worker_id: "w0".into(),
                    host: "10.0.0.1".into(),
                    device: "cpu".into(),
                    step: 40,
                    heartbeat_age_s: 0.25,
                    images_per_s: Some(2500.0),
                    allreduce_s: None,
                    restarts: 1,
                },
                RankMetrics {
                    rank: 1,
                    worker_id: "w1".into(),
                    host: "10.0.0.2".into(),
                    device: "cpu".into(),
                    step: 39,
                    heartbeat_age_s: 0.5,
                    images_per_s: None,
                    allreduce_s: None,
                    restarts: 0,
                },
            ],
        };
        let t = render(&m);
        assert!(
            t.contains(
                "# TYPE ringtrain_round_restarts_total counter\nringtrain_round_restarts_total 1\n"
            ),
            "{t}"
        );
        assert!(t.contains("ringtrain_valid_accuracy_ratio 0.9\n"), "{t}");
        assert!(
            !t.contains("ringtrain_valid_loss"),
            "absent values are left out: {t}"
        );
        assert!(
            t.contains(r#"ringtrain_info{run_id="run \"1\"",status="running"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(
                r#"ringtrain_rank_step{rank="0",worker_id="w0",device="cpu",host="10.0.0.1"} 40"#
            ),
            "{t}"
        );
        // Measured values only: rank 1 sent no throughput, nobody an all-reduce time.
        assert!(
            t.contains(
                "ringtrain_rank_train_images_per_second{rank=\"0\",worker_id=\"w0\"} 2500.0\n"
            ),
            "{t}"
        );
        assert!(
            !t.contains(r#"ringtrain_rank_train_images_per_second{rank="1""#),
            "{t}"
        );
        assert!(!t.contains("ringtrain_rank_allreduce_seconds"), "{t}");
        assert!(
            t.contains(r#"ringtrain_rank_restarts{rank="0",worker_id="w0"} 1"#),
            "{t}"
        );
        assert_eq!(t.matches("# TYPE ringtrain_rank_step gauge").count(), 1);
        // Every sample line is `name{labels} value` with a numeric value.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
        let j = status_json(&m);
        assert_eq!(j["ranks"][0]["worker_id"], "w0");
        assert_eq!(j["ranks"][0]["images_per_s"], 2500.0);
        assert!(j["ranks"][1]["images_per_s"].is_null());
        assert_eq!(j["ranks"][1]["host"], "10.0.0.2");
    }
}
