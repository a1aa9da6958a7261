//! Reading the headers of PNG and JPEG files from their bytes, so tests can check what a fixture
//! claims to be (bit depth, component count, Adobe transform) without trusting a decoder.
//!
//! No decoding, no I/O; a malformed header gives `None`. Exercised by `super`'s tests.

/// A PNG's IHDR fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PngHeader {
    pub width: u32,
    pub height: u32,
    /// Bits per sample (or per palette index): 1, 2, 4, 8 or 16.
    pub bit_depth: u8,
    /// 0 gray, 2 RGB, 3 indexed, 4 gray + alpha, 6 RGBA.
    pub colour_type: u8,
}

/// The IHDR of a PNG file, read from its bytes (IHDR is always the first chunk).
pub fn png_header(bytes: &[u8]) -> Option<PngHeader> {
    if bytes.len() < 33 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    Some(PngHeader {
        width: be32(16),
        height: be32(20),
        bit_depth: bytes[24],
        colour_type: bytes[25],
    })
}

/// A JPEG's frame header (SOF) fields, and its Adobe APP14 colour transform if present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: u16,
    pub height: u16,
    /// Nf: 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK.
    pub components: u8,
    /// The APP14 "Adobe" segment's transform byte: 0 none (RGB/CMYK), 1 YCbCr, 2 YCCK.
    pub adobe_transform: Option<u8>,
}

/// Reads the segments before the first scan; `None` when there is no SOF or a segment runs
/// past the end.
pub fn jpeg_header(bytes: &[u8]) -> Option<JpegHeader> {
    let mut sof = None;
    let mut adobe_transform = None;
    for (marker, payload) in jpeg_segments(bytes)?.0 {
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof && payload.len() >= 6 {
            let be16 = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            sof = Some((be16(3), be16(1), payload[5]));
        }
        if marker == 0xEE && payload.len() >= 12 && payload.starts_with(b"Adobe") {
            adobe_transform = Some(payload[11]);
        }
    }
    let (width, height, components) = sof?;
    Some(JpegHeader {
        width,
        height,
        components,
        adobe_transform,
    })
}

/// Offset of the first byte of entropy-coded data (just past the first SOS segment).
pub(super) fn jpeg_scan_start(bytes: &[u8]) -> Option<usize> {
    jpeg_segments(bytes)?.1
}

/// The marker segments `(marker, payload)` up to the first SOS, and where its scan data starts.
#[allow(clippy::type_complexity)]
fn jpeg_segments(bytes: &[u8]) -> Option<(Vec<(u8, &[u8])>, Option<usize>)> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut segments = Vec::new();
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return None;
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            // Fill byte before a marker.
            at += 1;
            continue;
        }
        if marker == 0xD9 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let end = at + 2 + len;
        if len < 2 || end > bytes.len() {
            return None;
        }
        segments.push((marker, &bytes[at + 4..end]));
        if marker == 0xDA {
            return Some((segments, Some(end)));
        }
        at = end;
    }
    Some((segments, None))
}
