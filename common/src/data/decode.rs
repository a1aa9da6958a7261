//! Decoding PNG files, in parallel, into one contiguous `u8` buffer per split.
//!
//! Tests: `tests` module at the bottom (grayscale conversion, corrupt, truncated, wrong size).

use std::io::Cursor;
use std::path::Path;

use rayon::prelude::*;

use super::{DataError, ImageEntry, Skipped};

/// The decoded images of one split, row-major `[len, height, width]`, one grayscale byte each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSplit {
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
    /// `len * height * width` bytes.
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

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = (self.height * self.width) as usize;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// PIL's `convert('L')` luma, ITU-R 601-2 in 16-bit fixed point (Pillow `Convert.c`, `L24`).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Decodes one PNG held in memory to grayscale, checking its size. `path` is for errors only.
pub fn decode_png(bytes: &[u8], path: &Path, want: (u32, u32)) -> Result<Vec<u8>, DataError> {
    let corrupt = |e: &dyn std::fmt::Display| DataError::CorruptImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // EXPAND: palette -> RGB, 1/2/4-bit gray -> 8-bit, tRNS -> alpha; STRIP_16: 16-bit -> 8-bit.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| corrupt(&e))?;
    let (w, h) = {
        let info = reader.info();
        (info.width, info.height)
    };
    if (w, h) != want {
        return Err(DataError::WrongSize {
            path: path.to_path_buf(),
            got_w: w,
            got_h: h,
            want_w: want.0,
            want_h: want.1,
        });
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt(&"image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| corrupt(&e))?;
    let n = (w * h) as usize;
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(corrupt(&"palette was not expanded")),
    };
    if frame.bit_depth != png::BitDepth::Eight || frame.line_size != w as usize * channels {
        return Err(corrupt(&format!(
            "unexpected output format {:?}/{:?}",
            frame.color_type, frame.bit_depth
        )));
    }
    let data = &buf[..n * channels];
    Ok(match channels {
        1 => data.to_vec(),
        // PIL drops alpha when converting LA to L.
        2 => data.chunks_exact(2).map(|p| p[0]).collect(),
        // PIL drops alpha when converting RGBA to L (no compositing).
        _ => data
            .chunks_exact(channels)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
    })
}

fn decode_file(entry: &ImageEntry, want: (u32, u32)) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(&entry.path).map_err(|e| DataError::io(&entry.path, &e))?;
    decode_png(&bytes, &entry.path, want)
}

/// Decodes `entries` in parallel (rayon) to `size = (width, height)` grayscale images.
///
/// A per-file problem fails the call with the first bad file in `entries` order, or, with
/// `skip_bad`, leaves the file out and returns it in the skipped list. I/O errors always fail.
/// `on_file` (a progress bar's tick) runs once per file, on rayon's threads.
pub fn decode_split(
    entries: &[ImageEntry],
    size: (u32, u32),
    skip_bad: bool,
    on_file: Option<&(dyn Fn() + Sync)>,
) -> Result<(DecodedSplit, Vec<Skipped>), DataError> {
    let results: Vec<Result<Vec<u8>, DataError>> = entries
        .par_iter()
        .map(|e| {
            let r = decode_file(e, size);
            if let Some(tick) = on_file {
                tick();
            }
            r
        })
        .collect();
    let n = (size.0 * size.1) as usize;
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
            height: size.1,
            width: size.0,
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
        let la = [10, 99, 20, 99];
        assert_eq!(
            decode_png(
                &encode(2, 1, png::ColorType::GrayscaleAlpha, &la),
                p,
                (2, 1)
            )
            .unwrap(),
            vec![10, 20]
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
        let err = decode_split(&entries, (2, 2), false, None).unwrap_err();
        assert!(matches!(err, DataError::CorruptImage { ref path, .. } if *path == bad));
        let (split, skipped) = decode_split(&entries, (2, 2), true, None).unwrap();
        assert_eq!(split.labels, vec![1, 0]);
        assert_eq!(split.pixels, vec![1, 2, 3, 4, 1, 2, 3, 4]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, bad);
    }
}
