//! What a closed round trains on: the dataset as the coordinator scanned it ([`DatasetView`]),
//! and the run plan for its world size.
//!
//! Owns the coordinator's view of the dataset and [`plan_run`] over a [`RunConfig`]; the plan's
//! arithmetic itself (per-rank batch, steps per epoch, shards, each epoch's learning rates, its
//! contract and worked example) is `ringtrain_common::plan`, shared with standalone training,
//! and re-exported here.
//!
//! Tests: `tests` at the bottom (the view, and the configuration reaching the plan); the
//! arithmetic is tested in `ringtrain_common::plan`.

use std::path::Path;

use ringtrain_common::data::{DatasetIndex, Geometry, ImageEntry, Skipped};
pub use ringtrain_common::plan::{EpochSchedule, PlanError, RunPlan, RunSchedule};

use crate::config::RunConfig;

/// The dataset as the coordinator scanned it once at start: paths relative to the root.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetView {
    /// The root as given on the command line.
    pub root: String,
    /// Sorted class names.
    pub classes: Vec<String>,
    /// `(relative path, label)` of every training image, in scan order.
    pub train: Vec<(String, u32)>,
    /// `(relative path, label)` of every validation image, in scan order.
    pub valid: Vec<(String, u32)>,
    /// `DatasetIndex::layout_fingerprint`: what every worker must send in Join.
    pub fingerprint: String,
    /// Files left out by `skip_bad` during the scan and the header probe.
    pub skipped: Vec<Skipped>,
    /// Channels and size every image is decoded to.
    pub geometry: Geometry,
}

fn relative(root: &Path, entries: &[ImageEntry]) -> Vec<(String, u32)> {
    entries
        .iter()
        .map(|e| {
            let rel = e.path.strip_prefix(root).unwrap_or(&e.path);
            // Forward slashes on the wire, whatever the coordinator's OS.
            let rel: Vec<_> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            (rel.join("/"), e.label)
        })
        .collect()
}

impl DatasetView {
    /// The view of a scanned (and probed) index: `geometry` from
    /// [`ringtrain_common::data::resolve_geometry`], `fingerprint` the index's
    /// `layout_fingerprint` before the probe took bad files out (what the workers' own scans
    /// compute).
    pub fn new(index: &DatasetIndex, geometry: Geometry, fingerprint: String) -> Self {
        Self {
            root: index.root.display().to_string(),
            classes: index.classes.clone(),
            train: relative(&index.root, &index.train),
            valid: relative(&index.root, &index.valid),
            fingerprint,
            skipped: index.skipped.clone(),
            geometry,
        }
    }
}

/// Plans a run of `config` (its recipe, or its LR range test) on `n_train`/`n_valid` images
/// over `world_size` ranks.
pub fn plan_run(
    config: &RunConfig,
    n_train: usize,
    n_valid: usize,
    world_size: u32,
) -> Result<RunPlan, PlanError> {
    ringtrain_common::plan::plan_run(&config.recipe, config.lr_find, n_train, n_valid, world_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringtrain_common::lr_find::LrRange;

    #[test]
    fn the_configuration_reaches_the_plan() {
        let mut config = RunConfig {
            data: "d".into(),
            ..RunConfig::default()
        };
        config.recipe.epochs = Some(3);
        config.recipe.batch_size = 64;
        let p = plan_run(&config, 1_000, 100, 2).unwrap();
        assert_eq!(
            (p.epochs, p.batch_per_worker, p.steps_per_epoch),
            (3, 32, 15)
        );
        assert_eq!(p.lr_find(), None);
        let RunSchedule::OneCycle(s) = p.schedule else {
            panic!("training runs use the one-cycle schedule")
        };
        assert_eq!(s, config.recipe.one_cycle(45).init().unwrap());
        config.lr_find = Some(LrRange {
            iters: 10,
            ..LrRange::default()
        });
        let p = plan_run(&config, 1_000, 100, 2).unwrap();
        assert_eq!((p.epochs, p.steps_per_epoch), (config.epochs(), 10));
        assert_eq!(
            plan_run(&config, 1_000, 100, 3),
            Err(PlanError::BatchNotDivisible {
                batch_size: 64,
                world_size: 3
            })
        );
    }

    #[test]
    fn view_uses_relative_forward_slash_paths() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["training", "testing"] {
            for class in ["a", "b"] {
                let d = dir.path().join(split).join(class);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("0.png"), b"x").unwrap();
            }
        }
        let idx = ringtrain_common::data::scan_dataset(dir.path(), &Default::default()).unwrap();
        let v = DatasetView::new(
            &idx,
            ringtrain_common::data::Geometry::MNIST,
            idx.layout_fingerprint(),
        );
        assert_eq!(
            v.train,
            vec![
                ("training/a/0.png".to_string(), 0),
                ("training/b/0.png".to_string(), 1)
            ]
        );
        assert_eq!(v.fingerprint, idx.layout_fingerprint());
    }
}
