//! The run's numbers as text for machines: Prometheus' text exposition format (`GET /metrics`)
//! and the JSON of `GET /status`.
//!
//! Owns metric names, types, help texts and labels; not serving them (`http/`) or computing them
//! (`state/metrics.rs`, the connection guards, `/proc/self` in `exposition/process.rs`).
//!
//! # Contract
//! * Prometheus text format 0.0.4, written here by hand. Not the `prometheus-client` crate: it
//!   writes OpenMetrics (`# TYPE foo counter` followed by samples named `foo_total`), which a
//!   0.0.4 scrape reads as a counter without the `_total` suffix: Debian's `promtool` 2.42
//!   (`check metrics`) rejects it. Every scrape here passes `promtool check metrics` with no
//!   finding (`tests/tests/metrics.rs`).
//! * Names follow Prometheus conventions: `ringtrain_` prefix (`process_` for the process),
//!   base units (`_seconds`, `_bytes`, `_ratio`), times as Unix timestamps
//!   (`_timestamp_seconds`) rather than ages, and anything that only goes up is a counter ending
//!   in `_total`. Rates are left to PromQL (`rate(ringtrain_rank_train_images_total[1m])`);
//!   `/status` carries the display rates the coordinator derives between heartbeats.
//! * No label changes value during a run on a value metric: per-rank series carry `rank` only;
//!   who holds a rank is `ringtrain_rank_info{rank,worker_id,host,device} 1`, the run's status
//!   the state set `ringtrain_run_status{status}` (1 for the current status, 0 for the others).
//! * Per-rank counters are per rank slot, for the coordinator's life: a rank's worker that
//!   restarts (a new process counting from 0, or another worker in the slot) never makes them go
//!   down (`state/metrics.rs`). Their series stay when a later round has fewer ranks.
//! * A value not known yet is left out, never written as 0.
//!
//! Tests: `tests` at the bottom (names, types, the state set, monotonic counters);
//! `coordinator/tests/metrics.rs` (scraped from a running server); `tests/tests/metrics.rs`
//! (a real run's scrapes through `promtool check metrics`).

mod process;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::guard::Guard;
use crate::state::{Metrics, RankMetrics, Status};

/// Every status, in the order of the state set's series.
const STATUSES: [Status; 4] = [
    Status::Rendezvous,
    Status::Running,
    Status::Finished,
    Status::Failed,
];

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

/// A sample value as the text format spells it (`NaN`, `+Inf`, `-Inf`; integers without `.0`).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// The two metric types this endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// Prometheus text being written, one family at a time.
#[derive(Debug, Default)]
struct Text(String);

impl Text {
    /// One family: HELP and TYPE once, then a sample per `(labels, value)` (`labels` as written
    /// inside the braces, empty for none). A family without samples is left out.
    fn family<L: AsRef<str>>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (L, f64)>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        debug_assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let (labels, v) = (labels.as_ref(), value(v));
            let _ = if labels.is_empty() {
                writeln!(self.0, "{name} {v}")
            } else {
                writeln!(self.0, "{name}{{{labels}}} {v}")
            };
        }
    }

    /// One family with a single unlabelled sample, left out when `None`.
    fn single(&mut self, name: &str, kind: Kind, help: &str, v: Option<f64>) {
        self.family(name, kind, help, v.map(|v| ("", v)));
    }
}

/// Everything `GET /metrics` answers: the run `m`, the ports' connections (`guards`) and the
/// coordinator process.
pub fn scrape(m: &Metrics, guards: &[&Arc<Guard>]) -> String {
    let mut out = render(m);
    out.push_str(&render_connections(guards));
    out.push_str(&process::render());
    out
}

/// The connections of each guarded port (`port="grpc"`, `port="http"`), in the text format.
pub fn render_connections(guards: &[&Arc<Guard>]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let port = |g: &Guard| format!("port=\"{}\"", label(&g.port().to_ascii_lowercase()));
    let mut t = Text::default();
    t.family(
        "ringtrain_connections",
        Kind::Gauge,
        "Connections open now, by port: pending (no complete request head, or no authenticated gRPC call yet) or established.",
        guards.iter().flat_map(|g| {
            let (pending, established) = g.open();
            [("pending", pending), ("established", established)]
                .map(|(state, n)| (format!("{},state=\"{state}\"", port(g)), n as f64))
        }),
    );
    t.family(
        "ringtrain_connections_accepted_total",
        Kind::Counter,
        "Connections accepted, by port.",
        guards
            .iter()
            .map(|g| (port(g), g.stats().accepted.load(Relaxed) as f64)),
    );
    t.family(
        "ringtrain_connections_closed_total",
        Kind::Counter,
        "Connections the coordinator closed, by port and reason (handshake_timeout: no authenticated call, or no complete request head, in time; evicted: the oldest pending one, for a newer one; max_connections: one more than the cap).",
        guards.iter().flat_map(|g| {
            let st = g.stats();
            [
                ("handshake_timeout", st.timed_out.load(Relaxed)),
                ("evicted", st.evicted.load(Relaxed)),
                ("max_connections", st.refused_full.load(Relaxed)),
            ]
            .map(|(reason, n)| (format!("{},reason=\"{reason}\"", port(g)), n as f64))
        }),
    );
    t.0
}

/// The run `m` in the text format.
pub fn render(m: &Metrics) -> String {
    use Kind::{Counter, Gauge};
    let mut t = Text::default();
    let n = |x: u64| Some(x as f64);
    let s = |unix_ms: u64| unix_ms as f64 / 1000.0;
    t.family(
        "ringtrain_info",
        Gauge,
        "The run (value 1), labelled with what stays the same for its whole life.",
        [(
            format!(
                "run_id=\"{}\",version=\"{}\"",
                label(&m.run_id),
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        )],
    );
    t.family(
        "ringtrain_run_status",
        Gauge,
        "The run's status as a state set: 1 for the current one, 0 for the others.",
        STATUSES.map(|st| {
            (
                format!("status=\"{}\"", status_name(st)),
                f64::from(u8::from(st == m.status)),
            )
        }),
    );
    t.single(
        "ringtrain_global_step",
        Gauge,
        "Optimizer steps of the run done: the highest global step a rank reported, or the last completed epoch's or checkpoint's (a new round resumes from its checkpoint, so it can go back).",
        n(m.step),
    );
    t.single(
        "ringtrain_run_steps",
        Gauge,
        "Optimizer steps the whole run takes (known once a round started).",
        (m.total_steps > 0).then_some(m.total_steps as f64),
    );
    t.single(
        "ringtrain_epochs_completed",
        Gauge,
        "Epochs completed (while running, the epoch in progress is this number, counting from 0).",
        n(u64::from(m.epochs_completed)),
    );
    t.single(
        "ringtrain_run_epochs",
        Gauge,
        "Epochs the whole run takes.",
        n(u64::from(m.epochs)),
    );
    t.single(
        "ringtrain_round",
        Gauge,
        "Rendezvous round (1 for the first).",
        n(u64::from(m.round)),
    );
    t.single(
        "ringtrain_world_size",
        Gauge,
        "Ranks in the current round (0 between rounds).",
        n(u64::from(m.world_size)),
    );
    t.single(
        "ringtrain_round_restarts_total",
        Counter,
        "Rounds ended by a lost worker.",
        n(u64::from(m.restarts)),
    );
    t.single(
        "ringtrain_heartbeats_total",
        Counter,
        "Heartbeats received.",
        n(m.heartbeats),
    );
    t.single(
        "ringtrain_heartbeats_missed_total",
        Counter,
        "Heartbeat intervals that passed without one.",
        n(m.heartbeats_missed),
    );
    t.single(
        "ringtrain_checkpoints_total",
        Counter,
        "Checkpoints written by this coordinator.",
        n(m.checkpoints),
    );
    t.single(
        "ringtrain_last_checkpoint_timestamp_seconds",
        Gauge,
        "Unix time the last checkpoint was written by this coordinator.",
        m.last_checkpoint_unix_ms.map(s),
    );
    t.single(
        "ringtrain_train_loss",
        Gauge,
        "Smoothed training loss after the last completed epoch.",
        m.train_loss,
    );
    t.single(
        "ringtrain_valid_loss",
        Gauge,
        "Validation loss of the last completed epoch.",
        m.valid_loss,
    );
    t.single(
        "ringtrain_valid_accuracy_ratio",
        Gauge,
        "Validation accuracy of the last completed epoch.",
        m.accuracy,
    );
    t.single(
        "ringtrain_learning_rate",
        Gauge,
        "Learning rate at the end of the last completed epoch.",
        m.lr,
    );
    let totals = &m.rank_totals;
    t.single(
        "ringtrain_train_images_total",
        Counter,
        "Training images trained by all ranks, as their heartbeats reported them.",
        (!totals.is_empty()).then(|| totals.iter().map(|r| r.work.images as f64).sum()),
    );
    let rank = |r: u32| format!("rank=\"{r}\"");
    t.family(
        "ringtrain_rank_info",
        Gauge,
        "Who holds each rank of the current round (value 1).",
        m.ranks.iter().map(|r| (identity(r), 1.0)),
    );
    t.family(
        "ringtrain_rank_global_step",
        Gauge,
        "Global step in the rank's last heartbeat.",
        m.ranks.iter().map(|r| (rank(r.rank), r.step as f64)),
    );
    t.family(
        "ringtrain_rank_last_heartbeat_timestamp_seconds",
        Gauge,
        "Unix time of the rank's last sign of life (a heartbeat or any other call).",
        m.ranks
            .iter()
            .map(|r| (rank(r.rank), s(r.last_seen_unix_ms))),
    );
    t.family(
        "ringtrain_rank_train_images_total",
        Counter,
        "Training images trained in this rank, over every worker that held it.",
        totals.iter().map(|r| (rank(r.rank), r.work.images as f64)),
    );
    t.family(
        "ringtrain_rank_allreduce_seconds_total",
        Counter,
        "Seconds spent in gradient all-reduces in this rank, timed on the host (NCCL ranks: 0, their calls are asynchronous).",
        totals.iter().map(|r| (rank(r.rank), r.work.allreduce_s)),
    );
    t.family(
        "ringtrain_rank_allreduces_total",
        Counter,
        "Gradient all-reduces timed into ringtrain_rank_allreduce_seconds_total.",
        totals
            .iter()
            .map(|r| (rank(r.rank), r.work.allreduces as f64)),
    );
    t.family(
        "ringtrain_rank_restarts_total",
        Counter,
        "Times a worker re-joined into this rank after a round ended.",
        totals.iter().map(|r| (rank(r.rank), r.restarts as f64)),
    );
    t.family(
        "ringtrain_rank_compute_seconds_total",
        Counter,
        "Seconds of compute in this rank's steps (step start until the all-reduce), over ringtrain_rank_timed_steps_total steps; CUDA events on GPUs.",
        totals.iter().map(|r| (rank(r.rank), r.work.timing.compute_s)),
    );
    t.family(
        "ringtrain_rank_wait_seconds_total",
        Counter,
        "Seconds this rank's steps spent inside the gradient all-reduce, over ringtrain_rank_timed_steps_total steps.",
        totals.iter().map(|r| (rank(r.rank), r.work.timing.wait_s)),
    );
    t.family(
        "ringtrain_rank_timed_steps_total",
        Counter,
        "Steps timed into ringtrain_rank_compute_seconds_total and ringtrain_rank_wait_seconds_total.",
        totals
            .iter()
            .map(|r| (rank(r.rank), r.work.timing.steps as f64)),
    );
    t.family(
        "ringtrain_rank_compute_seconds_per_step",
        Gauge,
        "Mean compute per step over the straggler window (--straggler-window-s).",
        m.ranks
            .iter()
            .filter_map(|r| r.per_step.map(|p| (rank(r.rank), p.compute_s))),
    );
    t.family(
        "ringtrain_rank_wait_seconds_per_step",
        Gauge,
        "Mean seconds per step inside the gradient all-reduce over the straggler window.",
        m.ranks
            .iter()
            .filter_map(|r| r.per_step.map(|p| (rank(r.rank), p.wait_s))),
    );
    t.family(
        "ringtrain_rank_slowdown_ratio",
        Gauge,
        "The rank's compute per step over the median of the other ranks'.",
        m.ranks
            .iter()
            .filter_map(|r| r.standing.map(|s| (rank(r.rank), s.slowdown))),
    );
    t.family(
        "ringtrain_rank_straggler",
        Gauge,
        "1 while the rank is named a straggler (slowdown above 1 + --straggler-margin), else 0.",
        m.ranks.iter().map(|r| {
            let named = r.standing.is_some_and(|s| s.straggler);
            (rank(r.rank), if named { 1.0 } else { 0.0 })
        }),
    );
    t.family(
        "ringtrain_rank_in_collective",
        Gauge,
        "1 while the rank's training thread is inside the gradient all-reduce (last heartbeat).",
        m.ranks
            .iter()
            .map(|r| (rank(r.rank), if r.in_collective { 1.0 } else { 0.0 })),
    );
    t.single(
        "ringtrain_stragglers_named_total",
        Counter,
        "Times a rank was named a straggler by this coordinator.",
        Some(m.stragglers_named as f64),
    );
    t.0
}

/// `ringtrain_rank_info`'s labels for `r`.
fn identity(r: &RankMetrics) -> String {
    format!(
        "rank=\"{}\",worker_id=\"{}\",host=\"{}\",device=\"{}\"",
        r.rank,
        label(&r.worker_id),
        label(&r.host),
        label(&r.device)
    )
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
            "in_collective": r.in_collective,
            "compute_s_per_step": r.per_step.map(|p| p.compute_s),
            "wait_s_per_step": r.per_step.map(|p| p.wait_s),
            "slowdown": r.standing.map(|s| s.slowdown),
            "straggler": r.standing.is_some_and(|s| s.straggler),
        })).collect::<Vec<_>>(),
        "stragglers": m.ranks.iter()
            .filter(|r| r.standing.is_some_and(|s| s.straggler))
            .map(|r| r.rank).collect::<Vec<_>>(),
        "stragglers_named": m.stragglers_named,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RankTotals, Work};
    use std::collections::BTreeMap;

    fn rank(rank: u32, worker_id: &str, images_per_s: Option<f64>) -> RankMetrics {
        RankMetrics {
            rank,
            worker_id: worker_id.into(),
            host: format!("10.0.0.{}", rank + 1),
            device: "cpu".into(),
            step: 40 - u64::from(rank),
            heartbeat_age_s: 0.25,
            last_seen_unix_ms: 1_700_000_000_250,
            images_per_s,
            allreduce_s: None,
            restarts: rank,
            in_collective: false,
            per_step: None,
            standing: None,
        }
    }

    fn totals(images: [u64; 2], restarts: [u64; 2]) -> Vec<RankTotals> {
        (0..2)
            .map(|r| RankTotals {
                rank: r as u32,
                work: Work {
                    images: images[r],
                    allreduce_s: 0.5,
                    allreduces: 100,
                    timing: Default::default(),
                },
                restarts: restarts[r],
            })
            .collect()
    }

    fn metrics() -> Metrics {
        Metrics {
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
            last_checkpoint_unix_ms: Some(1_700_000_000_000),
            train_loss: Some(0.25),
            valid_loss: None,
            accuracy: Some(0.9),
            train_images_per_s: Some(5000.0),
            lr: Some(0.01),
            ranks: vec![rank(0, "w0", Some(2500.0)), rank(1, "w1", None)],
            rank_totals: totals([6400, 3200], [1, 0]),
            stragglers_named: 0,
        }
    }

    #[test]
    fn a_straggler_shows_in_its_gauges_and_the_status() {
        use crate::state::straggler::{PerStep, Standing};
        let mut m = metrics();
        m.stragglers_named = 1;
        m.ranks[1].per_step = Some(PerStep {
            compute_s: 0.05,
            wait_s: 0.001,
            steps: 40,
        });
        m.ranks[1].standing = Some(Standing {
            slowdown: 2.5,
            others_median_s: 0.02,
            straggler: true,
        });
        m.ranks[0].in_collective = true;
        let s = parse(&render(&m));
        assert_eq!(s[r#"ringtrain_rank_straggler{rank="1"}"#], 1.0);
        assert_eq!(s[r#"ringtrain_rank_straggler{rank="0"}"#], 0.0);
        assert_eq!(s[r#"ringtrain_rank_slowdown_ratio{rank="1"}"#], 2.5);
        assert_eq!(
            s[r#"ringtrain_rank_compute_seconds_per_step{rank="1"}"#],
            0.05
        );
        assert!(
            !s.contains_key(r#"ringtrain_rank_slowdown_ratio{rank="0"}"#),
            "not measured"
        );
        assert_eq!(s[r#"ringtrain_rank_in_collective{rank="0"}"#], 1.0);
        assert_eq!(s["ringtrain_stragglers_named_total"], 1.0);
        let j = status_json(&m);
        assert_eq!(j["stragglers"], serde_json::json!([1]));
        assert_eq!(j["ranks"][1]["straggler"], true);
        assert_eq!(j["ranks"][1]["slowdown"], 2.5);
        assert_eq!(j["ranks"][0]["straggler"], false);
    }

    /// `(series, value)` of every sample, after checking each family's HELP and TYPE come once,
    /// before its samples, and counters (only they) end in `_total`.
    fn parse(t: &str) -> BTreeMap<String, f64> {
        let (mut typed, mut out) = (BTreeMap::new(), BTreeMap::new());
        let mut helped = std::collections::BTreeSet::new();
        for l in t.lines() {
            if let Some(h) = l.strip_prefix("# HELP ") {
                let name = h.split(' ').next().unwrap();
                assert!(helped.insert(name.to_string()), "second HELP: {l}");
            } else if let Some(ty) = l.strip_prefix("# TYPE ") {
                let (name, kind) = ty.split_once(' ').unwrap();
                assert!(helped.contains(name), "TYPE before HELP: {l}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{l}");
                assert!(
                    typed.insert(name.to_string(), kind.to_string()).is_none(),
                    "{l}"
                );
            } else {
                let (series, v) = l.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                assert!(typed.contains_key(name), "sample before its TYPE: {l}");
                let v = v.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
                assert!(out.insert(series.to_string(), v).is_none(), "twice: {l}");
            }
        }
        out
    }

    #[test]
    fn names_types_and_labels_follow_the_conventions() {
        let t = render(&metrics());
        let s = parse(&t);
        assert_eq!(s["ringtrain_round_restarts_total"], 1.0);
        assert_eq!(s["ringtrain_global_step"], 40.0);
        assert_eq!(s["ringtrain_run_steps"], 100.0);
        assert_eq!(s["ringtrain_epochs_completed"], 1.0);
        assert_eq!(s["ringtrain_run_epochs"], 3.0);
        assert_eq!(s["ringtrain_valid_accuracy_ratio"], 0.9);
        assert_eq!(
            s["ringtrain_last_checkpoint_timestamp_seconds"],
            1_700_000_000.0
        );
        assert!(
            !t.contains("ringtrain_valid_loss"),
            "absent values are left out: {t}"
        );
        let info = format!(
            r#"ringtrain_info{{run_id="run \"1\"",version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(s[&info], 1.0);
        assert_eq!(
            s[r#"ringtrain_rank_info{rank="0",worker_id="w0",host="10.0.0.1",device="cpu"}"#],
            1.0
        );
        assert_eq!(s[r#"ringtrain_rank_global_step{rank="1"}"#], 39.0);
        assert_eq!(
            s[r#"ringtrain_rank_last_heartbeat_timestamp_seconds{rank="0"}"#],
            1_700_000_000.25
        );
        assert_eq!(s[r#"ringtrain_rank_train_images_total{rank="0"}"#], 6400.0);
        assert_eq!(s["ringtrain_train_images_total"], 9600.0);
        assert_eq!(
            s[r#"ringtrain_rank_allreduce_seconds_total{rank="1"}"#],
            0.5
        );
        assert_eq!(s[r#"ringtrain_rank_allreduces_total{rank="1"}"#], 100.0);
        assert_eq!(s[r#"ringtrain_rank_restarts_total{rank="0"}"#], 1.0);
        // Value metrics carry `rank` only; identity is on ringtrain_rank_info.
        for series in s.keys().filter(|k| k.starts_with("ringtrain_rank_")) {
            assert!(
                series.starts_with("ringtrain_rank_info{") || !series.contains(','),
                "{series}"
            );
        }
        // The old names are gone.
        for old in [
            "ringtrain_step ",
            "ringtrain_steps ",
            "ringtrain_epoch ",
            "ringtrain_epochs ",
            "_age_seconds",
            "_per_second",
            "ringtrain_rank_restarts{",
            "ringtrain_rank_step{",
            "ringtrain_rank_allreduce_seconds{",
        ] {
            assert!(!t.contains(old), "{old} in {t}");
        }
    }

    #[test]
    fn the_status_is_a_state_set_with_one_series_per_status() {
        for current in STATUSES {
            let m = Metrics {
                status: current,
                ..metrics()
            };
            let s = parse(&render(&m));
            for st in STATUSES {
                let series = format!("ringtrain_run_status{{status=\"{}\"}}", status_name(st));
                assert_eq!(s[&series], f64::from(u8::from(st == current)), "{series}");
            }
            assert!(
                !s.keys()
                    .any(|k| k.starts_with("ringtrain_info") && k.contains("status")),
                "the info metric has no status label"
            );
        }
    }

    #[test]
    fn rank_counters_survive_a_smaller_round_and_never_go_down() {
        // Before: two ranks. After: rank 1's worker was lost, the next round has one rank,
        // and rank 0's new worker process started counting from 0 (the state machine adds
        // what it reports to the slot: `state/metrics.rs`).
        let before = parse(&render(&metrics()));
        let after = Metrics {
            round: 3,
            world_size: 1,
            ranks: vec![rank(0, "w2", None)],
            rank_totals: totals([6464, 3200], [2, 0]),
            ..metrics()
        };
        let after = parse(&render(&after));
        for (series, v) in before.iter().filter(|(k, _)| k.contains("_total")) {
            let now = after
                .get(series)
                .unwrap_or_else(|| panic!("{series} vanished"));
            assert!(now >= v, "{series}: {v} then {now}");
        }
        assert!(!after.contains_key(r#"ringtrain_rank_global_step{rank="1"}"#));
    }

    #[test]
    fn connections_are_labelled_by_port() {
        let cfg = crate::guard::GuardConfig {
            max_connections: 4,
            max_pending: 4,
            handshake_timeout: std::time::Duration::from_secs(1),
            tcp_keepalive: std::time::Duration::from_secs(1),
        };
        let (grpc, http) = (Guard::new("gRPC", cfg), Guard::new("HTTP", cfg));
        let s = parse(&render_connections(&[&grpc, &http]));
        for port in ["grpc", "http"] {
            assert_eq!(
                s[&format!("ringtrain_connections{{port=\"{port}\",state=\"pending\"}}")],
                0.0
            );
            assert_eq!(
                s[&format!("ringtrain_connections_accepted_total{{port=\"{port}\"}}")],
                0.0
            );
            assert_eq!(
                s[&format!(
                    "ringtrain_connections_closed_total{{port=\"{port}\",reason=\"evicted\"}}"
                )],
                0.0
            );
        }
        assert_eq!(render_connections(&[]), "", "no guard, no family");
    }

    #[test]
    fn a_whole_scrape_parses_and_values_are_spelled_as_the_format_wants() {
        parse(&scrape(&metrics(), &[]));
        assert_eq!(
            [
                value(3.0),
                value(0.25),
                value(f64::NAN),
                value(f64::INFINITY),
                value(f64::NEG_INFINITY)
            ],
            ["3", "0.25", "NaN", "+Inf", "-Inf"]
        );
    }

    #[test]
    fn status_json_keeps_the_dashboards_fields() {
        let j = status_json(&metrics());
        assert_eq!(j["ranks"][0]["worker_id"], "w0");
        assert_eq!(j["ranks"][0]["images_per_s"], 2500.0);
        assert!(j["ranks"][1]["images_per_s"].is_null());
        assert_eq!(j["ranks"][1]["host"], "10.0.0.2");
        assert_eq!(j["checkpoint_age_s"], 1.5);
        assert_eq!(j["train_images_per_s"], 5000.0);
    }
}
