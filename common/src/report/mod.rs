//! What a run shows and leaves behind: the lesson's epoch table on stdout, and in the run folder
//! `metrics.jsonl` (one line per epoch), `steps.csv` (lr, beta1 and loss per step) and
//! `plots/{loss,lr,beta1,accuracy}.png`, redrawn at the end of every epoch.
//!
//! Owns the table's layout ([`header`], [`row`]), its rows ([`EpochRow`]) and fastai's loss
//! smoothing ([`Smoothener`]); the run folder's files are `files.rs` ([`RunFiles`], feature
//! `plot`, since it draws the plots).
//!
//! Used by the standalone worker and by the coordinator, which prints the table for the whole
//! run. Tests: `tests` at the bottom and in `files.rs`; the end-to-end tests in `tests/` read
//! these files.

use serde::{Deserialize, Serialize};

#[cfg(feature = "plot")]
mod files;
#[cfg(feature = "plot")]
pub use files::{ReportError, RunFiles};

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
    fn smoothener_is_debiased() {
        let mut s = Smoothener::new(0.98);
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        let v = s.add(0.0);
        assert!(v < 2.0 && v > 1.0);
    }
}
