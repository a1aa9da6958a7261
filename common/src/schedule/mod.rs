//! One-cycle schedule: the learning rate and Adam `beta1` for every training step, as fastai v1's
//! `fit_one_cycle` sets them.
//!
//! Owns the schedule arithmetic and the validation of its config; not the optimiser that applies
//! the values (worker) nor the step counting across epochs and restarts (coordinator).
//!
//! # Contract
//! * [`OneCycle::at`] is a pure function of the validated config and a 0-based global step, so the
//!   coordinator and every worker compute identical values and a resumed run can jump to any step.
//! * Values match fastai v1 (`fastai/callbacks/one_cycle.py`, `fastai/callback.py::Scheduler`)
//!   step for step, including its off-by-one conventions:
//!
//! ```text
//!   a1 = floor(total * pct_start), a2 = total - a1, n1 = max(1, a1), n2 = max(1, a2)
//!   step 0           lr = max_lr/div                      beta1 = moms.0   (set at train begin)
//!   step k in 1..=n1 lr = cos(max_lr/div -> max_lr, k/n1)  beta1 = cos(moms.0 -> moms.1, k/n1)
//!   step k > n1      lr = cos(max_lr -> max_lr/(div*final_div), min(k-n1, n2)/n2)
//!                    beta1 = cos(moms.1 -> moms.0, same pct)
//!   cos(a -> b, p) = b + (a-b)/2 * (cos(pi*p) + 1)
//!
//!   lr    max_lr |      /\.
//!                |    /    `-.
//!       max/div  |__/          `-.__
//!                0      a1           total   step
//! ```
//! * Batch `a1` (if `a1 >= 1`) trains at exactly `max_lr`; the last batch (`total - 1`) does not
//!   reach the floor `max_lr/(div*final_div)`; steps `>= total` hold what fastai's optimiser would
//!   hold after training stops (the floor, once phase 2 has ticked `n2` times).
//!
//! Tests at the bottom of this file; `golden.json` beside it is made by `gen_golden.py`, a stateful
//! transcription of fastai's own stepping code.

use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// What is wrong with a [`OneCycleConfig`]; one variant per validation rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// `max_lr` is not a finite number greater than zero.
    #[error("max_lr must be finite and > 0, got {max_lr}")]
    BadMaxLr {
        /// The rejected value.
        max_lr: f64,
    },
    /// `total_steps` is zero: there is nothing to schedule.
    #[error("total_steps must be >= 1")]
    NoSteps,
    /// `pct_start` is outside the open interval (0, 1).
    #[error("pct_start must be in (0, 1), got {pct_start}")]
    BadPctStart {
        /// The rejected value.
        pct_start: f64,
    },
    /// `div_factor` is not a finite number greater than zero.
    #[error("div_factor must be finite and > 0, got {div_factor}")]
    BadDivFactor {
        /// The rejected value.
        div_factor: f64,
    },
    /// `final_div_factor` is not a finite number greater than zero.
    #[error("final_div_factor must be finite and > 0, got {final_div_factor}")]
    BadFinalDivFactor {
        /// The rejected value.
        final_div_factor: f64,
    },
    /// A momentum (Adam `beta1`) bound lies outside [0, 1).
    #[error("moms must both be in [0, 1), got ({}, {})", moms.0, moms.1)]
    BadMoms {
        /// The rejected pair.
        moms: (f64, f64),
    },
}

/// fastai's `pct_start`: the share of the steps spent warming up.
pub const DEFAULT_PCT_START: f64 = 0.3;
/// fastai's `div_factor`: the run starts at `max_lr / 25`.
pub const DEFAULT_DIV_FACTOR: f64 = 25.0;
/// fastai's `final_div` over `div_factor`: the run anneals towards `max_lr / (25 · 1e4)`.
pub const DEFAULT_FINAL_DIV_FACTOR: f64 = 1e4;
/// fastai's `moms`: Adam `beta1` at the start/end and at the peak learning rate.
pub const DEFAULT_MOMS: (f64, f64) = (0.95, 0.85);

fn default_pct_start() -> f64 {
    DEFAULT_PCT_START
}
fn default_div_factor() -> f64 {
    DEFAULT_DIV_FACTOR
}
fn default_final_div_factor() -> f64 {
    DEFAULT_FINAL_DIV_FACTOR
}
fn default_moms() -> (f64, f64) {
    DEFAULT_MOMS
}

/// One-cycle hyper-parameters, named as in fastai/PyTorch. Only `max_lr` and `total_steps` are
/// required when deserialising; the rest default to fastai's values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycleConfig {
    /// Peak learning rate, reached after `floor(total_steps * pct_start)` steps.
    pub max_lr: f64,
    /// Number of training steps (batches) in the whole run, all epochs together.
    pub total_steps: u64,
    /// Fraction of the steps spent warming up (default 0.3).
    #[serde(default = "default_pct_start")]
    pub pct_start: f64,
    /// The run starts at `max_lr / div_factor` (default 25).
    #[serde(default = "default_div_factor")]
    pub div_factor: f64,
    /// The run anneals towards `max_lr / (div_factor * final_div_factor)` (default 1e4; fastai's
    /// `final_div` is `div_factor * final_div_factor`).
    #[serde(default = "default_final_div_factor")]
    pub final_div_factor: f64,
    /// Adam `beta1` at the start and at the peak of the learning rate (default (0.95, 0.85)).
    #[serde(default = "default_moms")]
    pub moms: (f64, f64),
}

impl OneCycleConfig {
    /// fastai's defaults for everything but the two values each run must choose.
    pub fn new(max_lr: f64, total_steps: u64) -> Self {
        Self {
            max_lr,
            total_steps,
            pct_start: default_pct_start(),
            div_factor: default_div_factor(),
            final_div_factor: default_final_div_factor(),
            moms: default_moms(),
        }
    }

    /// Checks every rule (first failure wins, in field order) and precomputes the phases.
    pub fn init(self) -> Result<OneCycle, ScheduleError> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let mom_ok = |m: f64| (0.0..1.0).contains(&m);
        if !positive(self.max_lr) {
            return Err(ScheduleError::BadMaxLr {
                max_lr: self.max_lr,
            });
        }
        if self.total_steps == 0 {
            return Err(ScheduleError::NoSteps);
        }
        if !(self.pct_start > 0.0 && self.pct_start < 1.0) {
            return Err(ScheduleError::BadPctStart {
                pct_start: self.pct_start,
            });
        }
        if !positive(self.div_factor) {
            return Err(ScheduleError::BadDivFactor {
                div_factor: self.div_factor,
            });
        }
        if !positive(self.final_div_factor) {
            return Err(ScheduleError::BadFinalDivFactor {
                final_div_factor: self.final_div_factor,
            });
        }
        if !mom_ok(self.moms.0) || !mom_ok(self.moms.1) {
            return Err(ScheduleError::BadMoms { moms: self.moms });
        }
        // Python's int(n * pct_start): the product is rounded to a double first, then truncated
        // (100 * 0.29 gives 28, not 29). `as` saturates, and the product is < total_steps.
        let warmup_steps = (self.total_steps as f64 * self.pct_start) as u64;
        let low_lr = self.max_lr / self.div_factor;
        // fastai computes lr_max / final_div with final_div = div_factor * 1e4; same order here.
        let final_lr = self.max_lr / (self.div_factor * self.final_div_factor);
        Ok(OneCycle {
            config: self,
            warmup_steps,
            up: Phase {
                ticks: warmup_steps.max(1),
                lr: (low_lr, self.max_lr),
                beta1: self.moms,
            },
            down: Phase {
                ticks: (self.total_steps - warmup_steps).max(1),
                lr: (self.max_lr, final_lr),
                beta1: (self.moms.1, self.moms.0),
            },
        })
    }
}

/// The hyper-parameters one training step uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SchedulePoint {
    /// Learning rate.
    pub lr: f64,
    /// Adam `beta1` (fastai's "momentum"); `beta2` is not scheduled.
    pub beta1: f64,
}

/// One of fastai's two `Scheduler`s: `ticks` cosine steps from `.0` to `.1`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    ticks: u64,
    lr: (f64, f64),
    beta1: (f64, f64),
}

impl Phase {
    /// The value after `tick` of this phase's `ticks` steps (1-based, as fastai's `n`).
    fn after(&self, tick: u64) -> SchedulePoint {
        let pct = tick as f64 / self.ticks as f64;
        SchedulePoint {
            lr: annealing_cos(self.lr.0, self.lr.1, pct),
            beta1: annealing_cos(self.beta1.0, self.beta1.1, pct),
        }
    }
}

/// fastai's `annealing_cos`, with its operation order (the golden test compares to 1e-12).
fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
}

/// A validated one-cycle schedule; cheap to copy, no internal state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    config: OneCycleConfig,
    warmup_steps: u64,
    up: Phase,
    down: Phase,
}

impl OneCycle {
    /// The config this schedule was built from.
    pub fn config(&self) -> &OneCycleConfig {
        &self.config
    }

    /// Steps in the run.
    pub fn total_steps(&self) -> u64 {
        self.config.total_steps
    }

    /// fastai's `a1`: the step that trains at `max_lr` when it is at least 1.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }

    /// The learning rate and `beta1` that batch `step` (0-based, counted over all epochs)
    /// trains with.
    pub fn at(&self, step: u64) -> SchedulePoint {
        if step == 0 {
            // fastai sets the phase-1 start values verbatim at train begin, not
            // annealing_cos(.., 0), which can differ in the last bit.
            return SchedulePoint {
                lr: self.up.lr.0,
                beta1: self.up.beta1.0,
            };
        }
        if step <= self.up.ticks {
            self.up.after(step)
        } else {
            self.down.after((step - self.up.ticks).min(self.down.ticks))
        }
    }

    /// `at(step)` for every step of the run, in order.
    pub fn table(&self) -> Vec<SchedulePoint> {
        (0..self.total_steps()).map(|step| self.at(step)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Golden {
        extra_steps: u64,
        cases: Vec<GoldenCase>,
    }

    #[derive(Deserialize)]
    struct GoldenCase {
        name: String,
        config: OneCycleConfig,
        points: Vec<(f64, f64)>,
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-12 * got.abs().max(want.abs())
    }

    #[test]
    fn schedule_matches_fastai_golden_table() {
        let golden: Golden = serde_json::from_str(include_str!("golden.json"))
            .expect("golden.json is generated by gen_golden.py");
        assert!(golden.cases.len() >= 5);
        for case in &golden.cases {
            let sched = case
                .config
                .init()
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let n = case.config.total_steps + golden.extra_steps;
            assert_eq!(case.points.len() as u64, n, "{}", case.name);
            for (step, &(lr, beta1)) in (0..n).zip(&case.points) {
                let p = sched.at(step);
                assert!(
                    close(p.lr, lr),
                    "{} step {step}: lr {} want {lr}",
                    case.name,
                    p.lr
                );
                assert!(
                    close(p.beta1, beta1),
                    "{} step {step}: beta1 {} want {beta1}",
                    case.name,
                    p.beta1
                );
            }
        }
    }

    #[test]
    fn schedule_rejects_bad_max_lr() {
        for max_lr in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(
                OneCycleConfig::new(max_lr, 10).init(),
                Err(ScheduleError::BadMaxLr { max_lr })
            );
        }
        assert!(matches!(
            OneCycleConfig::new(f64::NAN, 10).init(),
            Err(ScheduleError::BadMaxLr { .. })
        ));
    }

    #[test]
    fn schedule_rejects_zero_steps() {
        assert_eq!(
            OneCycleConfig::new(0.1, 0).init(),
            Err(ScheduleError::NoSteps)
        );
    }

    #[test]
    fn schedule_rejects_bad_pct_start() {
        for pct_start in [0.0, 1.0, -0.1, 1.5] {
            let cfg = OneCycleConfig {
                pct_start,
                ..OneCycleConfig::new(0.1, 10)
            };
            assert_eq!(cfg.init(), Err(ScheduleError::BadPctStart { pct_start }));
        }
        let cfg = OneCycleConfig {
            pct_start: f64::NAN,
            ..OneCycleConfig::new(0.1, 10)
        };
        assert!(matches!(cfg.init(), Err(ScheduleError::BadPctStart { .. })));
    }

    #[test]
    fn schedule_rejects_bad_div_factor() {
        for div_factor in [0.0, -25.0, f64::INFINITY] {
            let cfg = OneCycleConfig {
                div_factor,
                ..OneCycleConfig::new(0.1, 10)
            };
            assert_eq!(cfg.init(), Err(ScheduleError::BadDivFactor { div_factor }));
        }
    }

    #[test]
    fn schedule_rejects_bad_final_div_factor() {
        for final_div_factor in [0.0, -1e4, f64::INFINITY] {
            let cfg = OneCycleConfig {
                final_div_factor,
                ..OneCycleConfig::new(0.1, 10)
            };
            assert_eq!(
                cfg.init(),
                Err(ScheduleError::BadFinalDivFactor { final_div_factor })
            );
        }
    }

    #[test]
    fn schedule_rejects_bad_moms() {
        for moms in [(1.0, 0.85), (0.95, -0.1), (0.95, 1.2)] {
            let cfg = OneCycleConfig {
                moms,
                ..OneCycleConfig::new(0.1, 10)
            };
            assert_eq!(cfg.init(), Err(ScheduleError::BadMoms { moms }));
        }
        // Constant momentum is allowed, as in fastai.
        let cfg = OneCycleConfig {
            moms: (0.9, 0.9),
            ..OneCycleConfig::new(0.1, 10)
        };
        assert!(cfg.init().is_ok());
    }

    #[test]
    fn schedule_rises_then_falls_and_beta1_mirrors() {
        let sched = OneCycleConfig::new(0.05, 12 * 468).init().unwrap();
        let table = sched.table();
        let a1 = sched.warmup_steps() as usize;
        assert_eq!(a1, 1684);
        for w in table[..=a1].windows(2) {
            assert!(w[1].lr > w[0].lr && w[1].beta1 < w[0].beta1);
        }
        for w in table[a1..].windows(2) {
            assert!(w[1].lr < w[0].lr && w[1].beta1 > w[0].beta1);
        }
    }

    #[test]
    fn schedule_start_peak_and_end_values() {
        let sched = OneCycleConfig::new(0.05, 100).init().unwrap();
        assert_eq!(
            sched.at(0),
            SchedulePoint {
                lr: 0.05 / 25.0,
                beta1: 0.95
            }
        );
        assert_eq!(
            sched.at(30),
            SchedulePoint {
                lr: 0.05,
                beta1: 0.85
            }
        );
        let floor = 0.05 / (25.0 * 1e4);
        let last = sched.at(99);
        assert!(last.lr > floor && last.lr < 1e-4 && last.beta1 < 0.95);
        assert_eq!(
            sched.at(100),
            SchedulePoint {
                lr: floor,
                beta1: 0.95
            }
        );
        assert_eq!(sched.at(u64::MAX), sched.at(100));
    }

    #[test]
    fn schedule_without_warmup_jumps_to_peak_after_first_step() {
        // int(3 * 0.3) == 0: fastai still runs a one-tick phase 1.
        let sched = OneCycleConfig::new(0.1, 3).init().unwrap();
        assert_eq!(sched.warmup_steps(), 0);
        assert_eq!(sched.at(0).lr, 0.1 / 25.0);
        assert_eq!(
            sched.at(1),
            SchedulePoint {
                lr: 0.1,
                beta1: 0.85
            }
        );
        let one = OneCycleConfig::new(0.1, 1).init().unwrap();
        assert_eq!(
            one.table(),
            vec![SchedulePoint {
                lr: 0.004,
                beta1: 0.95
            }]
        );
    }

    #[test]
    fn schedule_config_defaults_when_deserialised() {
        let cfg: OneCycleConfig =
            serde_json::from_str(r#"{"max_lr":0.05,"total_steps":5616}"#).unwrap();
        assert_eq!(cfg, OneCycleConfig::new(0.05, 5616));
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<OneCycleConfig>(&json).unwrap(), cfg);
        assert!(serde_json::from_str::<OneCycleConfig>(
            r#"{"max_lr":0.05,"total_steps":1,"lr":1}"#
        )
        .is_err());
    }
}
