//! The state machine's straggler and hang judgements (`stalls.rs`), driven by heartbeats.

use std::time::{Duration, Instant};

use super::straggler::Timing;
use super::tests::{notices, prepared_with, running_with, RUN, T1};
use super::*;

/// Rank `rank`'s heartbeat: `steps` steps done, each with `compute_ms` of compute.
fn beat(rank: u32, steps: u64, compute_ms: f64, in_collective: bool) -> Event {
    Event::Heartbeat {
        run_id: RUN.into(),
        round_token: T1,
        rank: Rank(rank),
        worker_id: WorkerId(String::new()),
        epoch: 0,
        step: steps,
        work: Work::default().with_timing(Timing::from_wire(
            steps as f64 * compute_ms / 1e3,
            steps as f64 * 0.001,
            steps,
        )),
        in_collective,
    }
}

fn at(t0: Instant, s: f64) -> Instant {
    t0 + Duration::from_secs_f64(s)
}

#[test]
fn a_slow_rank_is_named_once_and_cleared_once() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    let mut said = Vec::new();
    // Ten steps a beat; rank 1 ("w-b") computes 2.5 times longer than rank 0.
    for i in 1..=20u64 {
        let t = at(t0, i as f64 * 0.5);
        said.extend(notices(
            &s.on_event(beat(0, i * 10, 10.0, false), t).unwrap(),
        ));
        said.extend(notices(
            &s.on_event(beat(1, i * 10, 25.0, true), t).unwrap(),
        ));
    }
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with(
            "straggler: rank 1 (w-b on w-b) needs 25.0 ms of compute per step, 2.50x the median of the other ranks (10.0 ms)"
        ),
        "{said:?}"
    );
    let m = s.metrics(at(t0, 10.0), 0);
    assert!(m.ranks[1].standing.unwrap().straggler);
    assert!(!m.ranks[0].standing.unwrap().straggler);
    assert!(m.ranks[1].in_collective && !m.ranks[0].in_collective);
    assert_eq!(m.stragglers_named, 1);

    // Rank 1 catches up: the window (20 s) forgets its slow steps, and it is cleared once.
    let mut said = Vec::new();
    let (mut c0, mut c1) = (200u64, 200u64);
    let mut compute1 = 200.0 * 25.0;
    for i in 21..=80u64 {
        let t = at(t0, i as f64 * 0.5);
        c0 += 10;
        c1 += 10;
        compute1 += 10.0 * 10.0;
        said.extend(notices(&s.on_event(beat(0, c0, 10.0, false), t).unwrap()));
        let b = Event::Heartbeat {
            run_id: RUN.into(),
            round_token: T1,
            rank: Rank(1),
            worker_id: WorkerId(String::new()),
            epoch: 0,
            step: c1,
            work: Work::default().with_timing(Timing::from_wire(compute1 / 1e3, 0.0, c1)),
            in_collective: false,
        };
        said.extend(notices(&s.on_event(b, t).unwrap()));
    }
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("rank 1 (w-b on w-b) is back within the margin"),
        "{said:?}"
    );
    assert_eq!(s.metrics(at(t0, 40.0), 0).stragglers_named, 1);
}

#[test]
fn equal_ranks_are_never_named() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(0), t0);
    for i in 1..=40u64 {
        let t = at(t0, i as f64 * 0.5);
        // 10% apart: inside the 25% margin.
        for (rank, ms) in [(0, 10.0), (1, 11.0)] {
            assert!(notices(&s.on_event(beat(rank, i * 10, ms, false), t).unwrap()).is_empty());
        }
    }
    let m = s.metrics(at(t0, 20.0), 0);
    assert!(m.ranks.iter().all(|r| !r.standing.unwrap().straggler));
}

#[test]
fn a_round_without_progress_names_the_rank_outside_the_all_reduce_and_restarts() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(1), t0);
    let limit = s.prepared().config.hang_timeout_s;
    // Both step to 30; then rank 0 waits in the all-reduce and rank 1 never enters it, while
    // both keep heartbeating.
    s.on_event(beat(0, 30, 10.0, false), at(t0, 1.0)).unwrap();
    s.on_event(beat(1, 30, 10.0, false), at(t0, 1.0)).unwrap();
    let mut t = 2.0;
    let mut ended = None;
    while t < limit + 10.0 {
        s.on_event(beat(0, 30, 10.0, true), at(t0, t)).unwrap();
        s.on_event(beat(1, 30, 10.0, false), at(t0, t)).unwrap();
        let acts = s.on_event(Event::Tick, at(t0, t)).unwrap();
        if let Some(line) = notices(&acts).into_iter().next() {
            ended = Some((t, line));
            break;
        }
        t += 1.0;
    }
    let (when, line) = ended.expect("the hung round was restarted");
    assert!(when > limit + 1.0 && when <= limit + 2.0, "after {when} s");
    assert!(
        line.starts_with("round 1 ended: hung: no progress for"),
        "{line}"
    );
    assert!(
        line.contains("the round waits for rank 1 (w-b on w-b): at step 30, not in the all-reduce, while rank 0 waits"),
        "{line}"
    );
    assert_eq!(s.snapshot().status, Status::Rendezvous);
}

#[test]
fn loading_data_is_not_a_hang_and_a_paused_coordinator_is_forgiven() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(1), t0);
    let limit = s.prepared().config.hang_timeout_s;
    // No step yet (decoding the dataset): ticks long past the limit restart nothing.
    let mut t = 1.0;
    while t < limit * 2.0 {
        s.on_event(beat(0, 0, 0.0, false), at(t0, t)).unwrap();
        s.on_event(beat(1, 0, 0.0, false), at(t0, t)).unwrap();
        assert!(notices(&s.on_event(Event::Tick, at(t0, t)).unwrap()).is_empty());
        t += 1.0;
    }
    s.on_event(beat(0, 5, 10.0, false), at(t0, t)).unwrap();
    s.on_event(beat(1, 5, 10.0, false), at(t0, t)).unwrap();
    s.on_event(Event::Tick, at(t0, t)).unwrap();
    // The coordinator itself stops (SIGSTOP) for longer than the limit: not the ranks' hang.
    let later = t + limit + 60.0;
    let acts = s.on_event(Event::Tick, at(t0, later)).unwrap();
    assert!(notices(&acts).is_empty(), "{:?}", notices(&acts));
    assert_eq!(s.snapshot().status, Status::Running);
}

#[test]
fn a_collective_failure_names_the_rank_that_held_it_up() {
    let t0 = Instant::now();
    let mut s = running_with(prepared_with(1), t0);
    s.on_event(beat(0, 12, 10.0, true), at(t0, 1.0)).unwrap();
    s.on_event(beat(1, 11, 10.0, false), at(t0, 1.0)).unwrap();
    let acts = s
        .on_event(
            Event::Leave {
                run_id: RUN.into(),
                round_token: T1,
                rank: Rank(0),
                ok: false,
                recoverable: true,
                reason: "lost peer rank 1: no data for 60 s".into(),
                weights: vec![],
                work: None,
            },
            at(t0, 61.0),
        )
        .unwrap();
    let line = notices(&acts).join("\n");
    assert!(line.contains("rank 0 (w-a): lost peer rank 1: no data for 60 s; the round waits for rank 1 (w-b on w-b): at step 11"), "{line}");
}
