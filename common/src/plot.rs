//! Minimal SVG line charts for the plots every run leaves in its folder (no plotting stack).
//!
//! Tests: `tests` at the bottom.

/// One named line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() < 0.01 {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// An SVG document plotting `series` against a shared x axis.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let fy = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let fx = x0 + (x1 - x0) * f64::from(i) / 4.0;
        svg += &format!(
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            sy(fy) + 4.0,
            fmt_tick(fy),
            y = sy(fy)
        );
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            sx(fx),
            H - BOTTOM + 18.0,
            fmt_tick(fx)
        );
    }
    svg += &format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0,
        escape(x_label),
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(finite)
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if pts.len() == 1 {
            let (x, y) = pts[0].split_once(',').unwrap_or(("0", "0"));
            svg += &format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>\n");
        } else {
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                pts.join(" ")
            );
        }
        // Legend above the plot area, one entry per series, so it never hides a line.
        svg += &format!(
            "<rect x=\"{:.1}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#333\">{}</text>\n",
            LEFT + 200.0 * i as f64,
            TOP - 10.0,
            LEFT + 14.0 + 200.0 * i as f64,
            TOP - 6.0,
            escape(&s.name)
        );
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_series_and_escapes_text() {
        let s = vec![
            Series {
                name: "train <smoothed>".into(),
                points: vec![(0.0, 2.0), (1.0, 1.0), (2.0, f64::NAN)],
            },
            Series {
                name: "valid".into(),
                points: vec![(2.0, 0.5)],
            },
        ];
        let svg = line_chart("loss & accuracy", "step", "loss", &s);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("train &lt;smoothed&gt;") && svg.contains("loss &amp; accuracy"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn empty_and_flat_series_do_not_divide_by_zero() {
        let svg = line_chart(
            "t",
            "x",
            "y",
            &[Series {
                name: "c".into(),
                points: vec![(1.0, 3.0), (1.0, 3.0)],
            }],
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let svg = line_chart("t", "x", "y", &[]);
        assert!(svg.ends_with("</svg>\n"));
    }
}
