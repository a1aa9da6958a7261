//! Awkward single-file inputs for the image loader: broken files, and valid files in the
//! encodings a user's folder may hold besides 8-bit RGB (alpha, 16-bit, palette, grayscale,
//! CMYK, WebP), each with what a correct decoder must make of it.
//!
//! Owns the fixtures and their expected decodings; not the loader (`ringtrain-common`'s `data`
//! module) nor whole datasets ([`crate::synth`]).
//!
//! # Contract: what "correct" means
//! The oracle is Pillow's `Image.open(f).convert('RGB')` (what a torchvision `ImageFolder`
//! pipeline feeds its model), so in [`Decoded::rgb`]:
//! * alpha is dropped, not composited: a transparent pixel keeps its stored colour;
//! * 16-bit samples become 8-bit by their high byte (the fixtures use multiples of 257, where the
//!   high byte and rounding `v / 257` agree, so either implementation passes);
//! * palette indices are expanded through the palette (a `tRNS` entry is alpha, hence dropped);
//! * gray is replicated to R = G = B, and [`Decoded::channels`] is 1;
//! * CMYK is converted as Pillow does, `R = (255 - C)(255 - K) / 255` (likewise G from M, B
//!   from Y), after undoing the Adobe inversion of the stored samples;
//! * a file that is not a complete image is an error, never a partly gray picture.
//!
//! Pure byte generation, no I/O except [`Fixture::write_in`]/[`write_all`]. Tests at the bottom.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::ExtendedColorType;
use image::ImageEncoder;

use crate::synth::{pil_luma, SplitMix64};

mod headers;
use headers::jpeg_scan_start;
pub use headers::{jpeg_header, png_header, JpegHeader, PngHeader};

/// One awkward file and the decoding it must give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixture {
    /// File name, extension included (`"rgba.png"`); unique across [`all`].
    pub name: &'static str,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// What a correct decoder does with them.
    pub expect: Expect,
}

/// The outcome a correct decoder gives for a [`Fixture`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Not a (complete) image: decoding must fail; the loader reports it as corrupt.
    Corrupt,
    /// A valid image.
    Decoded(Decoded),
}

/// The expected decoding of a valid fixture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The source's own colour channels, alpha not counted: 1 for gray, 3 for colour (what
    /// `--channels auto` sees).
    pub channels: u8,
    /// Interleaved 8-bit RGB, row-major, as Pillow's `convert('RGB')` gives (module contract).
    pub rgb: Vec<u8>,
    /// Largest per-sample difference allowed from `rgb`: 0 for lossless files, a few levels
    /// for JPEG.
    pub tolerance: u8,
}

impl Decoded {
    /// The expected 1-channel decoding: Pillow's `convert('L')` of [`rgb`](Self::rgb), which for
    /// a gray source is the source itself.
    pub fn gray(&self) -> Vec<u8> {
        self.rgb
            .chunks_exact(3)
            .map(|p| pil_luma(p[0], p[1], p[2]))
            .collect()
    }

    /// Whether `rgb` (interleaved RGB8 of the same size) is within [`tolerance`](Self::tolerance)
    /// of the expected pixels; on failure, the first differing sample.
    pub fn check_rgb(&self, rgb: &[u8]) -> Result<(), String> {
        if rgb.len() != self.rgb.len() {
            return Err(format!("{} samples, want {}", rgb.len(), self.rgb.len()));
        }
        match (0..rgb.len()).find(|&i| rgb[i].abs_diff(self.rgb[i]) > self.tolerance) {
            None => Ok(()),
            Some(i) => Err(format!(
                "sample {i} (pixel {}, channel {}) is {}, want {} ± {}",
                i / 3,
                i % 3,
                rgb[i],
                self.rgb[i],
                self.tolerance
            )),
        }
    }
}

impl Fixture {
    /// Writes the fixture as `dir/<name>` and returns that path.
    pub fn write_in(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(self.name);
        std::fs::write(&path, &self.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The expected decoding; panics for a [`Expect::Corrupt`] fixture.
    pub fn decoded(&self) -> &Decoded {
        match &self.expect {
            Expect::Decoded(d) => d,
            Expect::Corrupt => panic!("{} is a corrupt fixture", self.name),
        }
    }
}

/// Every fixture of this module, names unique.
pub fn all() -> Vec<Fixture> {
    vec![
        truncated_jpeg(),
        garbage_jpg(),
        empty_png(),
        rgba_png(),
        gray_alpha_png(),
        gray16_png(),
        rgb16_png(),
        palette_png(),
        gray_jpeg(),
        cmyk_jpeg(),
        lossless_webp(),
        flat_rgb_jpeg(),
    ]
}

/// Writes every fixture of [`all`] into `dir` (which must exist).
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Fixture)>> {
    all()
        .into_iter()
        .map(|f| Ok((f.write_in(dir)?, f)))
        .collect()
}

/// `truncated.jpg`: a valid 64×48 noise JPEG cut in the middle of its scan data (headers
/// intact, no EOI). Corrupt: Pillow raises "image file is truncated".
///
/// Beware: the `image` crate (0.25) decodes it *successfully*, padding the missing blocks,
/// because it runs zune-jpeg with `strict_mode(false)`; zune-jpeg in strict mode refuses it with
/// "Premature end of buffer". A loader built on `image` must check for itself.
pub fn truncated_jpeg() -> Fixture {
    let (w, h) = (64, 48);
    let mut rng = SplitMix64(18);
    let noise: Vec<u8> = (0..w * h * 3).map(|_| rng.byte()).collect();
    let mut bytes = encode_jpeg(&noise, w, h, ExtendedColorType::Rgb8);
    let scan = jpeg_scan_start(&bytes).expect("the encoder wrote an SOS segment");
    bytes.truncate(scan + (bytes.len() - scan) / 2);
    Fixture {
        name: "truncated.jpg",
        bytes,
        expect: Expect::Corrupt,
    }
}

/// `garbage.jpg`: 512 bytes of text and noise under a JPEG name. Corrupt.
pub fn garbage_jpg() -> Fixture {
    let mut bytes = b"this is not a JPEG\n".to_vec();
    let mut rng = SplitMix64(0x006a_7067);
    bytes.extend((bytes.len()..512).map(|_| rng.byte()));
    Fixture {
        name: "garbage.jpg",
        bytes,
        expect: Expect::Corrupt,
    }
}

/// `empty.png`: a zero-byte file. Corrupt.
pub fn empty_png() -> Fixture {
    Fixture {
        name: "empty.png",
        bytes: Vec::new(),
        expect: Expect::Corrupt,
    }
}

/// `rgba.png`: 6×4 8-bit RGBA with alpha 0, 128 and 255 in turn; fully transparent pixels still
/// carry a distinct colour. Decodes to the stored RGB, alpha dropped; 3 channels.
pub fn rgba_png() -> Fixture {
    let (w, h) = (6, 4);
    let mut rgba = Vec::new();
    let mut rgb = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let px = [
                (40 * x + 10) as u8,
                (60 * y + 5) as u8,
                (250 - 30 * x - 10 * y) as u8,
            ];
            rgb.extend(px);
            rgba.extend(px);
            rgba.push([0, 128, 255][((x + y) % 3) as usize]);
        }
    }
    Fixture {
        name: "rgba.png",
        bytes: encode_png(
            &rgba,
            w,
            h,
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            None,
        ),
        expect: decoded(w, h, 3, rgb, 0),
    }
}

/// `gray_alpha.png`: 5×3 8-bit gray + alpha, alpha alternating 0 and 255. Decodes to the gray
/// values (replicated in `rgb`), alpha dropped; 1 channel.
pub fn gray_alpha_png() -> Fixture {
    let (w, h) = (5, 3);
    let mut la = Vec::new();
    let mut gray = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let g = (50 * x + 17 * y) as u8;
            gray.push(g);
            la.extend([g, if (x + y) % 2 == 0 { 0 } else { 255 }]);
        }
    }
    Fixture {
        name: "gray_alpha.png",
        bytes: encode_png(
            &la,
            w,
            h,
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Eight,
            None,
        ),
        expect: decoded(w, h, 1, replicate(&gray), 0),
    }
}

/// The 16-bit samples of [`gray16_png`] and [`rgb16_png`], with their 8-bit value (high byte).
pub const SAMPLES_16: [(u16, u8); 5] = [
    (0x0000, 0x00),
    (0x4040, 0x40),
    (0x8080, 0x80),
    (0xC0C0, 0xC0),
    (0xFFFF, 0xFF),
];

/// `gray16.png`: 4×2 16-bit grayscale (IHDR bit depth 16, colour type 0) holding
/// [`SAMPLES_16`]. Decodes to their high bytes; 1 channel.
pub fn gray16_png() -> Fixture {
    let (w, h) = (4, 2);
    let pick = [0, 1, 2, 4, 4, 3, 1, 0];
    let be: Vec<u8> = pick
        .iter()
        .flat_map(|&i| SAMPLES_16[i].0.to_be_bytes())
        .collect();
    let gray: Vec<u8> = pick.iter().map(|&i| SAMPLES_16[i].1).collect();
    Fixture {
        name: "gray16.png",
        bytes: encode_png(
            &be,
            w,
            h,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            None,
        ),
        expect: decoded(w, h, 1, replicate(&gray), 0),
    }
}

/// `rgb16.png`: 3×2 16-bit RGB (IHDR bit depth 16, colour type 2), every channel a value of
/// [`SAMPLES_16`]. Decodes to their high bytes; 3 channels.
pub fn rgb16_png() -> Fixture {
    let (w, h) = (3, 2);
    let pick = [4, 0, 0, 0, 4, 0, 0, 0, 4, 2, 2, 2, 1, 3, 4, 4, 3, 1];
    let be: Vec<u8> = pick
        .iter()
        .flat_map(|&i| SAMPLES_16[i].0.to_be_bytes())
        .collect();
    let rgb: Vec<u8> = pick.iter().map(|&i| SAMPLES_16[i].1).collect();
    Fixture {
        name: "rgb16.png",
        bytes: encode_png(&be, w, h, png::ColorType::Rgb, png::BitDepth::Sixteen, None),
        expect: decoded(w, h, 3, rgb, 0),
    }
}

/// The palette of [`palette_png`]; entry 0 is fully transparent in its `tRNS` chunk.
pub const PALETTE: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 200, 20]];

/// `palette.png`: 5×3 indexed colour at 2 bits per pixel (rows end mid-byte) over [`PALETTE`],
/// with a `tRNS` chunk. Decodes to the palette colours, transparency dropped; 3 channels.
pub fn palette_png() -> Fixture {
    let (w, h) = (5u32, 3u32);
    let index = |x: u32, y: u32| ((x + 2 * y) % 4) as u8;
    let mut packed = Vec::new();
    let mut rgb = Vec::new();
    for y in 0..h {
        let mut row = vec![0u8; w.div_ceil(4) as usize];
        for x in 0..w {
            let i = index(x, y);
            row[(x / 4) as usize] |= i << (6 - 2 * (x % 4));
            rgb.extend(PALETTE[i as usize]);
        }
        packed.extend(row);
    }
    let palette = PALETTE.concat();
    let bytes = encode_png(
        &packed,
        w,
        h,
        png::ColorType::Indexed,
        png::BitDepth::Two,
        Some((&palette, &[0, 255, 255, 255])),
    );
    Fixture {
        name: "palette.png",
        bytes,
        expect: decoded(w, h, 3, rgb, 0),
    }
}

/// `gray.jpg`: 24×16 one-component JPEG, flat gray 100. Decodes to 100 ± 2; 1 channel.
pub fn gray_jpeg() -> Fixture {
    let (w, h) = (24, 16);
    let gray = vec![100u8; (w * h) as usize];
    Fixture {
        name: "gray.jpg",
        bytes: encode_jpeg(&gray, w, h, ExtendedColorType::L8),
        expect: decoded(w, h, 1, replicate(&gray), 2),
    }
}

/// The flat ink of [`cmyk_jpeg`], and its RGB by Pillow's formula.
pub const CMYK_INK: ([u8; 4], [u8; 3]) = ([64, 0, 255, 55], [150, 200, 0]);

/// `cmyk.jpg`: 24×16 four-component (SOF Nf = 4) Adobe JPEG (APP14, transform 0, samples
/// stored inverted, as Photoshop writes them), flat [`CMYK_INK`], written by the `jpeg-encoder`
/// crate. Decodes to `CMYK_INK.1` ± 6; 3 channels.
pub fn cmyk_jpeg() -> Fixture {
    let (w, h) = (24u16, 16u16);
    let cmyk = CMYK_INK.0.repeat(usize::from(w) * usize::from(h));
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 90)
        .encode(&cmyk, w, h, jpeg_encoder::ColorType::Cmyk)
        .expect("encoding a valid CMYK buffer into a Vec cannot fail");
    let rgb = CMYK_INK.1.repeat(usize::from(w) * usize::from(h));
    Fixture {
        name: "cmyk.jpg",
        bytes,
        expect: decoded(u32::from(w), u32::from(h), 3, rgb, 6),
    }
}

/// `lossless.webp`: 7×5 RGB lossless WebP (VP8L) of a colour ramp. Decodes exactly; 3 channels.
pub fn lossless_webp() -> Fixture {
    let (w, h) = (7, 5);
    let rgb: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(36 * x) as u8, (60 * y) as u8, (7 * x * y) as u8]))
        .collect();
    let mut bytes = Vec::new();
    WebPEncoder::new_lossless(&mut bytes)
        .write_image(&rgb, w, h, ExtendedColorType::Rgb8)
        .expect("encoding a valid RGB buffer into a Vec cannot fail");
    Fixture {
        name: "lossless.webp",
        bytes,
        expect: decoded(w, h, 3, rgb, 0),
    }
}

/// The colour of [`flat_rgb_jpeg`].
pub const FLAT_RGB: [u8; 3] = [200, 30, 30];

/// `flat_rgb.jpg`: 24×16 three-component JPEG, flat [`FLAT_RGB`]. Decodes to it ± 4; 3 channels.
pub fn flat_rgb_jpeg() -> Fixture {
    let (w, h) = (24, 16);
    let rgb = FLAT_RGB.repeat((w * h) as usize);
    Fixture {
        name: "flat_rgb.jpg",
        bytes: encode_jpeg(&rgb, w, h, ExtendedColorType::Rgb8),
        expect: decoded(w, h, 3, rgb, 4),
    }
}

fn decoded(width: u32, height: u32, channels: u8, rgb: Vec<u8>, tolerance: u8) -> Expect {
    debug_assert_eq!(rgb.len(), (width * height * 3) as usize);
    Expect::Decoded(Decoded {
        width,
        height,
        channels,
        rgb,
        tolerance,
    })
}

fn replicate(gray: &[u8]) -> Vec<u8> {
    gray.iter().flat_map(|&g| [g, g, g]).collect()
}

/// A PNG of already-packed, big-endian `data`, with an optional `(palette, tRNS)`.
fn encode_png(
    data: &[u8],
    width: u32,
    height: u32,
    colour: png::ColorType,
    depth: png::BitDepth,
    palette: Option<(&[u8], &[u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(colour);
    encoder.set_depth(depth);
    if let Some((plte, trns)) = palette {
        encoder.set_palette(plte);
        encoder.set_trns(trns);
    }
    // Invariant: every caller passes a buffer of exactly width × height samples of its type.
    let mut writer = encoder.write_header().expect("valid PNG header");
    writer
        .write_image_data(data)
        .expect("buffer matches the header");
    writer.finish().expect("writing into a Vec cannot fail");
    out
}

/// A quality-90 baseline JPEG from the `image` crate's encoder.
fn encode_jpeg(pixels: &[u8], width: u32, height: u32, colour: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(pixels, width, height, colour)
        .expect("encoding a buffer of the stated size into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes with the `image` crate into RGB8 (its `to_rgb8` drops alpha and rounds 16-bit).
    fn decode_rgb(bytes: &[u8]) -> image::ImageResult<image::RgbImage> {
        Ok(image::load_from_memory(bytes)?.to_rgb8())
    }

    #[test]
    fn names_are_unique_and_the_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        let mut names: Vec<_> = written.iter().map(|(_, f)| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), written.len());
        for (path, fixture) in &written {
            assert_eq!(std::fs::read(path).unwrap(), fixture.bytes);
        }
    }

    #[test]
    fn the_fixtures_are_deterministic() {
        assert_eq!(all(), all());
    }

    /// zune-jpeg (the JPEG decoder inside `image`) in strict mode.
    fn decode_jpeg_strictly(bytes: &[u8]) -> Result<Vec<u8>, zune_jpeg::errors::DecodeErrors> {
        let options = zune_core::options::DecoderOptions::default().set_strict_mode(true);
        zune_jpeg::JpegDecoder::new_with_options(
            zune_core::bytestream::ZCursor::new(bytes),
            options,
        )
        .decode()
    }

    #[test]
    fn corrupt_fixtures_do_not_decode() {
        for fixture in all() {
            if fixture.expect != Expect::Corrupt {
                continue;
            }
            if fixture.name == "truncated.jpg" {
                // The trap the loader must avoid: image's lenient JPEG path pads the missing
                // blocks and reports success. If this starts failing, image got strict.
                assert!(image::load_from_memory(&fixture.bytes).is_ok());
                assert!(decode_jpeg_strictly(&fixture.bytes).is_err());
            } else {
                assert!(
                    image::load_from_memory(&fixture.bytes).is_err(),
                    "{} decoded",
                    fixture.name
                );
            }
        }
    }

    #[test]
    fn strict_jpeg_decoding_accepts_the_valid_jpeg_fixtures() {
        for fixture in [gray_jpeg(), cmyk_jpeg(), flat_rgb_jpeg()] {
            let pixels = decode_jpeg_strictly(&fixture.bytes)
                .unwrap_or_else(|e| panic!("{}: {e:?}", fixture.name));
            assert!(!pixels.is_empty());
        }
    }

    #[test]
    fn the_truncated_jpeg_has_intact_headers_and_no_end_marker() {
        let bytes = truncated_jpeg().bytes;
        let header = jpeg_header(&bytes).unwrap();
        assert_eq!(
            (header.width, header.height, header.components),
            (64, 48, 3)
        );
        let scan = jpeg_scan_start(&bytes).unwrap();
        assert!(
            bytes.len() > scan + 1000,
            "cut after {} scan bytes",
            bytes.len() - scan
        );
        assert!(!bytes.ends_with(&[0xFF, 0xD9]));
    }

    #[test]
    fn valid_fixtures_decode_with_image_to_what_they_promise() {
        for fixture in all() {
            let Expect::Decoded(want) = &fixture.expect else {
                continue;
            };
            let img = image::load_from_memory(&fixture.bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
            assert_eq!(
                (img.width(), img.height()),
                (want.width, want.height),
                "{}",
                fixture.name
            );
            let got = decode_rgb(&fixture.bytes).unwrap().into_raw();
            if let Err(e) = want.check_rgb(&got) {
                panic!("{}: {e}", fixture.name);
            }
            let gray_source = !img.color().has_color();
            let want_gray = want.channels == 1;
            // image reports CMYK JPEGs as Rgb8 after its own conversion; colour is colour.
            assert_eq!(
                gray_source,
                want_gray,
                "{}: {:?}",
                fixture.name,
                img.color()
            );
        }
    }

    #[test]
    fn png_headers_say_what_the_names_say() {
        let ihdr = |f: Fixture| png_header(&f.bytes).unwrap();
        assert_eq!(
            ihdr(gray16_png()),
            PngHeader {
                width: 4,
                height: 2,
                bit_depth: 16,
                colour_type: 0
            }
        );
        assert_eq!(
            ihdr(rgb16_png()),
            PngHeader {
                width: 3,
                height: 2,
                bit_depth: 16,
                colour_type: 2
            }
        );
        assert_eq!(
            (ihdr(rgba_png()).bit_depth, ihdr(rgba_png()).colour_type),
            (8, 6)
        );
        assert_eq!(
            (
                ihdr(gray_alpha_png()).bit_depth,
                ihdr(gray_alpha_png()).colour_type
            ),
            (8, 4)
        );
        assert_eq!(
            (
                ihdr(palette_png()).bit_depth,
                ihdr(palette_png()).colour_type
            ),
            (2, 3)
        );
        let rgba = rgba_png().bytes;
        let decoded = image::load_from_memory(&rgba).unwrap().to_rgba8();
        assert!(
            decoded.pixels().any(|p| p.0[3] == 0),
            "some pixel is transparent"
        );
        let palette = palette_png().bytes;
        assert!(palette.windows(4).any(|w| w == b"tRNS"));
        assert!(png_header(&flat_rgb_jpeg().bytes).is_none());
    }

    #[test]
    fn jpeg_headers_say_what_the_names_say() {
        let sof = |f: Fixture| jpeg_header(&f.bytes).unwrap();
        let cmyk = sof(cmyk_jpeg());
        assert_eq!(cmyk.components, 4);
        assert_eq!(cmyk.adobe_transform, Some(0));
        assert_eq!((cmyk.width, cmyk.height), (24, 16));
        assert_eq!(sof(gray_jpeg()).components, 1);
        assert_eq!(sof(flat_rgb_jpeg()).components, 3);
        assert_eq!(sof(flat_rgb_jpeg()).adobe_transform, None);
        assert!(jpeg_header(&garbage_jpg().bytes).is_none());
        let webp = lossless_webp().bytes;
        assert_eq!((&webp[..4], &webp[8..16]), (&b"RIFF"[..], &b"WEBPVP8L"[..]));
    }

    #[test]
    fn the_gray_oracle_is_pillows_luma() {
        let flat = flat_rgb_jpeg();
        assert!(flat.decoded().gray().iter().all(|&g| g == 81));
        let gray = gray16_png();
        assert_eq!(
            gray.decoded().gray(),
            [0x00, 0x40, 0x80, 0xFF, 0xFF, 0xC0, 0x40, 0x00]
        );
    }

    #[test]
    fn check_rgb_names_the_first_bad_sample() {
        let flat = flat_rgb_jpeg();
        let want = flat.decoded();
        let mut rgb = want.rgb.clone();
        assert_eq!(want.check_rgb(&rgb), Ok(()));
        rgb[4] = 60;
        let err = want.check_rgb(&rgb).unwrap_err();
        assert!(
            err.starts_with("sample 4 (pixel 1, channel 1) is 60, want 30"),
            "{err}"
        );
        assert!(want.check_rgb(&rgb[..3]).is_err());
    }
}
