//! What the run state hands to the output layer: `run.json` and `summary.json` contents.

use std::time::Instant;

use super::{RunState, Status};
use crate::state::output::{ImagesInfo, NormInfo, RankInfo, RankTiming, RunInfo, Summary};

impl RunState {
    /// `run.json` as of now (rewritten when the round closes and when the norm stats are known).
    pub(super) fn run_info(&self) -> RunInfo {
        let p = &self.prepared;
        let d = &p.dataset;
        let plan = self.plan.as_deref();
        let ranks = self
            .membership
            .iter()
            .flat_map(|m| m.members.iter())
            .map(|m| {
                let (train, valid) = plan.map_or((&[][..], &[][..]), |p| p.shard_of(m.rank));
                RankInfo {
                    rank: m.rank.0,
                    worker_id: m.candidate.worker_id.0.clone(),
                    collective_addr: m.candidate.collective_addr.clone(),
                    device: m.candidate.device.clone(),
                    device_uuid: m.candidate.device_uuid.clone(),
                    train_images: train.len(),
                    valid_images: valid.len(),
                }
            })
            .collect();
        RunInfo {
            run_id: p.run_id.clone(),
            round: self.membership.as_ref().map_or(0, |m| m.round),
            model: p.config.recipe.model.as_str().into(),
            world_size: self.membership.as_ref().map_or(0, |m| m.world_size()),
            classes: d.classes.clone(),
            data_root: d.root.clone(),
            dataset_fingerprint: d.fingerprint.clone(),
            batch_per_worker: plan.map_or(0, |p| p.batch_per_worker),
            steps_per_epoch: plan.map_or(0, |p| p.steps_per_epoch),
            total_steps: plan.map_or(0, |p| p.total_steps()),
            norm: self.norm.as_ref().map(|n| NormInfo {
                mean: n.iter().map(|c| c.mean() as f32).collect(),
                std: n.iter().map(|c| c.std() as f32).collect(),
                count: n.first().map_or(0, |c| c.count),
            }),
            images: ImagesInfo {
                channels: d.geometry.channels,
                size: d.geometry.size,
                resize: d.geometry.resize,
                augment: self.prepared.config.augment.to_string(),
            },
            ranks,
            dropped_train: plan.map_or_else(Vec::new, |p| {
                p.shards
                    .dropped_train
                    .iter()
                    .map(|&i| d.train[i].0.clone())
                    .collect()
            }),
            skipped: self.all_skipped(),
            collective: self.collective.as_ref().map(|c| c.0.to_string()),
            collective_reason: self.collective.as_ref().map(|c| c.1.clone()),
            config: p.config.clone(),
            membership: self.history.clone(),
        }
    }

    /// `summary.json` as of now.
    pub(super) fn summary(&self, now: Instant) -> Summary {
        let last = self.agg.rows.last();
        let failed = self.status == Status::Failed;
        Summary {
            run_id: self.prepared.run_id.clone(),
            status: if failed { "failed" } else { "finished" }.into(),
            reason: self.failure.as_ref().map(|f| f.reason.clone()),
            model: self.prepared.config.recipe.model.as_str().into(),
            world_size: self.membership.as_ref().map_or(0, |m| m.world_size()),
            epochs: self.agg.done(),
            accuracy: last.map(|r| r.accuracy),
            valid_loss: last.map(|r| r.valid_loss),
            valid_correct: last.map(|r| r.valid_correct),
            valid_count: last.map(|r| r.valid_count),
            train_images_per_s: self
                .plan
                .as_deref()
                .map_or(0.0, |p| self.agg.train_images_per_s(p)),
            params_hash: self.agg.params_hash.clone(),
            rank_hashes: self.agg.rank_hashes.clone(),
            wall_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            run_dir: self.prepared.run_dir.display().to_string(),
            restarts: self.restarts,
            step_timing: self
                .counters
                .rank_work
                .iter()
                .enumerate()
                .map(|(rank, w)| {
                    let t = w.timing;
                    let per = |x: f64| (t.steps > 0).then(|| x / t.steps as f64);
                    RankTiming {
                        rank: rank as u32,
                        timed_steps: t.steps,
                        compute_s_per_step: per(t.compute_s),
                        wait_s_per_step: per(t.wait_s),
                    }
                })
                .collect(),
            stragglers_named: self.counters.stragglers_named,
            skipped: self.all_skipped().len(),
        }
    }

    /// The summary for the caller of `serve`, at the end of the run.
    pub fn final_summary(&self, now: Instant) -> Summary {
        self.summary(now)
    }
}
