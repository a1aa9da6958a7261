//! The NCCL rendezvous in the state machine: rank 0 of an NCCL round brings the 128-byte id
//! from `ncclGetUniqueId`, every rank leaves with it (the `ShareNcclId` barrier).
//!
//! Same contract as the parent module; split off only to keep files small. A new round forgets
//! the id (`rounds.rs`): an id names a bootstrap socket in rank 0's process of that round.

use std::sync::Arc;
use std::time::Instant;

use ringtrain_common::devices::CollectiveKind;

use super::{Action, Actions, RunError, RunState};
use crate::ids::Rank;

/// Bytes in an NCCL unique id (`ncclUniqueId`).
pub const NCCL_ID_BYTES: usize = 128;

impl RunState {
    pub(super) fn nccl_id(
        &mut self,
        run_id: &str,
        round_token: u64,
        rank: Rank,
        unique_id: Vec<u8>,
        now: Instant,
    ) -> Actions {
        self.running_rank(run_id, round_token, rank)?;
        self.ranks[rank.index()].last_seen = now;
        if self.collective.as_ref().map(|c| c.0) != Some(CollectiveKind::Nccl) {
            return Err(RunError::BadRequest(format!(
                "rank {rank} sent an NCCL id, but this round uses the TCP ring"
            )));
        }
        if rank.0 != 0 {
            if !unique_id.is_empty() {
                return Err(RunError::BadRequest(format!(
                    "rank {rank} sent an NCCL id; only rank 0 creates it"
                )));
            }
            return Ok(vec![]);
        }
        if unique_id.len() != NCCL_ID_BYTES {
            return Err(RunError::BadRequest(format!(
                "rank 0 sent an NCCL id of {} bytes, expected {NCCL_ID_BYTES}",
                unique_id.len()
            )));
        }
        match &self.nccl_id {
            // A retried call: the same id is fine, another one would split the round.
            Some(id) if **id == unique_id => Ok(vec![]),
            Some(_) => Err(RunError::BadRequest(
                "rank 0 sent a second, different NCCL id in one round".into(),
            )),
            None => {
                tracing::info!(run_id = %self.prepared.run_id, round = self.round, "NCCL id from rank 0 shared");
                self.nccl_id = Some(Arc::new(unique_id));
                Ok(vec![Action::Publish])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::tests::{join_args, published, RUN, T1};
    use super::super::*;
    use super::NCCL_ID_BYTES;
    use crate::config::RunConfig;
    use ringtrain_common::devices::{CollectiveChoice, CollectiveKind};

    fn gpu_join(id: &str, uuid: &str) -> Event {
        let mut a = join_args(id);
        a.candidate.device = "cuda:0".into();
        a.candidate.device_uuid = uuid.into();
        Event::Join(a)
    }

    fn state(choice: CollectiveChoice) -> RunState {
        let Ok(mut p) = Arc::try_unwrap(super::super::tests::prepared_with(0)) else {
            panic!("a fresh Arc has one owner");
        };
        p.config = RunConfig {
            collective: choice,
            ..p.config
        };
        RunState::new(Arc::new(p), Instant::now())
    }

    fn share(rank: u32, id: Vec<u8>) -> Event {
        Event::NcclId {
            run_id: RUN.into(),
            round_token: T1,
            rank: Rank(rank),
            unique_id: id,
        }
    }

    #[test]
    fn rank_zeros_id_reaches_every_rank_once() {
        let t = Instant::now();
        let mut s = state(CollectiveChoice::Auto);
        s.on_event(gpu_join("w-a", "GPU-1"), t).unwrap();
        s.on_event(gpu_join("w-b", "GPU-2"), t).unwrap();
        assert_eq!(s.snapshot().collective, Some(CollectiveKind::Nccl));
        // Rank 1 arrives first and must wait: nothing to hand out yet.
        assert!(s.on_event(share(1, vec![]), t).unwrap().is_empty());
        assert!(s.snapshot().nccl_id.is_none());
        let id: Vec<u8> = (0..NCCL_ID_BYTES as u8).collect();
        let acts = s.on_event(share(0, id.clone()), t).unwrap();
        assert!(published(&acts));
        assert_eq!(s.snapshot().nccl_id.as_deref(), Some(&id));
        // A retry with the same id is harmless; a different one is refused.
        assert!(s.on_event(share(0, id.clone()), t).unwrap().is_empty());
        let err = s.on_event(share(0, vec![7; NCCL_ID_BYTES]), t).unwrap_err();
        assert!(
            err.to_string().contains("second, different NCCL id"),
            "{err}"
        );
    }

    #[test]
    fn malformed_or_misplaced_ids_are_refused() {
        let t = Instant::now();
        let mut s = state(CollectiveChoice::Auto);
        s.on_event(gpu_join("w-a", "GPU-1"), t).unwrap();
        s.on_event(gpu_join("w-b", "GPU-2"), t).unwrap();
        let err = s.on_event(share(0, vec![1; 5]), t).unwrap_err();
        assert!(
            err.to_string().contains("of 5 bytes, expected 128"),
            "{err}"
        );
        let err = s.on_event(share(1, vec![1; NCCL_ID_BYTES]), t).unwrap_err();
        assert!(err.to_string().contains("only rank 0 creates it"), "{err}");
        let mut stale = share(1, vec![]);
        if let Event::NcclId { round_token, .. } = &mut stale {
            *round_token += 1;
        }
        assert!(s.on_event(stale, t).is_err());
    }

    #[test]
    fn ring_rounds_refuse_nccl_ids_and_forced_nccl_fails_a_cpu_round() {
        let t = Instant::now();
        let mut s = state(CollectiveChoice::Auto);
        s.on_event(Event::Join(join_args("w-a")), t).unwrap();
        s.on_event(Event::Join(join_args("w-b")), t).unwrap();
        assert_eq!(s.snapshot().collective, Some(CollectiveKind::Ring));
        let err = s.on_event(share(0, vec![0; NCCL_ID_BYTES]), t).unwrap_err();
        assert!(err.to_string().contains("uses the TCP ring"), "{err}");

        let mut s = state(CollectiveChoice::Nccl);
        s.on_event(gpu_join("w-a", "GPU-1"), t).unwrap();
        s.on_event(Event::Join(join_args("w-b")), t).unwrap();
        assert_eq!(s.snapshot().status, Status::Failed);
        let reason = s.verdict().1;
        assert!(reason.contains("worker w-b is on cpu"), "{reason}");
    }

    #[test]
    fn two_ranks_on_one_gpu_fall_back_to_the_ring_under_auto() {
        let t = Instant::now();
        let mut s = state(CollectiveChoice::Auto);
        s.on_event(gpu_join("w-a", "GPU-1"), t).unwrap();
        s.on_event(gpu_join("w-b", "GPU-1"), t).unwrap();
        assert_eq!(s.snapshot().collective, Some(CollectiveKind::Ring));
        assert_eq!(s.snapshot().status, Status::Running);
    }
}
