//! Unit tests of the images/s an epoch row and the run report (issue 17): every image the
//! round trained over the seconds its ranks trained, whether checkpoints were taken inside the
//! epoch or the round resumed inside it.

use std::sync::Arc;
use std::time::Instant;

use super::midepoch::MidReport;
use super::tests::{
    hex16, join_args, prepared_with, rejoin_args, running_with, state_bytes, RUN, T1,
};
use super::*;

/// Round 2's token (`round_token` is 1000 + round in tests).
const T2: u64 = 1002;
/// Global batch of `prepared_with`'s run (2 ranks × 2).
const BATCH: f64 = 4.0;
/// Training images of the run below: 6 steps per epoch.
const TRAIN: usize = 24;

/// `prepared_with(1)` with 24 training images: 6 steps of 4 per epoch.
fn six_steps() -> Arc<Prepared> {
    let mut p = (*prepared_with(1)).clone();
    p.dataset.train = (0..TRAIN)
        .map(|i| (format!("training/c{}/{i}.png", i % 2), (i % 2) as u32))
        .collect();
    Arc::new(p)
}

fn mid(token: u64, rank: u32, epoch: u32, step_in_epoch: u32, global_step: u64) -> Event {
    let (m, o, model_digest, optimizer_digest) = state_bytes();
    Event::Checkpoint {
        run_id: RUN.into(),
        round_token: token,
        report: MidReport {
            rank: Rank(rank),
            epoch,
            step_in_epoch,
            global_step,
            step_losses: vec![0.5; step_in_epoch as usize],
            params_hash: hex16("h"),
            model: if rank == 0 { m } else { vec![] },
            optimizer: if rank == 0 { o } else { vec![] },
            model_digest,
            optimizer_digest,
            stop: false,
            preempted: false,
        },
    }
}

fn epoch_report(token: u64, rank: u32, epoch: u32, steps: usize, train_seconds: f64) -> Event {
    let (m, o, model_digest, optimizer_digest) = state_bytes();
    Event::Epoch {
        run_id: RUN.into(),
        round_token: token,
        report: EpochReport {
            rank: Rank(rank),
            epoch,
            step_losses: vec![0.5; steps],
            valid_loss_sum: 1.0,
            valid_correct: 2,
            valid_count: 2,
            params_hash: hex16("h"),
            train_seconds,
            model: if rank == 0 { m } else { vec![] },
            optimizer: if rank == 0 { o } else { vec![] },
            model_digest,
            optimizer_digest,
        },
    }
}

/// The images/s of the epoch rows completed so far.
fn rows(s: &RunState) -> Vec<f64> {
    s.agg.rows.iter().map(|r| r.train_images_per_s).collect()
}

#[test]
fn checkpoints_inside_an_epoch_do_not_shrink_its_images_per_s() {
    let t0 = Instant::now();
    let mut s = running_with(six_steps(), t0);
    let plan = s.plan.clone().unwrap();
    assert_eq!(plan.steps_per_epoch, 6);
    // Epoch 0 without checkpoints: 6 steps of 4 images in 2 s (the slower rank's seconds).
    s.on_event(epoch_report(T1, 0, 0, 6, 1.5), t0).unwrap();
    s.on_event(epoch_report(T1, 1, 0, 6, 2.0), t0).unwrap();
    // Epoch 1 with a checkpoint every 2 steps (global 8 and 10), the same 2 s of training.
    for (step_in_epoch, global) in [(2, 8), (4, 10)] {
        for rank in 0..2 {
            s.on_event(mid(T1, rank, 1, step_in_epoch, global), t0)
                .unwrap();
        }
    }
    assert_eq!(s.snapshot().resume.unwrap().step_in_epoch, 4);
    s.on_event(epoch_report(T1, 0, 1, 6, 2.0), t0).unwrap();
    s.on_event(epoch_report(T1, 1, 1, 6, 1.0), t0).unwrap();
    // Both epochs trained 24 images in 2 s; before issue 17 the second counted only the 2
    // steps after its last checkpoint (4 images/s).
    assert_eq!(rows(&s), vec![6.0 * BATCH / 2.0; 2]);
    assert_eq!(s.agg.train_images_per_s(&plan), 12.0);
}

#[test]
fn a_round_resumed_inside_an_epoch_counts_the_steps_it_trained_across_its_checkpoints() {
    let t0 = Instant::now();
    let mut s = running_with(six_steps(), t0);
    s.on_event(epoch_report(T1, 0, 0, 6, 2.0), t0).unwrap();
    s.on_event(epoch_report(T1, 1, 0, 6, 2.0), t0).unwrap();
    // Epoch 1: a checkpoint after 1 step, then a rank is lost.
    for rank in 0..2 {
        s.on_event(mid(T1, rank, 1, 1, 7), t0).unwrap();
    }
    s.on_event(
        Event::ProcessExited {
            worker_id: WorkerId("w-b".into()),
            success: false,
            aborted: false,
            reason: "killed".into(),
        },
        t0,
    )
    .unwrap();
    s.on_event(Event::Join(rejoin_args("w-a")), t0).unwrap();
    s.on_event(Event::Join(join_args("w-b")), t0).unwrap();
    assert_eq!(s.snapshot().round_token, T2);
    // Round 2 trains steps 1..6 of epoch 1, with its own checkpoint after step 3, in 1 s.
    for rank in 0..2 {
        s.on_event(mid(T2, rank, 1, 3, 9), t0).unwrap();
    }
    s.on_event(epoch_report(T2, 0, 1, 6, 1.0), t0).unwrap();
    s.on_event(epoch_report(T2, 1, 1, 6, 1.0), t0).unwrap();
    // 5 steps of 4 images in 1 s: the round's own steps, not only those after its checkpoint.
    assert_eq!(rows(&s), vec![12.0, 5.0 * BATCH]);
    let plan = s.plan.clone().unwrap();
    assert_eq!(s.agg.train_images_per_s(&plan), (24.0 + 20.0) / 3.0);
}
