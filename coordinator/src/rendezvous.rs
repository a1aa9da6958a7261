//! Rendezvous: admits workers into a numbered round and assigns dense ranks.
//!
//! Owns the membership state machine and its timeouts; not networking (`service.rs`), what a
//! closed round trains on (`plan.rs`), or liveness after the round (`state`).
//!
//! # Contract
//! * A round closes when `max_workers` joined, or `min_workers` joined and `last_call` elapsed
//!   since the `min_workers`-th join (torchelastic's `last_call_timeout`, started once, not reset).
//! * Ranks are `0..world_size` in sorted worker-id order, whatever the order of joins.
//! * A worker whose Join call was abandoned (its connection dropped) before the round closed is
//!   removed again; below `min_workers` the last-call deadline is cancelled.
//! * The round times out when it has not closed `join_timeout` after it opened; then the run
//!   fails. A run that loses a worker opens a new `Rendezvous` with the next round number.
//! * Pure and synchronous: time comes in as `now`, so tests drive it without sleeping.
//!
//! ```text
//!           Join (n < max)            Join (n == max) / Tick (n >= min, last call over)
//!   Open ─────────────────▶ Open ──────────────────────────────────────────────▶ Closed
//!     │ Tick (now - opened >= join_timeout)
//!     ▼
//!   TimedOut                Join on Closed / TimedOut: refused
//! ```
//! Tests: `tests` at the bottom, one per transition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ids::{Rank, WorkerId};

/// The rendezvous timeouts and sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RendezvousSettings {
    /// Smallest world size the round may close with.
    pub min_workers: u32,
    /// The round closes at once when this many joined.
    pub max_workers: u32,
    /// The whole rendezvous must complete within this.
    pub join_timeout: Duration,
    /// Extra wait for late joiners once `min_workers` joined.
    pub last_call: Duration,
}

/// What a worker brings to the round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Unique per worker process.
    pub worker_id: WorkerId,
    /// `host:port` where it accepts its ring predecessor.
    pub collective_addr: String,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// The GPU's UUID, empty on CPU.
    pub device_uuid: String,
}

/// One admitted worker of a closed round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its dense rank.
    pub rank: Rank,
    /// What it joined with.
    pub candidate: Candidate,
}

/// A closed round: the members indexed by rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Rendezvous generation, from 1.
    pub round: u32,
    /// `members[r].rank == Rank(r)`.
    pub members: Vec<Member>,
}

impl Membership {
    /// Number of ranks.
    pub fn world_size(&self) -> u32 {
        self.members.len() as u32
    }

    /// The rank of `worker_id`, if it is a member.
    pub fn rank_of(&self, worker_id: &WorkerId) -> Option<Rank> {
        self.members
            .iter()
            .find(|m| &m.candidate.worker_id == worker_id)
            .map(|m| m.rank)
    }

    /// The member at `rank`, if the rank exists.
    pub fn member(&self, rank: Rank) -> Option<&Member> {
        self.members.get(rank.index())
    }

    /// Collective addresses, index = rank.
    pub fn peers(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.candidate.collective_addr.clone())
            .collect()
    }
}

/// Where the rendezvous is.
#[derive(Debug, Clone, PartialEq)]
pub enum RendezvousState {
    /// Accepting joins.
    Open,
    /// Ranks assigned.
    Closed(Arc<Membership>),
    /// `join_timeout` passed before the round closed.
    TimedOut,
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum RendezvousEvent {
    /// A worker asks to join.
    Join(Candidate),
    /// A waiting Join call went away before the round closed.
    Abandon(WorkerId),
    /// Time passed (the watchdog's tick).
    Tick,
}

/// What the caller must do after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum RendezvousAction {
    /// The round closed with these members; release every waiting Join.
    Closed(Arc<Membership>),
    /// The round did not close in time; fail the run.
    TimedOut { waited: Duration, joined: u32 },
}

/// Why a Join was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RendezvousError {
    /// The round already closed (it was full, or last call ended).
    #[error("the round is closed: all {world_size} ranks are assigned")]
    Closed { world_size: u32 },
    /// The rendezvous timed out before this worker arrived.
    #[error("rendezvous timed out after {waited:?} with {joined} of {wanted} workers")]
    Timeout {
        waited: Duration,
        joined: u32,
        wanted: u32,
    },
    /// Another worker already joined under this id.
    #[error("worker id {0} already joined this round")]
    Duplicate(WorkerId),
    /// The worker sent no id.
    #[error("worker_id must not be empty")]
    EmptyWorkerId,
}

/// The membership state machine of one round.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    round: u32,
    settings: RendezvousSettings,
    opened: Instant,
    joined: BTreeMap<WorkerId, Candidate>,
    last_call_deadline: Option<Instant>,
    state: RendezvousState,
}

impl Rendezvous {
    /// Opens round 1 at `now`.
    pub fn new(settings: RendezvousSettings, now: Instant) -> Self {
        Self::with_round(settings, now, 1)
    }

    /// Opens round `round` at `now` (after a restart).
    pub fn with_round(settings: RendezvousSettings, now: Instant, round: u32) -> Self {
        Self {
            round,
            settings,
            opened: now,
            joined: BTreeMap::new(),
            last_call_deadline: None,
            state: RendezvousState::Open,
        }
    }

    /// The current state.
    pub fn state(&self) -> &RendezvousState {
        &self.state
    }

    /// Whether `id` is waiting in this round.
    pub fn has(&self, id: &WorkerId) -> bool {
        self.joined.contains_key(id)
    }

    /// Workers waiting in the open round.
    pub fn joined(&self) -> u32 {
        self.joined.len() as u32
    }

    /// Applies one event.
    pub fn on_event(
        &mut self,
        ev: RendezvousEvent,
        now: Instant,
    ) -> Result<Vec<RendezvousAction>, RendezvousError> {
        match (&self.state, ev) {
            (RendezvousState::Open, RendezvousEvent::Join(c)) => self.join(c, now),
            (RendezvousState::Closed(m), RendezvousEvent::Join(_)) => {
                Err(RendezvousError::Closed {
                    world_size: m.world_size(),
                })
            }
            (RendezvousState::TimedOut, RendezvousEvent::Join(_)) => {
                Err(RendezvousError::Timeout {
                    waited: self.settings.join_timeout,
                    joined: self.joined(),
                    wanted: self.settings.max_workers,
                })
            }
            (RendezvousState::Open, RendezvousEvent::Abandon(id)) => {
                if self.joined.remove(&id).is_some() {
                    tracing::info!(worker_id = %id, joined = self.joined(), "worker left the open round before it closed");
                    if self.joined() < self.settings.min_workers {
                        self.last_call_deadline = None;
                    }
                }
                Ok(vec![])
            }
            (RendezvousState::Open, RendezvousEvent::Tick) => Ok(self.tick(now)),
            // Closed and timed-out rounds ignore time and abandoned calls.
            (_, RendezvousEvent::Abandon(_) | RendezvousEvent::Tick) => Ok(vec![]),
        }
    }

    fn join(
        &mut self,
        c: Candidate,
        now: Instant,
    ) -> Result<Vec<RendezvousAction>, RendezvousError> {
        if c.worker_id.0.is_empty() {
            return Err(RendezvousError::EmptyWorkerId);
        }
        if self.joined.contains_key(&c.worker_id) {
            return Err(RendezvousError::Duplicate(c.worker_id));
        }
        tracing::info!(worker_id = %c.worker_id, joined = self.joined() + 1, wanted = self.settings.max_workers, "worker joined the round");
        self.joined.insert(c.worker_id.clone(), c);
        let n = self.joined();
        if n >= self.settings.max_workers {
            return Ok(vec![self.close()]);
        }
        if n == self.settings.min_workers && self.last_call_deadline.is_none() {
            self.last_call_deadline = Some(now + self.settings.last_call);
            tracing::info!(
                joined = n,
                last_call_s = self.settings.last_call.as_secs_f64(),
                "minimum reached; last call for more workers"
            );
        }
        Ok(vec![])
    }

    fn tick(&mut self, now: Instant) -> Vec<RendezvousAction> {
        if self.last_call_deadline.is_some_and(|d| now >= d)
            && self.joined() >= self.settings.min_workers
        {
            return vec![self.close()];
        }
        let waited = now.saturating_duration_since(self.opened);
        if waited >= self.settings.join_timeout {
            self.state = RendezvousState::TimedOut;
            tracing::info!(
                before = "open",
                after = "timed out",
                joined = self.joined(),
                "rendezvous state"
            );
            return vec![RendezvousAction::TimedOut {
                waited,
                joined: self.joined(),
            }];
        }
        vec![]
    }

    fn close(&mut self) -> RendezvousAction {
        // BTreeMap iterates in sorted worker-id order: that order is the rank order.
        let members = std::mem::take(&mut self.joined)
            .into_values()
            .enumerate()
            .map(|(r, candidate)| Member {
                rank: Rank(r as u32),
                candidate,
            })
            .collect();
        let m = Arc::new(Membership {
            round: self.round,
            members,
        });
        tracing::info!(
            before = "open",
            after = "closed",
            round = m.round,
            world_size = m.world_size(),
            "rendezvous state"
        );
        self.state = RendezvousState::Closed(m.clone());
        RendezvousAction::Closed(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u32, max: u32) -> RendezvousSettings {
        RendezvousSettings {
            min_workers: min,
            max_workers: max,
            join_timeout: Duration::from_secs(600),
            last_call: Duration::from_secs(30),
        }
    }

    fn cand(id: &str) -> Candidate {
        Candidate {
            worker_id: WorkerId(id.into()),
            collective_addr: format!("{id}:1"),
            device: "cpu".into(),
            device_uuid: String::new(),
        }
    }

    fn closed(actions: &[RendezvousAction]) -> Arc<Membership> {
        match actions {
            [RendezvousAction::Closed(m)] => m.clone(),
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    #[test]
    fn closes_when_full_with_ranks_in_worker_id_order() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(settings(3, 3), t0);
        assert_eq!(r.on_event(RendezvousEvent::Join(cand("c")), t0), Ok(vec![]));
        assert_eq!(r.on_event(RendezvousEvent::Join(cand("a")), t0), Ok(vec![]));
        let m = closed(&r.on_event(RendezvousEvent::Join(cand("b")), t0).unwrap());
        let ids: Vec<_> = m
            .members
            .iter()
            .map(|m| m.candidate.worker_id.0.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(m.rank_of(&WorkerId("c".into())), Some(Rank(2)));
        assert_eq!(m.peers(), ["a:1", "b:1", "c:1"]);
        assert_eq!(m.round, 1);
        assert!(matches!(r.state(), RendezvousState::Closed(_)));
    }

    #[test]
    fn closed_round_refuses_joins_and_ignores_ticks() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(settings(1, 1), t0);
        closed(&r.on_event(RendezvousEvent::Join(cand("a")), t0).unwrap());
        assert_eq!(
            r.on_event(RendezvousEvent::Join(cand("b")), t0),
            Err(RendezvousError::Closed { world_size: 1 })
        );
        assert_eq!(
            r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(10_000)),
            Ok(vec![])
        );
        assert_eq!(
            r.on_event(RendezvousEvent::Abandon(WorkerId("a".into())), t0),
            Ok(vec![])
        );
    }

    #[test]
    fn duplicate_and_empty_ids_are_refused() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(settings(2, 2), t0);
        r.on_event(RendezvousEvent::Join(cand("a")), t0).unwrap();
        assert_eq!(
            r.on_event(RendezvousEvent::Join(cand("a")), t0),
            Err(RendezvousError::Duplicate(WorkerId("a".into())))
        );
        assert_eq!(
            r.on_event(RendezvousEvent::Join(cand("")), t0),
            Err(RendezvousError::EmptyWorkerId)
        );
        assert_eq!(r.joined(), 1);
    }

    #[test]
    fn min_workers_close_after_last_call() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(settings(2, 4), t0);
        r.on_event(RendezvousEvent::Join(cand("b")), t0).unwrap();
        // One worker is below min: no last call, no matter how long.
        assert_eq!(
            r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(100)),
            Ok(vec![])
        );
        let t1 = t0 + Duration::from_secs(100);
        r.on_event(RendezvousEvent::Join(cand("a")), t1).unwrap();
        assert_eq!(
            r.on_event(RendezvousEvent::Tick, t1 + Duration::from_secs(29)),
            Ok(vec![])
        );
        // A third join does not reset the deadline (torchelastic sets it once at min).
        r.on_event(
            RendezvousEvent::Join(cand("c")),
            t1 + Duration::from_secs(29),
        )
        .unwrap();
        let m = closed(
            &r.on_event(RendezvousEvent::Tick, t1 + Duration::from_secs(30))
                .unwrap(),
        );
        assert_eq!(m.world_size(), 3);
        assert_eq!(m.members[0].candidate.worker_id.0, "a");
    }

    #[test]
    fn abandon_below_min_cancels_last_call() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(settings(2, 3), t0);
        r.on_event(RendezvousEvent::Join(cand("a")), t0).unwrap();
        r.on_event(RendezvousEvent::Join(cand("b")), t0).unwrap();
        r.on_event(RendezvousEvent::Abandon(WorkerId("b".into())), t0)
            .unwrap();
        assert_eq!(r.joined(), 1);
        assert_eq!(
            r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(31)),
            Ok(vec![])
        );
        // The id is free again.
        r.on_event(
            RendezvousEvent::Join(cand("b")),
            t0 + Duration::from_secs(40),
        )
        .unwrap();
        assert_eq!(
            r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(69)),
            Ok(vec![])
        );
        assert_eq!(
            closed(
                &r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(70))
                    .unwrap()
            )
            .world_size(),
            2
        );
    }

    #[test]
    fn times_out_then_refuses() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(settings(2, 2), t0);
        r.on_event(RendezvousEvent::Join(cand("a")), t0).unwrap();
        assert_eq!(
            r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(599)),
            Ok(vec![])
        );
        let acts = r
            .on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            acts,
            vec![RendezvousAction::TimedOut {
                waited: Duration::from_secs(600),
                joined: 1
            }]
        );
        assert_eq!(r.state(), &RendezvousState::TimedOut);
        assert!(matches!(
            r.on_event(RendezvousEvent::Join(cand("b")), t0),
            Err(RendezvousError::Timeout {
                joined: 1,
                wanted: 2,
                ..
            })
        ));
    }

    #[test]
    fn min_reached_wins_over_timeout_when_both_are_due() {
        let t0 = Instant::now();
        let s = RendezvousSettings {
            join_timeout: Duration::from_secs(10),
            ..settings(1, 2)
        };
        let mut r = Rendezvous::new(s, t0);
        r.on_event(
            RendezvousEvent::Join(cand("a")),
            t0 + Duration::from_secs(9),
        )
        .unwrap();
        let m = closed(
            &r.on_event(RendezvousEvent::Tick, t0 + Duration::from_secs(60))
                .unwrap(),
        );
        assert_eq!(m.world_size(), 1);
    }
}
