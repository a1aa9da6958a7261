//! PNG plots for the run folder and the tools around it: line charts and image grids, drawn by
//! a small raster renderer of our own (no plotting stack, no libtorch).
//!
//! Owns the picture: axes, "nice" ticks, legend, markers, captions, PNG encoding. Not what to
//! plot or where the file goes (`report.rs` writes the run's charts atomically).
//!
//! ```text
//! mod.rs     the public types: Series, Marker, Chart, Tile, PlotError
//! chart.rs   Chart::png: layout (margins from label sizes), axes, series, markers, legend
//! ticks.rs   tick values and labels: 1-2-5 steps on linear axes, decades on log axes
//! grid.rs    grid_png: grayscale tiles scaled up, captions under them, a title on top
//! canvas.rs  RGB pixel buffer: anti-aliased polylines and dots, rects, text (also rotated), PNG
//! font.rs    the 8x8 public-domain bitmap font (font8x8's ASCII table)
//! ```
//!
//! # Contract
//! * A chart is always [`CHART_WIDTH`] × [`CHART_HEIGHT`] pixels, RGB, white background.
//! * Points with a non-finite coordinate, or with x ≤ 0 on a log-x chart, are skipped and leave
//!   a gap in their line. Markers are skipped under the same rule. Empty charts still render.
//! * The x axis spans the data exactly (log-x: whole decades); the y axis spans it with a 5 %
//!   margin on each side, and a constant y is padded first.
//! * Text is ASCII; any other character is drawn as `?`.
//! * Pure functions of their input: the same chart gives the same bytes.
//!
//! Tests: each file has its own `tests` at the bottom; they decode the PNG and look at pixels.

mod canvas;
mod chart;
mod font;
mod grid;
mod ticks;

pub use chart::{CHART_HEIGHT, CHART_WIDTH};
pub use grid::grid_png;

/// One named line of a chart, drawn in the order of its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend (when the chart has two or more series).
    pub name: String,
    /// `(x, y)` in data units.
    pub points: Vec<(f64, f64)>,
}

/// A highlighted point with a label beside it (e.g. the LR finder's suggested learning rate).
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// A line chart; render it with [`Chart::png`].
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis with ticks at decades.
    pub log_x: bool,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

/// One grayscale or RGB image for a grid, with a caption drawn under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub width: u32,
    pub height: u32,
    /// 1: grayscale; 3: RGB, interleaved.
    pub channels: u32,
    /// Row-major, `width × height × channels` bytes, 0 black ..= 255 white.
    pub pixels: Vec<u8>,
    /// Drawn under the tile; `\n` starts another line.
    pub caption: String,
}

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The PNG encoder refused the image (it writes to memory, so this means a bug here).
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
    /// A tile's pixel buffer does not hold `width × height × channels` bytes, or its channels
    /// are neither 1 nor 3.
    #[error("tile {index} is {width}x{height} but has {len} bytes (or not 1 or 3 channels)")]
    TileSize {
        index: usize,
        width: u32,
        height: u32,
        len: usize,
    },
    /// `grid_png` was asked for zero columns.
    #[error("an image grid needs at least one column")]
    NoColumns,
    /// `grid_png` was asked for a scale of zero.
    #[error("an image grid's scale must be at least 1")]
    ZeroScale,
    /// The image would have more pixels than [`MAX_PIXELS`].
    #[error("a {width}x{height} image exceeds the limit of {MAX_PIXELS} pixels")]
    TooLarge { width: u64, height: u64 },
}

/// The largest image (width × height) this module draws: 64 Mpixel, 192 MiB of RGB.
pub const MAX_PIXELS: u64 = 1 << 26;
