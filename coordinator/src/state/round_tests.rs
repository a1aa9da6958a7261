//! Unit tests of rounds and checkpoints in the state machine (`rounds.rs`, `midepoch.rs`).

use std::time::Instant;

use super::midepoch::MidReport;
use super::tests::{join_args, prepared_with, published, report, running_with, RUN, T1};
use super::*;

/// Round 2's token (`round_token` is 1000 + round in tests).
const T2: u64 = 1002;

fn checkpoints(actions: &[Action]) -> Vec<(u32, u32, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Output(Output::Checkpoint(c)) => {
                Some((c.state.epoch, c.state.step_in_epoch, c.state.global_step))
            }
            _ => None,
        })
        .collect()
}

fn mid(rank: u32, step_in_epoch: u32, global_step: u64, hash: &str) -> Event {
    Event::Checkpoint {
        run_id: RUN.into(),
        round_token: T1,
        report: MidReport {
            rank: Rank(rank),
            epoch: 1,
            step_in_epoch,
            global_step,
            step_losses: vec![0.5 + rank as f32; step_in_epoch as usize],
            params_hash: hash.into(),
            model: if rank == 0 { b"m".to_vec() } else { vec![] },
            optimizer: if rank == 0 { b"o".to_vec() } else { vec![] },
            stop: false,
            preempted: false,
        },
    }
}

fn stop(e: Event, preempted: bool) -> Event {
    match e {
        Event::Checkpoint {
            run_id,
            round_token,
            mut report,
        } => {
            report.stop = true;
            report.preempted = preempted;
            Event::Checkpoint {
                run_id,
                round_token,
                report,
            }
        }
        e => e,
    }
}

#[test]
fn every_epoch_end_is_a_checkpoint_and_the_best_is_tracked() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    let acts = s.on_event(report(1, 0, "h"), t0).unwrap();
    // 2 steps per epoch: after epoch 0, epoch 1 is next at global step 2.
    assert_eq!(checkpoints(&acts), vec![(1, 0, 2)]);
    let r = s.snapshot().resume.unwrap();
    assert_eq!(
        (r.epoch, r.global_step, r.checkpoint.as_str()),
        (1, 2, "e0001-s0000000002")
    );
    assert_eq!(
        s.best.as_ref().map(|b| b.1.as_str()),
        Some("e0001-s0000000002")
    );
}

#[test]
fn a_lost_rank_ends_the_round_and_the_next_resumes_from_the_checkpoint() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(1), t0);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    s.on_event(report(1, 0, "h"), t0).unwrap();
    let acts = s
        .on_event(
            Event::ProcessExited {
                worker_id: WorkerId("w-b".into()),
                success: false,
                aborted: false,
                reason: "w-b was killed".into(),
            },
            t0,
        )
        .unwrap();
    assert!(published(&acts));
    let snap = s.snapshot();
    assert_eq!(
        (snap.status, snap.round, snap.round_token),
        (Status::Rendezvous, 2, T2)
    );
    // The old round's calls are stale: the worker re-joins.
    let hb = Event::Heartbeat {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(0),
        worker_id: WorkerId("w-a".into()),
        epoch: 1,
        step: 3,
        perf: Default::default(),
    };
    assert_eq!(
        s.on_event(hb, t0).unwrap_err(),
        RunError::StaleRound { round: 2 }
    );
    s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    s.on_event(Event::Join(join_args("w-b")), t0).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.status, Status::Running);
    assert_eq!(snap.resume.unwrap().epoch, 1);
    assert_eq!(snap.epochs_done, 1, "the table keeps the completed epoch");
    // The next loss exceeds max_restarts = 1: the run fails.
    s.on_event(Event::Join(join_args("w-a")), t0).unwrap();
    assert_eq!(s.verdict().0, Status::Failed);
    assert!(s.verdict().1.contains("re-joined"), "{}", s.verdict().1);
    assert!(s
        .verdict()
        .1
        .ends_with("(no restarts left: max_restarts = 1)"));
}

#[test]
fn checkpoints_inside_an_epoch_need_every_rank_at_the_same_step() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    s.on_event(report(1, 0, "h"), t0).unwrap();
    // Epoch 1 covers global steps 2..4: one step in is global step 3.
    assert!(matches!(
        s.on_event(mid(0, 1, 9, "h"), t0),
        Err(RunError::BadRequest(_))
    ));
    assert!(s.on_event(mid(0, 1, 3, "h"), t0).unwrap().is_empty());
    let acts = s.on_event(mid(1, 1, 3, "h"), t0).unwrap();
    assert_eq!(checkpoints(&acts), vec![(1, 1, 3)]);
    let r = s.snapshot().resume.unwrap();
    assert_eq!(
        (r.step_in_epoch, r.epoch_losses.as_slice()),
        (1, &[1.0f32][..])
    );
    assert_eq!(s.snapshot().checkpoint_step, 3);
    assert_eq!(s.verdict().0, Status::Running);
}

#[test]
fn a_preempted_rank_stops_at_a_checkpoint_without_using_a_restart() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    s.on_event(report(1, 0, "h"), t0).unwrap();
    s.on_event(stop(mid(0, 1, 3, "h"), false), t0).unwrap();
    s.on_event(stop(mid(1, 1, 3, "h"), true), t0).unwrap();
    // max_restarts = 0, yet the round ended and the next one is open.
    let snap = s.snapshot();
    assert_eq!((snap.status, snap.round), (Status::Rendezvous, 2));
    assert_eq!(snap.resume.unwrap().global_step, 3);
    assert!(!snap.stopped);
}

#[test]
fn a_stopping_coordinator_asks_for_a_stop_checkpoint_then_refuses_joins() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    s.on_event(Event::RequestStop, t0).unwrap();
    assert!(s.snapshot().stop_requested && !s.snapshot().stopped);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    s.on_event(report(1, 0, "h"), t0).unwrap();
    s.on_event(stop(mid(0, 1, 3, "h"), false), t0).unwrap();
    s.on_event(stop(mid(1, 1, 3, "h"), false), t0).unwrap();
    assert!(s.snapshot().stopped);
    assert_eq!(
        s.on_event(Event::Join(join_args("w-a")), t0).unwrap_err(),
        RunError::Stopping
    );
    // Before any round runs there is nothing to checkpoint: stopped at once.
    let mut idle = RunState::new(prepared_with(0), t0);
    idle.on_event(Event::RequestStop, t0).unwrap();
    assert!(idle.snapshot().stopped);
}

#[test]
fn replicas_that_differ_at_a_checkpoint_fail_the_run() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(3), t0);
    s.on_event(report(0, 0, "h"), t0).unwrap();
    s.on_event(report(1, 0, "h"), t0).unwrap();
    s.on_event(mid(0, 1, 3, "aa"), t0).unwrap();
    s.on_event(mid(1, 1, 3, "bb"), t0).unwrap();
    assert_eq!(s.verdict().0, Status::Failed);
    assert!(
        s.verdict().1.contains("rank 0 aa, rank 1 bb"),
        "{}",
        s.verdict().1
    );
}
