//! Files workers left out while decoding (`--skip-bad`): checked against the rank's own shard,
//! kept over every round, listed in `run.json` next to the scan's and counted in
//! `summary.json`.
//!
//! Tests: `state/tests.rs` (`files_a_rank_skipped_must_be_its_own_and_are_listed_and_counted`).

use ringtrain_common::data::{DataError, Skipped};

use super::{RunError, RunState};
use crate::ids::Rank;
use crate::plan::RunPlan;

/// Longest skip reason kept from a worker (a decoder's message, with the path).
const MAX_SKIP_REASON: usize = 2048;

impl RunState {
    /// Refuses skipped files that are not the rank's own shard's, repeated, or with absurd
    /// reasons: a worker cannot make the run's record name arbitrary files.
    pub(super) fn check_skipped(
        &self,
        rank: Rank,
        plan: &RunPlan,
        skipped: &[(String, String)],
    ) -> Result<(), RunError> {
        if skipped.is_empty() {
            return Ok(());
        }
        let d = &self.prepared.dataset;
        let (train, valid) = plan.shard_of(rank);
        let own: std::collections::HashSet<&str> = train
            .iter()
            .map(|&i| d.train[i].0.as_str())
            .chain(valid.iter().map(|&i| d.valid[i].0.as_str()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (path, reason) in skipped {
            let why = if !own.contains(path.as_str()) {
                "is not a file of its shard"
            } else if !seen.insert(path.as_str()) {
                "is listed twice"
            } else if reason.len() > MAX_SKIP_REASON {
                "has an over-long reason"
            } else {
                continue;
            };
            return Err(RunError::BadRequest(format!(
                "rank {rank} skipped file {path:?} {why}"
            )));
        }
        Ok(())
    }

    /// Every file left out: by the scan and the header probe, and by the workers' decoding.
    pub(super) fn all_skipped(&self) -> Vec<Skipped> {
        let d = &self.prepared.dataset;
        let root = std::path::Path::new(&d.root);
        let mut out = d.skipped.clone();
        out.extend(self.decode_skipped.iter().map(|(rel, reason)| {
            let path = root.join(rel);
            Skipped {
                path: path.clone(),
                reason: DataError::Reported {
                    path,
                    reason: reason.clone(),
                },
            }
        }));
        out
    }
}
