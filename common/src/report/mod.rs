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

/// One table line. Cells never run together, whatever the values: a number too wide for its
/// column with a space to spare (a diverged loss: `11018.543050` in a 12-wide column) is
/// written in scientific notation with the same 6 significant digits (`1.10185e4`), and a cell
/// wider still (`-1.00000e300`) widens its column in this row, still followed by a space. So
/// `split_whitespace()` always gives the five columns, and each parses back.
pub fn row(r: &EpochRow) -> String {
    let cells = [
        r.epoch.to_string(),
        number(r.train_loss, width(COLUMNS[1])),
        number(r.valid_loss, width(COLUMNS[2])),
        number(r.accuracy, width(COLUMNS[3])),
        mmss(r.seconds),
    ];
    cells
        .iter()
        .zip(COLUMNS)
        .map(|(v, c)| format!("{v:<w$}", w = width(c).max(v.len() + 1)))
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// `{:.6}` (fastai's format) when it leaves a space in a column `width` wide, else `{:.5e}`.
fn number(v: f64, width: usize) -> String {
    let fixed = format!("{v:.6}");
    if fixed.len() < width {
        fixed
    } else {
        format!("{v:.5e}")
    }
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

    fn row_of(train_loss: f64, valid_loss: f64, accuracy: f64, seconds: f64) -> EpochRow {
        EpochRow {
            epoch: 7,
            train_loss,
            valid_loss,
            accuracy,
            valid_correct: 1,
            valid_count: 10,
            seconds,
            train_seconds: 1.0,
            train_images_per_s: 1.0,
            lr: 0.1,
        }
    }

    /// The five cells of a printed row, parsed back.
    fn parse(line: &str) -> (u32, f64, f64, f64, String) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), 5, "columns ran together: {line:?}");
        let f = |s: &str| {
            s.parse::<f64>()
                .unwrap_or_else(|e| panic!("{s:?} in {line:?}: {e}"))
        };
        (
            cells[0].parse().unwrap(),
            f(cells[1]),
            f(cells[2]),
            f(cells[3]),
            cells[4].to_string(),
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a == b || ((a - b) / b).abs() < 1e-5
    }

    #[test]
    fn a_row_with_huge_losses_stays_parseable() {
        // What an LR sweep to lr 10 printed: `11018.5430500.135900`.
        let line = row(&row_of(1.811537, 11018.54305, 0.1359, 1.2));
        assert_eq!(line, "7          1.811537    1.10185e4   0.135900   00:01");
        for (t, v, a, secs) in [
            (1.811537, 11018.54305, 0.1359, 1.2),
            (37863.4038, 1e12, 0.5, 61.0),
            (123456789.0, -1e300, 1.0, 3600.0),
            (f64::INFINITY, f64::NAN, f64::MAX, 0.0),
            (-f64::MAX, f64::NEG_INFINITY, -0.25, 1e7),
            (0.2, 0.1, 0.99, 75.4),
        ] {
            let line = row(&row_of(t, v, a, secs));
            let (e, pt, pv, pa, time) = parse(&line);
            assert_eq!(e, 7);
            assert!(close(pt, t) && close(pv, v) && close(pa, a), "{line:?}");
            assert_eq!(time, mmss(secs));
            // Where every value fits, each cell starts under its column's name.
            if line.len() <= header().len() {
                for name in COLUMNS {
                    let at = header().find(name).unwrap();
                    assert!(at == 0 || line.as_bytes()[at - 1] == b' ', "{line:?}");
                    assert_ne!(line.as_bytes()[at], b' ', "{line:?}");
                }
            }
        }
        // Values that fit keep fastai's six decimals.
        let (_, t, _, _, _) = parse(&row(&row_of(12.345678, 0.1, 0.9, 1.0)));
        assert_eq!(t, 12.345678);
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
