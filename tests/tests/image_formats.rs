//! The loader on every awkward file of `ringtrain_tests::badimages` (alpha, 16-bit, palette,
//! grayscale and CMYK JPEG, WebP, truncated and garbage files): each decodes to what Pillow's
//! `convert('RGB')` / `convert('L')` gives, within the fixture's tolerance, or is refused as
//! corrupt naming the file; its header tells `--channels auto` the right colour mode.

use std::path::Path;

use ringtrain_common::data::probe::{probe_bytes, probe_file};
use ringtrain_common::data::{decode_image, DataError, Geometry};
use ringtrain_tests::badimages::{write_all, Expect};

/// Planar `[3, h, w]` to interleaved RGB.
fn interleave(planar: &[u8]) -> Vec<u8> {
    let n = planar.len() / 3;
    (0..n)
        .flat_map(|i| [planar[i], planar[n + i], planar[2 * n + i]])
        .collect()
}

fn native(channels: u32, size: u32) -> Geometry {
    Geometry {
        channels,
        size,
        resize: false,
    }
}

#[test]
fn every_fixture_decodes_like_pillow_or_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (path, f) in write_all(dir.path()).unwrap() {
        let bytes = std::fs::read(&path).unwrap();
        match &f.expect {
            Expect::Corrupt => {
                let g = Geometry {
                    channels: 3,
                    size: 8,
                    resize: true,
                };
                let err = decode_image(&bytes, &path, g).unwrap_err();
                assert!(
                    matches!(err, DataError::CorruptImage { path: ref p, .. } if *p == path),
                    "{}: {err:?}",
                    f.name
                );
                assert!(err.to_string().contains(f.name), "{err}");
            }
            Expect::Decoded(d) => {
                let info = probe_bytes(&bytes, &path).unwrap();
                assert_eq!((info.width, info.height), (d.width, d.height), "{}", f.name);
                assert_eq!(info.color, d.channels == 3, "{}: colour by header", f.name);
                assert_eq!(probe_file(&path).unwrap(), info);
                // Square fixtures go through the whole decoder at their native size (no
                // resampling); others must be refused at a square size without resizing, and
                // their pixels are checked through the raw reader.
                if d.width == d.height {
                    let rgb = decode_image(&bytes, &path, native(3, d.width)).unwrap();
                    d.check_rgb(&interleave(&rgb))
                        .unwrap_or_else(|e| panic!("{}: {e}", f.name));
                    let gray = decode_image(&bytes, &path, native(1, d.width)).unwrap();
                    let want = d.gray();
                    let worst = gray
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| a.abs_diff(*b))
                        .max()
                        .unwrap();
                    assert!(worst <= d.tolerance, "{}: gray off by {worst}", f.name);
                } else {
                    let g = Geometry {
                        channels: 3,
                        size: d.width.max(d.height),
                        resize: false,
                    };
                    let err = decode_image(&bytes, &path, g).unwrap_err();
                    assert!(
                        matches!(err, DataError::WrongSize { got_w, got_h, .. } if (got_w, got_h) == (d.width, d.height)),
                        "{}: {err:?}",
                        f.name
                    );
                    // And the pixels themselves, through the raw reader.
                    let raw = ringtrain_common::data::decode::read_image(&bytes, &path).unwrap();
                    let rgb: Vec<u8> = match raw.channels {
                        1 => raw.data.iter().flat_map(|&v| [v, v, v]).collect(),
                        2 => raw
                            .data
                            .chunks(2)
                            .flat_map(|p| [p[0], p[0], p[0]])
                            .collect(),
                        c => raw
                            .data
                            .chunks(c)
                            .flat_map(|p| [p[0], p[1], p[2]])
                            .collect(),
                    };
                    d.check_rgb(&rgb)
                        .unwrap_or_else(|e| panic!("{}: {e}", f.name));
                }
                // Any size is resized on request.
                let g = Geometry {
                    channels: 3,
                    size: 16,
                    resize: true,
                };
                assert_eq!(decode_image(&bytes, &path, g).unwrap().len(), 3 * 16 * 16);
            }
        }
        checked += 1;
    }
    assert!(checked >= 12, "{checked} fixtures");
}

#[test]
fn a_jpeg_named_png_is_read_by_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let f = ringtrain_tests::badimages::flat_rgb_jpeg();
    let path = dir.path().join("really-a-jpeg.png");
    std::fs::write(&path, &f.bytes).unwrap();
    let d = f.decoded();
    let raw =
        ringtrain_common::data::decode::read_image(&std::fs::read(&path).unwrap(), &path).unwrap();
    assert_eq!(
        (raw.width, raw.height, raw.channels),
        (d.width, d.height, 3)
    );
    d.check_rgb(&raw.data).unwrap();
    assert!(Path::new(&path).exists());
}

#[test]
fn a_progressive_jpeg_decodes_like_a_baseline_one() {
    let (w, h) = (40u16, 24u16);
    let ink = [30u8, 160, 220];
    let mut bytes = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut bytes, 90);
    enc.set_progressive(true);
    enc.encode(
        &ink.repeat(usize::from(w) * usize::from(h)),
        w,
        h,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    let path = Path::new("progressive.jpg");
    let raw = ringtrain_common::data::decode::read_image(&bytes, path).unwrap();
    assert_eq!((raw.width, raw.height, raw.channels), (40, 24, 3));
    for px in raw.data.chunks(3) {
        for (got, want) in px.iter().zip(ink) {
            assert!(got.abs_diff(want) <= 4, "{px:?} vs {ink:?}");
        }
    }
    // Cut short, it is refused like a baseline one.
    let err = ringtrain_common::data::decode::read_image(&bytes[..bytes.len() * 2 / 3], path)
        .unwrap_err();
    assert!(matches!(err, DataError::CorruptImage { .. }), "{err:?}");
}
