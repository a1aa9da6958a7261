//! The JoinReply: the run spec, the rank's shard, the resume point and the collective.

use ringtrain_common::pb;

use crate::ids::Rank;
use crate::plan::RunPlan;
use crate::rendezvous::Membership;
use crate::state::{Prepared, Snapshot};

pub(super) fn join_reply(
    p: &Prepared,
    snap: &Snapshot,
    m: &Membership,
    plan: &RunPlan,
    rank: Rank,
) -> pb::JoinReply {
    let c = &p.config;
    let d = &p.dataset;
    let refs = |positions: &[usize], files: &[(String, u32)]| -> Vec<pb::ImageRef> {
        positions
            .iter()
            .map(|&i| pb::ImageRef {
                path: files[i].0.clone(),
                label: files[i].1,
            })
            .collect()
    };
    let (train, valid) = plan.shard_of(rank);
    pb::JoinReply {
        run_id: p.run_id.clone(),
        round: m.round,
        rank: rank.0,
        world_size: m.world_size(),
        peers: m.peers(),
        spec: Some(pb::RunSpec {
            model: c.recipe.model.as_str().into(),
            epochs: plan.epochs,
            global_batch: plan.batch_size,
            batch_per_worker: plan.batch_per_worker,
            steps_per_epoch: plan.steps_per_epoch,
            seed: c.recipe.seed,
            image_size: d.geometry.size,
            channels: d.geometry.channels,
            resize: d.geometry.resize,
            augment: c.augment.to_string(),
            valid_batch_size: c.recipe.valid_batch_size,
            classes: d.classes.clone(),
            adam_beta2: c.recipe.beta2,
            adam_eps: c.recipe.eps,
            weight_decay: c.recipe.wd,
            collective_timeout_s: c.collective_timeout_s,
            heartbeat_interval_s: c.heartbeat_interval_s,
            skip_bad: c.skip_bad,
            data_root: d.root.clone(),
            run_dir: p.run_dir.display().to_string(),
            checkpoint_every_steps: c.checkpoint_every_steps,
            precision: c.recipe.precision.to_string(),
            lr_find_stop_div: c.lr_find.map_or(0.0, |r| r.stop_div),
        }),
        shard: Some(pb::Shard {
            train: refs(train, &d.train),
            valid: refs(valid, &d.valid),
        }),
        round_token: snap.round_token,
        resume: snap.resume.as_ref().map(|r| pb::Resume {
            epoch: r.epoch,
            global_step: r.global_step,
            model_safetensors: r.model.to_vec(),
            optimizer_safetensors: r.optimizer.to_vec(),
            checkpoint: r.checkpoint.clone(),
            step_in_epoch: r.step_in_epoch,
            epoch_losses: r.epoch_losses.to_vec(),
        }),
        collective: snap.collective.map(|k| k.to_string()).unwrap_or_default(),
        worker_secret: Vec::new(),
    }
}
