//! Unit tests of rounds and checkpoints in the state machine (`rounds.rs`, `midepoch.rs`).

use std::time::Instant;

use super::midepoch::MidReport;
use super::tests::{
    hex16, join_args, prepared_with, published, rejoin_args, report, running_with, state_bytes,
    RUN, T1,
};
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

pub(super) fn mid(rank: u32, step_in_epoch: u32, global_step: u64, hash: &str) -> Event {
    let (m, o, model_digest, optimizer_digest) = state_bytes();
    Event::Checkpoint {
        run_id: RUN.into(),
        round_token: T1,
        report: MidReport {
            rank: Rank(rank),
            epoch: 1,
            step_in_epoch,
            global_step,
            step_losses: vec![0.5 + rank as f32; step_in_epoch as usize],
            params_hash: hex16(hash),
            model: if rank == 0 { m } else { vec![] },
            optimizer: if rank == 0 { o } else { vec![] },
            model_digest,
            optimizer_digest,
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
        work: Default::default(),
        in_collective: false,
    };
    assert_eq!(
        s.on_event(hb, t0).unwrap_err(),
        RunError::StaleRound { round: 2 }
    );
    // w-a re-joins with its secret (the same worker); w-b's process exited, so its id is free
    // and its replacement joins without one.
    s.on_event(Event::Join(rejoin_args("w-a")), t0).unwrap();
    s.on_event(Event::Join(join_args("w-b")), t0).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.status, Status::Running);
    assert_eq!(snap.resume.unwrap().epoch, 1);
    assert_eq!(snap.epochs_done, 1, "the table keeps the completed epoch");
    // A stranger with w-a's id cannot end the round...
    assert!(matches!(
        s.on_event(Event::Join(join_args("w-a")), t0).unwrap_err(),
        RunError::IdentityHeld { .. }
    ));
    assert_eq!(s.snapshot().status, Status::Running);
    // ...but w-a itself re-joining is a loss, which exceeds max_restarts = 1: the run fails.
    s.on_event(Event::Join(rejoin_args("w-a")), t0).unwrap();
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
fn a_stopping_coordinator_whose_ranks_were_preempted_too_is_stopped_at_their_checkpoint() {
    // Slurm's requeue signals the coordinator and every worker at once: the ranks' own stop
    // checkpoint ends the round, and the coordinator must not wait its grace period for one.
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    s.on_event(Event::RequestStop, t0).unwrap();
    s.on_event(report(0, 0, "h"), t0).unwrap();
    s.on_event(report(1, 0, "h"), t0).unwrap();
    s.on_event(stop(mid(0, 1, 3, "h"), true), t0).unwrap();
    s.on_event(stop(mid(1, 1, 3, "h"), true), t0).unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.resume.unwrap().global_step, 3);
    assert!(snap.stopped, "{:?}", snap.status);
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
    let want = format!("rank 0 {}, rank 1 {}", hex16("aa"), hex16("bb"));
    assert!(s.verdict().1.contains(&want), "{}", s.verdict().1);
}

#[test]
fn ids_stay_held_across_rounds_until_their_holder_is_lost() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(2), t0);
    let hb = |rank: u32, id: &str| Event::Heartbeat {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(rank),
        worker_id: WorkerId(id.into()),
        epoch: 0,
        step: 1,
        work: Default::default(),
        in_collective: false,
    };
    // w-a heartbeats; w-b goes silent and is declared lost after 3 × 5 s.
    let t10 = t0 + Duration::from_secs(10);
    s.on_event(hb(0, "w-a"), t10).unwrap();
    let t16 = t0 + Duration::from_secs(16);
    s.on_event(Event::Tick, t16).unwrap();
    assert_eq!(s.snapshot().round, 2);
    // A stranger with the live worker's id is refused, naming how recently it was heard from;
    // the lost worker's id is free for its replacement.
    let err = s.on_event(Event::Join(join_args("w-a")), t16).unwrap_err();
    assert!(
        matches!(&err, RunError::IdentityHeld { holder, .. } if holder.contains("heard from 6.0 s ago")),
        "{err}"
    );
    s.on_event(Event::Join(join_args("w-b")), t16).unwrap();
    // Once w-a has not been heard from for the budget either, its id is free too.
    let t26 = t10 + Duration::from_secs(16);
    s.on_event(Event::Join(join_args("w-a")), t26).unwrap();
    assert_eq!(s.snapshot().status, Status::Running);
}

#[test]
fn a_pause_of_the_coordinator_itself_does_not_lose_the_ranks() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(2), t0);
    let tick = |s: &mut RunState, t: Instant| s.on_event(Event::Tick, t).unwrap();
    tick(&mut s, t0);
    tick(&mut s, t0 + Duration::from_secs(1));
    // SIGSTOP for 30 s: the next tick comes 30 s later; nobody could be heard meanwhile.
    let resumed = t0 + Duration::from_secs(31);
    tick(&mut s, resumed);
    assert_eq!(
        (s.snapshot().status, s.snapshot().round),
        (Status::Running, 1)
    );
    // Still counted from then on: silent past the budget after the pause, a rank is lost.
    tick(&mut s, resumed + Duration::from_secs(1));
    for k in 2..=16 {
        tick(&mut s, resumed + Duration::from_secs(k));
    }
    assert_eq!(
        s.snapshot().round,
        2,
        "silent ranks are still found after a pause"
    );
}

#[test]
fn rank_counters_add_up_across_rounds_and_new_worker_processes() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(1), t0);
    // Cumulative reports: images, 1 ms of all-reduce per image, an all-reduce per 10 images.
    let hb = |round_token: u64, rank: u32, id: &str, images: u64| Event::Heartbeat {
        run_id: RUN.into(),
        round_token,
        rank: Rank(rank),
        worker_id: WorkerId(id.into()),
        epoch: 0,
        step: 1,
        work: Work::from_wire(images, images as f64 / 1000.0, images / 10),
        in_collective: false,
    };
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    s.on_event(hb(T1, 0, "w-a", 100), at(5)).unwrap();
    s.on_event(hb(T1, 0, "w-a", 600), at(10)).unwrap();
    s.on_event(hb(T1, 1, "w-b", 80), at(10)).unwrap();
    let m = s.metrics(at(10), 0);
    // Display rates between w-a's two beats: 500 images and 50 all-reduces in 5 s.
    assert_eq!(m.ranks[0].images_per_s, Some(100.0));
    assert!((m.ranks[0].allreduce_s.unwrap() - 0.01).abs() < 1e-12);
    assert_eq!(m.ranks[1].images_per_s, None, "one beat: no rate yet");
    // w-b's process dies. In round 2 w-a goes on in the same process; w-b's replacement is a
    // new process that counts from 0.
    s.on_event(
        Event::ProcessExited {
            worker_id: WorkerId("w-b".into()),
            success: false,
            aborted: false,
            reason: "killed".into(),
        },
        at(11),
    )
    .unwrap();
    s.on_event(Event::Join(rejoin_args("w-a")), at(11)).unwrap();
    s.on_event(Event::Join(join_args("w-b")), at(11)).unwrap();
    assert_eq!(
        (s.snapshot().status, s.snapshot().round),
        (Status::Running, 2)
    );
    s.on_event(hb(T2, 0, "w-a", 700), at(15)).unwrap();
    s.on_event(hb(T2, 1, "w-b", 30), at(15)).unwrap();
    let m = s.metrics(at(15), 0);
    let images: Vec<u64> = m.rank_totals.iter().map(|r| r.work.images).collect();
    assert_eq!(images, vec![700, 110], "never lower than before: 600, 80");
    let restarts: Vec<u64> = m.rank_totals.iter().map(|r| r.restarts).collect();
    assert_eq!(restarts, vec![1, 1], "both ids re-joined");
    assert_eq!(m.ranks[0].images_per_s, None, "a new round measures afresh");
}
