//! Preparing a run: validate the config, load its security, take the run folder's lock, find
//! what to resume, scan and probe the dataset, check the plan, and create the run folder.

use std::sync::Arc;
use std::time::Duration;

use ringtrain_common::checkpoint::CheckpointStore;
use ringtrain_common::data::{resolve_geometry, scan_dataset};
use ringtrain_common::report::RunFiles;
use tokio::sync::watch;

use super::{Run, ServeError};
use crate::artifacts::{OutputWriter, TableSink};
use crate::clock::now;
use crate::config::RunConfig;
use crate::plan::{plan_run, DatasetView};
use crate::resume::ResumeError;
use crate::runlock::RunLock;
use crate::security;
use crate::shared::Shared;
use crate::state::{Event, Prepared, RunState};

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Run {
    /// Validates `config`, scans the dataset, checks the plan for every possible world size and
    /// creates the run folder; the table goes to stdout.
    pub fn prepare(config: RunConfig) -> Result<Self, ServeError> {
        Self::prepare_with_table(config, Box::new(std::io::stdout()))
    }

    /// [`Run::prepare`] with the table written to `table`.
    pub fn prepare_with_table(config: RunConfig, table: TableSink) -> Result<Self, ServeError> {
        config.validate()?;
        let token = security::load_token(&config)?;
        security::check_exposure(&config, token.as_ref())?;
        let tls = security::load_tls(&config)?;
        let config = config.resolved(unix_time());
        // Before the folder is read: a second coordinator on it must not resume from files
        // the first is writing.
        let lock = match &config.run_dir {
            Some(dir) => Some(RunLock::acquire(dir, &config.listen)?),
            None => None,
        };
        let (config, resumed) = crate::resume::find_resume(config)?;
        let run_id = config.run_id.clone().unwrap_or_default();
        let run_dir = config.run_dir.clone().unwrap_or_default();
        // Fail before any work when checkpoints cannot be written (read-only or full disk).
        CheckpointStore::new(&run_dir).probe_writable()?;
        let effective = serde_json::to_string(&config).unwrap_or_default();
        tracing::info!(run_id = %run_id, config = %effective, "effective configuration");
        // Absolute, so workers started from another folder find the same files.
        let data = std::path::absolute(&config.data).unwrap_or_else(|_| config.data.clone());
        let mut index = scan_dataset(&data, &config.scan_options())?;
        // Workers prove they see these files with their own scan, before any header is read.
        let fingerprint = index.layout_fingerprint();
        let geometry = resolve_geometry(
            &mut index,
            &config.image_options(),
            config.skip_bad,
            &config.train_dir,
        )?;
        let dataset = DatasetView::new(&index, geometry, fingerprint);
        for world_size in config.min_workers()..=config.workers {
            plan_run(
                &config,
                dataset.train.len(),
                dataset.valid.len(),
                world_size,
            )
            .map_err(|source| ServeError::Plan { world_size, source })?;
        }
        if !dataset.skipped.is_empty() {
            tracing::warn!(
                skipped = dataset.skipped.len(),
                "files left out by skip_bad; listed in run.json"
            );
        }
        tracing::info!(
            classes = dataset.classes.len(),
            train = dataset.train.len(),
            valid = dataset.valid.len(),
            images = %dataset.geometry,
            resize = dataset.geometry.resize,
            augment = %config.augment,
            fingerprint = %dataset.fingerprint,
            "dataset scanned"
        );
        let files = match &resumed {
            Some(r) => {
                if r.progress.dataset_fingerprint != dataset.fingerprint {
                    return Err(ResumeError::OtherDataset {
                        root: dataset.root.clone(),
                        run_id: run_id.clone(),
                        got: dataset.fingerprint.clone(),
                        want: r.progress.dataset_fingerprint.clone(),
                    }
                    .into());
                }
                RunFiles::resume(&run_dir, r.point.epoch)?
            }
            None => RunFiles::create(&run_dir)?,
        };
        let prepared = Arc::new(Prepared {
            config,
            run_id,
            run_dir: run_dir.clone(),
            dataset,
        });
        let resume_notice = resumed.as_ref().map(|r| r.notice.clone());
        let state = RunState::resuming(prepared.clone(), now(), resumed);
        let (tx, _) = watch::channel(state.snapshot());
        let linger = Duration::from_secs_f64(2.0 * prepared.config.heartbeat_interval_s);
        let history = crate::dashboard::History::restored(&files.rows, &files.step_points);
        let shared = Arc::new(Shared::new(state, tx, history));
        let weak = Arc::downgrade(&shared);
        let hook = Box::new(move |reason: String| {
            if let Some(s) = weak.upgrade() {
                let _ = s.apply(Event::Fail(reason), |_| ());
            }
        });
        let (out, writer) = OutputWriter::start(run_dir, files, table, hook);
        shared.open_output(out);
        if let Some(line) = resume_notice {
            shared.emit(crate::artifacts::Output::Notice(line));
        }
        if let Some(line) = images_notice(&prepared) {
            shared.emit(crate::artifacts::Output::Notice(line));
        }
        Ok(Self {
            shared,
            writer,
            prepared,
            linger,
            token,
            tls,
            _lock: lock,
        })
    }
}

/// What the images became, when that is more than MNIST's native grayscale: the channels `auto`
/// chose and the resizing, so a user sees how their folder is read.
fn images_notice(p: &Prepared) -> Option<String> {
    let g = p.dataset.geometry;
    if g.channels == 1 && !g.resize {
        return None;
    }
    let colour = if g.channels == 3 { "RGB" } else { "grayscale" };
    let size = if g.resize {
        format!(
            "resized (shorter side) and centre-cropped to {0}x{0}",
            g.size
        )
    } else {
        format!("{0}x{0}, their own size", g.size)
    };
    Some(format!(
        "ringtrain: {} training and {} validation images in {} classes, read as {colour} ({}), {size}; training augmentation {}",
        p.dataset.train.len(),
        p.dataset.valid.len(),
        p.dataset.classes.len(),
        if p.config.channels.fixed().is_some() { "--channels" } else { "auto" },
        p.config.augment
    ))
}
