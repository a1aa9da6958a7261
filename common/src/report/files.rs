//! [`RunFiles`]: the run folder's `metrics.jsonl`, `steps.csv` and `plots/*.png`.
//!
//! Owns those files' formats and when they are rewritten; not the table (the parent module) nor
//! how a file is replaced (`crate::fsio`).
//!
//! # Contract
//! * `metrics.jsonl` gets one JSON [`EpochRow`] per line, `steps.csv` a header and one line per
//!   step; both only ever grow during a run.
//! * Starting ([`RunFiles::create`]) or resuming ([`RunFiles::resume`]) replaces both files
//!   atomically with their first lines, so a crash while resuming never loses the epochs kept.
//! * Every plot is redrawn at the end of every epoch and replaced atomically
//!   ([`write_atomic`]), so a reader (a browser, the status page) sees the old picture or the
//!   new one, never half a PNG.
//!
//! Tests: `tests` at the bottom; the end-to-end tests in `tests/` read these files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{EpochRow, Smoothener};
use crate::fsio::{write_atomic, WriteError};
use crate::plot::{Chart, Series};

/// Writing a run folder file failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot write {path}: {reason}")]
pub struct ReportError {
    /// The file or folder.
    pub path: PathBuf,
    /// What the OS said.
    pub reason: String,
}

/// A step as `steps.csv` holds it: `(step, epoch, lr, beta1, loss)`.
type StepLine = (u64, u32, f64, f64, f64);

const STEPS_HEADER: &str = "step,epoch,lr,beta1,loss";

/// Writer of the run folder's metric files.
#[derive(Debug)]
pub struct RunFiles {
    dir: PathBuf,
    metrics: File,
    steps: BufWriter<File>,
    pub rows: Vec<EpochRow>,
    pub step_points: Vec<(u64, f64, f64, f64)>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ReportError + '_ {
    move |e| ReportError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_error(e: WriteError) -> ReportError {
    ReportError {
        path: e.path().to_path_buf(),
        reason: e.io_error().to_string(),
    }
}

fn json_line(path: &Path, r: &EpochRow) -> Result<String, ReportError> {
    serde_json::to_string(r).map_err(|e| ReportError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn steps_line((step, epoch, lr, beta1, loss): StepLine) -> String {
    format!("{step},{epoch},{lr:e},{beta1},{loss}")
}

impl RunFiles {
    /// Starts the metric files of a new run in `dir` (replacing any there).
    pub fn create(dir: &Path) -> Result<Self, ReportError> {
        Self::start(dir, Vec::new(), Vec::new())
    }

    /// Reopens the metric files of a resumed run in `dir`: keeps the rows of the first
    /// `epochs_done` epochs and their steps, drops anything later (work after the checkpoint
    /// that is about to be redone), rewrites both files and appends from there.
    pub fn resume(dir: &Path, epochs_done: u32) -> Result<Self, ReportError> {
        let rows: Vec<EpochRow> = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<EpochRow>(l).ok())
            .filter(|r| r.epoch < epochs_done)
            .collect();
        let steps: Vec<StepLine> = std::fs::read_to_string(dir.join("steps.csv"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                match f.as_slice() {
                    [s, e, lr, b, loss] => Some((
                        s.parse().ok()?,
                        e.parse().ok()?,
                        lr.parse().ok()?,
                        b.parse().ok()?,
                        loss.parse().ok()?,
                    )),
                    _ => None,
                }
            })
            .filter(|s| s.1 < epochs_done)
            .collect();
        Self::start(dir, rows, steps)
    }

    /// Replaces both files with `rows` and `steps`, then opens them for appending.
    fn start(dir: &Path, rows: Vec<EpochRow>, steps: Vec<StepLine>) -> Result<Self, ReportError> {
        std::fs::create_dir_all(dir.join("plots")).map_err(io(dir))?;
        let mpath = dir.join("metrics.jsonl");
        let mut metrics = String::new();
        for r in &rows {
            metrics.push_str(&json_line(&mpath, r)?);
            metrics.push('\n');
        }
        let spath = dir.join("steps.csv");
        let mut csv = format!("{STEPS_HEADER}\n");
        for s in &steps {
            csv.push_str(&steps_line(*s));
            csv.push('\n');
        }
        write_atomic(&mpath, metrics.as_bytes()).map_err(write_error)?;
        write_atomic(&spath, csv.as_bytes()).map_err(write_error)?;
        let append = |path: &Path| OpenOptions::new().append(true).open(path).map_err(io(path));
        Ok(Self {
            dir: dir.to_path_buf(),
            metrics: append(&mpath)?,
            steps: BufWriter::new(append(&spath)?),
            rows,
            step_points: steps
                .into_iter()
                .map(|(step, _, lr, beta1, loss)| (step, lr, beta1, loss))
                .collect(),
        })
    }

    /// Records one training step.
    pub fn step(
        &mut self,
        step: u64,
        epoch: u32,
        lr: f64,
        beta1: f64,
        loss: f64,
    ) -> Result<(), ReportError> {
        let path = self.dir.join("steps.csv");
        writeln!(self.steps, "{}", steps_line((step, epoch, lr, beta1, loss)))
            .map_err(io(&path))?;
        self.step_points.push((step, lr, beta1, loss));
        Ok(())
    }

    /// Records one epoch (appends to metrics.jsonl and redraws the plots).
    pub fn epoch(&mut self, r: EpochRow) -> Result<(), ReportError> {
        let mpath = self.dir.join("metrics.jsonl");
        let line = json_line(&mpath, &r)?;
        writeln!(self.metrics, "{line}").map_err(io(&mpath))?;
        self.steps
            .flush()
            .map_err(io(&self.dir.join("steps.csv")))?;
        self.rows.push(r);
        self.plots()
    }

    fn plots(&self) -> Result<(), ReportError> {
        let steps_per_epoch = self.step_points.len() as f64 / self.rows.len().max(1) as f64;
        let mut sm = Smoothener::new(0.98);
        let smoothed = Series {
            name: "train (smoothed)".into(),
            points: self
                .step_points
                .iter()
                .map(|p| (p.0 as f64, sm.add(p.3)))
                .collect(),
        };
        let valid = Series {
            name: "valid".into(),
            points: self
                .rows
                .iter()
                .map(|r| ((f64::from(r.epoch) + 1.0) * steps_per_epoch, r.valid_loss))
                .collect(),
        };
        let by_step = |f: fn(&(u64, f64, f64, f64)) -> f64| {
            self.step_points
                .iter()
                .map(|p| (p.0 as f64, f(p)))
                .collect()
        };
        let chart = |title: &str, x_label: &str, y_label: &str, series: Vec<Series>| Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series,
            ..Chart::default()
        };
        let one = |name: &str, points| {
            vec![Series {
                name: name.into(),
                points,
            }]
        };
        let accuracy = self
            .rows
            .iter()
            .map(|r| (f64::from(r.epoch), r.accuracy))
            .collect();
        let plots = [
            (
                "loss.png",
                chart("Loss", "step", "cross-entropy", vec![smoothed, valid]),
            ),
            (
                "lr.png",
                chart(
                    "Learning rate (one-cycle)",
                    "step",
                    "lr",
                    one("lr", by_step(|p| p.1)),
                ),
            ),
            (
                "beta1.png",
                chart(
                    "Adam beta1 (one-cycle momentum)",
                    "step",
                    "beta1",
                    one("beta1", by_step(|p| p.2)),
                ),
            ),
            (
                "accuracy.png",
                chart(
                    "Validation accuracy",
                    "epoch",
                    "accuracy",
                    one("accuracy", accuracy),
                ),
            ),
        ];
        for (name, chart) in plots {
            let path = self.dir.join("plots").join(name);
            let png = chart.png().map_err(|e| ReportError {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write_atomic(&path, &png).map_err(write_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_redraws_the_four_plots_as_whole_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = RunFiles::create(dir.path()).unwrap();
        let plots = dir.path().join("plots");
        let names = ["loss.png", "lr.png", "beta1.png", "accuracy.png"];
        let mut before = Vec::new();
        for epoch in 0..2u32 {
            for i in 0..10u64 {
                let step = u64::from(epoch) * 10 + i;
                let loss = 2.0 / (1.0 + step as f64);
                files.step(step, epoch, 1e-3, 0.9, loss).unwrap();
            }
            files
                .epoch(EpochRow {
                    epoch,
                    train_loss: 0.5,
                    valid_loss: 0.4 - f64::from(epoch) * 0.1,
                    accuracy: 0.9 + f64::from(epoch) * 0.05,
                    valid_correct: 9,
                    valid_count: 10,
                    seconds: 1.0,
                    train_seconds: 1.0,
                    train_images_per_s: 1.0,
                    lr: 1e-3,
                })
                .unwrap();
            let now: Vec<Vec<u8>> = names
                .iter()
                .map(|n| std::fs::read(plots.join(n)).unwrap())
                .collect();
            for (n, bytes) in names.iter().zip(&now) {
                let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info();
                let info = reader.unwrap().info().clone();
                assert_eq!((info.width, info.height), (800, 480), "{n}");
            }
            before.push(now);
        }
        // The second epoch redrew the plots (accuracy gained a point, loss a valid point).
        assert_ne!(before[0][0], before[1][0]);
        assert_ne!(before[0][3], before[1][3]);
        // Only the four plots are left: no temporary files, no SVGs.
        let mut left: Vec<String> = std::fs::read_dir(&plots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["accuracy.png", "beta1.png", "loss.png", "lr.png"]);
    }

    #[test]
    fn resume_keeps_the_epochs_done_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let row = |epoch| EpochRow {
            epoch,
            train_loss: 0.5,
            valid_loss: 0.4,
            accuracy: 0.9,
            valid_correct: 9,
            valid_count: 10,
            seconds: 1.0,
            train_seconds: 1.0,
            train_images_per_s: 1.0,
            lr: 1e-3,
        };
        let mut files = RunFiles::create(dir.path()).unwrap();
        for epoch in 0..3u32 {
            for i in 0..2u64 {
                files
                    .step(u64::from(epoch) * 2 + i, epoch, 1e-3, 0.9, 0.25)
                    .unwrap();
            }
            files.epoch(row(epoch)).unwrap();
        }
        drop(files);
        let mut files = RunFiles::resume(dir.path(), 2).unwrap();
        assert_eq!(files.rows, [row(0), row(1)]);
        assert_eq!(files.step_points.len(), 4);
        files.step(4, 2, 1e-3, 0.9, 0.125).unwrap();
        files.epoch(row(2)).unwrap();
        let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 3);
        let steps = std::fs::read_to_string(dir.path().join("steps.csv")).unwrap();
        assert_eq!(
            steps,
            "step,epoch,lr,beta1,loss\n0,0,1e-3,0.9,0.25\n1,0,1e-3,0.9,0.25\n\
             2,1,1e-3,0.9,0.25\n3,1,1e-3,0.9,0.25\n4,2,1e-3,0.9,0.125\n"
        );
        // Only the run's files: the atomic rewrites left no temporary behind.
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["metrics.jsonl", "plots", "steps.csv"]);
    }

    #[test]
    fn a_plot_that_cannot_be_written_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = RunFiles::create(dir.path()).unwrap();
        std::fs::remove_dir(dir.path().join("plots")).unwrap();
        files.step(0, 0, 1e-3, 0.9, 1.0).unwrap();
        let err = files
            .epoch(EpochRow {
                epoch: 0,
                train_loss: 1.0,
                valid_loss: 1.0,
                accuracy: 0.5,
                valid_correct: 1,
                valid_count: 2,
                seconds: 1.0,
                train_seconds: 1.0,
                train_images_per_s: 1.0,
                lr: 1e-3,
            })
            .unwrap_err();
        assert!(err.path.starts_with(dir.path().join("plots")), "{err}");
    }
}
