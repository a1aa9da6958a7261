//! Image grids: [`grid_png`] lays grayscale or RGB tiles out in columns, each scaled up by an integer
//! factor (nearest neighbour) with its caption under it and an optional title on top; for
//! looking at data (`show_batch`) and at mistakes (`plot_top_losses`).
//!
//! ```text
//!  PAD ┌ title (2x, if any) ┐
//!  PAD ┌──cell──┐ PAD ┌──cell──┐ PAD      cell width  = max(widest tile × scale, widest caption line)
//!      │  tile  │     │  tile  │          cell height = tallest tile × scale
//!      │caption │     │caption │          captions: 4 px under the cell, 10 px a line
//!  PAD ┌──cell──┐ ...                     columns used = min(cols, tiles)
//! ```
//! Tiles are centred horizontally in their cell and drawn from its top.
//!
//! Tests: `tests` at the bottom.

use super::canvas::{Canvas, Rgb};
use super::font::{text_width, GLYPH};
use super::{PlotError, Tile, MAX_PIXELS};

const BACKGROUND: Rgb = Rgb(255, 255, 255);
const TEXT: Rgb = Rgb(34, 34, 34);
const PAD: u64 = 8;
const TITLE_SCALE: u32 = 2;
const CAPTION_GAP: u64 = 4;
const CAPTION_LINE: u64 = 10;

/// Where everything goes, in pixels (u64 so that sizes cannot overflow before the limit check).
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    cols: u64,
    cell_w: u64,
    cell_h: u64,
    /// Cell height plus its captions and the padding under them.
    row_h: u64,
    grid_top: u64,
    width: u64,
    height: u64,
}

impl Layout {
    fn new(title: &str, tiles: &[Tile], cols: usize, scale: u32) -> Self {
        let scale = u64::from(scale);
        let caption_w = |t: &Tile| {
            t.caption
                .lines()
                .map(|l| u64::from(text_width(l, 1)))
                .max()
                .unwrap_or(0)
        };
        let cell_w = tiles
            .iter()
            .map(|t| (u64::from(t.width) * scale).max(caption_w(t)))
            .max()
            .unwrap_or(0);
        let cell_h = tiles
            .iter()
            .map(|t| u64::from(t.height) * scale)
            .max()
            .unwrap_or(0);
        let lines = tiles
            .iter()
            .map(|t| t.caption.lines().count() as u64)
            .max()
            .unwrap_or(0);
        let captions = if lines == 0 {
            0
        } else {
            CAPTION_GAP + lines * CAPTION_LINE
        };
        let cols = (cols as u64).min(tiles.len() as u64).max(1);
        let rows = (tiles.len() as u64).div_ceil(cols);
        let title_h = if title.is_empty() {
            0
        } else {
            u64::from(GLYPH * TITLE_SCALE) + PAD
        };
        let row_h = cell_h + captions + PAD;
        let grid_w = PAD + cols * (cell_w + PAD);
        let title_w = u64::from(text_width(title, TITLE_SCALE)) + 2 * PAD;
        Self {
            cols,
            cell_w,
            cell_h,
            row_h,
            grid_top: PAD + title_h,
            width: grid_w.max(title_w),
            height: PAD + title_h + rows * row_h,
        }
    }

    /// Top-left corner of cell `i`.
    fn cell(&self, i: usize) -> (u64, u64) {
        let (col, row) = (i as u64 % self.cols, i as u64 / self.cols);
        (
            PAD + col * (self.cell_w + PAD),
            self.grid_top + row * self.row_h,
        )
    }
}

/// Tiles in `cols` columns, each scaled up by an integer `scale` (nearest neighbour), caption
/// under each, optional title on top. Tiles may differ in size; no tiles gives just the title.
pub fn grid_png(
    title: &str,
    tiles: &[Tile],
    cols: usize,
    scale: u32,
) -> Result<Vec<u8>, PlotError> {
    if cols == 0 {
        return Err(PlotError::NoColumns);
    }
    if scale == 0 {
        return Err(PlotError::ZeroScale);
    }
    for (index, t) in tiles.iter().enumerate() {
        let rgb_or_gray = matches!(t.channels, 1 | 3);
        if !rgb_or_gray
            || t.pixels.len() as u64
                != u64::from(t.width) * u64::from(t.height) * u64::from(t.channels)
        {
            return Err(PlotError::TileSize {
                index,
                width: t.width,
                height: t.height,
                len: t.pixels.len(),
            });
        }
    }
    let layout = Layout::new(title, tiles, cols, scale);
    let too_large = || PlotError::TooLarge {
        width: layout.width,
        height: layout.height,
    };
    if layout.width.saturating_mul(layout.height) > MAX_PIXELS {
        return Err(too_large());
    }
    let (Ok(width), Ok(height)) = (u32::try_from(layout.width), u32::try_from(layout.height))
    else {
        return Err(too_large());
    };
    // Every coordinate below is under width or height, so the i64 conversions are exact.
    let mut c = Canvas::new(width, height, BACKGROUND);
    if !title.is_empty() {
        c.text(PAD as i64, PAD as i64, title, TITLE_SCALE, TEXT);
    }
    let scale64 = u64::from(scale);
    for (i, t) in tiles.iter().enumerate() {
        let (x, y) = layout.cell(i);
        let tile_x = x + (layout.cell_w - u64::from(t.width) * scale64) / 2;
        if t.channels == 3 {
            c.blit_rgb(tile_x as i64, y as i64, t.width, &t.pixels, scale);
        } else {
            c.blit_gray(tile_x as i64, y as i64, t.width, &t.pixels, scale);
        }
        let mut line_y = y + layout.cell_h + CAPTION_GAP;
        for line in t.caption.lines() {
            let lx = x + (layout.cell_w - u64::from(text_width(line, 1))) / 2;
            c.text(lx as i64, line_y as i64, line, 1, TEXT);
            line_y += CAPTION_LINE;
        }
    }
    c.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(w: u32, h: u32, caption: &str) -> Tile {
        Tile {
            channels: 1,
            width: w,
            height: h,
            pixels: vec![0; (w * h) as usize],
            caption: caption.into(),
        }
    }

    fn render(title: &str, tiles: &[Tile], cols: usize, scale: u32) -> Canvas {
        Canvas::decode(&grid_png(title, tiles, cols, scale).unwrap())
    }

    #[test]
    fn size_follows_tiles_columns_scale_captions_and_title() {
        // 5 tiles of 28x28 at 2x in 3 columns: cells 56 wide, 2 rows of 56 + 4 + 10 + 8 px,
        // title 16 + 8 px: 8 + 3 x (56 + 8) = 200 wide, 8 + 24 + 2 x 78 = 188 high.
        let tiles = vec![tile(28, 28, "7"); 5];
        let c = render("Batch", &tiles, 3, 2);
        assert_eq!((c.width(), c.height()), (200, 188));
        // No title, no captions: 8 + 2 x (30 + 8) both ways.
        let c = render(
            "",
            &[tile(10, 10, ""), tile(10, 10, ""), tile(10, 10, "")],
            2,
            3,
        );
        assert_eq!((c.width(), c.height()), (84, 84));
        // More columns than tiles: only as many columns as tiles.
        let c = render("", &[tile(10, 10, "")], 4, 1);
        assert_eq!((c.width(), c.height()), (26, 26));
        // A long caption widens every cell to fit it.
        let c = render("", &[tile(10, 10, "0123456789ab"), tile(10, 10, "")], 2, 1);
        assert_eq!(c.width(), 8 + 2 * (96 + 8));
    }

    #[test]
    fn a_bright_pixel_lands_at_its_scaled_position() {
        let mut tiles = vec![tile(28, 28, "7"); 5];
        tiles[4].pixels[7 * 28 + 5] = 255;
        let c = render("Batch", &tiles, 3, 2);
        // Tile 4 is row 1, column 1: its cell starts at (8 + 64, 8 + 24 + 78) = (72, 110),
        // and its pixel (5, 7) covers (82..84, 124..126).
        let white = Rgb(255, 255, 255);
        let black = Rgb(0, 0, 0);
        for (x, y) in [(82, 124), (83, 125)] {
            assert_eq!(c.pixel(x, y), Some(white), "({x},{y})");
        }
        for (x, y) in [(81, 124), (84, 124), (82, 123), (82, 126)] {
            assert_eq!(c.pixel(x, y), Some(black), "({x},{y})");
        }
        // Exactly one scaled pixel of the tiles is bright: 2 x 2 white inside the grid cells.
        let bright = (0..5)
            .map(|i| {
                let (x, y) = Layout::new("Batch", &tiles, 3, 2).cell(i);
                c.count(white, x as u32, y as u32, x as u32 + 56, y as u32 + 56)
            })
            .sum::<usize>();
        assert_eq!(bright, 4);
    }

    #[test]
    fn captions_go_under_their_tile_and_the_title_on_top() {
        let tiles = vec![tile(28, 28, "pred 7\nactual 1"), tile(28, 28, "")];
        let c = render("Top losses", &tiles, 2, 2);
        let (x0, y0) = Layout::new("Top losses", &tiles, 2, 2).cell(0);
        let (x1, y1) = Layout::new("Top losses", &tiles, 2, 2).cell(1);
        let (x0, y0, x1, y1) = (x0 as u32, y0 as u32, x1 as u32, y1 as u32);
        // Two caption lines under tile 0, none under tile 1.
        let line = |x: u32, y: u32| c.count(TEXT, x, y, x + 64, y + 10);
        assert!(line(x0, y0 + 56 + 4) > 10);
        assert!(line(x0, y0 + 56 + 14) > 10);
        assert_eq!(line(x1, y1 + 56 + 4), 0);
        assert!(c.count(TEXT, 8, 8, 8 + 160, 24) > 50);
        assert_eq!(render("", &tiles, 2, 2).count(TEXT, 0, 0, 200, 8 + 16), 0);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let t = [tile(2, 2, "")];
        assert!(matches!(grid_png("", &t, 0, 1), Err(PlotError::NoColumns)));
        assert!(matches!(grid_png("", &t, 1, 0), Err(PlotError::ZeroScale)));
        let mut bad = vec![tile(2, 2, ""), tile(3, 3, "")];
        bad[1].pixels.pop();
        assert!(matches!(
            grid_png("", &bad, 2, 1),
            Err(PlotError::TileSize {
                index: 1,
                width: 3,
                height: 3,
                len: 8
            })
        ));
        assert!(matches!(
            grid_png("", &t, 1, u32::MAX),
            Err(PlotError::TooLarge { .. })
        ));
        let wide = vec![tile(1, 1, ""); 100];
        assert!(matches!(
            grid_png("", &wide, 100, 1 << 16),
            Err(PlotError::TooLarge { .. })
        ));
    }

    #[test]
    fn no_tiles_still_makes_an_image() {
        let c = render("nothing to show", &[], 3, 2);
        assert_eq!(c.width(), 15 * 16 + 16);
        assert_eq!(c.height(), 8 + 16 + 8);
        let empty = render("", &[], 3, 2);
        assert_eq!((empty.width(), empty.height()), (16, 8));
    }
}
