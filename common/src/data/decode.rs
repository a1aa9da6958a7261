//! Decoding image files (PNG, JPEG, WebP), in parallel, into one contiguous `u8` buffer per
//! split, every image converted to the run's [`Geometry`].
//!
//! ```text
//! file ─▶ format by its first bytes ─▶ 8-bit pixels, 1-4 interleaved channels
//!      ─▶ channels: L like PIL convert('L') | RGB like convert('RGB') (alpha dropped, no compositing)
//!      ─▶ size: N×N as is | resize the shorter side to N (bilinear, antialiased) + centre crop N×N
//!      ─▶ planar [C, N, N]
//! ```
//! PNG goes through the `png` crate (palette and low bit depths expanded, 16-bit samples reduced
//! to their high byte); JPEG (baseline, progressive, grayscale, CMYK) through zune-jpeg in
//! strict mode (truncated files are errors); WebP through the `image` crate. An N×N image is never resampled, so a dataset at its native size decodes to
//! exactly its bytes.
//!
//! Tests: `tests` module at the bottom (formats, channel conversion, resizing, corrupt files).

use std::io::Cursor;
use std::path::Path;

use rayon::prelude::*;

use super::{DataError, Geometry, ImageEntry, Skipped};

/// The decoded images of one split, row-major `[len, channels, height, width]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSplit {
    /// Colour channels per image (1 or 3), stored planar.
    pub channels: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
    /// `len * channels * height * width` bytes.
    pub pixels: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u32>,
}

impl DecodedSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image (`channels * height * width`).
    pub fn image_len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }

    /// Pixels of image `i`, planar.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// PIL's `convert('L')` luma, ITU-R 601-2 in 16-bit fixed point (Pillow `Convert.c`, `L24`).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// An image file's format, told by its first bytes (not its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    WebP,
}

impl Format {
    /// The format of `bytes`, or `None` when it is none of the three.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else {
            None
        }
    }
}

/// 8-bit pixels as the file holds them: `channels` interleaved (1 gray, 2 gray+alpha, 3 RGB,
/// 4 RGBA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// [`DataError::CorruptImage`] for `path` with `e` as the reason.
pub(crate) fn corrupt(path: &Path, e: &dyn std::fmt::Display) -> DataError {
    DataError::CorruptImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn read_png(bytes: &[u8], path: &Path) -> Result<RawImage, DataError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // EXPAND: palette -> RGB, 1/2/4-bit gray -> 8-bit, tRNS -> alpha; STRIP_16: 16-bit -> 8-bit.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| corrupt(path, &e))?;
    let (w, h) = {
        let info = reader.info();
        (info.width, info.height)
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt(path, &"image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| corrupt(path, &e))?;
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(corrupt(path, &"palette was not expanded")),
    };
    if frame.bit_depth != png::BitDepth::Eight || frame.line_size != w as usize * channels {
        return Err(corrupt(
            path,
            &format!(
                "unexpected output format {:?}/{:?}",
                frame.color_type, frame.bit_depth
            ),
        ));
    }
    buf.truncate((w * h) as usize * channels);
    Ok(RawImage {
        width: w,
        height: h,
        channels,
        data: buf,
    })
}

/// WebP through the `image` crate (its default limits refuse absurd sizes).
fn read_with_image(bytes: &[u8], path: &Path, format: Format) -> Result<RawImage, DataError> {
    use image::DynamicImage as D;
    let f = match format {
        Format::Jpeg => image::ImageFormat::Jpeg,
        Format::WebP => image::ImageFormat::WebP,
        Format::Png => image::ImageFormat::Png,
    };
    let img = image::load_from_memory_with_format(bytes, f).map_err(|e| corrupt(path, &e))?;
    let (width, height) = (img.width(), img.height());
    // 16-bit samples keep their high byte, like the PNG path.
    let high = |v: &[u16]| v.iter().map(|&x| (x >> 8) as u8).collect::<Vec<u8>>();
    let (channels, data) = match img {
        D::ImageLuma8(b) => (1, b.into_raw()),
        D::ImageLumaA8(b) => (2, b.into_raw()),
        D::ImageRgb8(b) => (3, b.into_raw()),
        D::ImageRgba8(b) => (4, b.into_raw()),
        D::ImageLuma16(b) => (1, high(b.as_raw())),
        D::ImageLumaA16(b) => (2, high(b.as_raw())),
        D::ImageRgb16(b) => (3, high(b.as_raw())),
        D::ImageRgba16(b) => (4, high(b.as_raw())),
        other => (4, other.to_rgba8().into_raw()),
    };
    Ok(RawImage {
        width,
        height,
        channels,
        data,
    })
}

/// Largest JPEG side decoded (a 16384×16384 RGB image is already 768 MiB).
const MAX_JPEG_SIDE: usize = 16384;

/// JPEG through zune-jpeg (what the `image` crate uses) in strict mode: a truncated or damaged
/// file is an error, not a picture padded with gray (the `image` crate's lenient default).
/// Grayscale stays one channel; everything else (YCbCr, CMYK and YCCK, Adobe-inverted or not)
/// comes out as RGB.
fn read_jpeg(bytes: &[u8], path: &Path) -> Result<RawImage, DataError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_JPEG_SIDE)
        .set_max_height(MAX_JPEG_SIDE);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    d.decode_headers().map_err(|e| corrupt(path, &e))?;
    let gray = matches!(
        d.input_colorspace(),
        Some(ColorSpace::Luma | ColorSpace::LumaA)
    );
    let out = if gray {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    d.set_options(d.options().jpeg_set_out_colorspace(out));
    let data = d.decode().map_err(|e| corrupt(path, &e))?;
    let (w, h) = d
        .dimensions()
        .ok_or_else(|| corrupt(path, &"no dimensions after decoding"))?;
    let channels = if gray { 1 } else { 3 };
    if data.len() != w * h * channels {
        return Err(corrupt(
            path,
            &format!("decoded {} bytes for {w}x{h}x{channels}", data.len()),
        ));
    }
    let side = |v: usize| u32::try_from(v).map_err(|_| corrupt(path, &"image too large"));
    Ok(RawImage {
        width: side(w)?,
        height: side(h)?,
        channels,
        data,
    })
}

/// Decodes one image file held in memory to 8-bit interleaved pixels. `path` is for errors.
pub fn read_image(bytes: &[u8], path: &Path) -> Result<RawImage, DataError> {
    let raw = match Format::sniff(bytes) {
        Some(Format::Png) => read_png(bytes, path)?,
        Some(Format::Jpeg) => read_jpeg(bytes, path)?,
        Some(f) => read_with_image(bytes, path, f)?,
        None => return Err(corrupt(path, &"not a PNG, JPEG or WebP file")),
    };
    if raw.width == 0 || raw.height == 0 {
        return Err(corrupt(path, &"image has no pixels"));
    }
    Ok(raw)
}

/// Interleaved 1-4 channels to interleaved `want` (1 or 3) channels, like PIL's `convert`.
fn convert(raw: &RawImage, want: u32) -> Vec<u8> {
    let d = &raw.data;
    match (raw.channels, want) {
        (1, 1) => d.clone(),
        // PIL drops alpha when converting LA to L (no compositing).
        (2, 1) => d.chunks_exact(2).map(|p| p[0]).collect(),
        // PIL drops alpha when converting RGBA to L (no compositing).
        (c, 1) => d.chunks_exact(c).map(|p| luma(p[0], p[1], p[2])).collect(),
        (1, _) => d.iter().flat_map(|&v| [v, v, v]).collect(),
        (2, _) => d.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        (3, _) => d.clone(),
        (c, _) => d.chunks_exact(c).flat_map(|p| [p[0], p[1], p[2]]).collect(),
    }
}

/// The size after resizing the shorter side to `n`: `(width, height)`.
pub fn resized_dims(w: u32, h: u32, n: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| -> u32 {
        let v = (u64::from(long) * u64::from(n) + u64::from(short) / 2) / u64::from(short);
        u32::try_from(v).unwrap_or(u32::MAX).max(n)
    };
    if w <= h {
        (n, scale(h, w))
    } else {
        (scale(w, h), n)
    }
}

/// Interleaved `c`-channel `w`×`h` pixels resized so the shorter side is `n` (bilinear with
/// antialiasing: the `image` crate's triangle filter) and centre-cropped to `n`×`n`. `None`
/// when the buffer does not hold `w*h*c` bytes.
fn fit(pixels: Vec<u8>, w: u32, h: u32, c: u32, n: u32) -> Option<Vec<u8>> {
    use image::imageops::{crop_imm, resize, FilterType};
    use image::{ImageBuffer, Luma, Rgb};
    let (rw, rh) = resized_dims(w, h, n);
    let (x, y) = ((rw - n) / 2, (rh - n) / 2);
    Some(if c == 1 {
        let img: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_raw(w, h, pixels)?;
        let r = resize(&img, rw, rh, FilterType::Triangle);
        crop_imm(&r, x, y, n, n).to_image().into_raw()
    } else {
        let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_raw(w, h, pixels)?;
        let r = resize(&img, rw, rh, FilterType::Triangle);
        crop_imm(&r, x, y, n, n).to_image().into_raw()
    })
}

/// Interleaved `[n, c]` pixels to planar `[c, n]`.
fn planar(interleaved: &[u8], c: usize) -> Vec<u8> {
    if c == 1 {
        return interleaved.to_vec();
    }
    let n = interleaved.len() / c;
    let mut out = vec![0u8; interleaved.len()];
    for (i, px) in interleaved.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * n + i] = v;
        }
    }
    out
}

/// Pixels of a decoded file in the run's geometry: planar `[channels, size, size]`.
pub fn to_geometry(raw: &RawImage, path: &Path, g: Geometry) -> Result<Vec<u8>, DataError> {
    let native = raw.width == g.size && raw.height == g.size;
    if !native && !g.resize {
        return Err(DataError::WrongSize {
            path: path.to_path_buf(),
            got_w: raw.width,
            got_h: raw.height,
            want_w: g.size,
            want_h: g.size,
        });
    }
    let px = convert(raw, g.channels);
    let px = if native {
        px
    } else {
        fit(px, raw.width, raw.height, g.channels, g.size)
            .ok_or_else(|| corrupt(path, &"pixel buffer does not match the image size"))?
    };
    Ok(planar(&px, g.channels as usize))
}

/// Decodes one image file held in memory into the run's geometry. `path` is for errors only.
pub fn decode_image(bytes: &[u8], path: &Path, g: Geometry) -> Result<Vec<u8>, DataError> {
    to_geometry(&read_image(bytes, path)?, path, g)
}

fn decode_file(entry: &ImageEntry, g: Geometry) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(&entry.path).map_err(|e| DataError::io(&entry.path, &e))?;
    decode_image(&bytes, &entry.path, g)
}

/// Decodes `entries` in parallel (rayon) into geometry `g`.
///
/// A per-file problem fails the call with the first bad file in `entries` order, or, with
/// `skip_bad`, leaves the file out and returns it in the skipped list. I/O errors always fail.
/// `on_file` (a progress bar's tick) runs once per file, on rayon's threads.
pub fn decode_split(
    entries: &[ImageEntry],
    g: Geometry,
    skip_bad: bool,
    on_file: Option<&(dyn Fn() + Sync)>,
) -> Result<(DecodedSplit, Vec<Skipped>), DataError> {
    let results: Vec<Result<Vec<u8>, DataError>> = entries
        .par_iter()
        .map(|e| {
            let r = decode_file(e, g);
            if let Some(tick) = on_file {
                tick();
            }
            r
        })
        .collect();
    let n = g.image_bytes() as usize;
    let mut pixels = Vec::with_capacity(entries.len() * n);
    let mut labels = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for (entry, result) in entries.iter().zip(results) {
        match result {
            Ok(img) => {
                pixels.extend_from_slice(&img);
                labels.push(entry.label);
            }
            Err(err) if skip_bad && err.is_per_file() => skipped.push(Skipped {
                path: entry.path.clone(),
                reason: err,
            }),
            Err(err) => return Err(err),
        }
    }
    Ok((
        DecodedSplit {
            channels: g.channels,
            height: g.size,
            width: g.size,
            pixels,
            labels,
        },
        skipped,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Encodes a PNG (test helper shared with other modules' tests).
    pub(crate) fn encode(w: u32, h: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().unwrap();
            writer.write_image_data(data).unwrap();
        }
        out
    }

    fn gray(size: u32) -> Geometry {
        Geometry {
            channels: 1,
            size,
            resize: false,
        }
    }

    fn decode_png(bytes: &[u8], p: &Path, want: (u32, u32)) -> Result<Vec<u8>, DataError> {
        assert_eq!(want.0, want.1, "square geometries only");
        decode_image(bytes, p, gray(want.0))
    }

    fn entry(path: PathBuf, label: u32) -> ImageEntry {
        ImageEntry {
            path,
            label,
            len: 0,
            mtime_ns: 0,
        }
    }

    #[test]
    fn grayscale_and_rgb_like_pil() {
        let p = Path::new("x.png");
        let gray: Vec<u8> = (0..4).collect();
        assert_eq!(
            decode_png(&encode(2, 2, png::ColorType::Grayscale, &gray), p, (2, 2)).unwrap(),
            gray
        );
        let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        // Pillow: L of pure red/green/blue is 76/150/29.
        assert_eq!(
            decode_png(&encode(2, 2, png::ColorType::Rgb, &rgb), p, (2, 2)).unwrap(),
            vec![76, 150, 29, 255]
        );
        let la = [10, 99, 20, 99, 30, 99, 40, 99];
        assert_eq!(
            decode_png(
                &encode(2, 2, png::ColorType::GrayscaleAlpha, &la),
                p,
                (2, 2)
            )
            .unwrap(),
            vec![10, 20, 30, 40]
        );
    }

    #[test]
    fn wrong_size_names_the_path() {
        let p = Path::new("/d/training/3/big.png");
        let err =
            decode_png(&encode(3, 2, png::ColorType::Grayscale, &[0; 6]), p, (2, 2)).unwrap_err();
        assert_eq!(
            err,
            DataError::WrongSize {
                path: p.into(),
                got_w: 3,
                got_h: 2,
                want_w: 2,
                want_h: 2
            }
        );
    }

    #[test]
    fn corrupt_and_truncated_are_errors() {
        let p = Path::new("bad.png");
        assert!(matches!(
            decode_png(b"this is text", p, (2, 2)),
            Err(DataError::CorruptImage { .. })
        ));
        let good = encode(2, 2, png::ColorType::Grayscale, &[1, 2, 3, 4]);
        for cut in [8, 20, good.len() - 14] {
            let err = decode_png(&good[..cut], p, (2, 2)).unwrap_err();
            assert!(
                matches!(err, DataError::CorruptImage { .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn decode_split_fails_or_skips() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        let bad = dir.path().join("bad.png");
        std::fs::write(
            &good,
            encode(2, 2, png::ColorType::Grayscale, &[1, 2, 3, 4]),
        )
        .unwrap();
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\ntruncated").unwrap();
        let entries = vec![
            entry(good.clone(), 1),
            entry(bad.clone(), 0),
            entry(good, 0),
        ];
        let err = decode_split(&entries, gray(2), false, None).unwrap_err();
        assert!(matches!(err, DataError::CorruptImage { ref path, .. } if *path == bad));
        let (split, skipped) = decode_split(&entries, gray(2), true, None).unwrap();
        assert_eq!(split.labels, vec![1, 0]);
        assert_eq!(split.pixels, vec![1, 2, 3, 4, 1, 2, 3, 4]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, bad);
    }

    fn rgb(size: u32, resize: bool) -> Geometry {
        Geometry {
            channels: 3,
            size,
            resize,
        }
    }

    #[test]
    fn rgb_geometry_is_planar_and_gray_is_repeated() {
        let p = Path::new("x.png");
        let px = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];
        let png = encode(2, 2, png::ColorType::Rgb, &px);
        assert_eq!(
            decode_image(&png, p, rgb(2, false)).unwrap(),
            vec![255, 0, 0, 10, 0, 255, 0, 20, 0, 0, 255, 30]
        );
        let rgba = encode(1, 1, png::ColorType::Rgba, &[9, 8, 7, 0]);
        assert_eq!(
            decode_image(&rgba, p, rgb(1, false)).unwrap(),
            vec![9, 8, 7]
        );
        let g = encode(2, 1, png::ColorType::Grayscale, &[5, 6]);
        assert_eq!(
            decode_image(&g, p, rgb(2, true)).unwrap().len(),
            12,
            "2x1 resized to 2x2"
        );
        let g = encode(1, 1, png::ColorType::Grayscale, &[5]);
        assert_eq!(decode_image(&g, p, rgb(1, false)).unwrap(), vec![5, 5, 5]);
    }

    #[test]
    fn native_size_is_never_resampled_even_when_resizing() {
        let p = Path::new("x.png");
        let px: Vec<u8> = (0..28 * 28).map(|i| (i * 7 % 251) as u8).collect();
        let png = encode(28, 28, png::ColorType::Grayscale, &px);
        let g = Geometry {
            channels: 1,
            size: 28,
            resize: true,
        };
        assert_eq!(decode_image(&png, p, g).unwrap(), px);
    }

    #[test]
    fn resize_shorter_side_then_centre_crop() {
        assert_eq!(resized_dims(48, 40, 32), (38, 32));
        assert_eq!(resized_dims(40, 48, 32), (32, 38));
        assert_eq!(resized_dims(10, 10, 32), (32, 32));
        assert_eq!(resized_dims(1, 1000, 4), (4, 4000));
        // A 4x2 image whose columns are 0, 100, 200, 50: at size 2 the scale is 1, so the
        // centre crop keeps the two middle columns exactly.
        let px = [0, 100, 200, 50, 0, 100, 200, 50];
        let png = encode(4, 2, png::ColorType::Grayscale, &px);
        let out = decode_image(&png, Path::new("x.png"), gray(2).with_resize()).unwrap();
        assert_eq!(out, vec![100, 200, 100, 200]);
        // Downscaling a flat image keeps it flat.
        let flat = encode(48, 40, png::ColorType::Rgb, &[77; 48 * 40 * 3]);
        let out = decode_image(&flat, Path::new("x.png"), rgb(32, true)).unwrap();
        assert_eq!(out, vec![77; 3 * 32 * 32]);
    }

    fn jpeg(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode(rgb, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_and_webp_decode() {
        let p = Path::new("x.jpg");
        let px: Vec<u8> = [200u8, 30, 30].repeat(16 * 16);
        let bytes = jpeg(16, 16, &px);
        assert_eq!(Format::sniff(&bytes), Some(Format::Jpeg));
        let out = decode_image(&bytes, p, rgb(16, false)).unwrap();
        let close = |got: &[u8], want: u8| got.iter().all(|&v| v.abs_diff(want) <= 4);
        assert!(close(&out[..256], 200) && close(&out[256..512], 30) && close(&out[512..], 30));
        let l = decode_image(&bytes, p, gray(16)).unwrap();
        assert!(close(&l, luma(200, 30, 30)), "{:?}", &l[..4]);
        // Lossless WebP round-trips exactly.
        let mut webp = Vec::new();
        let px: Vec<u8> = (0..4 * 4 * 3).map(|i| (i * 9) as u8).collect();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .encode(&px, 4, 4, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(Format::sniff(&webp), Some(Format::WebP));
        let out = decode_image(&webp, Path::new("x.webp"), rgb(4, false)).unwrap();
        assert_eq!(out, planar(&px, 3));
    }

    #[test]
    fn truncated_jpeg_and_unknown_bytes_name_the_file() {
        let bytes = jpeg(16, 16, &[90; 16 * 16 * 3]);
        let p = Path::new("/d/training/a/cut.jpg");
        let err = decode_image(&bytes[..bytes.len() / 2], p, rgb(16, false)).unwrap_err();
        assert!(
            matches!(err, DataError::CorruptImage { ref path, .. } if path == p),
            "{err:?}"
        );
        let err = decode_image(b"GIF89a....", p, rgb(16, false)).unwrap_err();
        assert!(err.to_string().contains("not a PNG, JPEG or WebP"), "{err}");
        assert!(err.to_string().contains("cut.jpg"), "{err}");
    }
}
