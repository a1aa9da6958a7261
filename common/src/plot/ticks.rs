//! Axis ticks: where they go and what they say.
//!
//! Owns tick values and label text; not pixel positions (`chart.rs` maps values and decides how
//! many ticks fit). Linear axes get multiples of a 1-2-5 step (0, 0.25 never; 0, 0.2, 0.4 yes);
//! log axes get decades, labelled `1e-7 … 1e-3, 0.01, 0.1, 1, 10, 100, 1e3 …`.
//!
//! Tests: `tests` at the bottom.

/// One labelled tick, `value` in axis units (the exponent on a log axis).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tick {
    pub value: f64,
    pub label: String,
}

/// `floor(log10(v))`, robust to `log10` landing just under an exact power of ten.
fn exponent(v: f64) -> i32 {
    (v.abs().log10() + 1e-9).floor() as i32
}

/// The smallest of 1, 2, 5 × 10^k that is ≥ `raw`.
pub(super) fn nice_step(raw: f64) -> f64 {
    let e = exponent(raw);
    let base = 10f64.powi(e);
    let f = raw / base;
    let m = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * base
}

/// Text for `v`, a multiple of `step`: plain decimals with as many places as the step needs,
/// scientific when the step is below 1e-4 or at least 1e6.
pub(super) fn label(v: f64, step: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".into();
    }
    let es = exponent(step);
    if !(-4..6).contains(&es) {
        let digits = (exponent(v) - es).clamp(0, 12) as usize;
        let s = format!("{v:.digits$e}");
        return match s.split_once('e') {
            Some((m, e)) if m.contains('.') => {
                format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        };
    }
    let decimals = (-es).max(0) as usize;
    format!("{v:.decimals$}")
}

/// At most `max_count` ticks at multiples of a 1-2-5 step inside `[lo, hi]`; none for an empty
/// or non-finite range.
pub(super) fn linear(lo: f64, hi: f64, max_count: usize) -> Vec<Tick> {
    if !(lo.is_finite() && hi.is_finite() && hi > lo) || max_count < 2 {
        return Vec::new();
    }
    let step = nice_step((hi - lo) / (max_count - 1) as f64);
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let (first, last) = ((lo / step).ceil(), (hi / step).floor());
    if !(first.is_finite() && last.is_finite()) || last - first > max_count as f64 {
        return Vec::new();
    }
    (first as i64..=last as i64)
        .map(|k| {
            let value = k as f64 * step;
            Tick {
                value,
                label: label(value, step),
            }
        })
        .collect()
}

/// The label of 10^k.
pub(super) fn decade_label(k: i32) -> String {
    match k {
        -2 => "0.01".into(),
        -1 => "0.1".into(),
        0 => "1".into(),
        1 => "10".into(),
        2 => "100".into(),
        _ => format!("1e{k}"),
    }
}

/// Ticks at every `every`-th decade from 10^lo to 10^hi, aligned so that 10^0 would be one.
pub(super) fn decades(lo: i32, hi: i32, every: i32) -> Vec<Tick> {
    let every = every.max(1);
    (lo..=hi)
        .filter(|k| k.rem_euclid(every) == 0)
        .map(|k| Tick {
            value: f64::from(k),
            label: decade_label(k),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &[Tick]) -> Vec<&str> {
        t.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn steps_are_one_two_five() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1000.0), 1000.0);
        assert!((nice_step(3e-6) - 5e-6).abs() < 1e-18);
    }

    #[test]
    fn linear_ticks_are_nice_and_inside_the_range() {
        let t = linear(0.0, 10.0, 6);
        assert_eq!(labels(&t), ["0", "2", "4", "6", "8", "10"]);
        let t = linear(-0.05, 1.05, 7);
        assert_eq!(labels(&t), ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        // Fewer allowed ticks: the next 1-2-5 step up.
        assert_eq!(labels(&linear(-0.05, 1.05, 6)), ["0", "0.5", "1.0"]);
        let t = linear(0.8512, 0.9934, 9);
        assert_eq!(
            labels(&t),
            ["0.86", "0.88", "0.90", "0.92", "0.94", "0.96", "0.98"]
        );
        for t in [linear(3.0, 1234.0, 7), linear(-7.5, -0.2, 5)] {
            assert!(t.len() >= 2);
            assert!(t.windows(2).all(|w| w[1].value > w[0].value));
        }
        assert!(linear(-7.5, -0.2, 5).len() <= 5);
    }

    #[test]
    fn tiny_and_huge_steps_use_scientific_labels() {
        let t = linear(0.0, 4e-5, 5);
        assert_eq!(labels(&t), ["0", "1e-5", "2e-5", "3e-5", "4e-5"]);
        assert_eq!(label(2.5e-5, 5e-6), "2.5e-5");
        assert_eq!(label(3e6, 1e6), "3e6");
        assert_eq!(label(-0.0, 0.1), "0");
        assert_eq!(label(1e-17, 0.1), "0");
    }

    #[test]
    fn degenerate_ranges_give_no_ticks() {
        assert!(linear(1.0, 1.0, 5).is_empty());
        assert!(linear(2.0, 1.0, 5).is_empty());
        assert!(linear(f64::NAN, 1.0, 5).is_empty());
        assert!(linear(-f64::MAX, f64::MAX, 5).is_empty());
        assert!(linear(0.0, 1.0, 1).is_empty());
    }

    #[test]
    fn decade_ticks() {
        assert_eq!(
            labels(&decades(-7, 1, 1)),
            ["1e-7", "1e-6", "1e-5", "1e-4", "1e-3", "0.01", "0.1", "1", "10"]
        );
        let every_other = decades(-7, 1, 2);
        assert_eq!(labels(&every_other), ["1e-6", "1e-4", "0.01", "1"]);
        assert_eq!(every_other[0].value, -6.0);
        assert_eq!(decade_label(3), "1e3");
    }
}
