//! Line charts: [`Chart::png`] lays out and draws title, legend, axes with ticks, series and
//! markers on an 800 × 480 canvas.
//!
//! Owns layout and the data-to-pixel mapping; tick values come from `ticks.rs`, pixels from
//! `canvas.rs`.
//!
//! ```text
//!  ┌──────────────────────── title (2x) ────────────────────────┐
//!  │          ▬ train (smoothed)   ▬ valid        (legend, 2+)   │
//!  │ y  1.0 ┤┌──────────────────────────────────────────────┐    │
//!  │ l      ││    ╲___          ✕ label                      │    │
//!  │ a  0.5 ┤│        ╲______ (series, 2 px, anti-aliased)   │    │
//!  │ b      │└──────────────────────────────────────────────┘    │
//!  │ e        0        200        400  (x ticks that fit)        │
//!  │ l                        x label                            │
//!  └─────────────────────────────────────────────────────────────┘
//! ```
//! The left margin grows with the widest y tick label; the top with the legend's rows.
//!
//! Tests: `tests` at the bottom; they decode the PNG, find the frame in it and check where the
//! data landed.

use super::canvas::{Canvas, Rgb};
use super::font::{fit, text_width};
use super::ticks::{self, Tick};
use super::{Chart, PlotError};

/// Width of every chart, in pixels.
pub const CHART_WIDTH: u32 = 800;
/// Height of every chart, in pixels.
pub const CHART_HEIGHT: u32 = 480;

const BACKGROUND: Rgb = Rgb(255, 255, 255);
const TEXT: Rgb = Rgb(34, 34, 34);
const FRAME: Rgb = Rgb(90, 90, 90);
const GRID: Rgb = Rgb(226, 226, 226);
const MINOR_GRID: Rgb = Rgb(242, 242, 242);
const MARKER: Rgb = Rgb(214, 39, 40);
/// Series colours (matplotlib's tab10 without its red, which marks markers), reused cyclically.
const PALETTE: [Rgb; 6] = [
    Rgb(31, 119, 180),
    Rgb(255, 127, 14),
    Rgb(44, 160, 44),
    Rgb(148, 103, 189),
    Rgb(140, 86, 75),
    Rgb(23, 190, 207),
];
const LINE_WIDTH: f64 = 2.0;
/// Series with at most this many points also get a dot on each point.
const DOT_MAX_POINTS: usize = 30;
const LEGEND_ROW: i64 = 14;

/// One axis: its range in axis units (log10 of the data on a log axis) and where that range
/// lies in pixels (pixel centres of the frame's two borders).
#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    from_px: f64,
    to_px: f64,
}

impl Axis {
    /// `v` in axis units, or `None` when it cannot be shown.
    fn unit(log: bool, v: f64) -> Option<f64> {
        let u = if log {
            if v > 0.0 {
                v.log10()
            } else {
                return None;
            }
        } else {
            v
        };
        u.is_finite().then_some(u)
    }

    /// The pixel coordinate of `u` (axis units).
    fn px(&self, u: f64) -> f64 {
        self.from_px + (u - self.lo) / (self.hi - self.lo) * (self.to_px - self.from_px)
    }
}

/// A series' points in axis units, split into runs wherever a point was skipped.
fn runs(points: &[(f64, f64)], log_x: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for (x, y) in points {
        match (Axis::unit(log_x, *x), Axis::unit(false, *y)) {
            (Some(u), Some(y)) => {
                if let Some(run) = out.last_mut() {
                    run.push((u, y));
                }
            }
            _ => out.push(Vec::new()),
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// `[min, max]` of `values`, widened when it is empty or a single value.
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    if log {
        // Whole decades, at least one.
        let (lo, hi) = (lo.floor(), hi.ceil());
        return if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        };
    }
    if hi > lo {
        return (lo, hi);
    }
    let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
    (lo - pad, hi + pad)
}

/// Legend entries (series indices) per row, each row at most `width` pixels wide.
fn legend_rows(names: &[String], width: i64) -> Vec<Vec<usize>> {
    if names.len() < 2 {
        return Vec::new();
    }
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, name) in names.iter().enumerate() {
        let w = legend_entry_width(name);
        match rows.last_mut() {
            Some(row) if used + w <= width => row.push(i),
            _ => {
                rows.push(vec![i]);
                used = 0;
            }
        }
        used += w;
    }
    rows
}

fn legend_entry_width(name: &str) -> i64 {
    18 + 6 + i64::from(text_width(&fit(name, 300, 1), 1)) + 20
}

fn widest(ticks: &[Tick]) -> i64 {
    ticks
        .iter()
        .map(|t| i64::from(text_width(&t.label, 1)))
        .max()
        .unwrap_or(0)
}

/// The most x ticks whose labels fit side by side, and the unlabelled minor ticks.
fn x_ticks(axis: &Axis) -> (Vec<Tick>, Vec<f64>) {
    let pitch = |a: f64, b: f64| (axis.px(b) - axis.px(a)).abs();
    if axis.log {
        let (lo, hi) = (axis.lo as i32, axis.hi as i32);
        let all = ticks::decades(lo, hi, 1);
        let room = (widest(&all) + 16) as f64;
        let every = (1..=hi - lo).find(|e| pitch(0.0, f64::from(*e)) >= room);
        let minor = if hi - lo <= 12 {
            (lo..hi)
                .flat_map(|k| (2..10).map(move |m| f64::from(k) + f64::from(m).log10()))
                .collect()
        } else {
            Vec::new()
        };
        return (ticks::decades(lo, hi, every.unwrap_or(hi - lo)), minor);
    }
    for n in (3..=12).rev() {
        let t = ticks::linear(axis.lo, axis.hi, n);
        let room = (widest(&t) + 16) as f64;
        if t.windows(2).all(|w| pitch(w[0].value, w[1].value) >= room) {
            return (t, Vec::new());
        }
    }
    (ticks::linear(axis.lo, axis.hi, 2), Vec::new())
}

impl Chart {
    /// The chart as PNG bytes, [`CHART_WIDTH`] × [`CHART_HEIGHT`], RGB.
    pub fn png(&self) -> Result<Vec<u8>, PlotError> {
        self.draw().png()
    }

    fn draw(&self) -> Canvas {
        let (w, h) = (i64::from(CHART_WIDTH), i64::from(CHART_HEIGHT));
        let mut c = Canvas::new(CHART_WIDTH, CHART_HEIGHT, BACKGROUND);
        let runs: Vec<Vec<Vec<(f64, f64)>>> = self
            .series
            .iter()
            .map(|s| runs(&s.points, self.log_x))
            .collect();
        let markers: Vec<(f64, f64, &str)> = self
            .markers
            .iter()
            .filter_map(|m| {
                let u = Axis::unit(self.log_x, m.x)?;
                Some((u, Axis::unit(false, m.y)?, m.label.as_str()))
            })
            .collect();
        let points = || {
            runs.iter()
                .flatten()
                .flatten()
                .copied()
                .chain(markers.iter().map(|m| (m.0, m.1)))
        };
        let (x_lo, x_hi) = range(points().map(|p| p.0), self.log_x);
        let (y_lo, y_hi) = range(points().map(|p| p.1), false);
        let margin = (y_hi - y_lo) * 0.05;

        // Vertical layout: title, legend rows, frame, x tick labels, x label.
        let names: Vec<String> = self.series.iter().map(|s| s.name.clone()).collect();
        let legend = legend_rows(&names, w - 40);
        let mut top = if self.title.is_empty() { 14 } else { 36 };
        let legend_top = top;
        top += LEGEND_ROW * legend.len() as i64 + if legend.is_empty() { 0 } else { 6 };
        let bottom = h - 1 - if self.x_label.is_empty() { 26 } else { 40 };
        let y = Axis {
            lo: y_lo - margin,
            hi: y_hi + margin,
            log: false,
            from_px: bottom as f64 + 0.5,
            to_px: top as f64 + 0.5,
        };
        let y_ticks = ticks::linear(y.lo, y.hi, ((bottom - top) / 36).clamp(2, 10) as usize);

        // Horizontal layout: y label, y tick labels, frame.
        let label_room = if self.y_label.is_empty() { 8 } else { 26 };
        let left = label_room + widest(&y_ticks) + 10;
        let right = w - 1 - 24;
        let x = Axis {
            lo: x_lo,
            hi: x_hi,
            log: self.log_x,
            from_px: left as f64 + 0.5,
            to_px: right as f64 + 0.5,
        };
        let (x_ticks, x_minor) = x_ticks(&x);

        // Grid, frame, ticks.
        for u in &x_minor {
            c.fill_rect(x.px(*u) as i64, top, 1, bottom - top, MINOR_GRID);
        }
        for t in &x_ticks {
            let px = x.px(t.value) as i64;
            c.fill_rect(px, top, 1, bottom - top, GRID);
            c.fill_rect(px, bottom + 1, 1, 4, FRAME);
            let lw = i64::from(text_width(&t.label, 1));
            c.text(px - lw / 2, bottom + 8, &t.label, 1, TEXT);
        }
        for t in &y_ticks {
            let py = y.px(t.value) as i64;
            c.fill_rect(left, py, right - left, 1, GRID);
            c.fill_rect(left - 4, py, 4, 1, FRAME);
            let lw = i64::from(text_width(&t.label, 1));
            c.text(left - 8 - lw, py - 3, &t.label, 1, TEXT);
        }
        c.fill_rect(left, top, right - left + 1, 1, FRAME);
        c.fill_rect(left, bottom, right - left + 1, 1, FRAME);
        c.fill_rect(left, top, 1, bottom - top + 1, FRAME);
        c.fill_rect(right, top, 1, bottom - top + 1, FRAME);

        // Data.
        let to_px = |(u, v): (f64, f64)| (x.px(u), y.px(v));
        for (i, series_runs) in runs.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let n: usize = series_runs.iter().map(Vec::len).sum();
            for run in series_runs {
                let px: Vec<(f64, f64)> = run.iter().copied().map(to_px).collect();
                c.polyline(&px, LINE_WIDTH, colour);
                if n <= DOT_MAX_POINTS || run.len() == 1 {
                    for p in &px {
                        c.dot(*p, 3.0, colour);
                    }
                }
            }
        }
        for (u, v, label) in &markers {
            let (mx, my) = to_px((*u, *v));
            c.polyline(&[(mx - 7.0, my - 7.0), (mx + 7.0, my + 7.0)], 2.0, MARKER);
            c.polyline(&[(mx - 7.0, my + 7.0), (mx + 7.0, my - 7.0)], 2.0, MARKER);
            c.dot((mx, my), 3.0, MARKER);
            let label = fit(label, 300, 1);
            let lw = i64::from(text_width(&label, 1));
            let (mx, my) = (mx as i64, my as i64);
            let lx = if mx + 12 + lw < right {
                mx + 12
            } else {
                mx - 12 - lw
            };
            let ly = if my - 20 > top { my - 20 } else { my + 12 };
            c.fill_rect(lx - 2, ly - 2, lw + 4, 12, BACKGROUND);
            c.text(lx, ly, &label, 1, MARKER);
        }

        // Text around the frame.
        for (r, row) in legend.iter().enumerate() {
            let row_w: i64 = row.iter().map(|i| legend_entry_width(&names[*i])).sum();
            let mut lx = (w - row_w + 20) / 2;
            let ly = legend_top + LEGEND_ROW * r as i64;
            for i in row {
                let name = fit(&names[*i], 300, 1);
                c.fill_rect(lx, ly + 2, 18, 4, PALETTE[i % PALETTE.len()]);
                c.text(lx + 24, ly, &name, 1, TEXT);
                lx += legend_entry_width(&names[*i]);
            }
        }
        if !self.title.is_empty() {
            let title = fit(&self.title, CHART_WIDTH - 20, 2);
            let tw = i64::from(text_width(&title, 2));
            c.text((w - tw) / 2, 10, &title, 2, TEXT);
        }
        if !self.x_label.is_empty() {
            let label = fit(&self.x_label, (right - left) as u32, 1);
            let lw = i64::from(text_width(&label, 1));
            c.text((left + right - lw) / 2, bottom + 24, &label, 1, TEXT);
        }
        if !self.y_label.is_empty() {
            let label = fit(&self.y_label, (bottom - top) as u32, 1);
            let lw = i64::from(text_width(&label, 1));
            c.text_up(8, (top + bottom + lw) / 2, &label, 1, TEXT);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{Marker, Series};

    const BLUE: Rgb = PALETTE[0];
    const ORANGE: Rgb = PALETTE[1];

    fn render(chart: &Chart) -> Canvas {
        let c = Canvas::decode(&chart.png().unwrap());
        assert_eq!((c.width(), c.height()), (CHART_WIDTH, CHART_HEIGHT));
        c
    }

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }

    /// y = x on [0, 1] in `n` segments.
    fn line(n: usize) -> Vec<(f64, f64)> {
        (0..=n)
            .map(|i| (i as f64 / n as f64, i as f64 / n as f64))
            .collect()
    }

    /// The frame's border columns and rows `(left, top, right, bottom)`, found in the picture as
    /// the lines holding the most frame-coloured pixels.
    fn frame(c: &Canvas) -> (u32, u32, u32, u32) {
        let (w, h) = (c.width(), c.height());
        let best = |range: std::ops::Range<u32>, count: &dyn Fn(u32) -> usize| {
            range.max_by_key(|i| count(*i)).unwrap()
        };
        let col = |x: u32| c.count(FRAME, x, 0, x + 1, h);
        let row = |y: u32| c.count(FRAME, 0, y, w, y + 1);
        (
            best(0..w / 2, &col),
            best(0..h / 2, &row),
            best(w / 2..w, &col),
            best(h / 2..h, &row),
        )
    }

    /// Where `(fx, fy)`, fractions of the axes' ranges, lies in pixels.
    fn at(f: (u32, u32, u32, u32), fx: f64, fy: f64) -> (f64, f64) {
        let (l, t, r, b) = (
            f64::from(f.0),
            f64::from(f.1),
            f64::from(f.2),
            f64::from(f.3),
        );
        (l + 0.5 + fx * (r - l), b + 0.5 - fy * (b - t))
    }

    /// Whether a pixel of exactly `colour` lies within `r` pixels of `(x, y)`.
    fn near(c: &Canvas, colour: Rgb, (x, y): (f64, f64), r: u32) -> bool {
        let (x, y) = (x as u32, y as u32);
        c.count(
            colour,
            x.saturating_sub(r),
            y.saturating_sub(r),
            x + r + 1,
            y + r + 1,
        ) > 0
    }

    /// The y fraction of `v` on an axis whose data spans `[lo, hi]` (5 % margin each side).
    fn fy(v: f64, lo: f64, hi: f64) -> f64 {
        let m = (hi - lo) * 0.05;
        (v - (lo - m)) / (hi - lo + 2.0 * m)
    }

    #[test]
    fn each_series_gets_its_colour_inside_the_frame() {
        let chart = Chart {
            series: vec![
                series("a", vec![(0.0, 1.0), (5.0, 2.0)]),
                series("b", vec![(0.0, 2.0), (5.0, 3.0)]),
                series("c", vec![(0.0, 3.0), (5.0, 1.0)]),
            ],
            ..Chart::default()
        };
        let c = render(&chart);
        let (l, t, r, b) = frame(&c);
        assert!(r - l > 600 && b - t > 300, "frame {l},{t},{r},{b}");
        for colour in &PALETTE[..3] {
            assert!(c.count(*colour, l, t, r, b) > 100, "{colour:?}");
        }
        assert_eq!(c.count(PALETTE[3], 0, 0, CHART_WIDTH, CHART_HEIGHT), 0);
    }

    #[test]
    fn a_line_y_equals_x_lands_on_the_diagonal() {
        let c = render(&Chart {
            series: vec![series("y=x", line(100))],
            ..Chart::default()
        });
        let f = frame(&c);
        for v in [0.2, 0.5, 0.8] {
            assert!(
                near(&c, BLUE, at(f, v / 1.0, fy(v, 0.0, 1.0)), 2),
                "on the line at {v}"
            );
        }
        // Far from the line: the upper left and lower right of the plot.
        assert!(!near(&c, BLUE, at(f, 0.2, fy(0.8, 0.0, 1.0)), 8));
        assert!(!near(&c, BLUE, at(f, 0.8, fy(0.2, 0.0, 1.0)), 8));
        // y = x^2 is not symmetric under turning the picture around: it must bend down.
        let c = render(&Chart {
            series: vec![series(
                "y=x^2",
                (0..=100)
                    .map(|i| (f64::from(i) / 100.0, (f64::from(i) / 100.0).powi(2)))
                    .collect(),
            )],
            ..Chart::default()
        });
        let f = frame(&c);
        assert!(near(&c, BLUE, at(f, 0.5, fy(0.25, 0.0, 1.0)), 2));
        assert!(!near(&c, BLUE, at(f, 0.5, fy(0.75, 0.0, 1.0)), 8));
    }

    #[test]
    fn log_x_spaces_decades_evenly() {
        // A step up at x = 1e-3, halfway between 1e-7 and 10 on a log axis; the trailing
        // points with x <= 0 cannot be shown and are skipped.
        let points = vec![
            (1e-7, 0.0),
            (1e-3, 0.0),
            (1e-3, 1.0),
            (10.0, 1.0),
            (0.0, 0.5),
            (-1.0, 0.5),
        ];
        let c = render(&Chart {
            log_x: true,
            series: vec![series("lr", points)],
            ..Chart::default()
        });
        let f = frame(&c);
        let (want_x, mid_y) = at(f, 0.5, 0.5);
        let hits: Vec<u32> = (f.0..f.2)
            .filter(|x| c.pixel(*x, mid_y as u32) == Some(BLUE))
            .collect();
        assert!(!hits.is_empty());
        for x in hits {
            assert!((f64::from(x) - want_x).abs() <= 3.0, "x {x}, want {want_x}");
        }
        // The decade tick under it is labelled (text below the frame at that column).
        let band = (want_x as u32 - 12, f.3 + 6, want_x as u32 + 12, f.3 + 18);
        assert!(c.count(TEXT, band.0, band.1, band.2, band.3) > 5);
    }

    #[test]
    fn a_marker_is_drawn_at_its_point_with_its_label() {
        let base = Chart {
            series: vec![series("y=x", line(100))],
            ..Chart::default()
        };
        assert_eq!(
            render(&base).count(MARKER, 0, 0, CHART_WIDTH, CHART_HEIGHT),
            0
        );
        let chart = Chart {
            markers: vec![Marker {
                x: 0.3,
                y: 0.3,
                label: "suggested 3e-3".into(),
            }],
            ..base
        };
        let c = render(&chart);
        let f = frame(&c);
        let (mx, my) = at(f, 0.3, fy(0.3, 0.0, 1.0));
        assert!(near(&c, MARKER, (mx, my), 2));
        // The label sits to its right: many marker-coloured pixels beyond the cross.
        let label = c.count(
            MARKER,
            mx as u32 + 10,
            my as u32 - 24,
            mx as u32 + 140,
            my as u32,
        );
        assert!(label > 50, "{label} label pixels");
    }

    #[test]
    fn title_and_axis_labels_are_drawn() {
        let bare = render(&Chart {
            series: vec![series("a", line(10))],
            ..Chart::default()
        });
        let labelled = render(&Chart {
            title: "Loss".into(),
            x_label: "step".into(),
            y_label: "cross-entropy".into(),
            series: vec![series("a", line(10))],
            ..Chart::default()
        });
        let title_band = |c: &Canvas| c.count(TEXT, 360, 8, 440, 28);
        assert_eq!(title_band(&bare), 0);
        assert!(title_band(&labelled) > 40);
        // The y label is rotated: a tall, narrow run of text at the left edge.
        assert_eq!(bare.count(TEXT, 0, 0, 8, CHART_HEIGHT), 0);
        let rows: Vec<u32> = (0..CHART_HEIGHT)
            .filter(|y| labelled.count(TEXT, 8, *y, 16, y + 1) > 0)
            .collect();
        let height = rows.last().unwrap() - rows.first().unwrap();
        assert!(height > 90, "y label {height} px tall"); // 13 chars x 8 px
                                                          // The x label sits under the tick labels, centred.
        let (_, _, _, b) = frame(&labelled);
        assert!(labelled.count(TEXT, 350, b + 20, 450, b + 34) > 20);
        // Without an x label the frame reaches lower, and nothing is under its tick labels.
        let (_, _, _, bare_b) = frame(&bare);
        assert!(bare_b > b);
        assert_eq!(
            bare.count(TEXT, 0, bare_b + 18, CHART_WIDTH, CHART_HEIGHT),
            0
        );
    }

    #[test]
    fn legend_appears_with_two_or_more_series() {
        let one = render(&Chart {
            series: vec![series("train", line(10))],
            ..Chart::default()
        });
        let two = render(&Chart {
            series: vec![series("train", line(10)), series("valid", vec![(0.5, 0.5)])],
            ..Chart::default()
        });
        let (_, top_one, _, _) = frame(&one);
        let (_, top_two, _, _) = frame(&two);
        assert_eq!(one.count(BLUE, 0, 0, CHART_WIDTH, top_one), 0);
        assert!(two.count(BLUE, 0, 0, CHART_WIDTH, top_two) >= 18 * 4);
        assert!(two.count(ORANGE, 0, 0, CHART_WIDTH, top_two) >= 18 * 4);
        // The lone valid point is still visible, as a dot.
        assert!(two.count(ORANGE, 0, top_two, CHART_WIDTH, CHART_HEIGHT) > 10);
    }

    #[test]
    fn skipped_points_leave_a_gap() {
        let points = vec![
            (0.0, 1.0),
            (1.0, 1.0),
            (2.0, f64::NAN),
            (3.0, 1.0),
            (4.0, 1.0),
        ];
        let c = render(&Chart {
            series: vec![series("a", points)],
            ..Chart::default()
        });
        let f = frame(&c);
        // y is constant at 1, so the line runs along the middle row.
        assert!(near(&c, BLUE, at(f, 0.125, 0.5), 1));
        assert!(near(&c, BLUE, at(f, 0.875, 0.5), 1));
        assert!(!near(&c, BLUE, at(f, 0.5, 0.5), 6));
    }

    #[test]
    fn degenerate_input_renders_without_panicking() {
        let cases = [
            vec![],
            vec![series("empty", vec![])],
            vec![series("nan", vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])],
            vec![series("one", vec![(1.0, 1.0)])],
            vec![series("zero", vec![(0.0, 0.0), (0.0, 0.0)])],
            vec![series(
                "huge",
                vec![(-f64::MAX, -f64::MAX), (f64::MAX, f64::MAX)],
            )],
            vec![series("tiny", vec![(0.0, 1e-300), (1e-300, 2e-300)])],
        ];
        for s in cases {
            for log_x in [false, true] {
                let chart = Chart {
                    title: "t".repeat(500),
                    log_x,
                    series: s.clone(),
                    markers: vec![Marker {
                        x: f64::NAN,
                        y: 1.0,
                        label: "x".into(),
                    }],
                    ..Chart::default()
                };
                render(&chart);
            }
        }
        // A constant series is padded and drawn through the middle.
        let c = render(&Chart {
            series: vec![series(
                "flat",
                (0..50).map(|i| (f64::from(i), 3.0)).collect(),
            )],
            ..Chart::default()
        });
        assert!(near(&c, BLUE, at(frame(&c), 0.5, 0.5), 1));
    }

    #[test]
    fn ranges_and_runs() {
        assert_eq!(range([2.0, -1.0].into_iter(), false), (-1.0, 2.0));
        let (lo, hi) = range([3.0].into_iter(), false);
        assert!(
            (lo - 2.7).abs() < 1e-12 && (hi - 3.3).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(range([0.0].into_iter(), false), (-1.0, 1.0));
        assert_eq!(range(std::iter::empty(), false), (0.0, 1.0));
        assert_eq!(range([-6.5, -2.1].into_iter(), true), (-7.0, -2.0));
        assert_eq!(range([-3.0].into_iter(), true), (-4.0, -2.0));
        let r = runs(&[(1.0, 1.0), (-1.0, 2.0), (10.0, 3.0), (100.0, 4.0)], true);
        assert_eq!(r, vec![vec![(0.0, 1.0)], vec![(1.0, 3.0), (2.0, 4.0)]]);
    }
}
