//! Unit tests of the run state machine: every transition, driven with an explicit `now`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{Recipe, RunConfig};
use crate::plan::DatasetView;
use crate::rendezvous::{Candidate, RendezvousError};

pub(super) const RUN: &str = "run-1";
/// Round 1's token (`rounds::round_token` is predictable in tests).
pub(super) const T1: u64 = 1001;

/// 2 workers, 8 training images, batch 4: 2 per rank per step, 2 steps per epoch, 2 epochs.
fn prepared() -> Arc<Prepared> {
    prepared_with(0)
}

/// The run above, allowed `max_restarts` round restarts.
pub(super) fn prepared_with(max_restarts: u32) -> Arc<Prepared> {
    let config = RunConfig {
        data: "d".into(),
        workers: 2,
        recipe: Recipe {
            batch_size: 4,
            epochs: Some(2),
            ..Recipe::default()
        },
        max_restarts,
        ..RunConfig::default()
    };
    let files = |split: &str, n: usize| {
        (0..n)
            .map(|i| (format!("{split}/c{}/{i}.png", i % 2), (i % 2) as u32))
            .collect()
    };
    let dataset = DatasetView {
        root: "/data".into(),
        classes: vec!["c0".into(), "c1".into()],
        train: files("training", 8),
        valid: files("testing", 4),
        fingerprint: "fp".into(),
        skipped: vec![],
        geometry: ringtrain_common::data::Geometry::MNIST,
    };
    Arc::new(Prepared {
        config: config.resolved(0),
        run_id: RUN.into(),
        run_dir: "runs/x".into(),
        dataset,
    })
}

pub(super) fn join_args(id: &str) -> JoinArgs {
    JoinArgs {
        protocol_version: PROTOCOL_VERSION,
        run_id: String::new(),
        model: String::new(),
        dataset_fingerprint: "fp".into(),
        candidate: Candidate {
            worker_id: WorkerId(id.into()),
            collective_addr: format!("{id}:9"),
            device: "cpu".into(),
            device_uuid: String::new(),
        },
        secret: Vec::new(),
        fresh_secret: secret_for(id),
    }
}

/// A Join of `id` that carries the secret its first Join got (the same worker again).
pub(super) fn rejoin_args(id: &str) -> JoinArgs {
    JoinArgs {
        secret: secret_for(id).0.to_vec(),
        ..join_args(id)
    }
}

/// The secret a test worker gets on its first Join (distinct per id).
pub(super) fn secret_for(id: &str) -> Secret {
    let mut b = [0u8; 32];
    for (i, c) in id.bytes().enumerate() {
        b[i % 32] ^= c;
    }
    b[31] ^= 0x5a;
    Secret(b)
}

/// A params hash for a test tag ("h", "aa"): 16 hex digits, distinct per tag.
pub(super) fn hex16(tag: &str) -> String {
    let h = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// A small model and optimizer state (safetensors) and their digests, as rank 0 uploads them.
pub(super) fn state_bytes() -> (Vec<u8>, Vec<u8>, String, String) {
    use ringtrain_common::checkpoint::digest::{f32_safetensors, state_digest};
    let m = f32_safetensors(&[("w", &[2], &[0.5, -1.0])]);
    let o = f32_safetensors(&[
        ("exp_avg", &[2], &[0.0, 0.1]),
        ("exp_avg_sq", &[2], &[0.0, 0.2]),
    ]);
    let (md, od) = (state_digest(&m).unwrap(), state_digest(&o).unwrap());
    (m, o, md, od)
}

/// The lines for people among `actions` (round ends, stragglers).
pub(super) fn notices(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Output(Output::Notice(l)) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn published(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Publish))
}

fn running(t0: Instant) -> RunState {
    running_with(prepared(), t0)
}

/// `p`'s run with both workers joined.
pub(super) fn running_with(p: Arc<Prepared>, t0: Instant) -> RunState {
    let mut s = RunState::new(p, t0);
    s.on_event(Event::Join(join_args("w-b")), t0).unwrap();
    let acts = s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    assert!(published(&acts));
    assert!(matches!(acts[0], Action::Output(Output::RunInfo(_))));
    s
}

pub(super) fn report(rank: u32, epoch: u32, hash: &str) -> Event {
    let (m, o, model_digest, optimizer_digest) = state_bytes();
    Event::Epoch {
        run_id: RUN.into(),
        round_token: T1,
        report: EpochReport {
            rank: Rank(rank),
            epoch,
            step_losses: vec![0.5, 0.25],
            valid_loss_sum: 1.0,
            valid_correct: 2,
            valid_count: 2,
            params_hash: hex16(hash),
            train_seconds: 1.0,
            model: if rank == 0 { m } else { vec![] },
            optimizer: if rank == 0 { o } else { vec![] },
            model_digest,
            optimizer_digest,
        },
    }
}

fn leave(rank: u32, ok: bool, weights: &[u8]) -> Event {
    Event::Leave {
        run_id: RUN.into(),
        round_token: T1,
        recoverable: false,
        rank: Rank(rank),
        ok,
        reason: "boom".into(),
        weights: weights.to_vec(),
        work: None,
    }
}

fn reason(s: &RunState) -> String {
    assert_eq!(s.verdict().0, Status::Failed);
    s.verdict().1
}

#[test]
fn join_refusals() {
    let t0 = Instant::now();
    let mut s = RunState::new(prepared(), t0);
    let w = WorkerId("w".into());
    let bad = |f: fn(&mut JoinArgs)| {
        let mut a = join_args("w");
        f(&mut a);
        Event::Join(a)
    };
    assert_eq!(
        s.on_event(bad(|a| a.protocol_version = 0), t0).unwrap_err(),
        RunError::VersionMismatch {
            worker_id: w.clone(),
            got: 0,
            want: PROTOCOL_VERSION
        }
    );
    assert_eq!(
        s.on_event(bad(|a| a.run_id = "other".into()), t0)
            .unwrap_err(),
        RunError::RunIdMismatch {
            got: "other".into(),
            want: RUN.into()
        }
    );
    assert_eq!(
        s.on_event(bad(|a| a.model = "basic".into()), t0)
            .unwrap_err(),
        RunError::ModelMismatch {
            worker_id: w.clone(),
            got: "basic".into(),
            want: "resnet".into()
        }
    );
    let err = s
        .on_event(bad(|a| a.dataset_fingerprint = "xx".into()), t0)
        .unwrap_err();
    assert_eq!(
        err,
        RunError::DatasetMismatch {
            worker_id: w.clone(),
            got: "xx".into(),
            want: "fp".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "dataset mismatch: worker w has fingerprint xx, coordinator fp"
    );
    assert!(matches!(
        s.on_event(bad(|a| a.candidate.collective_addr.clear()), t0),
        Err(RunError::BadRequest(_))
    ));
    // Matching run id and model are accepted.
    s.on_event(
        bad(|a| {
            a.run_id = RUN.into();
            a.model = "resnet".into();
        }),
        t0,
    )
    .unwrap();
    // Its id is now held: without its secret a second Join is refused before the rendezvous
    // sees it; with it, the rendezvous refuses the duplicate.
    assert!(matches!(
        s.on_event(Event::Join(join_args("w")), t0).unwrap_err(),
        RunError::IdentityHeld { worker_id, holder } if worker_id == w && holder.contains("waiting in the rendezvous")
    ));
    assert_eq!(
        s.on_event(Event::Join(rejoin_args("w")), t0).unwrap_err(),
        RunError::Rendezvous(RendezvousError::Duplicate(w))
    );
    assert_eq!(s.snapshot().status, Status::Rendezvous);
}

#[test]
fn round_closes_into_running_with_sorted_ranks() {
    let t0 = Instant::now();
    let mut s = running(t0);
    let snap = s.snapshot();
    assert_eq!(snap.status, Status::Running);
    let m = snap.membership.unwrap();
    assert_eq!(m.rank_of(&WorkerId("w-a".into())), Some(Rank(0)));
    assert_eq!(m.rank_of(&WorkerId("w-b".into())), Some(Rank(1)));
    let plan = snap.plan.unwrap();
    assert_eq!(
        (plan.batch_per_worker, plan.steps_per_epoch, plan.epochs),
        (2, 2, 2)
    );
    assert_eq!(
        s.on_event(Event::Join(join_args("w-c")), t0).unwrap_err(),
        RunError::Rendezvous(RendezvousError::Closed { world_size: 2 })
    );
}

#[test]
fn calls_before_the_round_or_for_unknown_ranks_are_refused() {
    let t0 = Instant::now();
    let mut s = RunState::new(prepared(), t0);
    let hb = |rank: u32, run: &str, id: &str| Event::Heartbeat {
        run_id: run.into(),
        round_token: T1,
        rank: Rank(rank),
        worker_id: WorkerId(id.into()),
        epoch: 0,
        step: 0,
        work: Default::default(),
        in_collective: false,
    };
    assert_eq!(
        s.on_event(hb(0, RUN, "w-a"), t0).unwrap_err(),
        RunError::NotRunning {
            status: Status::Rendezvous
        }
    );
    let mut s = running(t0);
    assert_eq!(
        s.on_event(hb(2, RUN, "w-a"), t0).unwrap_err(),
        RunError::UnknownRank {
            rank: Rank(2),
            world_size: 2
        }
    );
    assert!(matches!(
        s.on_event(hb(0, "nope", "w-a"), t0),
        Err(RunError::RunIdMismatch { .. })
    ));
    assert!(matches!(
        s.on_event(hb(0, RUN, "w-b"), t0),
        Err(RunError::WrongWorker { .. })
    ));
    s.on_event(hb(0, RUN, "w-a"), t0).unwrap();
    assert!(matches!(
        s.epoch_plan(RUN, T1, Rank(0), 2),
        Err(RunError::BadRequest(_))
    ));
    assert_eq!(s.epoch_plan(RUN, T1, Rank(1), 1).unwrap().first_step, 2);
}

#[test]
fn pixel_barrier_merges_once_everyone_reported() {
    let t0 = Instant::now();
    let mut s = running(t0);
    // Each rank has 4 training images of 784 pixels; `white` of them are all 255.
    let px = |rank, white: u64| Event::PixelStats {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(rank),
        skipped: vec![],
        stats: vec![PixelStats {
            sum: 255 * 784 * white,
            sum_sq: 255 * 255 * 784 * white,
            count: 4 * 784,
        }],
    };
    assert!(s.on_event(px(1, 1), t0).unwrap().is_empty());
    assert!(s.snapshot().norm.is_none());
    let acts = s.on_event(px(0, 2), t0).unwrap();
    assert!(published(&acts));
    assert_eq!(
        s.snapshot().norm,
        Some(vec![PixelStats {
            sum: 255 * 784 * 3,
            sum_sq: 255 * 255 * 784 * 3,
            count: 8 * 784
        }])
    );
    // A retry after the barrier is harmless.
    assert!(s.on_event(px(0, 2), t0).unwrap().is_empty());
}

#[test]
fn files_a_rank_skipped_must_be_its_own_and_are_listed_and_counted() {
    let t0 = Instant::now();
    let mut s = running(t0);
    let plan = s.plan.clone().unwrap();
    let d = s.prepared.dataset.clone();
    let own = d.train[plan.shard_of(Rank(0)).0[0]].0.clone();
    let foreign = d.train[plan.shard_of(Rank(1)).0[0]].0.clone();
    let px = |skipped: Vec<(String, String)>| Event::PixelStats {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(0),
        stats: vec![PixelStats::of(&[9; 784])],
        skipped,
    };
    let why = |p: &str| (p.to_string(), format!("cannot decode /w/{p}: truncated"));
    for (skipped, want) in [
        (vec![why(&foreign)], "is not a file of its shard"),
        (vec![why("../../etc/passwd")], "is not a file of its shard"),
        (vec![why(&own), why(&own)], "is listed twice"),
        (
            vec![(own.clone(), "x".repeat(5000))],
            "has an over-long reason",
        ),
    ] {
        let err = s.on_event(px(skipped), t0).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(s.on_event(px(vec![why(&own)]), t0).unwrap().is_empty());
    let listed = s.all_skipped();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, std::path::Path::new("/data").join(&own));
    assert!(listed[0].reason.to_string().contains("truncated"));
    assert_eq!(s.summary(t0).skipped, 1);
}

#[test]
fn pixel_sums_that_no_shard_can_produce_are_refused() {
    let t0 = Instant::now();
    let mut s = running(t0);
    let px = |sum: u64, sum_sq: u64, count: u64| Event::PixelStats {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(0),
        stats: vec![PixelStats { sum, sum_sq, count }],
        skipped: vec![],
    };
    for (sum, sum_sq, count, why) in [
        (0, 0, 0, "count 0"),
        (0, 0, 5 * 784, "count 3920"),
        (0, 0, 700, "count 700"),
        (256 * 784, 65536 * 784, 784, "cannot come from"),
        // Sums that would wrap a u64 once merged (the forged report).
        (u64::MAX, u64::MAX, 784, "cannot come from"),
    ] {
        let err = s.on_event(px(sum, sum_sq, count), t0).unwrap_err();
        assert!(
            matches!(&err, RunError::BadRequest(m) if m.contains("rank 0 pixel statistics") && m.contains(why)),
            "{err}"
        );
    }
    // A 1-channel run: RGB sums are refused, whatever they say.
    let rgb = Event::PixelStats {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(0),
        stats: vec![PixelStats::of(&[1; 784]); 3],
        skipped: vec![],
    };
    let err = s.on_event(rgb, t0).unwrap_err();
    assert!(err.to_string().contains("3 channels"), "{err}");
    assert!(s.snapshot().norm.is_none(), "nothing was merged");
}

#[test]
fn epoch_reports_with_impossible_numbers_or_forged_state_are_refused() {
    let t0 = Instant::now();
    let mut s = running(t0);
    let with = |rank: u32, f: &dyn Fn(&mut EpochReport)| {
        let mut e = report(rank, 0, "h");
        if let Event::Epoch { report, .. } = &mut e {
            f(report);
        }
        e
    };
    let (_, _, _, od) = state_bytes();
    let forged = ringtrain_common::checkpoint::digest::f32_safetensors(&[("w", &[2], &[7.0, 7.0])]);
    let cases: Vec<(u32, Box<dyn Fn(&mut EpochReport)>, &str)> = vec![
        (
            1,
            Box::new(|r| r.valid_correct = 3),
            "valid_correct 3 > valid_count 2",
        ),
        (
            1,
            Box::new(|r| r.valid_count = 3),
            "valid_count 3 outside 1..=2",
        ),
        (1, Box::new(|r| r.valid_count = 0), "valid_count 0"),
        (
            1,
            Box::new(|r| r.valid_loss_sum = f64::NAN),
            "valid_loss_sum NaN",
        ),
        (
            1,
            Box::new(|r| r.valid_loss_sum = -1.0),
            "valid_loss_sum -1",
        ),
        (
            1,
            Box::new(|r| r.train_seconds = f64::INFINITY),
            "train_seconds inf",
        ),
        (
            1,
            Box::new(|r| r.params_hash = "h".into()),
            "not 16 hex digits",
        ),
        (
            1,
            Box::new(|r| r.model_digest = "x".into()),
            "model_digest \"x\"",
        ),
        (1, Box::new(|r| r.model = vec![1]), "only rank 0 uploads"),
        (
            0,
            Box::new(|r| r.model = b"not safetensors".to_vec()),
            "model state: not a valid safetensors",
        ),
        (0, Box::new(|r| r.optimizer.clear()), "no optimizer state"),
        (
            0,
            Box::new(move |r| r.model = forged.clone()),
            "its model state hashes to",
        ),
        (
            0,
            Box::new(move |r| r.optimizer_digest = "0".repeat(64)),
            "not to the optimizer_digest",
        ),
    ];
    for (rank, f, why) in cases {
        let err = s.on_event(with(rank, &*f), t0).unwrap_err();
        assert!(
            matches!(&err, RunError::BadRequest(m) if m.contains(why)),
            "{why}: {err}"
        );
    }
    assert_eq!(od.len(), 64);
    // Nothing was counted: the real reports still complete the epoch.
    assert!(s.on_event(report(0, 0, "h"), t0).unwrap().is_empty());
    s.on_event(report(1, 0, "h"), t0).unwrap();
    assert_eq!(s.snapshot().epochs_done, 1);
}

#[test]
fn ranks_that_agree_on_the_hash_but_not_on_the_state_fail_the_run() {
    let t0 = Instant::now();
    let mut s = running(t0);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    let mut other = report(1, 0, "h");
    if let Event::Epoch { report, .. } = &mut other {
        report.optimizer_digest = "ab".repeat(32);
    }
    s.on_event(other, t0).unwrap();
    assert!(
        reason(&s).contains("the ranks hold different training state"),
        "{}",
        reason(&s)
    );
}

#[test]
fn epoch_barrier_and_bad_reports() {
    let t0 = Instant::now();
    let mut s = running(t0);
    assert!(
        matches!(
            s.on_event(report(0, 1, "h"), t0),
            Err(RunError::BadRequest(_))
        ),
        "future epoch"
    );
    let mut short = report(0, 0, "h");
    if let Event::Epoch { report, .. } = &mut short {
        report.step_losses.pop();
    }
    assert!(
        matches!(s.on_event(short, t0), Err(RunError::BadRequest(_))),
        "wrong number of losses"
    );
    assert!(s.on_event(report(0, 0, "h"), t0).unwrap().is_empty());
    let t1 = t0 + Duration::from_secs(3);
    let acts = s.on_event(report(1, 0, "h"), t1).unwrap();
    let Some(Action::Output(Output::Epoch(r))) = acts.first() else {
        panic!("expected the epoch output, got {acts:?}")
    };
    assert_eq!((r.row.epoch, r.row.seconds, r.row.accuracy), (0, 3.0, 1.0));
    assert_eq!(s.snapshot().epochs_done, 1);
    // Retrying a completed epoch changes nothing.
    assert!(s.on_event(report(1, 0, "h"), t1).unwrap().is_empty());
}

#[test]
fn hash_mismatch_fails_the_run_naming_ranks() {
    let t0 = Instant::now();
    let mut s = running(t0);
    s.on_event(report(0, 0, "aa"), t0).unwrap();
    let acts = s.on_event(report(1, 0, "bb"), t0).unwrap();
    assert!(published(&acts));
    assert_eq!(
        reason(&s),
        format!(
            "replicas diverged after epoch 0: rank 0 {}, rank 1 {}",
            hex16("aa"),
            hex16("bb")
        )
    );
    // Every later call sees the failure.
    assert_eq!(
        s.on_event(report(0, 1, "aa"), t0).unwrap_err(),
        RunError::Failed { reason: reason(&s) }
    );
}

#[test]
fn all_leave_ok_finishes_and_writes_weights() {
    let t0 = Instant::now();
    let mut s = running(t0);
    for e in 0..2 {
        s.on_event(report(0, e, "h"), t0).unwrap();
        s.on_event(report(1, e, "h"), t0).unwrap();
    }
    // Final weights that are not the agreed state are refused; the agreed ones are written.
    let err = s.on_event(leave(0, true, b"weights"), t0).unwrap_err();
    assert!(
        matches!(&err, RunError::BadRequest(m) if m.contains("final weights")),
        "{err}"
    );
    let forged = ringtrain_common::checkpoint::digest::f32_safetensors(&[("w", &[2], &[9.0, 9.0])]);
    let err = s.on_event(leave(0, true, &forged), t0).unwrap_err();
    assert!(
        err.to_string()
            .contains("not the state the ranks agreed on"),
        "{err}"
    );
    let (weights, ..) = state_bytes();
    let acts = s.on_event(leave(0, true, &weights), t0).unwrap();
    assert!(matches!(acts.as_slice(), [Action::Output(Output::Weights(w))] if *w == weights));
    assert_eq!(s.verdict().0, Status::Running);
    let acts = s.on_event(leave(1, true, b""), t0).unwrap();
    assert!(
        matches!(acts.as_slice(), [Action::Output(Output::Summary(sm)), Action::Publish] if sm.status == "finished" && sm.params_hash.as_deref() == Some(hex16("h").as_str()))
    );
    assert_eq!(s.verdict(), (Status::Finished, String::new()));
    // Terminal states never change.
    s.on_event(Event::Fail("late".into()), t0).unwrap();
    assert_eq!(s.verdict().0, Status::Finished);
}

#[test]
fn leave_with_failure_or_too_early_fails_the_run() {
    let t0 = Instant::now();
    let mut s = running(t0);
    s.on_event(leave(1, false, b""), t0).unwrap();
    assert_eq!(reason(&s), "rank 1 (w-b): boom");
    let mut s = running(t0);
    s.on_event(leave(0, true, b""), t0).unwrap();
    assert_eq!(reason(&s), "rank 0 (w-a) left after 0 of 2 epochs");
}

#[test]
fn watchdog_fails_a_silent_rank_but_not_a_waiting_one() {
    let t0 = Instant::now();
    let mut s = running(t0);
    let hb = |rank: u32| Event::Heartbeat {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(rank),
        worker_id: WorkerId(String::new()),
        epoch: 0,
        step: 0,
        work: Default::default(),
        in_collective: false,
    };
    // The ticker runs every second (sparser ticks would read as a paused coordinator).
    let tick_until = |s: &mut RunState, from: u64, to: u64| {
        for t in from..=to {
            s.on_event(Event::Tick, t0 + Duration::from_secs(t))
                .unwrap();
        }
    };
    s.on_event(Event::WaitStart(Rank(0)), t0).unwrap();
    for t in [5, 10, 15] {
        tick_until(&mut s, t - 4, t);
        s.on_event(hb(1), t0 + Duration::from_secs(t)).unwrap();
    }
    // Rank 0 has been silent for 20 s, but it waits in a barrier call: alive.
    tick_until(&mut s, 16, 20);
    assert_eq!(s.verdict().0, Status::Running);
    s.on_event(Event::WaitEnd(Rank(0)), t0 + Duration::from_secs(20))
        .unwrap();
    for t in [25, 30] {
        tick_until(&mut s, t - 4, t);
        s.on_event(hb(1), t0 + Duration::from_secs(t)).unwrap();
    }
    assert_eq!(
        s.verdict().0,
        Status::Running,
        "15 s after the last sign of life is not yet more than 3 × 5 s"
    );
    tick_until(&mut s, 31, 35);
    s.on_event(hb(1), t0 + Duration::from_secs(35)).unwrap();
    s.on_event(Event::Tick, t0 + Duration::from_millis(35_100))
        .unwrap();
    assert_eq!(
        reason(&s),
        "rank 0 (w-a) missed 3 heartbeats: not heard from for 15.1 s (no restarts left: max_restarts = 0)"
    );
    assert!(!s.all_informed());
    s.on_event(hb(0), t0 + Duration::from_secs(36)).unwrap();
    s.on_event(hb(1), t0 + Duration::from_secs(36)).unwrap();
    assert!(
        s.all_informed(),
        "both ranks heard FAILED in a heartbeat reply"
    );
}

#[test]
fn rendezvous_timeout_fails_the_run() {
    let t0 = Instant::now();
    let mut s = RunState::new(prepared(), t0);
    s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    s.on_event(Event::Tick, t0 + Duration::from_secs(600))
        .unwrap();
    let f = s.snapshot().failure.unwrap();
    assert!(f.rendezvous_timeout);
    assert_eq!(
        f.reason,
        "rendezvous timed out after 600 s: 1 of 2 workers joined (at least 2 needed)"
    );
    assert!(matches!(
        s.on_event(Event::Join(join_args("w-b")), t0),
        Err(RunError::Rendezvous(RendezvousError::Timeout { .. }))
    ));
}

#[test]
fn process_exits() {
    let t0 = Instant::now();
    let exited = |id: &str, success| Event::ProcessExited {
        worker_id: WorkerId(id.into()),
        success,
        aborted: false,
        reason: format!("{id} exited"),
    };
    // Before the round closes an exit changes nothing here: the Join call dropped with the
    // process, and the launcher decides whether the run can still start.
    let mut s = RunState::new(prepared(), t0);
    s.on_event(exited("w-a", true), t0).unwrap();
    assert_eq!(s.verdict().0, Status::Rendezvous);
    // After a rank left ok, its clean exit is expected.
    let mut s = running(t0);
    for e in 0..2 {
        s.on_event(report(0, e, "h"), t0).unwrap();
        s.on_event(report(1, e, "h"), t0).unwrap();
    }
    s.on_event(leave(0, true, &state_bytes().0), t0).unwrap();
    s.on_event(exited("w-a", true), t0).unwrap();
    assert_eq!(s.verdict().0, Status::Running);
    s.on_event(exited("w-b", false), t0).unwrap();
    assert_eq!(
        reason(&s),
        "w-b exited (no restarts left: max_restarts = 0)"
    );
    assert!(s.all_informed(), "left and gone ranks need no telling");
}

#[test]
fn an_exit_right_after_a_peer_report_becomes_the_root_cause() {
    let t0 = Instant::now();
    let exited = |id: &str, aborted| Event::ProcessExited {
        worker_id: WorkerId(id.into()),
        success: false,
        aborted,
        reason: format!("{id} was killed"),
    };
    let mut s = running(t0);
    s.on_event(
        Event::Leave {
            run_id: RUN.into(),
            round_token: T1,
            recoverable: false,
            rank: Rank(0),
            ok: false,
            reason: "peer rank 1 lost".into(),
            weights: vec![],
            work: None,
        },
        t0,
    )
    .unwrap();
    assert_eq!(reason(&s), "rank 0 (w-a): peer rank 1 lost");
    // The reporter's own exit, and an exit that obeyed FAILED, are consequences.
    s.on_event(exited("w-a", false), t0).unwrap();
    s.on_event(exited("w-b", true), t0).unwrap();
    assert_eq!(reason(&s), "rank 0 (w-a): peer rank 1 lost");
    let acts = s
        .on_event(exited("w-b", false), t0 + Duration::from_millis(20))
        .unwrap();
    assert!(published(&acts));
    assert_eq!(reason(&s), "w-b was killed");
    // Too late to be the cause.
    let mut s = running(t0);
    s.on_event(
        Event::Leave {
            run_id: RUN.into(),
            round_token: T1,
            recoverable: false,
            rank: Rank(0),
            ok: false,
            reason: "x".into(),
            weights: vec![],
            work: None,
        },
        t0,
    )
    .unwrap();
    s.on_event(
        exited("w-b", false),
        t0 + ROOT_CAUSE_WINDOW + Duration::from_millis(1),
    )
    .unwrap();
    assert_eq!(reason(&s), "rank 0 (w-a): x");
}

#[test]
fn a_final_leave_brings_the_work_after_the_last_heartbeat() {
    let t0 = Instant::now();
    let mut s = running(t0);
    let work = |images| Work::from_wire(images, 0.5, 4);
    s.on_event(
        Event::Heartbeat {
            run_id: RUN.into(),
            round_token: T1,
            rank: Rank(0),
            worker_id: WorkerId("w-a".into()),
            epoch: 0,
            step: 3,
            work: work(96),
            in_collective: false,
        },
        t0,
    )
    .unwrap();
    assert_eq!(s.counters.rank_work[0].images, 96);
    let with_work = |rank: u32, images: Option<u64>| match leave(rank, true, &[]) {
        Event::Leave {
            run_id,
            round_token,
            rank,
            ok,
            recoverable,
            reason,
            weights,
            ..
        } => Event::Leave {
            run_id,
            round_token,
            rank,
            ok,
            recoverable,
            reason,
            weights,
            work: images.map(work),
        },
        _ => unreachable!(),
    };
    // Another round's Leave does not count.
    let mut stale = with_work(0, Some(64));
    if let Event::Leave {
        ref mut round_token,
        ..
    } = stale
    {
        *round_token = T1 + 1;
    }
    assert!(s.on_event(stale, t0).is_err());
    assert_eq!(s.counters.rank_work[0].images, 96);
    let _ = s.on_event(with_work(1, None), t0);
    assert_eq!(s.counters.rank_work[1].images, 0, "no counters, no change");
    let _ = s.on_event(with_work(0, Some(128)), t0);
    assert_eq!(
        s.counters.rank_work[0].images, 128,
        "the final counters count"
    );
}
