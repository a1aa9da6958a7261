//! What a run shows and leaves behind: the lesson's epoch table on stdout, and in the run folder
//! `metrics.jsonl` (one line per epoch), `steps.csv` (lr, beta1 and loss per step) and
//! `plots/{loss,lr,beta1,accuracy}.png`, redrawn at the end of every epoch.
//!
//! Each plot is replaced atomically (written to `plots/.NAME.tmp`, then renamed over `NAME`), so
//! a reader (a browser, the status page) sees the old picture or the new one, never half a PNG.
//! Plots are not fsynced: they are redrawn every epoch and the run's data is in the text files.
//!
//! Used by the standalone worker and by the coordinator, which prints the table for the whole
//! run. Tests: `tests` at the bottom; the end-to-end tests in `tests/` read these files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: u32,
    /// fastai's smoothed training loss (exponential moving average, beta 0.98, debiased) at the
    /// end of the epoch, exactly what the lesson's table prints.
    pub train_loss: f64,
    /// Mean cross-entropy over every validation image.
    pub valid_loss: f64,
    /// Correct / total over every validation image.
    pub accuracy: f64,
    pub valid_correct: u64,
    pub valid_count: u64,
    /// Wall seconds of the epoch, validation included (the table's `time`).
    pub seconds: f64,
    /// Wall seconds spent in training steps only.
    pub train_seconds: f64,
    /// Training images per second over the training steps.
    pub train_images_per_s: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
}

const COLUMNS: [&str; 5] = ["epoch", "train_loss", "valid_loss", "accuracy", "time"];

fn width(name: &str) -> usize {
    name.len().max(9) + 2
}

/// The header line (fastai v1 text progress style).
pub fn header() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{c:<w$}", w = width(c)))
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// `mm:ss`, as fastai formats epoch times.
pub fn mmss(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// One table line.
pub fn row(r: &EpochRow) -> String {
    let cells = [
        r.epoch.to_string(),
        format!("{:.6}", r.train_loss),
        format!("{:.6}", r.valid_loss),
        format!("{:.6}", r.accuracy),
        mmss(r.seconds),
    ];
    cells
        .iter()
        .zip(COLUMNS)
        .map(|(v, c)| format!("{v:<w$}", w = width(c)))
        .collect::<String>()
        .trim_end()
        .to_string()
}

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

impl RunFiles {
    /// Creates (truncating) the metric files in `dir`.
    pub fn create(dir: &Path) -> Result<Self, ReportError> {
        std::fs::create_dir_all(dir.join("plots")).map_err(io(dir))?;
        let mpath = dir.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&mpath)
            .map_err(io(&mpath))?;
        let spath = dir.join("steps.csv");
        let mut steps = BufWriter::new(File::create(&spath).map_err(io(&spath))?);
        writeln!(steps, "step,epoch,lr,beta1,loss").map_err(io(&spath))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            metrics,
            steps,
            rows: Vec::new(),
            step_points: Vec::new(),
        })
    }

    /// Reopens the metric files of a resumed run in `dir`: keeps the rows of the first
    /// `epochs_done` epochs and their steps, drops anything later (work after the checkpoint
    /// that is about to be redone), rewrites both files and appends from there.
    pub fn resume(dir: &Path, epochs_done: u32) -> Result<Self, ReportError> {
        let mpath = dir.join("metrics.jsonl");
        let rows: Vec<EpochRow> = std::fs::read_to_string(&mpath)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<EpochRow>(l).ok())
            .filter(|r| r.epoch < epochs_done)
            .collect();
        let spath = dir.join("steps.csv");
        let steps: Vec<(u64, u32, f64, f64, f64)> = std::fs::read_to_string(&spath)
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
        let mut files = Self::create(dir)?;
        for (step, epoch, lr, beta1, loss) in steps {
            files.step(step, epoch, lr, beta1, loss)?;
        }
        for r in rows {
            let line = serde_json::to_string(&r).map_err(|e| ReportError {
                path: mpath.clone(),
                reason: e.to_string(),
            })?;
            writeln!(files.metrics, "{line}").map_err(io(&mpath))?;
            files.rows.push(r);
        }
        files.steps.flush().map_err(io(&spath))?;
        Ok(files)
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
        writeln!(self.steps, "{step},{epoch},{lr:e},{beta1},{loss}").map_err(io(&path))?;
        self.step_points.push((step, lr, beta1, loss));
        Ok(())
    }

    /// Records one epoch (appends to metrics.jsonl and redraws the plots).
    pub fn epoch(&mut self, r: EpochRow) -> Result<(), ReportError> {
        let mpath = self.dir.join("metrics.jsonl");
        let line = serde_json::to_string(&r).map_err(|e| ReportError {
            path: mpath.clone(),
            reason: e.to_string(),
        })?;
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
            replace_file(&path, &png)?;
        }
        Ok(())
    }
}

/// Replaces `path` with `bytes` atomically: writes `.NAME.tmp` beside it, then renames it over
/// `path` (a rename within one folder is atomic on POSIX file systems).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// fastai's `SmoothenValue`: debiased exponential moving average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Smoothener {
    beta: f64,
    n: i32,
    avg: f64,
}

impl Smoothener {
    pub fn new(beta: f64) -> Self {
        Self {
            beta,
            n: 0,
            avg: 0.0,
        }
    }

    /// Adds a value and returns the smoothed value.
    pub fn add(&mut self, v: f64) -> f64 {
        self.n += 1;
        self.avg = self.beta * self.avg + (1.0 - self.beta) * v;
        self.value()
    }

    pub fn value(&self) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        self.avg / (1.0 - self.beta.powi(self.n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        assert_eq!(
            header(),
            "epoch      train_loss  valid_loss  accuracy   time"
        );
        let r = EpochRow {
            epoch: 0,
            train_loss: 0.2,
            valid_loss: 0.1,
            accuracy: 0.99,
            valid_correct: 99,
            valid_count: 100,
            seconds: 75.4,
            train_seconds: 70.0,
            train_images_per_s: 1.0,
            lr: 0.1,
        };
        assert_eq!(
            row(&r),
            "0          0.200000    0.100000    0.990000   01:15"
        );
    }

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
    fn replace_file_swaps_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        replace_file(&path, b"old").unwrap();
        replace_file(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        assert!(!dir.path().join(".a.png.tmp").exists());
        let missing = dir.path().join("no-such-dir").join("a.png");
        assert_eq!(
            replace_file(&missing, b"x").unwrap_err().path,
            missing.with_file_name(".a.png.tmp")
        );
    }

    #[test]
    fn smoothener_is_debiased() {
        let mut s = Smoothener::new(0.98);
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        let v = s.add(0.0);
        assert!(v < 2.0 && v > 1.0);
    }
}
