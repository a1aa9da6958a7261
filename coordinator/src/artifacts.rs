//! The coordinator's output layer: the lesson's table on stdout and the run folder.
//!
//! ```text
//! RUN_DIR/run.json            config, classes, norm stats, world size, shards, dropped files, fingerprint
//! RUN_DIR/metrics.jsonl       one line per epoch     } ringtrain_common::report::RunFiles,
//! RUN_DIR/steps.csv           one line per step      } the same files as a standalone run
//! RUN_DIR/plots/*.png         loss, lr, beta1, accuracy, after every epoch
//! RUN_DIR/lr_find.{json,csv}, RUN_DIR/plots/lr_find.png   `lr-find` only: the sweep, suggestions
//! RUN_DIR/final.safetensors   rank 0's weights at the end
//! RUN_DIR/summary.json        final accuracy, valid loss, throughput, params_hash, status
//! RUN_DIR/checkpoints/e<epoch>-s<step>/   one per epoch end (ringtrain_common::checkpoint)
//! RUN_DIR/best, RUN_DIR/latest            links to the best (validation accuracy) and newest
//! ```
//!
//! Owns file formats and the writer thread; not what to write when (the run state machine
//! decides and sends [`Output`]s here in order).
//!
//! # Contract
//! * Outputs are written in the order the state machine emitted them, by one OS thread, so disk
//!   I/O never runs on the async runtime or under the state lock.
//! * `run.json`, `summary.json` and `final.safetensors` are replaced atomically (temporary file,
//!   fsync, rename, fsync of the folder): a crash leaves the old file or the new one, never half.
//! * A failed write is reported through the error callback (the run fails, naming the file) and
//!   returned by [`OutputWriter::finish`]; later outputs are still attempted.
//!
//! Tests: `tests` at the bottom; the service tests read the files back.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;

use std::sync::Arc;

use ringtrain_common::checkpoint::{checkpoint_name, CheckpointState, CheckpointStore};
use ringtrain_common::data::Skipped;
use ringtrain_common::lr_find::LrFindResult;
use ringtrain_common::report::{header, row, RunFiles};
use serde::Serialize;

use crate::config::RunConfig;
use crate::state::epoch::EpochResult;

/// One thing to show or write, in emission order.
#[derive(Debug)]
pub enum Output {
    /// (Re)write `run.json`.
    RunInfo(Box<RunInfo>),
    /// A completed epoch: its steps, the table row, metrics and plots.
    Epoch(Box<EpochResult>),
    /// Rank 0's final weights (a safetensors file).
    Weights(Vec<u8>),
    /// Write `summary.json`.
    Summary(Box<Summary>),
    /// Steps done in the current epoch (a live line on a terminal's stderr, nothing otherwise).
    Progress { epoch: u32, done: u64, steps: u32 },
    /// Write a checkpoint, point `latest` (and `best`) at it, prune old ones.
    Checkpoint(Box<CheckpointOut>),
    /// A line for people between the table's rows (a round restart).
    Notice(String),
    /// `lr-find`'s analysis: `lr_find.json`, `lr_find.csv`, `plots/lr_find.png` and the
    /// suggestion under the table.
    LrFind(Box<LrFindResult>),
}

/// A checkpoint to write.
#[derive(Debug)]
pub struct CheckpointOut {
    pub state: CheckpointState,
    pub model: Arc<Vec<u8>>,
    pub optimizer: Arc<Vec<u8>>,
    /// The name of the best checkpoint so far (this one or an older one).
    pub best: Option<String>,
    /// Newest checkpoints to keep besides the best.
    pub keep: usize,
}

/// Normalisation statistics on the [0, 1] scale, as every rank applies them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormInfo {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub count: u64,
}

/// One rank in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankInfo {
    pub rank: u32,
    pub worker_id: String,
    pub collective_addr: String,
    pub device: String,
    /// The GPU's UUID (empty on CPU).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_uuid: String,
    pub train_images: usize,
    pub valid_images: usize,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub round: u32,
    pub model: String,
    pub world_size: u32,
    pub classes: Vec<String>,
    pub data_root: String,
    pub dataset_fingerprint: String,
    pub batch_per_worker: u32,
    pub steps_per_epoch: u32,
    pub total_steps: u64,
    /// `None` until every rank reported its pixel sums. Named like the standalone worker's
    /// `run.json` so `ringtrain-worker eval` reads both.
    #[serde(rename = "normalize")]
    pub norm: Option<NormInfo>,
    pub ranks: Vec<RankInfo>,
    /// The round's all-reduce (`ring` or `nccl`) and why (`None` before the round closed).
    pub collective: Option<String>,
    pub collective_reason: Option<String>,
    /// Training files no rank trains on (the shard plan's trim), relative to the data root.
    pub dropped_train: Vec<String>,
    /// Files the scan left out because of `skip_bad`, with reasons.
    pub skipped: Vec<Skipped>,
    /// The effective configuration.
    pub config: RunConfig,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    /// `finished` or `failed`.
    pub status: String,
    /// Why the run failed.
    pub reason: Option<String>,
    pub model: String,
    pub world_size: u32,
    /// Epochs completed.
    pub epochs: u32,
    pub accuracy: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_correct: Option<u64>,
    pub valid_count: Option<u64>,
    /// Training images per second, paced by the slowest rank of each epoch.
    pub train_images_per_s: f64,
    /// The hash every rank agreed on after the last epoch.
    pub params_hash: Option<String>,
    /// Each rank's hash after the last epoch, index = rank.
    pub rank_hashes: Vec<String>,
    /// Seconds from coordinator start to the end of the run.
    pub wall_seconds: f64,
    pub run_dir: String,
    /// Rounds ended by a lost worker (`max_restarts` bounds them).
    #[serde(default)]
    pub restarts: u32,
}

pub use ringtrain_common::fsio::write_atomic;

/// The writer thread; dropping every [`mpsc::Sender`] ends it.
#[derive(Debug)]
pub struct OutputWriter {
    thread: std::thread::JoinHandle<Vec<String>>,
}

/// Where the table goes (stdout for the CLI, a buffer or sink in tests).
pub type TableSink = Box<dyn Write + Send>;

/// Callback for a failed write: receives the reason (it names the file).
pub type ErrorHook = Box<dyn Fn(String) + Send>;

impl OutputWriter {
    /// Starts the writer for `run_dir`, whose metric files `files` already created.
    pub fn start(
        run_dir: PathBuf,
        files: RunFiles,
        table: TableSink,
        on_error: ErrorHook,
    ) -> (mpsc::Sender<Output>, Self) {
        let (tx, rx) = mpsc::channel::<Output>();
        // Thread creation fails only when the OS is out of threads or memory: nothing to run on.
        let thread = std::thread::Builder::new()
            .name("ringtrain-output".into())
            .spawn(move || {
                let mut w = Writer {
                    dir: run_dir,
                    files,
                    table,
                    header_done: false,
                    live: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    progress_shown: false,
                };
                let mut errors = Vec::new();
                for out in rx {
                    if let Err(e) = w.write(out) {
                        tracing::error!(error = %e, "cannot write the run folder");
                        on_error(e.clone());
                        errors.push(e);
                    }
                }
                errors
            })
            .expect("spawning a thread only fails when the OS is out of threads or memory");
        (tx, Self { thread })
    }

    /// Waits until every output is written (all senders must be gone); returns the write errors.
    pub fn finish(self) -> Vec<String> {
        self.thread
            .join()
            .unwrap_or_else(|_| vec!["the output writer panicked".into()])
    }
}

struct Writer {
    dir: PathBuf,
    files: RunFiles,
    table: TableSink,
    header_done: bool,
    /// stderr is a terminal: show a live progress line there.
    live: bool,
    progress_shown: bool,
}

/// `epoch 3 [=========>          ] 230/468`.
fn progress_line(epoch: u32, done: u64, steps: u32) -> String {
    const WIDTH: u64 = 30;
    let steps = u64::from(steps.max(1));
    let filled = (done.min(steps) * WIDTH / steps) as usize;
    let bar: String = "=".repeat(filled) + if filled < WIDTH as usize { ">" } else { "" };
    format!(
        "epoch {epoch} [{bar:<w$}] {done}/{steps} steps",
        w = WIDTH as usize
    )
}

impl Writer {
    fn clear_progress(&mut self) {
        if self.progress_shown {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.progress_shown = false;
        }
    }

    fn write(&mut self, out: Output) -> Result<(), String> {
        if !matches!(out, Output::Progress { .. }) {
            self.clear_progress();
        }
        match out {
            Output::Progress { epoch, done, steps } => {
                if self.live {
                    let mut err = std::io::stderr();
                    let _ = write!(err, "\r\x1b[2K{}", progress_line(epoch, done, steps));
                    let _ = err.flush();
                    self.progress_shown = true;
                }
                Ok(())
            }
            Output::RunInfo(info) => self.json("run.json", &*info),
            Output::Notice(line) => {
                let _ = writeln!(self.table, "{line}");
                let _ = self.table.flush();
                Ok(())
            }
            Output::Checkpoint(c) => self.checkpoint(&c),
            Output::LrFind(r) => self.lr_find(&r),
            Output::Summary(s) => self.json("summary.json", &*s),
            Output::Weights(bytes) => {
                let path = self.dir.join("final.safetensors");
                write_atomic(&path, &bytes)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), bytes = bytes.len(), "final weights written");
                Ok(())
            }
            Output::Epoch(r) => {
                for s in &r.steps {
                    self.files
                        .step(s.step, s.epoch, s.lr, s.beta1, s.loss)
                        .map_err(|e| e.to_string())?;
                }
                // The table is for people; a closed stdout must not fail the run.
                if !self.header_done {
                    let _ = writeln!(self.table, "{}", header());
                    self.header_done = true;
                }
                let _ = writeln!(self.table, "{}", row(&r.row));
                let _ = self.table.flush();
                self.files.epoch(r.row).map_err(|e| e.to_string())
            }
        }
    }

    /// Writes one checkpoint atomically, then moves the links and prunes. A failure leaves
    /// every earlier checkpoint as it was (the store's contract) and fails the run.
    fn checkpoint(&self, c: &CheckpointOut) -> Result<(), String> {
        let store = CheckpointStore::new(&self.dir);
        let dir = store
            .write(&c.state, &c.model, &c.optimizer)
            .map_err(|e| e.to_string())?;
        let name = checkpoint_name(c.state.epoch, c.state.global_step);
        store
            .set_pointer("latest", &name)
            .map_err(|e| e.to_string())?;
        if let Some(best) = &c.best {
            store.set_pointer("best", best).map_err(|e| e.to_string())?;
        }
        let protect: Vec<String> = c.best.iter().cloned().collect();
        let removed = store.prune(c.keep, &protect).map_err(|e| e.to_string())?;
        tracing::info!(checkpoint = %dir.display(), epoch = c.state.epoch, step = c.state.global_step, ?removed, "checkpoint written");
        Ok(())
    }

    fn lr_find(&mut self, r: &LrFindResult) -> Result<(), String> {
        self.json("lr_find.json", r)?;
        let mut csv = String::from("step,lr,loss,smoothed_loss\n");
        for (k, p) in r.points.iter().enumerate() {
            csv.push_str(&format!("{k},{},{},{}\n", p.lr, p.loss, p.smoothed));
        }
        let path = self.dir.join("lr_find.csv");
        write_atomic(&path, csv.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let png = r
            .png()
            .map_err(|e| format!("cannot draw the LR plot: {e}"))?;
        let plot = self.dir.join("plots").join("lr_find.png");
        write_atomic(&plot, &png).map_err(|e| format!("cannot write {}: {e}", plot.display()))?;
        let stop = if r.stopped_early {
            format!(
                "stopped after {} of {} steps: the smoothed loss passed {}x its minimum",
                r.points.len(),
                r.range.iters,
                r.range.stop_div
            )
        } else {
            format!("all {} steps", r.range.iters)
        };
        let _ = writeln!(
            self.table,
            "LR finder: {:.0e} to {:.0e}, {stop}\n\
             suggested max_lr: {:.2e} (a decade below the minimum at {:.2e}; fastai's valley {:.2e}, steep {:.2e})\n\
             plot: {}",
            r.range.start_lr,
            r.range.end_lr,
            r.suggested(),
            r.minimum.at_lr,
            r.valley.lr,
            r.steep.lr,
            plot.display()
        );
        let _ = self.table.flush();
        Ok(())
    }

    fn json(&self, name: &str, value: &impl Serialize) -> Result<(), String> {
        let path = self.dir.join(name);
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
        write_atomic(&path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_fills_with_the_steps() {
        assert_eq!(
            progress_line(0, 0, 10),
            format!("epoch 0 [>{}] 0/10 steps", " ".repeat(29))
        );
        assert_eq!(
            progress_line(2, 5, 10),
            format!("epoch 2 [{}>{}] 5/10 steps", "=".repeat(15), " ".repeat(14))
        );
        assert_eq!(
            progress_line(1, 10, 10),
            format!("epoch 1 [{}] 10/10 steps", "=".repeat(30))
        );
    }
    use std::sync::{Arc, Mutex};

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("final.safetensors");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_atomic(&dir.path().join("missing/x"), b"x").is_err());
    }

    #[test]
    fn write_errors_reach_the_hook_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::create(dir.path()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook = seen.clone();
        // A folder where the weights file should be makes the rename fail.
        std::fs::create_dir_all(dir.path().join("final.safetensors/x")).unwrap();
        let (tx, w) = OutputWriter::start(
            dir.path().into(),
            files,
            Box::new(std::io::sink()),
            Box::new(move |e| hook.lock().unwrap().push(e)),
        );
        tx.send(Output::Weights(vec![1, 2, 3])).unwrap();
        drop(tx);
        let errors = w.finish();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("final.safetensors"), "{errors:?}");
        assert_eq!(*seen.lock().unwrap(), errors);
    }
}
