//! The run's history for the dashboard's charts and epoch table: every completed epoch's row and
//! every step's loss, learning rate and beta1, so a page opened (or reloaded) mid-run draws the
//! whole run, not just what it saw live.
//!
//! Owns the in-memory record and its JSON (`GET /history`); not the run folder's files
//! (`ringtrain_common::report::RunFiles` writes the same numbers to `metrics.jsonl` and
//! `steps.csv`) or when to record (`shared.rs` records each completed epoch as it is emitted).
//!
//! # Contract
//! * Steps carry the raw loss (mean over ranks) and fastai's smoothed loss (one
//!   `Smoothener(0.98)` over the whole run, as the table's `train_loss` and `plots/loss.svg`), so
//!   downsampling never changes what the smoothed curve is.
//! * [`History::json`] returns at most `max_points` steps: every k-th one with the smallest k
//!   that fits, and always the last (so the curve ends where the run is).
//! * A resumed run starts from the run folder's rows and steps (`RunFiles::resume`).
//!
//! Tests: `tests` at the bottom; `coordinator/tests/dashboard.rs` reads it over HTTP.

use ringtrain_common::report::{EpochRow, Smoothener};
use serde_json::{json, Value};

use crate::state::epoch::StepLine;

/// One recorded step.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StepPoint {
    step: u64,
    lr: f64,
    beta1: f64,
    loss: f64,
    smooth_loss: f64,
}

/// One recorded epoch: the table's row and the global step after its last step.
#[derive(Debug, Clone, PartialEq)]
struct EpochPoint {
    row: EpochRow,
    end_step: u64,
}

/// Every completed epoch and step of the run.
#[derive(Debug, Clone)]
pub struct History {
    epochs: Vec<EpochPoint>,
    steps: Vec<StepPoint>,
    smoother: Smoothener,
}

impl Default for History {
    fn default() -> Self {
        Self {
            epochs: Vec::new(),
            steps: Vec::new(),
            smoother: Smoothener::new(0.98),
        }
    }
}

impl History {
    /// The history of a resumed run: `rows` and `steps` (`(step, lr, beta1, loss)`, as
    /// `RunFiles::step_points` holds them) from the run folder.
    pub fn restored(rows: &[EpochRow], steps: &[(u64, f64, f64, f64)]) -> Self {
        let mut h = Self::default();
        for &(step, lr, beta1, loss) in steps {
            h.push_step(step, lr, beta1, loss);
        }
        let per_epoch = if rows.is_empty() {
            0
        } else {
            steps.len() as u64 / rows.len() as u64
        };
        for r in rows {
            h.epochs.push(EpochPoint {
                row: r.clone(),
                end_step: (u64::from(r.epoch) + 1) * per_epoch,
            });
        }
        h
    }

    fn push_step(&mut self, step: u64, lr: f64, beta1: f64, loss: f64) {
        let smooth_loss = self.smoother.add(loss);
        self.steps.push(StepPoint {
            step,
            lr,
            beta1,
            loss,
            smooth_loss,
        });
    }

    /// Records a completed epoch: its row and its steps, in order.
    pub fn record_epoch(&mut self, row: &EpochRow, steps: &[StepLine]) {
        for s in steps {
            self.push_step(s.step, s.lr, s.beta1, s.loss);
        }
        let end_step = steps.last().map_or_else(
            || self.steps.last().map_or(0, |p| p.step + 1),
            |s| s.step + 1,
        );
        self.epochs.push(EpochPoint {
            row: row.clone(),
            end_step,
        });
    }

    /// Completed epochs recorded.
    pub fn epochs(&self) -> usize {
        self.epochs.len()
    }

    /// The JSON of `GET /history`, with at most `max_points` steps (at least 2).
    ///
    /// ```text
    /// {"epochs": [{"epoch", "end_step", "train_loss", "valid_loss", "accuracy",
    ///              "train_images_per_s", "seconds", "lr"}, …],
    ///  "steps": {"step": [..], "lr": [..], "beta1": [..], "loss": [..], "smooth_loss": [..]},
    ///  "steps_recorded": N, "stride": k}
    /// ```
    pub fn json(&self, max_points: usize) -> Value {
        let max_points = max_points.max(2);
        let n = self.steps.len();
        // Indices 0, k, 2k, … ≤ n-1 are at most max_points with this k; when n-1 is not among
        // them there were at most max_points-1, so the last one still fits.
        let stride = if n <= max_points {
            1
        } else {
            (n - 1).div_ceil(max_points - 1)
        };
        let mut picked: Vec<&StepPoint> = self.steps.iter().step_by(stride).collect();
        if let Some(last) = self.steps.last() {
            if picked.last().map(|p| p.step) != Some(last.step) {
                picked.push(last);
            }
        }
        let col = |f: fn(&StepPoint) -> Value| picked.iter().map(|p| f(p)).collect::<Vec<_>>();
        json!({
            "epochs": self.epochs.iter().map(|e| json!({
                "epoch": e.row.epoch,
                "end_step": e.end_step,
                "train_loss": finite(e.row.train_loss),
                "valid_loss": finite(e.row.valid_loss),
                "accuracy": finite(e.row.accuracy),
                "train_images_per_s": finite(e.row.train_images_per_s),
                "seconds": finite(e.row.seconds),
                "lr": finite(e.row.lr),
            })).collect::<Vec<_>>(),
            "steps": {
                "step": col(|p| json!(p.step)),
                "lr": col(|p| finite(p.lr)),
                "beta1": col(|p| finite(p.beta1)),
                "loss": col(|p| finite(p.loss)),
                "smooth_loss": col(|p| finite(p.smooth_loss)),
            },
            "steps_recorded": n,
            "stride": stride,
        })
    }
}

/// JSON has no NaN: non-finite numbers are `null` (the page shows "—").
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: u32) -> EpochRow {
        EpochRow {
            epoch,
            train_loss: 0.5,
            valid_loss: 0.4,
            accuracy: 0.9,
            valid_correct: 9,
            valid_count: 10,
            seconds: 2.0,
            train_seconds: 1.5,
            train_images_per_s: 100.0,
            lr: 0.01,
        }
    }

    fn steps(epoch: u32, per_epoch: u64) -> Vec<StepLine> {
        (0..per_epoch)
            .map(|k| {
                let step = u64::from(epoch) * per_epoch + k;
                StepLine {
                    step,
                    epoch,
                    lr: step as f64,
                    beta1: 0.9,
                    loss: 1.0 + step as f64,
                }
            })
            .collect()
    }

    #[test]
    fn records_rows_steps_and_the_smoothed_loss_of_the_report() {
        let mut h = History::default();
        h.record_epoch(&row(0), &steps(0, 3));
        h.record_epoch(&row(1), &steps(1, 3));
        let j = h.json(100);
        assert_eq!(j["epochs"].as_array().unwrap().len(), 2);
        assert_eq!(j["epochs"][1]["end_step"], 6);
        assert_eq!(j["steps"]["step"], json!([0, 1, 2, 3, 4, 5]));
        assert_eq!(j["steps"]["loss"][5], 6.0);
        // The same smoother as the table: debiased EMA over the whole run.
        let mut sm = Smoothener::new(0.98);
        let want: Vec<f64> = (1..=6).map(|l| sm.add(f64::from(l))).collect();
        assert_eq!(j["steps"]["smooth_loss"], json!(want));
        assert_eq!(
            (j["steps_recorded"].clone(), j["stride"].clone()),
            (json!(6), json!(1))
        );
    }

    #[test]
    fn downsamples_to_the_limit_and_keeps_the_last_step() {
        let mut h = History::default();
        h.record_epoch(&row(0), &steps(0, 1001));
        for max in [2usize, 3, 10, 100, 500, 1000, 1001] {
            let j = h.json(max);
            let s = j["steps"]["step"].as_array().unwrap();
            assert!(s.len() <= max, "{} points for max {max}", s.len());
            assert!(s.len() >= max / 2, "{} points for max {max}", s.len());
            assert_eq!(s.last().unwrap(), 1000, "max {max}");
            assert_eq!(s[0], 0);
            assert_eq!(j["steps"]["lr"].as_array().unwrap().len(), s.len());
        }
        assert_eq!(
            h.json(5000)["steps"]["step"].as_array().unwrap().len(),
            1001
        );
    }

    #[test]
    fn a_restored_history_continues_the_smoothing_and_counts_epochs() {
        let mut live = History::default();
        live.record_epoch(&row(0), &steps(0, 4));
        live.record_epoch(&row(1), &steps(1, 4));
        let pts: Vec<(u64, f64, f64, f64)> = steps(0, 4)
            .iter()
            .map(|s| (s.step, s.lr, s.beta1, s.loss))
            .collect();
        let mut resumed = History::restored(&[row(0)], &pts);
        assert_eq!(resumed.epochs(), 1);
        resumed.record_epoch(&row(1), &steps(1, 4));
        assert_eq!(resumed.json(100), live.json(100));
    }

    #[test]
    fn non_finite_numbers_are_null() {
        let mut h = History::default();
        let mut r = row(0);
        r.valid_loss = f64::NAN;
        h.record_epoch(&r, &steps(0, 1));
        let j = h.json(10);
        assert!(j["epochs"][0]["valid_loss"].is_null());
        assert!(serde_json::to_string(&j).is_ok());
    }
}
