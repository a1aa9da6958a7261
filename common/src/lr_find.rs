//! The LR range test (`ringtrain lr-find`; fastai's `learn.lr_find()`): the exponential
//! learning-rate sweep the workers train with, the stop rule they agree on, and the analysis
//! of the recorded losses (smoothing, suggestions, and the plot with feature `plot`).
//!
//! Decisions, as fastai does them:
//! * Step `k` of `iters` trains at `start_lr · (end_lr / start_lr)^(k / (iters − 1))`
//!   (fastai v1 `annealing_exp` driven by its `Scheduler`), with Adam's beta1 held at 0.9.
//! * The loss is smoothed like the recorder's (debiased EMA, β = 0.98); the sweep stops after
//!   the first step whose smoothed loss exceeds `stop_div` (4) times the lowest so far, or is
//!   not finite. That step is still recorded, as fastai records it.
//! * The suggested max_lr is **one decade below the loss minimum** (Smith's rule; fastai's
//!   `minimum` suggestion), found on a **zero-phase** smoothing of the losses: a debiased EMA
//!   run forwards and then backwards over the finished sweep, spanning about one decade of lr
//!   (β = (k − 1)/(k + 1) for k steps per decade; 0.83 for the lesson's sweep). Decided after
//!   measuring: the recorder's causal EMA (β = 0.98) lags about 49 steps, four decades of lr in
//!   the lesson's sweep, so its minimum sits at the end of the sweep and its valley moved
//!   between 0.004 and 0.043 with the seed and data on real MNIST (README, "LR finder").
//!   Losses above `stop_div` × the lowest smoothed loss (and non-finite ones) are clipped to
//!   that bound first, so a diverged last step cannot leak backwards into the minimum.
//! * **No edge, no suggestion.** A minimum is only an answer when the loss rises after it: the
//!   sweep stopped early (the stop rule fired), or the zero-phase curve climbs to at least
//!   [`EDGE_RISE`] (2) × its minimum after it. Otherwise the range was too short (the lowest loss
//!   is wherever the range happened to end), [`LrFindResult::suggested`] is `None`, and
//!   [`NoEdge`] says where the loss was lowest and which `--end-lr` to run instead. Decided after
//!   measuring on full MNIST (README, "Choosing the learning rate"): sweeps to lr 10 ended on a
//!   flat, noisy loss (1.14–1.18 × the minimum, which sat at lr 0.7–2.7 depending on the CPU and
//!   the thread count), sweeps to lr 100 climbed to 4.4–4.9 × before their end.
//! * fastai 2.x's own rules are reported too, on the recorder's curve without the first
//!   `iters / 10` and the last 5 points, as fastai computes them: **valley** (a point 1/2 of
//!   the way into the longest decreasing run) and **steep** (steepest descent against log lr).
//!
//! Tests: `tests` at the bottom; `tests/tests/lr_find.rs` runs the command.

use serde::{Deserialize, Serialize};

#[cfg(feature = "plot")]
use crate::plot::{Chart, Marker, PlotError, Series};
use crate::report::Smoothener;

/// Adam's beta1 during the sweep (fastai's default momentum for Adam).
pub const BETA1: f64 = 0.9;

/// How far the zero-phase curve must climb after its minimum, as a multiple of it, for a sweep
/// that did not stop early to have found the edge (see the module docs).
pub const EDGE_RISE: f64 = 2.0;

/// Why a sweep cannot be set up or analysed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LrFindError {
    /// The sweep's range or length breaks a rule.
    #[error("{field} must be {rule} (got {value})")]
    Invalid {
        field: &'static str,
        rule: &'static str,
        value: f64,
    },
    /// Too few recorded steps remain after skipping the first tenth and the last 5.
    #[error(
        "the loss diverged after {recorded} of {iters} steps, too early to suggest a learning rate \
         (needs more than {needed}); lower --end-lr or raise --iters"
    )]
    TooShort {
        recorded: usize,
        iters: usize,
        needed: usize,
    },
}

/// The sweep: `iters` steps from `start_lr` to `end_lr`, stopping at `stop_div`× the best loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrRange {
    pub start_lr: f64,
    pub end_lr: f64,
    pub iters: u32,
    /// Stop once the smoothed loss exceeds this multiple of its minimum.
    pub stop_div: f64,
}

impl Default for LrRange {
    /// The lesson's sweep (`learn.lr_find(end_lr=100)`): 1e-7 to 100 over 100 steps, stopping at
    /// 4× the best loss. fastai's own default end, 10, rarely reaches the edge on MNIST.
    fn default() -> Self {
        Self {
            start_lr: 1e-7,
            end_lr: 100.0,
            iters: 100,
            stop_div: 4.0,
        }
    }
}

impl LrRange {
    /// Checks the rules: 0 < start_lr < end_lr (finite), iters ≥ 2, stop_div > 1.
    pub fn validate(&self) -> Result<(), LrFindError> {
        let bad = |field, rule, value| Err(LrFindError::Invalid { field, rule, value });
        if !(self.start_lr.is_finite() && self.start_lr > 0.0) {
            return bad("start_lr", "a positive number", self.start_lr);
        }
        if !(self.end_lr.is_finite() && self.end_lr > self.start_lr) {
            return bad("end_lr", "a finite number above start_lr", self.end_lr);
        }
        if self.iters < 2 {
            return bad("iters", "at least 2", f64::from(self.iters));
        }
        if !(self.stop_div.is_finite() && self.stop_div > 1.0) {
            return bad("stop_div", "a number above 1", self.stop_div);
        }
        Ok(())
    }

    /// The learning rate of step `k` (clamped to the last step).
    pub fn lr(&self, k: u64) -> f64 {
        let last = u64::from(self.iters.max(2) - 1);
        let pct = k.min(last) as f64 / last as f64;
        self.start_lr * (self.end_lr / self.start_lr).powf(pct)
    }
}

/// The stop rule every rank applies to the same (all-reduced) losses, step by step.
#[derive(Debug, Clone)]
pub struct StopRule {
    stop_div: f64,
    smooth: Smoothener,
    best: f64,
}

impl StopRule {
    pub fn new(stop_div: f64) -> Self {
        Self {
            stop_div,
            smooth: Smoothener::new(0.98),
            best: f64::INFINITY,
        }
    }

    /// Records the mean loss of the next step; true when the sweep stops after this step.
    pub fn stop_after(&mut self, loss: f64) -> bool {
        let s = self.smooth.add(loss);
        if !s.is_finite() {
            return true;
        }
        if s < self.best {
            self.best = s;
        }
        s > self.stop_div * self.best
    }
}

/// One recorded step of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrPoint {
    pub lr: f64,
    /// Mean loss over the ranks.
    pub loss: f64,
    /// Debiased EMA of `loss` (β = 0.98), fastai's recorder curve (valley, steep).
    pub smoothed: f64,
    /// Zero-phase smoothing of the clipped `loss` (the suggestion).
    pub centered: f64,
}

/// One suggested learning rate and the point of the curve it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub lr: f64,
    /// The curve's point the rule picked (for minimum: the lowest loss, 10× `lr`).
    pub at_lr: f64,
    pub at_loss: f64,
}

/// Why a sweep gives no suggestion: it never found the edge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoEdge {
    /// Where the zero-phase curve was lowest.
    pub lowest_at_lr: f64,
    /// Whether that is within the last decade of the range looked at (fastai's window).
    pub at_end_of_range: bool,
    /// The `--end-lr` to run instead: a decade beyond this sweep's end.
    pub try_end_lr: f64,
}

/// The sweep's analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrFindResult {
    pub range: LrRange,
    pub points: Vec<LrPoint>,
    /// Whether the sweep stopped before its last step (loss diverged).
    pub stopped_early: bool,
    /// β of the zero-phase smoothing.
    pub centered_beta: f64,
    /// The highest the zero-phase curve climbed after its minimum, as a multiple of it.
    #[serde(default)]
    pub rise: f64,
    /// The suggested max_lr (`minimum.lr`), or `None` when the sweep never found the edge.
    #[serde(default)]
    pub suggested: Option<f64>,
    /// Why there is no suggestion (when `suggested` is `None`).
    #[serde(default)]
    pub no_edge: Option<NoEdge>,
    /// The zero-phase curve's minimum and a tenth of its lr, the suggestion when the sweep
    /// found the edge (when not, only where the loss was lowest).
    pub minimum: Suggestion,
    /// fastai's valley on the recorder's curve.
    pub valley: Suggestion,
    /// fastai's steep on the recorder's curve.
    pub steep: Suggestion,
}

impl LrFindResult {
    /// The suggested max_lr: one decade below the zero-phase curve's minimum, when the sweep
    /// found the edge (the loss rose after that minimum); `None` when it did not.
    pub fn suggested(&self) -> Option<f64> {
        self.suggested
    }

    /// What to print after the sweep: the suggestion, or why there is none and what to run.
    pub fn verdict(&self) -> String {
        match (self.suggested, self.no_edge) {
            (Some(lr), _) => format!("suggested max_lr {lr:.2e}"),
            (None, Some(n)) => format!(
                "no suggested max_lr: the range was too short. The loss never rose to {}x its \
                 minimum (it climbed to {:.2}x after it) and was lowest at lr {:.2e}{}; run again \
                 with --end-lr {:.0e}",
                EDGE_RISE,
                self.rise,
                n.lowest_at_lr,
                if n.at_end_of_range {
                    ", at the end of the range"
                } else {
                    ""
                },
                n.try_end_lr
            ),
            (None, None) => "no suggested max_lr".into(),
        }
    }

    /// fastai's `plot_lr_find`: smoothed loss against log lr, the suggestions marked.
    #[cfg(feature = "plot")]
    pub fn chart(&self) -> Chart {
        let shown = self.shown();
        Chart {
            title: format!(
                "LR finder: {} steps from {:.0e} to {:.0e}",
                self.points.len(),
                self.range.start_lr,
                self.range.end_lr
            ),
            x_label: "learning rate (log scale)".into(),
            y_label: "training loss".into(),
            log_x: true,
            series: vec![
                Series {
                    name: format!("zero-phase smoothed (beta {:.2})", self.centered_beta),
                    points: shown.iter().map(|p| (p.lr, p.centered)).collect(),
                },
                Series {
                    name: "recorder smoothed (beta 0.98, lags)".into(),
                    points: shown.iter().map(|p| (p.lr, p.smoothed)).collect(),
                },
            ],
            markers: self
                .suggested
                .map(|lr| Marker {
                    x: lr,
                    y: centered_at(shown, lr),
                    label: format!("suggested max_lr {lr:.2e}"),
                })
                .into_iter()
                .chain([
                    Marker {
                        x: self.minimum.at_lr,
                        y: self.minimum.at_loss,
                        label: if self.suggested.is_some() {
                            "minimum".into()
                        } else {
                            "lowest (no edge found: no suggestion)".into()
                        },
                    },
                    Marker {
                        x: self.valley.at_lr,
                        y: self.valley.at_loss,
                        label: format!("fastai valley {:.2e}", self.valley.lr),
                    },
                ])
                .collect(),
        }
    }

    /// The plot as PNG bytes.
    #[cfg(feature = "plot")]
    pub fn png(&self) -> Result<Vec<u8>, PlotError> {
        self.chart().png()
    }

    /// The points the suggestions look at (fastai's `[num_it // 10 : -5]`).
    #[cfg(feature = "plot")]
    fn shown(&self) -> &[LrPoint] {
        let (a, b) = window(self.range.iters as usize, self.points.len());
        &self.points[a..b]
    }
}

/// The zero-phase curve's value at the point nearest to `lr` (in log lr).
#[cfg(feature = "plot")]
fn centered_at(points: &[LrPoint], lr: f64) -> f64 {
    points
        .iter()
        .min_by(|a, b| {
            let d = |p: &LrPoint| (p.lr.ln() - lr.ln()).abs();
            d(a).total_cmp(&d(b))
        })
        .map_or(f64::NAN, |p| p.centered)
}

/// β of a debiased EMA whose forward-backward pass spans about one decade of the sweep:
/// `(k − 1)/(k + 1)` for `k` steps per decade, within [0, 0.98].
pub fn centered_beta(range: &LrRange) -> f64 {
    let decades = (range.end_lr / range.start_lr).log10();
    let k = f64::from(range.iters.max(2) - 1) / decades.max(1e-9);
    ((k - 1.0) / (k + 1.0)).clamp(0.0, 0.98)
}

/// Forward-backward debiased EMA (no lag: the curve's features stay where they were).
fn zero_phase(xs: &[f64], beta: f64) -> Vec<f64> {
    let ema = |it: &mut dyn Iterator<Item = &f64>| -> Vec<f64> {
        let mut s = Smoothener::new(beta);
        it.map(|&x| s.add(x)).collect()
    };
    let forward = ema(&mut xs.iter());
    let mut back = ema(&mut forward.iter().rev());
    back.reverse();
    back
}

/// `[iters / 10, len − 5)`, fastai's window of the curve.
fn window(iters: usize, len: usize) -> (usize, usize) {
    let a = iters / 10;
    let b = len.saturating_sub(5);
    (a.min(b), b)
}

/// Analyses the sweep's mean losses, one per step run (`losses[k]` trained at `range.lr(k)`).
pub fn analyse(range: LrRange, losses: &[f64]) -> Result<LrFindResult, LrFindError> {
    let mut smooth = Smoothener::new(0.98);
    let smoothed: Vec<f64> = losses.iter().map(|&l| smooth.add(l)).collect();
    let bound = range.stop_div
        * smoothed
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::INFINITY, f64::min);
    let clipped: Vec<f64> = losses
        .iter()
        .map(|&l| if l.is_finite() { l.min(bound) } else { bound })
        .collect();
    let beta = centered_beta(&range);
    let centered = zero_phase(&clipped, beta);
    let points: Vec<LrPoint> = losses
        .iter()
        .enumerate()
        .map(|(k, &loss)| LrPoint {
            lr: range.lr(k as u64),
            loss,
            smoothed: smoothed[k],
            centered: centered[k],
        })
        .collect();
    let (a, b) = window(range.iters as usize, points.len());
    let curve: Vec<LrPoint> = points[a..b]
        .iter()
        .copied()
        .filter(|p| p.smoothed.is_finite() && p.centered.is_finite())
        .collect();
    if curve.len() < 3 {
        return Err(LrFindError::TooShort {
            recorded: points.len(),
            iters: range.iters as usize,
            needed: a + 5 + 2,
        });
    }
    let stopped_early = points.len() < range.iters as usize;
    let minimum = minimum(&curve);
    // The climb after the minimum, over every recorded point (the last 5 included: that is
    // where a sweep reaches the edge).
    let lowest = points
        .iter()
        .position(|p| p.lr == minimum.at_lr)
        .unwrap_or(0);
    let rise = points[lowest..]
        .iter()
        .map(|p| p.centered)
        .filter(|c| c.is_finite())
        .fold(f64::NEG_INFINITY, f64::max)
        / minimum.at_loss;
    let edge = stopped_early || rise >= EDGE_RISE;
    let last_decade = curve.last().map_or(f64::INFINITY, |p| p.lr / 10.0);
    Ok(LrFindResult {
        range,
        stopped_early,
        centered_beta: beta,
        rise,
        suggested: edge.then_some(minimum.lr),
        no_edge: (!edge).then_some(NoEdge {
            lowest_at_lr: minimum.at_lr,
            at_end_of_range: minimum.at_lr >= last_decade,
            try_end_lr: range.end_lr * 10.0,
        }),
        valley: valley(&curve),
        steep: steep(&curve),
        minimum,
        points,
    })
}

/// fastai's `valley`: the longest decreasing subsequence's span, then 1/3 + 1/6 of the way in.
fn valley(c: &[LrPoint]) -> Suggestion {
    let n = c.len();
    let (mut max_start, mut max_end) = (0usize, 0usize);
    let mut lds = vec![1usize; n];
    for i in 1..n {
        for j in 0..i {
            if c[i].smoothed < c[j].smoothed && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end - lds[max_end];
            }
        }
    }
    let sections = (max_end - max_start) as f64 / 3.0;
    let idx = (max_start + sections as usize + (sections / 2.0) as usize).min(n - 1);
    Suggestion {
        lr: c[idx].lr,
        at_lr: c[idx].lr,
        at_loss: c[idx].smoothed,
    }
}

/// fastai's `steep`: the lr where the loss falls fastest against log lr.
fn steep(c: &[LrPoint]) -> Suggestion {
    let mut best = (f64::INFINITY, 0usize);
    for i in 0..c.len() - 1 {
        let g = (c[i + 1].smoothed - c[i].smoothed) / (c[i + 1].lr.ln() - c[i].lr.ln());
        if g < best.0 {
            best = (g, i);
        }
    }
    let p = c[best.1];
    Suggestion {
        lr: p.lr,
        at_lr: p.lr,
        at_loss: p.smoothed,
    }
}

/// fastai's `minimum` on the zero-phase curve: a tenth of the lr with the lowest loss.
fn minimum(c: &[LrPoint]) -> Suggestion {
    let p = c
        .iter()
        .copied()
        .fold(c[0], |m, p| if p.centered < m.centered { p } else { m });
    Suggestion {
        lr: p.lr / 10.0,
        at_lr: p.lr,
        at_loss: p.centered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loss curve shaped like a real sweep: flat, a long descent around 1e-3..1e-1, then
    /// a blow-up.
    fn synthetic(range: LrRange) -> Vec<f64> {
        (0..range.iters as u64)
            .map(|k| {
                let x = range.lr(k).log10();
                if x < -3.0 {
                    2.3
                } else if x < -1.0 {
                    2.3 - 1.1 * (x + 3.0)
                } else {
                    0.1 + 10f64.powf(2.0 * (x + 1.0)) - 1.0
                }
            })
            .collect()
    }

    #[test]
    fn the_sweep_is_exponential_from_start_to_end() {
        let r = LrRange::default();
        assert_eq!(r.lr(0), 1e-7);
        assert!((r.lr(99) - 100.0).abs() < 1e-10, "the lesson's end_lr=100");
        let ratio = r.lr(1) / r.lr(0);
        assert!((r.lr(51) / r.lr(50) - ratio).abs() < 1e-9);
        assert!((ratio - 10f64.powf(9.0 / 99.0)).abs() < 1e-12);
        assert_eq!(r.lr(500), r.lr(99), "clamped past the end");
    }

    #[test]
    fn invalid_ranges_name_the_field() {
        let bad = |r: LrRange| r.validate().unwrap_err().to_string();
        let d = LrRange::default();
        assert!(bad(LrRange { start_lr: 0.0, ..d }).starts_with("start_lr"));
        assert!(bad(LrRange { end_lr: 1e-8, ..d }).starts_with("end_lr"));
        assert!(bad(LrRange { iters: 1, ..d }).starts_with("iters"));
        assert!(bad(LrRange { stop_div: 1.0, ..d }).starts_with("stop_div"));
        assert!(d.validate().is_ok());
    }

    #[test]
    fn stop_rule_trips_at_four_times_the_best_smoothed_loss() {
        let mut s = StopRule::new(4.0);
        for _ in 0..30 {
            assert!(!s.stop_after(1.0));
        }
        // The smoothed value climbs slowly: a single spike does not stop it.
        assert!(!s.stop_after(5.0));
        let mut n = 0;
        while !s.stop_after(50.0) {
            n += 1;
            assert!(n < 100, "never stopped");
        }
        assert!(
            n > 0,
            "stopped on the first large loss, not on the smoothed one"
        );
        assert!(StopRule::new(4.0).stop_after(f64::NAN));
    }

    #[test]
    fn suggestions_land_in_the_descent() {
        let range = LrRange::default();
        let r = analyse(range, &synthetic(range)).unwrap();
        // The curve falls between 1e-3 and 1e-1: every rule must point inside (smoothing lags
        // the curve, so allow up to 2e-1).
        for (name, s) in [("valley", r.valley), ("steep", r.steep)] {
            assert!(s.lr > 1e-3 && s.lr < 2e-1, "{name} {s:?}");
        }
        // The zero-phase curve keeps the minimum within a decade of where it is (lr 0.1; the
        // steep wall after it pulls the smoothed minimum a little earlier); the lagging recorder
        // curve puts it later.
        assert!(
            r.minimum.at_lr > 1e-2 && r.minimum.at_lr <= 1e-1,
            "{:?}",
            r.minimum
        );
        assert!((r.minimum.lr - r.minimum.at_lr / 10.0).abs() < 1e-15);
        assert_eq!(r.suggested(), Some(r.minimum.lr));
        assert!(r.rise >= EDGE_RISE && r.no_edge.is_none(), "{}", r.rise);
        assert!(
            r.verdict().starts_with("suggested max_lr "),
            "{}",
            r.verdict()
        );
        let lagged = r
            .points
            .iter()
            .take(95)
            .min_by(|a, b| a.smoothed.total_cmp(&b.smoothed))
            .unwrap();
        assert!(lagged.lr > 3.0 * r.minimum.at_lr, "{lagged:?}");
        assert!(!r.stopped_early);
        assert_eq!(r.points.len(), 100);
    }

    #[test]
    fn valley_picks_a_point_half_way_into_the_longest_decrease() {
        // 0..20 flat-ish noise, 20..60 strictly decreasing, then increasing.
        let mut losses: Vec<f64> = (0..20).map(|k| 3.0 + 0.01 * (k % 2) as f64).collect();
        losses.extend((0..40).map(|k| 3.0 - 0.05 * f64::from(k)));
        losses.extend((0..20).map(|k| 1.0 + 0.5 * f64::from(k)));
        let c: Vec<LrPoint> = losses
            .iter()
            .enumerate()
            .map(|(k, &l)| LrPoint {
                lr: 10f64.powf(-7.0 + k as f64 * 0.1),
                loss: l,
                smoothed: l,
                centered: l,
            })
            .collect();
        let v = valley(&c);
        let idx = c.iter().position(|p| p.lr == v.lr).unwrap();
        assert!((30..50).contains(&idx), "index {idx}");
    }

    #[test]
    fn zero_phase_smoothing_has_no_lag_and_a_diverged_end_does_not_leak() {
        let range = LrRange::default();
        let b = centered_beta(&range);
        let k = 99.0 / 9.0; // steps per decade of 1e-7..100 in 100 steps
        assert!((b - (k - 1.0) / (k + 1.0)).abs() < 1e-12, "{b}");
        // A symmetric dip stays centred where it is.
        let xs: Vec<f64> = (0..60)
            .map(|k| ((k as f64 - 30.0) / 6.0).powi(2).min(9.0))
            .collect();
        let c = zero_phase(&xs, b);
        let at = (0..60).min_by(|&i, &j| c[i].total_cmp(&c[j])).unwrap();
        assert!((29..=31).contains(&at), "minimum moved to {at}");
        // A last step at 1e30 is clipped to stop_div × the best smoothed loss.
        let mut losses = synthetic(range);
        losses.truncate(70);
        losses.push(1e30);
        let r = analyse(range, &losses).unwrap();
        assert!(
            r.points.iter().all(|p| p.centered < 1e3),
            "{:?}",
            r.points.last()
        );
        assert!(r.stopped_early);
        assert!(
            r.suggested().is_some(),
            "a sweep that diverged found the edge"
        );
    }

    /// Like the sweeps to lr 10 measured on MNIST: a descent from lr 1e-3 on, then a loss that
    /// stays flat and noisy up to the end of the range (it never rises to `stop_div` × its
    /// minimum, so the sweep runs all its steps).
    fn never_diverges(range: LrRange) -> Vec<f64> {
        (0..range.iters as u64)
            .map(|k| {
                let x = range.lr(k).log10();
                let noise = 0.15 * ((k as f64) * 2.1).sin();
                if x < -3.0 {
                    2.3
                } else {
                    (2.3 - 0.45 * (x + 3.0)).max(1.0) + noise
                }
            })
            .collect()
    }

    #[test]
    fn a_sweep_that_never_diverges_is_reported_as_too_short_without_a_suggestion() {
        let range = LrRange {
            end_lr: 10.0,
            ..LrRange::default()
        };
        let losses = never_diverges(range);
        let mut rule = StopRule::new(range.stop_div);
        assert!(
            !losses.iter().any(|&l| rule.stop_after(l)),
            "the workers' stop rule never fires on it"
        );
        let r = analyse(range, &losses).unwrap();
        assert!(!r.stopped_early);
        assert!(r.rise < EDGE_RISE, "{}", r.rise);
        assert_eq!(r.suggested(), None, "{:?}", r.minimum);
        let n = r.no_edge.expect("the reason there is no suggestion");
        assert_eq!(n.lowest_at_lr, r.minimum.at_lr);
        assert_eq!(n.try_end_lr, 100.0);
        let v = r.verdict();
        assert!(
            v.starts_with("no suggested max_lr: the range was too short"),
            "{v}"
        );
        assert!(v.contains("--end-lr 1e2"), "{v}");
        assert!(!v.contains("suggested max_lr 1"), "{v}");
        // The same curve carried on past lr 10 into a blow-up: now there is an edge.
        let wide = LrRange {
            end_lr: 1000.0,
            ..LrRange::default()
        };
        let losses: Vec<f64> = (0..wide.iters as u64)
            .map(|k| {
                let lr = wide.lr(k);
                let flat = never_diverges(range)[(k as usize).min(99)];
                if lr > 30.0 {
                    flat * (lr / 30.0).powi(2)
                } else {
                    flat
                }
            })
            .collect();
        let r = analyse(wide, &losses).unwrap();
        assert!(r.rise >= EDGE_RISE, "{}", r.rise);
        assert_eq!(r.suggested(), Some(r.minimum.lr));
    }

    #[test]
    fn a_minimum_at_the_end_of_the_range_is_never_the_suggestion() {
        // Still falling when the range ends: the lowest point is the last one looked at.
        let range = LrRange::default();
        let losses: Vec<f64> = (0..100).map(|k| 2.3 - 0.015 * f64::from(k)).collect();
        let r = analyse(range, &losses).unwrap();
        assert_eq!(r.suggested(), None);
        let n = r.no_edge.unwrap();
        assert!(n.at_end_of_range, "{n:?}");
        assert!(
            r.verdict().contains("at the end of the range"),
            "{}",
            r.verdict()
        );
        assert_eq!(n.try_end_lr, 1000.0);
    }

    #[test]
    fn a_sweep_that_diverged_at_once_is_an_error() {
        let range = LrRange::default();
        let e = analyse(range, &[2.3; 12]).unwrap_err();
        assert!(
            matches!(e, LrFindError::TooShort { recorded: 12, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("lower --end-lr"));
    }

    #[cfg(feature = "plot")]
    #[test]
    fn the_chart_is_log_x_with_the_suggestion_marked() {
        let range = LrRange::default();
        let r = analyse(range, &synthetic(range)).unwrap();
        let c = r.chart();
        assert!(c.log_x);
        assert_eq!(c.series[0].points.len(), 100 - 10 - 5);
        assert!(c.markers[0].label.starts_with("suggested max_lr"));
        assert_eq!(Some(c.markers[0].x), r.suggested());
        let png = r.png().unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
