//! Reading every image's header (size, grayscale or colour) to resolve `--channels auto` and the
//! dataset's own size before any pixel is decoded.
//!
//! Only headers are read: PNG up to its first image data chunk (with the palette, so a palette
//! of grays counts as grayscale), JPEG its frame header, WebP its chunk headers. The coordinator
//! probes once at start; the standalone commands probe before they decode.
//!
//! Tests: `tests` at the bottom.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::decode::{corrupt, Format};
use super::{Channels, DataError, DatasetIndex, Geometry, ImageEntry, ImageOptions, Skipped};

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    /// False for gray, gray+alpha and palettes of grays; true for everything else.
    pub color: bool,
}

fn probe_png(bytes: &[u8], path: &Path) -> Result<ImageInfo, DataError> {
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(|e| corrupt(path, &e))?;
    let info = reader.info();
    let color = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => false,
        png::ColorType::Rgb | png::ColorType::Rgba => true,
        png::ColorType::Indexed => info
            .palette
            .as_ref()
            .is_none_or(|p| p.chunks_exact(3).any(|c| c[0] != c[1] || c[1] != c[2])),
    };
    Ok(ImageInfo {
        width: info.width,
        height: info.height,
        color,
    })
}

fn probe_with_image(bytes: &[u8], path: &Path, format: Format) -> Result<ImageInfo, DataError> {
    use image::ImageDecoder;
    let (dims, color) = match format {
        Format::Jpeg => {
            let d = image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes))
                .map_err(|e| corrupt(path, &e))?;
            (d.dimensions(), d.color_type())
        }
        _ => {
            let d = image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
                .map_err(|e| corrupt(path, &e))?;
            (d.dimensions(), d.color_type())
        }
    };
    Ok(ImageInfo {
        width: dims.0,
        height: dims.1,
        color: color.has_color(),
    })
}

/// The header of an image held in memory (enough of the file's start for its format).
pub fn probe_bytes(bytes: &[u8], path: &Path) -> Result<ImageInfo, DataError> {
    let info = match Format::sniff(bytes) {
        Some(Format::Png) => probe_png(bytes, path)?,
        Some(f) => probe_with_image(bytes, path, f)?,
        None => return Err(corrupt(path, &"not a PNG, JPEG or WebP file")),
    };
    if info.width == 0 || info.height == 0 {
        return Err(corrupt(path, &"image has no pixels"));
    }
    Ok(info)
}

/// Bytes read from a file's start for its header; JPEG and WebP headers sit in the first few
/// KiB except behind large metadata, so a short read falls back to the whole file.
const HEAD_BYTES: u64 = 64 * 1024;

/// The header of one image file.
pub fn probe_file(path: &Path) -> Result<ImageInfo, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, &e))?;
    let mut head = Vec::new();
    BufReader::new(file)
        .take(HEAD_BYTES)
        .read_to_end(&mut head)
        .map_err(|e| DataError::io(path, &e))?;
    match probe_bytes(&head, path) {
        Err(_) if head.len() as u64 == HEAD_BYTES => {
            let all = std::fs::read(path).map_err(|e| DataError::io(path, &e))?;
            probe_bytes(&all, path)
        }
        r => r,
    }
}

/// Probes `index`'s images, resolves the geometry asked for in `opts`, and takes out the files
/// that cannot be used: with `skip_bad` into `index.skipped`, otherwise the first (in scan
/// order) is the error. A class left without training images is [`DataError::EmptyClass`].
///
/// With both `--channels` and `--image-size` given nothing needs probing: returns at once.
pub fn resolve_geometry(
    index: &mut DatasetIndex,
    opts: &ImageOptions,
    skip_bad: bool,
    train_dir: &str,
) -> Result<Geometry, DataError> {
    if let (Some(channels), Some(size)) = (opts.channels.fixed(), opts.size) {
        return Ok(Geometry {
            channels,
            size,
            resize: true,
        });
    }
    let started = Instant::now();
    let probe = |entries: &[ImageEntry]| -> Vec<Result<ImageInfo, DataError>> {
        entries.par_iter().map(|e| probe_file(&e.path)).collect()
    };
    let train = probe(&index.train);
    let valid = probe(&index.valid);
    // I/O errors always fail; per-file ones fail unless skipped (first in scan order).
    let mut infos: Vec<(bool, usize, ImageInfo)> = Vec::new();
    let mut bad: Vec<(bool, usize, DataError)> = Vec::new();
    for (is_train, results) in [(true, train), (false, valid)] {
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(info) => infos.push((is_train, i, info)),
                Err(e) if e.is_per_file() => bad.push((is_train, i, e)),
                Err(e) => return Err(e),
            }
        }
    }
    let color = infos.iter().any(|(_, _, i)| i.color);
    let channels = match opts.channels {
        Channels::Auto => {
            if color {
                3
            } else {
                1
            }
        }
        fixed => fixed.fixed().unwrap_or(3),
    };
    let geometry = match opts.size {
        Some(size) => Geometry {
            channels,
            size,
            resize: true,
        },
        None => {
            // The most common size; ties go to the first seen in scan order.
            let mut counts: HashMap<(u32, u32), (usize, usize)> = HashMap::new();
            for (k, (_, _, info)) in infos.iter().enumerate() {
                counts.entry((info.width, info.height)).or_insert((0, k)).0 += 1;
            }
            let Some((&(w, h), &(_, first))) = counts
                .iter()
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
            else {
                // Nothing decodable: the first bad file says why.
                return Err(match bad.into_iter().next() {
                    Some((_, _, e)) => e,
                    None => DataError::NoClasses {
                        dir: index.root.join(train_dir),
                    },
                });
            };
            if w != h {
                let (is_train, i, _) = infos[first];
                let example = if is_train {
                    &index.train[i]
                } else {
                    &index.valid[i]
                };
                return Err(DataError::NotSquare {
                    example: example.path.clone(),
                    width: w,
                    height: h,
                });
            }
            for &(is_train, i, info) in &infos {
                if (info.width, info.height) != (w, h) {
                    let path = if is_train {
                        &index.train[i].path
                    } else {
                        &index.valid[i].path
                    };
                    bad.push((
                        is_train,
                        i,
                        DataError::WrongSize {
                            path: path.clone(),
                            got_w: info.width,
                            got_h: info.height,
                            want_w: w,
                            want_h: h,
                        },
                    ));
                }
            }
            Geometry {
                channels,
                size: w,
                resize: false,
            }
        }
    };
    bad.sort_by_key(|(is_train, i, _)| (!*is_train, *i));
    if !skip_bad {
        if let Some((_, _, e)) = bad.into_iter().next() {
            return Err(e);
        }
    } else if !bad.is_empty() {
        let mut drop_train = vec![false; index.train.len()];
        let mut drop_valid = vec![false; index.valid.len()];
        for (is_train, i, e) in bad {
            let entry = if is_train {
                drop_train[i] = true;
                &index.train[i]
            } else {
                drop_valid[i] = true;
                &index.valid[i]
            };
            index.skipped.push(Skipped {
                path: entry.path.clone(),
                reason: e,
            });
        }
        let keep = |entries: &mut Vec<ImageEntry>, drop: &[bool]| {
            let mut k = 0;
            entries.retain(|_| {
                k += 1;
                !drop[k - 1]
            });
        };
        keep(&mut index.train, &drop_train);
        keep(&mut index.valid, &drop_valid);
        for (label, class) in index.classes.iter().enumerate() {
            if !index.train.iter().any(|e| e.label == label as u32) {
                return Err(DataError::EmptyClass {
                    dir: index.root.join(train_dir).join(class),
                });
            }
        }
    }
    tracing::info!(%geometry, color, images = infos.len(),
        ms = started.elapsed().as_millis() as u64, "image headers read");
    Ok(geometry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::decode::tests::encode;
    use crate::data::{scan_dataset, ScanOptions};

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn gray(w: u32, h: u32) -> Vec<u8> {
        encode(w, h, png::ColorType::Grayscale, &vec![9; (w * h) as usize])
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .encode(
                &vec![100; (w * h * 3) as usize],
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    fn dataset(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, DatasetIndex) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, bytes) in files {
            write(dir.path(), rel, bytes);
        }
        let idx = scan_dataset(dir.path(), &ScanOptions::default()).unwrap();
        (dir, idx)
    }

    fn auto() -> ImageOptions {
        ImageOptions::default()
    }

    #[test]
    fn headers_of_each_format() {
        let p = Path::new("x");
        let info = probe_bytes(&jpeg(48, 40), p).unwrap();
        assert_eq!((info.width, info.height, info.color), (48, 40, true));
        let info = probe_bytes(&gray(3, 5), p).unwrap();
        assert_eq!((info.width, info.height, info.color), (3, 5, false));
        let rgb = encode(2, 2, png::ColorType::Rgb, &[0; 12]);
        assert!(probe_bytes(&rgb, p).unwrap().color);
        assert!(probe_bytes(b"nothing", p).is_err());
    }

    #[test]
    fn auto_channels_and_native_size() {
        let (_d, mut idx) = dataset(&[
            ("training/a/0.png", gray(8, 8)),
            ("training/b/0.png", gray(8, 8)),
            ("testing/a/0.png", gray(8, 8)),
        ]);
        let g = resolve_geometry(&mut idx, &auto(), false, "training").unwrap();
        assert_eq!(
            g,
            Geometry {
                channels: 1,
                size: 8,
                resize: false
            }
        );
        let (_d, mut idx) = dataset(&[
            ("training/a/0.png", gray(8, 8)),
            ("training/b/0.jpg", jpeg(8, 8)),
            ("testing/a/0.png", gray(8, 8)),
        ]);
        let g = resolve_geometry(&mut idx, &auto(), false, "training").unwrap();
        assert_eq!(g.channels, 3, "one colour JPEG makes the set RGB");
        let opts = ImageOptions {
            channels: Channels::Gray,
            size: None,
        };
        assert_eq!(
            resolve_geometry(&mut idx, &opts, false, "training")
                .unwrap()
                .channels,
            1
        );
    }

    #[test]
    fn mixed_sizes_need_image_size_or_skip_the_odd_ones() {
        let files = [
            ("training/a/0.png", gray(8, 8)),
            ("training/a/1.png", gray(8, 6)),
            ("training/b/0.png", gray(8, 8)),
            ("testing/a/0.png", gray(8, 8)),
        ];
        let (d, mut idx) = dataset(&files);
        let odd = d.path().join("training/a/1.png");
        let err = resolve_geometry(&mut idx, &auto(), false, "training").unwrap_err();
        assert!(
            matches!(err, DataError::WrongSize { ref path, got_w: 8, got_h: 6, .. } if *path == odd),
            "{err:?}"
        );
        assert!(err.to_string().contains("--image-size"), "{err}");
        let g = resolve_geometry(&mut idx, &auto(), true, "training").unwrap();
        assert_eq!(g.size, 8);
        assert_eq!(idx.train.len(), 2);
        assert_eq!(idx.skipped.len(), 1);
        assert_eq!(idx.skipped[0].path, odd);
        let (_d, mut idx) = dataset(&files);
        let sized = ImageOptions {
            channels: Channels::Auto,
            size: Some(16),
        };
        let g = resolve_geometry(&mut idx, &sized, false, "training").unwrap();
        assert_eq!((g.size, g.resize, idx.train.len()), (16, true, 3));
    }

    #[test]
    fn non_square_without_image_size_is_refused_with_an_example() {
        let (d, mut idx) = dataset(&[
            ("training/a/0.jpg", jpeg(48, 40)),
            ("testing/a/0.jpg", jpeg(48, 40)),
        ]);
        let err = resolve_geometry(&mut idx, &auto(), false, "training").unwrap_err();
        assert_eq!(
            err,
            DataError::NotSquare {
                example: d.path().join("training/a/0.jpg"),
                width: 48,
                height: 40
            }
        );
        assert!(err.to_string().contains("--image-size N"), "{err}");
    }

    #[test]
    fn skipping_every_image_of_a_class_is_an_empty_class() {
        let (d, mut idx) = dataset(&[
            ("training/a/0.png", gray(8, 8)),
            ("training/b/0.png", b"\x89PNG\r\n\x1a\nbroken".to_vec()),
            ("testing/a/0.png", gray(8, 8)),
        ]);
        let err = resolve_geometry(&mut idx, &auto(), true, "training").unwrap_err();
        assert_eq!(
            err,
            DataError::EmptyClass {
                dir: d.path().join("training/b")
            }
        );
    }
}
