//! Worker identities: the per-worker secret a Join issues, which every later call of that worker
//! (heartbeats, reports, re-joins) must carry.
//!
//! Owns the registry and its rules; the state machine decides whether an identity is still
//! *held* by a live worker (`admission.rs`), and the service checks calls with
//! [`RunState::authenticate`](super::RunState::authenticate).
//!
//! # Contract
//! * The first Join of a worker id gets a fresh 32-byte secret (chosen by the caller from the
//!   OS's random source, so the state machine stays deterministic in tests).
//! * A Join that presents the id's secret is that worker again: it keeps its secret.
//! * A Join with a known id and without its secret is refused while the id is held by a live
//!   worker; once the holder was declared lost (silent past the heartbeat budget, its process
//!   exited, or not heard from for that long between rounds) the new caller takes the id over
//!   with a fresh secret, and the old secret stops working.
//! * Worker ids are public (`/metrics`, `/status`); secrets never leave the coordinator except in
//!   the JoinReply of their worker, are compared in constant time and never logged.
//! * A restarted coordinator starts with no identities: every worker re-joins as new.
//!
//! Tests: `tests` at the bottom; the state machine's `tests.rs`; end to end in
//! `tests/tests/hostile.rs`.

use std::collections::BTreeMap;
use std::time::Instant;

use subtle::ConstantTimeEq as _;

use crate::ids::WorkerId;

/// Bytes of a worker secret.
pub const SECRET_BYTES: usize = 32;

/// A worker's secret. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub [u8; SECRET_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// 32 bytes from the OS's random source.
    pub fn random() -> std::io::Result<Self> {
        use std::io::Read as _;
        let mut b = [0u8; SECRET_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Self(b))
    }

    /// Whether `presented` is this secret (constant time; lengths are not secret).
    pub fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == SECRET_BYTES && bool::from(self.0.ct_eq(presented))
    }
}

#[derive(Debug, Clone)]
struct Identity {
    secret: Secret,
    /// The last time its holder was heard from outside a running round's liveness tracking.
    last_contact: Instant,
    /// Declared lost: the id is free for whoever joins with it next.
    lost: bool,
}

/// What a Join's identity check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new id: `secret` is its new secret.
    New(Secret),
    /// The same worker again (it presented its secret).
    Returning(Secret),
    /// The id was free (its holder was lost): taken over with the new `secret`.
    TakenOver(Secret),
}

impl Admission {
    /// The secret the JoinReply carries.
    pub fn secret(self) -> Secret {
        match self {
            Admission::New(s) | Admission::Returning(s) | Admission::TakenOver(s) => s,
        }
    }
}

/// The identities of one coordinator process.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    map: BTreeMap<WorkerId, Identity>,
}

impl Identities {
    /// Decides a Join of `id` presenting `presented` (empty: none). `held` says whether a live
    /// worker holds the id (asked only when the secret is wrong); `fresh` becomes the secret of
    /// a new or taken-over id. `None`: refused, the id is held.
    pub fn admit(
        &mut self,
        id: &WorkerId,
        presented: &[u8],
        fresh: Secret,
        held: impl FnOnce() -> bool,
        now: Instant,
    ) -> Option<Admission> {
        let Some(known) = self.map.get_mut(id) else {
            self.map.insert(
                id.clone(),
                Identity {
                    secret: fresh,
                    last_contact: now,
                    lost: false,
                },
            );
            return Some(Admission::New(fresh));
        };
        if known.secret.matches(presented) {
            known.last_contact = now;
            known.lost = false;
            return Some(Admission::Returning(known.secret));
        }
        if !known.lost && held() {
            return None;
        }
        *known = Identity {
            secret: fresh,
            last_contact: now,
            lost: false,
        };
        Some(Admission::TakenOver(fresh))
    }

    /// Whether `presented` is the secret of `id`.
    pub fn verify(&self, id: &WorkerId, presented: &[u8]) -> bool {
        self.map
            .get(id)
            .is_some_and(|i| !i.lost && i.secret.matches(presented))
    }

    /// `id`'s holder was heard from at `at` (kept when later than what is known).
    pub fn seen(&mut self, id: &WorkerId, at: Instant) {
        if let Some(i) = self.map.get_mut(id) {
            i.last_contact = i.last_contact.max(at);
        }
    }

    /// `id`'s holder is gone: the id is free for the next Join.
    pub fn lose(&mut self, id: &WorkerId) {
        if let Some(i) = self.map.get_mut(id) {
            i.lost = true;
        }
    }

    /// When `id`'s holder was last heard from, unless it was declared lost.
    pub fn last_contact(&self, id: &WorkerId) -> Option<Instant> {
        self.map.get(id).filter(|i| !i.lost).map(|i| i.last_contact)
    }

    /// The secret of `id` (for its JoinReply).
    pub fn secret_of(&self, id: &WorkerId) -> Option<Secret> {
        self.map.get(id).map(|i| i.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> WorkerId {
        WorkerId(s.into())
    }

    #[test]
    fn new_returning_refused_and_taken_over() {
        let t = Instant::now();
        let (a, b) = (Secret([1; 32]), Secret([2; 32]));
        let mut ids = Identities::default();
        assert_eq!(
            ids.admit(&id("w"), &[], a, || unreachable!(), t),
            Some(Admission::New(a))
        );
        assert!(ids.verify(&id("w"), &a.0) && !ids.verify(&id("w"), &b.0));
        // The holder again, with its secret: same secret, whatever `held` would say.
        assert_eq!(
            ids.admit(&id("w"), &a.0, b, || true, t),
            Some(Admission::Returning(a))
        );
        // Someone else with the id while the holder lives: refused, nothing changes.
        assert_eq!(ids.admit(&id("w"), &[], b, || true, t), None);
        assert_eq!(ids.admit(&id("w"), &b.0, b, || true, t), None);
        assert!(ids.verify(&id("w"), &a.0));
        // The holder is no longer live: the caller takes the id and the old secret dies.
        assert_eq!(
            ids.admit(&id("w"), &[], b, || false, t),
            Some(Admission::TakenOver(b))
        );
        assert!(!ids.verify(&id("w"), &a.0) && ids.verify(&id("w"), &b.0));
    }

    #[test]
    fn a_lost_holder_frees_the_id_at_once() {
        let t = Instant::now();
        let (a, b) = (Secret([1; 32]), Secret([2; 32]));
        let mut ids = Identities::default();
        ids.admit(&id("w"), &[], a, || true, t).unwrap();
        ids.lose(&id("w"));
        assert!(!ids.verify(&id("w"), &a.0));
        assert_eq!(ids.last_contact(&id("w")), None);
        assert_eq!(
            ids.admit(&id("w"), &[], b, || unreachable!("lost ids are free"), t),
            Some(Admission::TakenOver(b))
        );
    }

    #[test]
    fn secrets_need_the_exact_bytes_and_never_print() {
        let s = Secret([7; 32]);
        assert!(s.matches(&[7; 32]));
        assert!(!s.matches(&[7; 31]) && !s.matches(&[]) && !s.matches(&[8; 32]));
        assert!(!format!("{s:?}").contains('7'));
        let r = Secret::random().unwrap();
        assert_ne!(r, Secret::random().unwrap());
    }
}
