//! Elastic growth in the state machine (`growth.rs`): a newcomer is queued while a round runs
//! with room, the round closes at the next epoch end with a checkpoint, the next one grows, and
//! the history says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::round_tests::mid;
use super::tests::{join_args, notices, prepared_with, rejoin_args, report};
use super::*;

/// The usual test run, but starting with 1 worker and allowed to grow to 2.
fn growable() -> Arc<Prepared> {
    let mut p = (*prepared_with(0)).clone();
    p.config.workers = 1;
    p.config.min_workers = None;
    p.config.max_workers = Some(2);
    Arc::new(p)
}

#[test]
fn a_newcomer_waits_for_the_epoch_end_and_the_next_round_grows() {
    let t0 = Instant::now();
    let mut s = RunState::new(growable(), t0);
    s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    assert_eq!(s.snapshot().status, Status::Running);
    // A newcomer is queued, not refused.
    let e = s.on_event(Event::Join(join_args("w-b")), t0).unwrap_err();
    assert!(
        matches!(
            e,
            RunError::Queued {
                world_size: 1,
                max_workers: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("admitted at its next epoch end"),
        "{e}"
    );
    // The epoch ends: its checkpoint, then the round closes to grow (not a restart).
    let t1 = t0 + Duration::from_secs(2);
    let acts = s.on_event(report(0, 0, "h"), t1).unwrap();
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Output(Output::Checkpoint(_)))),
        "the checkpoint comes first"
    );
    let said = notices(&acts);
    assert_eq!(
        said,
        ["round 1 ended: growing the world from 1 to 2 workers (w-b joining); round 2 resumes from checkpoint e0001-s0000000002 (epoch 1, step 0)"],
    );
    let snap = s.snapshot();
    assert_eq!((snap.status, snap.round), (Status::Rendezvous, 2));
    assert_eq!(s.metrics(t1, 0).restarts, 0);
    // The old member and the newcomer join: the round closes at once with both.
    s.on_event(Event::Join(rejoin_args("w-a")), t1).unwrap();
    assert_eq!(
        s.snapshot().status,
        Status::Rendezvous,
        "waits for the newcomer"
    );
    s.on_event(Event::Join(join_args("w-b")), t1).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.status, Status::Running);
    assert_eq!(snap.membership.as_ref().unwrap().world_size(), 2);
    let history = s.run_info().membership;
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].world_size, history[0].after.as_str()),
        (1, "start")
    );
    assert_eq!(history[1].world_size, 2);
    assert_eq!((history[1].from_epoch, history[1].from_global_step), (1, 2));
    assert_eq!(history[1].workers, ["w-a", "w-b"]);
    assert!(history[1]
        .after
        .starts_with("growing the world from 1 to 2"));
    // Full now: a third worker is refused as before (ALREADY_EXISTS: wait for a next round).
    let e = s.on_event(Event::Join(join_args("w-c")), t1).unwrap_err();
    assert!(matches!(e, RunError::Rendezvous(_)), "{e:?}");
}

#[test]
fn a_newcomer_that_stopped_asking_does_not_end_the_round() {
    let t0 = Instant::now();
    let mut s = RunState::new(growable(), t0);
    s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    assert!(s.on_event(Event::Join(join_args("w-b")), t0).is_err());
    // Its last Join was long before the epoch end: it gave up, nobody waits.
    let acts = s
        .on_event(report(0, 0, "h"), t0 + Duration::from_secs(60))
        .unwrap();
    assert!(notices(&acts).is_empty(), "{:?}", notices(&acts));
    assert_eq!(s.snapshot().status, Status::Running);
}

#[test]
fn with_checkpoints_inside_epochs_the_round_grows_at_the_next_one() {
    let t0 = Instant::now();
    let mut s = RunState::new(growable(), t0);
    s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    s.on_event(report(0, 0, "h"), t0).unwrap();
    assert_eq!(s.snapshot().status, Status::Running, "nobody waits yet");
    let e = s.on_event(Event::Join(join_args("w-b")), t0).unwrap_err();
    assert!(matches!(e, RunError::Queued { .. }), "{e:?}");
    // A checkpoint one step into epoch 1 (rank 0 of 1): the round grows from there.
    let acts = s.on_event(mid(0, 1, 3, "h"), t0).unwrap();
    assert_eq!(
        notices(&acts),
        ["round 1 ended: growing the world from 1 to 2 workers (w-b joining); round 2 resumes from checkpoint e0001-s0000000003 (epoch 1, step 1)"],
    );
    s.on_event(Event::Join(rejoin_args("w-a")), t0).unwrap();
    s.on_event(Event::Join(join_args("w-b")), t0).unwrap();
    let h = s.run_info().membership;
    assert_eq!(
        (
            h[1].world_size,
            h[1].from_epoch,
            h[1].from_step_in_epoch,
            h[1].from_global_step
        ),
        (2, 1, 1, 3)
    );
}
