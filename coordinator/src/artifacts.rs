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

use ringtrain_common::checkpoint::{checkpoint_name, CheckpointStore};
use ringtrain_common::lr_find::LrFindResult;
use ringtrain_common::report::{header, row, RunFiles};
use serde::Serialize;

pub use crate::state::output::{CheckpointOut, NormInfo, Output, RankInfo, RunInfo, Summary};
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
            format!(
                "all {} steps (the smoothed loss stayed under {}x its minimum); after its \
                 minimum the loss climbed to {:.2}x it",
                r.range.iters, r.range.stop_div, r.rise
            )
        };
        let verdict = match r.suggested() {
            Some(lr) => format!(
                "suggested max_lr: {lr:.2e} (a decade below the minimum at {:.2e}; ",
                r.minimum.at_lr
            ),
            None => format!("{}\n(", r.verdict()),
        };
        let _ = writeln!(
            self.table,
            "LR finder: {:.0e} to {:.0e}, {stop}\n\
             {verdict}fastai's valley {:.2e}, steep {:.2e})\n\
             plot: {}",
            r.range.start_lr,
            r.range.end_lr,
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
