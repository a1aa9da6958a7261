//! Synthetic "coloured shapes" image folders: a learnable, seeded stand-in for a user's own
//! dataset, in the fast.ai layout `ROOT/{training,testing}/<class>/<index>.{png,jpg}`.
//!
//! Owns the generator and its on-disk layout; not the decoder under test (`ringtrain-common`'s
//! `data` module) nor the awkward single-file fixtures ([`crate::badimages`]).
//!
//! # Contract
//! * Each image is one filled shape ([`Shape`]: circle, cross, square, triangle) of a random colour
//!   on random-coloured noise. Colour is drawn per image, independently of the class, so only the
//!   shape tells the class, and a colour histogram is no help. Measured (32×32 RGB, a 3-conv
//!   BatchNorm CNN, Adam 3e-3, batch 64): ≈95% validation accuracy after 3–4 epochs at 1000
//!   training images per class, after 12–20 epochs at 300.
//! * Output is byte-identical for a given [`ShapesSpec`]: every image draws from its own
//!   splitmix64 stream seeded by `(seed, split, class, index)`, so image `k` does not change when
//!   the counts do.
//! * Within one class and split, image `k` is a JPEG when `k % jpeg_every == jpeg_every - 1`, and
//!   its size is `sizes[(k / jpeg_every) % sizes.len()]`: every size appears in both formats.
//! * Class folders are the [`Shape::name`]s, which sort in [`Shape::ALL`] order, so class index
//!   `i` (sorted folder order) is `spec.classes[i]` when `classes` is sorted.
//!
//! Single-threaded; 4 classes × (300 + 100) images take well under a second in release builds.
//! Tests are at the bottom of this file.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::ExtendedColorType;
use image::ImageEncoder;

/// JPEG quality of the generated `.jpg` files.
pub const JPEG_QUALITY: u8 = 90;

/// One class of the shapes dataset: the filled figure drawn on the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    /// A disc of diameter `s`.
    Circle,
    /// A plus sign `s` wide, arms `s / 3` thick.
    Cross,
    /// An axis-aligned `s × s` square.
    Square,
    /// An isosceles triangle in an `s × s` box, apex up, down, left or right at random.
    Triangle,
}

impl Shape {
    /// Every shape, in the sorted order of their folder names.
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Cross, Shape::Square, Shape::Triangle];

    /// The class folder name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Cross => "cross",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The shape whose [`name`](Self::name) is `name`.
    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the point `(x, y)`, relative to the centre of an `s × s` box with half side
    /// `r = s / 2`, lies inside the shape; `turn` (0..4) rotates the triangle by quarter turns.
    fn contains(self, x: f32, y: f32, r: f32, turn: u32) -> bool {
        match self {
            Shape::Circle => x * x + y * y <= r * r,
            Shape::Square => x.abs() <= r && y.abs() <= r,
            Shape::Cross => {
                let arm = r / 3.0;
                (x.abs() <= arm && y.abs() <= r) || (y.abs() <= arm && x.abs() <= r)
            }
            Shape::Triangle => {
                // Rotate the point into the apex-up frame; apex at (0, -r), base along y = r.
                let (x, y) = match turn {
                    0 => (x, y),
                    1 => (y, -x),
                    2 => (-x, -y),
                    _ => (-y, x),
                };
                y >= -r && y <= r && x.abs() <= (y + r) / 2.0
            }
        }
    }
}

/// The two splits of the fast.ai layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// `ROOT/training`.
    Training,
    /// `ROOT/testing` (the validation set).
    Testing,
}

impl Split {
    /// The split's folder name.
    pub fn dir(self) -> &'static str {
        match self {
            Split::Training => "training",
            Split::Testing => "testing",
        }
    }
}

/// How a generated file is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// Lossless 8-bit PNG, `.png`.
    Png,
    /// Baseline JPEG at [`JPEG_QUALITY`], `.jpg`.
    Jpeg,
}

impl FileFormat {
    /// The file name extension, without the dot.
    pub fn ext(self) -> &'static str {
        match self {
            FileFormat::Png => "png",
            FileFormat::Jpeg => "jpg",
        }
    }
}

/// What [`write_shapes`] generates. [`Default`] is 60 training and 20 testing images for each of
/// the four shapes, seed 0, sizes 32×32 and 48×40 (width × height), half JPEG, all RGB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapesSpec {
    /// Images per class in `training/`.
    pub train_per_class: usize,
    /// Images per class in `testing/`.
    pub valid_per_class: usize,
    /// Seed of every image's random stream.
    pub seed: u64,
    /// Image sizes as `(width, height)`, cycled per image (see the module contract); each side at
    /// least 8.
    pub sizes: Vec<(u32, u32)>,
    /// Every `jpeg_every`-th image of a class is a JPEG: 0 = none, 1 = all, 2 = half.
    pub jpeg_every: usize,
    /// Every `gray_every`-th image of a class (offset by the shape's place in [`Shape::ALL`]) is
    /// 8-bit grayscale, PIL's luma of the RGB drawing: 0 = none, 1 = all.
    pub gray_every: usize,
    /// The classes, one folder each; at least one, no repeats.
    pub classes: Vec<Shape>,
}

impl Default for ShapesSpec {
    fn default() -> Self {
        ShapesSpec {
            train_per_class: 60,
            valid_per_class: 20,
            seed: 0,
            sizes: vec![(32, 32), (48, 40)],
            jpeg_every: 2,
            gray_every: 0,
            classes: Shape::ALL.to_vec(),
        }
    }
}

impl ShapesSpec {
    /// One message per broken rule.
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.classes.is_empty(), "classes must not be empty");
        let mut sorted = self.classes.clone();
        sorted.sort();
        sorted.dedup();
        ensure!(
            sorted.len() == self.classes.len(),
            "classes must not repeat: {:?}",
            self.classes
        );
        ensure!(!self.sizes.is_empty(), "sizes must not be empty");
        for &(w, h) in &self.sizes {
            ensure!(
                (8..=4096).contains(&w) && (8..=4096).contains(&h),
                "size {w}x{h}: each side must be 8..=4096"
            );
        }
        Ok(())
    }

    /// The format, size and colour mode of image `k` of class `shape` in a split.
    fn layout(&self, shape: Shape, k: usize) -> (FileFormat, (u32, u32), bool) {
        let jpeg = self.jpeg_every > 0 && k % self.jpeg_every == self.jpeg_every - 1;
        let format = if jpeg {
            FileFormat::Jpeg
        } else {
            FileFormat::Png
        };
        let size = self.sizes[(k / self.jpeg_every.max(1)) % self.sizes.len()];
        let gray = self.gray_every > 0 && (k + shape as usize).is_multiple_of(self.gray_every);
        (format, size, gray)
    }
}

/// One generated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeFile {
    /// Full path: `root/<split>/<class>/<k:05>.<ext>`.
    pub path: PathBuf,
    /// The split it belongs to.
    pub split: Split,
    /// Its class folder name.
    pub class: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Its encoding.
    pub format: FileFormat,
    /// True for a 1-channel (8-bit grayscale) file, false for RGB.
    pub gray: bool,
}

/// What [`write_shapes`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapesSummary {
    /// The dataset root.
    pub root: PathBuf,
    /// Class folder names, in the order of [`ShapesSpec::classes`].
    pub classes: Vec<String>,
    /// Images in `training/`.
    pub train: usize,
    /// Images in `testing/`.
    pub valid: usize,
    /// PNG files.
    pub png: usize,
    /// JPEG files.
    pub jpeg: usize,
    /// Grayscale files (the rest are RGB).
    pub gray: usize,
    /// The sizes drawn from, `(width, height)`.
    pub sizes: Vec<(u32, u32)>,
    /// Every file, training first, then by class, then by index.
    pub files: Vec<ShapeFile>,
}

impl fmt::Display for ShapesSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<String> = self.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
        write!(
            f,
            "{} classes ({}): {} training + {} testing images, {} PNG + {} JPEG, {} grayscale, \
             sizes {} in {}",
            self.classes.len(),
            self.classes.join(", "),
            self.train,
            self.valid,
            self.png,
            self.jpeg,
            self.gray,
            sizes.join(" "),
            self.root.display()
        )
    }
}

/// Writes the shapes dataset described by `spec` under `root` (creating folders; existing files
/// of the same names are overwritten, others left alone).
pub fn write_shapes(root: &Path, spec: &ShapesSpec) -> anyhow::Result<ShapesSummary> {
    spec.validate()?;
    let mut summary = ShapesSummary {
        root: root.to_path_buf(),
        classes: spec.classes.iter().map(|c| c.name().to_string()).collect(),
        train: 0,
        valid: 0,
        png: 0,
        jpeg: 0,
        gray: 0,
        sizes: spec.sizes.clone(),
        files: Vec::new(),
    };
    let splits = [
        (Split::Training, spec.train_per_class),
        (Split::Testing, spec.valid_per_class),
    ];
    for (split_no, (split, count)) in splits.into_iter().enumerate() {
        for &shape in &spec.classes {
            let dir = root.join(split.dir()).join(shape.name());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for k in 0..count {
                let (format, (width, height), gray) = spec.layout(shape, k);
                // The class's position in ALL, not in spec.classes: a class keeps its images
                // when others are left out.
                let stream = image_seed(spec.seed, split_no as u64, shape as u64, k as u64);
                let rgb = draw(shape, width, height, &mut SplitMix64(stream));
                let bytes = encode(&rgb, width, height, format, gray)?;
                let path = dir.join(format!("{k:05}.{}", format.ext()));
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                match split {
                    Split::Training => summary.train += 1,
                    Split::Testing => summary.valid += 1,
                }
                match format {
                    FileFormat::Png => summary.png += 1,
                    FileFormat::Jpeg => summary.jpeg += 1,
                }
                summary.gray += usize::from(gray);
                summary.files.push(ShapeFile {
                    path,
                    split,
                    class: shape.name().to_string(),
                    width,
                    height,
                    format,
                    gray,
                });
            }
        }
    }
    Ok(summary)
}

/// PIL's `convert('L')`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
pub fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, seedable with any `u64`, stable forever.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (Lemire's multiply-shift; the bias is below 2^-32).
    pub(crate) fn between(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi - lo) + 1;
        lo + (((self.next_u64() >> 32) * span) >> 32) as u32
    }

    pub(crate) fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}

/// The seed of one image's stream; each coordinate goes through a splitmix round so that
/// neighbouring indices give unrelated streams.
fn image_seed(seed: u64, split: u64, class: u64, k: u64) -> u64 {
    [split, class, k]
        .into_iter()
        .fold(seed, |acc, part| SplitMix64(acc ^ part).next_u64())
}

/// Draws one RGB image, row-major `[height, width, 3]`.
fn draw(shape: Shape, width: u32, height: u32, rng: &mut SplitMix64) -> Vec<u8> {
    let base = [rng.byte(), rng.byte(), rng.byte()];
    let fill = contrasting_colour(base, rng);
    let short = width.min(height);
    let side = rng.between(short * 40 / 100, short * 70 / 100).max(4);
    let x0 = rng.between(0, width - side) as f32;
    let y0 = rng.between(0, height - side) as f32;
    let turn = rng.between(0, 3);
    let r = side as f32 / 2.0;
    let (cx, cy) = (x0 + r, y0 + r);
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let inside = shape.contains(x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r, turn);
            // Heavy noise on the background, light noise on the shape: the edge stays visible
            // but neither region is flat.
            let (colour, amp) = if inside { (fill, 16) } else { (base, 32) };
            for c in colour {
                let noise = rng.between(0, 2 * amp) as i32 - amp as i32;
                rgb.push((i32::from(c) + noise).clamp(0, 255) as u8);
            }
        }
    }
    rgb
}

/// A random colour far from `base` both in RGB and in luma, so the shape stays visible in the
/// grayscale variant too.
fn contrasting_colour(base: [u8; 3], rng: &mut SplitMix64) -> [u8; 3] {
    let luma = |c: [u8; 3]| i32::from(pil_luma(c[0], c[1], c[2]));
    for _ in 0..64 {
        let c = [rng.byte(), rng.byte(), rng.byte()];
        let l1: i32 = (0..3)
            .map(|i| (i32::from(c[i]) - i32::from(base[i])).abs())
            .sum();
        if l1 >= 150 && (luma(c) - luma(base)).abs() >= 60 {
            return c;
        }
    }
    if luma(base) < 128 {
        [235, 235, 235]
    } else {
        [20, 20, 20]
    }
}

/// Encodes a drawing as a PNG or JPEG file, RGB or (via [`pil_luma`]) grayscale.
fn encode(
    rgb: &[u8],
    width: u32,
    height: u32,
    format: FileFormat,
    gray: bool,
) -> anyhow::Result<Vec<u8>> {
    let luma: Vec<u8>;
    let (pixels, colour) = if gray {
        luma = rgb
            .chunks_exact(3)
            .map(|p| pil_luma(p[0], p[1], p[2]))
            .collect();
        (&luma[..], ExtendedColorType::L8)
    } else {
        (rgb, ExtendedColorType::Rgb8)
    };
    let mut out = Vec::new();
    match format {
        FileFormat::Png => PngEncoder::new(&mut out).write_image(pixels, width, height, colour)?,
        FileFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
            .write_image(pixels, width, height, colour)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn small() -> ShapesSpec {
        ShapesSpec {
            train_per_class: 6,
            valid_per_class: 3,
            ..ShapesSpec::default()
        }
    }

    /// Every file under `root`, relative path → bytes.
    fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(root).unwrap().to_path_buf();
                    out.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        write_shapes(a.path(), &small()).unwrap();
        write_shapes(b.path(), &small()).unwrap();
        write_shapes(c.path(), &ShapesSpec { seed: 1, ..small() }).unwrap();
        let (ta, tb, tc) = (tree(a.path()), tree(b.path()), tree(c.path()));
        assert_eq!(ta.len(), 4 * 9);
        assert_eq!(ta, tb);
        assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
        assert!(
            ta.iter().all(|(k, v)| tc[k] != *v),
            "seed 1 must redraw every image"
        );
    }

    #[test]
    fn an_image_does_not_change_when_the_counts_or_other_classes_do() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_shapes(a.path(), &small()).unwrap();
        let more = ShapesSpec {
            train_per_class: 10,
            classes: vec![Shape::Square, Shape::Triangle],
            ..small()
        };
        write_shapes(b.path(), &more).unwrap();
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        for (path, bytes) in &tb {
            if let Some(old) = ta.get(path) {
                assert_eq!(old, bytes, "{}", path.display());
            }
        }
        assert!(ta.contains_key(Path::new("training/square/00005.jpg")));
        assert!(tb.contains_key(Path::new("training/square/00009.jpg")));
    }

    #[test]
    fn writes_the_layout_mixes_sizes_and_formats_and_every_file_decodes_to_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ShapesSpec {
            gray_every: 3,
            ..small()
        };
        let summary = write_shapes(dir.path(), &spec).unwrap();
        assert_eq!(
            summary.classes,
            ["circle", "cross", "square", "triangle"].map(String::from)
        );
        assert_eq!((summary.train, summary.valid), (24, 12));
        assert_eq!((summary.png, summary.jpeg), (20, 16));
        assert_eq!(summary.gray, 12);
        assert_eq!(summary.files.len(), 36);
        assert_eq!(tree(dir.path()).len(), 36);
        let mut combos = std::collections::HashSet::new();
        for file in &summary.files {
            let rel = file.path.strip_prefix(dir.path()).unwrap();
            let parts: Vec<_> = rel.iter().map(|p| p.to_str().unwrap()).collect();
            assert_eq!(parts[0], file.split.dir());
            assert_eq!(parts[1], file.class);
            assert!(parts[2].ends_with(file.format.ext()));
            let img = image::open(&file.path).unwrap();
            assert_eq!((img.width(), img.height()), (file.width, file.height));
            let want = if file.gray {
                image::ColorType::L8
            } else {
                image::ColorType::Rgb8
            };
            assert_eq!(img.color(), want, "{}", file.path.display());
            let sniffed = image::guess_format(&std::fs::read(&file.path).unwrap()).unwrap();
            let want = match file.format {
                FileFormat::Png => image::ImageFormat::Png,
                FileFormat::Jpeg => image::ImageFormat::Jpeg,
            };
            assert_eq!(sniffed, want);
            combos.insert((file.class.clone(), file.width, file.height, file.format));
        }
        // Each class has both sizes in both formats.
        assert_eq!(combos.len(), 4 * 2 * 2);
        let line = summary.to_string();
        assert!(line.starts_with("4 classes (circle, cross, square, triangle): 24 training"));
        assert!(line.contains("20 PNG + 16 JPEG, 12 grayscale, sizes 32x32 48x40"));
    }

    #[test]
    fn jpeg_every_and_gray_every_zero_and_one_mean_none_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let none = write_shapes(
            dir.path(),
            &ShapesSpec {
                jpeg_every: 0,
                ..small()
            },
        )
        .unwrap();
        assert_eq!((none.png, none.jpeg, none.gray), (36, 0, 0));
        let all = ShapesSpec {
            jpeg_every: 1,
            gray_every: 1,
            sizes: vec![(20, 12)],
            ..small()
        };
        let all = write_shapes(&dir.path().join("all"), &all).unwrap();
        assert_eq!((all.png, all.jpeg, all.gray), (0, 36, 36));
        assert!(all.files.iter().all(|f| (f.width, f.height) == (20, 12)));
    }

    #[test]
    fn the_shape_is_drawn_and_distinct_from_the_background() {
        // Noise-free check of the geometry: the shape covers a plausible share of its box.
        for shape in Shape::ALL {
            let r = 10.0;
            let inside = (0..400)
                .filter(|i| {
                    let (x, y) = ((i % 20) as f32 - 9.5, (i / 20) as f32 - 9.5);
                    shape.contains(x, y, r, 1)
                })
                .count();
            let want = match shape {
                Shape::Square => 400..=400,
                Shape::Circle => 300..=330,
                Shape::Triangle => 190..=220,
                Shape::Cross => 190..=240,
            };
            assert!(want.contains(&inside), "{shape:?}: {inside}");
        }
        let mut rng = SplitMix64(7);
        for _ in 0..1000 {
            let base = [rng.byte(), rng.byte(), rng.byte()];
            let c = contrasting_colour(base, &mut rng);
            let gap = i32::from(pil_luma(c[0], c[1], c[2]))
                - i32::from(pil_luma(base[0], base[1], base[2]));
            assert!(gap.abs() >= 60, "{base:?} {c:?}");
        }
    }

    #[test]
    fn a_broken_spec_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for spec in [
            ShapesSpec {
                classes: vec![],
                ..small()
            },
            ShapesSpec {
                classes: vec![Shape::Cross, Shape::Cross],
                ..small()
            },
            ShapesSpec {
                sizes: vec![],
                ..small()
            },
            ShapesSpec {
                sizes: vec![(32, 7)],
                ..small()
            },
        ] {
            assert!(write_shapes(dir.path(), &spec).is_err(), "{spec:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn pil_luma_matches_pil() {
        // Values from Pillow's Image.new('RGB', (1, 1), c).convert('L').
        assert_eq!(pil_luma(0, 0, 0), 0);
        assert_eq!(pil_luma(255, 255, 255), 255);
        assert_eq!(pil_luma(255, 0, 0), 76);
        assert_eq!(pil_luma(0, 255, 0), 150);
        assert_eq!(pil_luma(0, 0, 255), 29);
        assert_eq!(pil_luma(200, 30, 30), 81);
    }
}
