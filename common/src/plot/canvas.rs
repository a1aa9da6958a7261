//! The RGB pixel buffer plots are drawn on, its drawing primitives and its PNG encoding.
//!
//! Owns pixels only: anti-aliased polylines and dots, filled rects, bitmap text (horizontal and
//! rotated a quarter turn for y-axis labels), scaled grayscale blits. Layout is `chart.rs` and
//! `grid.rs`. Coordinates are pixels, origin top-left, y down; pixel (x, y) covers
//! [x, x+1) × [y, y+1), so its centre is (x + 0.5, y + 0.5).
//!
//! # Contract
//! * Anything outside the canvas is clipped; a segment with a non-finite end is not drawn.
//! * A stroke of width `w` fully covers (exact colour) every pixel whose centre lies within
//!   `w/2 - 1/2` of the centre line, and fades linearly to nothing at `w/2 + 1/2`. A polyline is
//!   rasterised into one coverage mask before blending, so its joints are not darker.
//!
//! Tests: `tests` at the bottom.

use super::font::{glyph, GLYPH};
use super::PlotError;

/// An 8-bit sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rgb(pub u8, pub u8, pub u8);

/// An RGB image being drawn.
#[derive(Debug, Clone)]
pub(super) struct Canvas {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

type Point = (f64, f64);

/// Distance from `p` to the segment `a`–`b`.
fn distance_to_segment(p: Point, a: Point, b: Point) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (p.0 - (a.0 + t * dx)).hypot(p.1 - (a.1 + t * dy))
}

/// The part of segment `a`–`b` inside `[x0, x1] × [y0, y1]` (Cohen–Sutherland: move an
/// outside end onto the border it crosses), so that far-away ends cost nothing, keep their
/// precision and cannot overflow the distance arithmetic.
fn clip(a: Point, b: Point, (x0, y0, x1, y1): (f64, f64, f64, f64)) -> Option<(Point, Point)> {
    let code = |p: Point| {
        u8::from(p.0 < x0)
            | u8::from(p.0 > x1) << 1
            | u8::from(p.1 < y0) << 2
            | u8::from(p.1 > y1) << 3
    };
    let (mut a, mut b) = (a, b);
    // Each pass puts one end on a border; two per end suffice (a corner), four in all.
    for _ in 0..4 {
        let (ca, cb) = (code(a), code(b));
        if ca | cb == 0 {
            return Some((a, b));
        }
        if ca & cb != 0 {
            return None;
        }
        let (out, other, c) = if ca != 0 { (a, b, ca) } else { (b, a, cb) };
        let (dx, dy) = (other.0 - out.0, other.1 - out.1);
        // The ratio first: it lies in [0, 1], so the product cannot overflow.
        let moved = if c & 1 != 0 {
            (x0, out.1 + dy * ((x0 - out.0) / dx))
        } else if c & 2 != 0 {
            (x1, out.1 + dy * ((x1 - out.0) / dx))
        } else if c & 4 != 0 {
            (out.0 + dx * ((y0 - out.1) / dy), y0)
        } else {
            (out.0 + dx * ((y1 - out.1) / dy), y1)
        };
        if !(moved.0.is_finite() && moved.1.is_finite()) {
            return None;
        }
        if ca != 0 {
            a = moved;
        } else {
            b = moved;
        }
    }
    (code(a) | code(b) == 0).then_some((a, b))
}

/// Pixel range `[lo, hi)` touched by `[min, max]` on an axis of `size` pixels.
fn span(min: f64, max: f64, size: u32) -> (i64, i64) {
    // `as` saturates, so absurd coordinates only make an empty or full range.
    let lo = (min.floor() as i64).clamp(0, i64::from(size));
    let hi = (max.ceil() as i64).clamp(0, i64::from(size));
    (lo, hi)
}

impl Canvas {
    /// A `width × height` canvas filled with `background`. The caller keeps the size within
    /// `MAX_PIXELS`.
    pub(super) fn new(width: u32, height: u32, background: Rgb) -> Self {
        let n = width as usize * height as usize;
        let data = [background.0, background.1, background.2].repeat(n);
        Self {
            width,
            height,
            data,
        }
    }

    /// Paints `c` over `(x, y)` with opacity `alpha` (0..=1).
    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        if alpha.is_nan() || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        for (k, v) in [c.0, c.1, c.2].into_iter().enumerate() {
            let old = f64::from(self.data[i + k]);
            self.data[i + k] = (old + (f64::from(v) - old) * a).round() as u8;
        }
    }

    /// Fills the `w × h` rectangle whose top-left pixel is `(x, y)`.
    pub(super) fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        let (x0, x1) = (x.max(0), x.saturating_add(w).min(i64::from(self.width)));
        let (y0, y1) = (y.max(0), y.saturating_add(h).min(i64::from(self.height)));
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.blend(xx, yy, c, 1.0);
            }
        }
    }

    /// Strokes the line through `points` with an anti-aliased pen `width` pixels wide. One
    /// point draws a dot of that diameter.
    pub(super) fn polyline(&mut self, points: &[Point], width: f64, c: Rgb) {
        let finite = |p: &Point| p.0.is_finite() && p.1.is_finite();
        let segments: Vec<(Point, Point)> = match points {
            [p] => vec![(*p, *p)],
            _ => points.windows(2).map(|w| (w[0], w[1])).collect(),
        };
        if width.is_nan() || width <= 0.0 {
            return;
        }
        let half = width / 2.0;
        let reach = half + 1.0;
        let visible = (
            -reach,
            -reach,
            f64::from(self.width) + reach,
            f64::from(self.height) + reach,
        );
        let segments: Vec<(Point, Point)> = segments
            .into_iter()
            .filter(|(a, b)| finite(a) && finite(b))
            .filter_map(|(a, b)| clip(a, b, visible))
            .collect();
        if segments.is_empty() {
            return;
        }
        let bbox = |pts: &mut dyn Iterator<Item = Point>| {
            let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
            for (x, y) in pts {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
            (
                span(x0 - reach, x1 + reach, self.width),
                span(y0 - reach, y1 + reach, self.height),
            )
        };
        let ((mx0, mx1), (my0, my1)) = bbox(&mut segments.iter().flat_map(|(a, b)| [*a, *b]));
        if mx0 >= mx1 || my0 >= my1 {
            return;
        }
        let mw = (mx1 - mx0) as usize;
        let mut mask = vec![0f32; mw * (my1 - my0) as usize];
        for (a, b) in &segments {
            let ((x0, x1), (y0, y1)) = bbox(&mut [*a, *b].into_iter());
            for y in y0..y1 {
                for x in x0..x1 {
                    let d = distance_to_segment((x as f64 + 0.5, y as f64 + 0.5), *a, *b);
                    let cover = (half + 0.5 - d).clamp(0.0, 1.0) as f32;
                    let m = &mut mask[(y - my0) as usize * mw + (x - mx0) as usize];
                    *m = m.max(cover);
                }
            }
        }
        for (i, cover) in mask.iter().enumerate() {
            let (x, y) = (mx0 + (i % mw) as i64, my0 + (i / mw) as i64);
            self.blend(x, y, c, f64::from(*cover));
        }
    }

    /// A filled anti-aliased disc.
    pub(super) fn dot(&mut self, centre: Point, radius: f64, c: Rgb) {
        self.polyline(&[centre], 2.0 * radius, c);
    }

    /// Text whose top-left corner is `(x, y)`, each font pixel drawn `scale × scale`.
    pub(super) fn text(&mut self, x: i64, y: i64, s: &str, scale: u32, c: Rgb) {
        let sc = i64::from(scale.max(1));
        let advance = i64::from(GLYPH) * sc;
        for (i, ch) in s.chars().enumerate() {
            let left = x.saturating_add((i as i64).saturating_mul(advance));
            if left >= i64::from(self.width) {
                break;
            }
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.fill_rect(left + col * sc, y + row as i64 * sc, sc, sc, c);
                    }
                }
            }
        }
    }

    /// Text turned a quarter turn counter-clockwise (it reads bottom to top), as y-axis labels
    /// are: `(x, y)` is the bottom-left corner of its box, which is `8 × scale` wide.
    pub(super) fn text_up(&mut self, x: i64, y: i64, s: &str, scale: u32, c: Rgb) {
        let sc = i64::from(scale.max(1));
        let advance = i64::from(GLYPH) * sc;
        for (i, ch) in s.chars().enumerate() {
            let bottom = y.saturating_sub((i as i64).saturating_mul(advance));
            if bottom < 0 {
                break;
            }
            // Glyph row r becomes column x + r; glyph column k rises from the bottom.
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.fill_rect(x + row as i64 * sc, bottom - (col + 1) * sc, sc, sc, c);
                    }
                }
            }
        }
    }

    /// Draws a row-major grayscale image with its top-left at `(x, y)`, each pixel a
    /// `scale × scale` block. `pixels` holds `w × h` bytes (checked by the caller).
    pub(super) fn blit_gray(&mut self, x: i64, y: i64, w: u32, pixels: &[u8], scale: u32) {
        let sc = i64::from(scale.max(1));
        if w == 0 {
            return;
        }
        for (i, v) in pixels.iter().enumerate() {
            let (px, py) = ((i % w as usize) as i64, (i / w as usize) as i64);
            self.fill_rect(x + px * sc, y + py * sc, sc, sc, Rgb(*v, *v, *v));
        }
    }

    /// Like [`Canvas::blit_gray`] for interleaved RGB pixels.
    pub(super) fn blit_rgb(&mut self, x: i64, y: i64, w: u32, pixels: &[u8], scale: u32) {
        let sc = i64::from(scale.max(1));
        if w == 0 {
            return;
        }
        for (i, p) in pixels.chunks_exact(3).enumerate() {
            let (px, py) = ((i % w as usize) as i64, (i / w as usize) as i64);
            self.fill_rect(x + px * sc, y + py * sc, sc, sc, Rgb(p[0], p[1], p[2]));
        }
    }

    /// The image as PNG bytes (8-bit RGB).
    pub(super) fn png(&self) -> Result<Vec<u8>, PlotError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.data)?;
        writer.finish()?;
        Ok(out)
    }
}

/// Reading pixels back: only tests need it.
#[cfg(test)]
impl Canvas {
    pub(super) fn width(&self) -> u32 {
        self.width
    }

    pub(super) fn height(&self) -> u32 {
        self.height
    }

    /// The colour at `(x, y)`, if it is on the canvas.
    pub(super) fn pixel(&self, x: u32, y: u32) -> Option<Rgb> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some(Rgb(self.data[i], self.data[i + 1], self.data[i + 2]))
    }

    /// Decodes PNG bytes written by [`Canvas::png`] (tests look at the real file format).
    pub(super) fn decode(bytes: &[u8]) -> Self {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut data = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut data).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        data.truncate(info.buffer_size());
        Self {
            width: info.width,
            height: info.height,
            data,
        }
    }

    /// How many pixels in the rectangle `[x0, x1) × [y0, y1)` are exactly `c`.
    pub(super) fn count(&self, c: Rgb, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|(x, y)| self.pixel(*x, *y) == Some(c))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb = Rgb(255, 255, 255);
    const BLUE: Rgb = Rgb(31, 119, 180);

    #[test]
    fn png_round_trip_keeps_size_and_pixels() {
        let mut c = Canvas::new(30, 20, WHITE);
        c.fill_rect(3, 4, 2, 2, BLUE);
        let back = Canvas::decode(&c.png().unwrap());
        assert_eq!((back.width(), back.height()), (30, 20));
        assert_eq!(back.pixel(3, 4), Some(BLUE));
        assert_eq!(back.pixel(4, 5), Some(BLUE));
        assert_eq!(back.pixel(5, 5), Some(WHITE));
        assert_eq!(back.pixel(30, 0), None);
    }

    #[test]
    fn two_pixel_stroke_covers_its_row_and_fades_at_the_edges() {
        let mut c = Canvas::new(60, 20, WHITE);
        c.polyline(&[(5.0, 10.5), (50.0, 10.5)], 2.0, BLUE);
        assert_eq!(c.pixel(20, 10), Some(BLUE));
        // Centres one pixel away get half coverage: neither background nor the full colour.
        for y in [9, 11] {
            let p = c.pixel(20, y).unwrap();
            assert!(p != BLUE && p != WHITE, "row {y}: {p:?}");
        }
        assert_eq!(c.pixel(20, 8), Some(WHITE));
        assert_eq!(c.pixel(20, 12), Some(WHITE));
        // Round caps reach half the pen width past the ends, no further.
        assert_eq!(c.pixel(53, 10), Some(WHITE));
        assert_eq!(c.pixel(2, 10), Some(WHITE));
    }

    #[test]
    fn diagonal_stroke_is_anti_aliased_and_joints_are_not_darker() {
        let mut c = Canvas::new(40, 40, WHITE);
        c.polyline(&[(5.0, 5.0), (20.0, 20.0), (35.0, 5.0)], 2.0, BLUE);
        let partial = (0..40)
            .flat_map(|y| (0..40).map(move |x| (x, y)))
            .filter(|(x, y)| {
                let p = c.pixel(*x, *y).unwrap();
                p != BLUE && p != WHITE
            })
            .count();
        assert!(partial > 20, "only {partial} partly covered pixels");
        // The joint gets the full colour, and nothing darker than it exists anywhere.
        assert_eq!(c.pixel(19, 19), Some(BLUE));
        for y in 0..40 {
            for x in 0..40 {
                let p = c.pixel(x, y).unwrap();
                assert!(
                    p.0 >= BLUE.0 && p.1 >= BLUE.1 && p.2 >= BLUE.2,
                    "{x},{y}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn off_canvas_and_non_finite_input_is_clipped_or_ignored() {
        let mut c = Canvas::new(10, 10, WHITE);
        c.polyline(&[(-1e300, 5.5), (1e300, 5.5)], 2.0, BLUE);
        assert_eq!(c.pixel(0, 5), Some(BLUE));
        assert_eq!(c.pixel(9, 5), Some(BLUE));
        assert_eq!(c.pixel(5, 2), Some(WHITE));
        // A steep segment from far away still lands where its line crosses the canvas.
        let mut s = Canvas::new(10, 10, WHITE);
        s.polyline(&[(5.5, -1e12), (5.5, 1e12)], 2.0, BLUE);
        assert_eq!(s.pixel(5, 0), Some(BLUE));
        assert_eq!(s.pixel(5, 9), Some(BLUE));
        assert_eq!(s.pixel(2, 5), Some(WHITE));
        assert_eq!(clip((0.0, 0.0), (1.0, 1.0), (5.0, 5.0, 9.0, 9.0)), None);
        // Crosses the corner region outside: no part inside.
        assert_eq!(clip((0.0, 1.5), (1.5, 0.0), (1.0, 1.0, 9.0, 9.0)), None);
        assert_eq!(
            clip((-10.0, -10.0), (20.0, 20.0), (0.0, 0.0, 10.0, 10.0)),
            Some(((0.0, 0.0), (10.0, 10.0)))
        );
        assert_eq!(
            clip((-10.0, 2.0), (20.0, 2.0), (0.0, 0.0, 10.0, 10.0)),
            Some(((0.0, 2.0), (10.0, 2.0)))
        );
        let mut d = Canvas::new(10, 10, WHITE);
        d.polyline(&[(f64::NAN, 1.0), (5.0, 5.0)], 2.0, BLUE);
        d.polyline(&[(2.0, f64::INFINITY)], 2.0, BLUE);
        d.polyline(&[], 2.0, BLUE);
        d.fill_rect(-5, -5, 3, 3, BLUE);
        d.text(100, 100, "off", 1, BLUE);
        d.text_up(-100, 5, "off", 1, BLUE);
        assert_eq!(d.count(WHITE, 0, 0, 10, 10), 100);
    }

    #[test]
    fn dot_is_round() {
        let mut c = Canvas::new(20, 20, WHITE);
        c.dot((10.0, 10.0), 3.0, BLUE);
        assert_eq!(c.pixel(10, 10), Some(BLUE));
        assert_eq!(c.pixel(8, 9), Some(BLUE));
        // The corner of the bounding square is outside the disc.
        assert_eq!(c.pixel(7, 7), Some(WHITE));
        assert_eq!(c.pixel(14, 10), Some(WHITE));
    }

    #[test]
    fn text_draws_the_glyph_bits_scaled_and_rotated() {
        let f = glyph('F');
        let mut c = Canvas::new(40, 40, WHITE);
        c.text(2, 3, "F", 2, BLUE);
        for (row, bits) in f.iter().enumerate() {
            for col in 0..8u32 {
                let want = if bits >> col & 1 == 1 { BLUE } else { WHITE };
                for (dx, dy) in [(0, 0), (1, 1)] {
                    let (x, y) = (2 + 2 * col + dx, 3 + 2 * row as u32 + dy);
                    assert_eq!(c.pixel(x, y), Some(want), "scaled ({col},{row})");
                }
            }
        }
        // Rotated: glyph row r is column x + r, glyph column k is row y - 1 - k.
        let mut u = Canvas::new(40, 40, WHITE);
        u.text_up(5, 30, "F", 1, BLUE);
        for (row, bits) in f.iter().enumerate() {
            for col in 0..8u32 {
                let want = if bits >> col & 1 == 1 { BLUE } else { WHITE };
                assert_eq!(
                    u.pixel(5 + row as u32, 29 - col),
                    Some(want),
                    "up ({col},{row})"
                );
            }
        }
        // The second character sits above the first.
        let mut two = Canvas::new(40, 40, WHITE);
        two.text_up(5, 30, " F", 1, BLUE);
        assert_eq!(two.count(BLUE, 0, 22, 40, 40), 0);
        assert_eq!(two.count(BLUE, 0, 14, 40, 22), u.count(BLUE, 0, 0, 40, 40));
    }

    #[test]
    fn blit_scales_by_nearest_neighbour() {
        let mut c = Canvas::new(10, 10, Rgb(1, 2, 3));
        c.blit_gray(1, 1, 2, &[0, 255, 128, 7], 3);
        assert_eq!(c.pixel(1, 1), Some(Rgb(0, 0, 0)));
        assert_eq!(c.pixel(4, 1), Some(Rgb(255, 255, 255)));
        assert_eq!(c.pixel(6, 3), Some(Rgb(255, 255, 255)));
        assert_eq!(c.pixel(3, 4), Some(Rgb(128, 128, 128)));
        assert_eq!(c.pixel(6, 6), Some(Rgb(7, 7, 7)));
        assert_eq!(c.pixel(7, 7), Some(Rgb(1, 2, 3)));
    }
}
