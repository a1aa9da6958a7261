//! The bitmap font of the plots: font8x8's public-domain 8×8 ASCII glyphs, scaled by integers.
//!
//! Owns glyph lookup and text metrics; drawing is `canvas.rs`. Each glyph is 8 rows of one byte,
//! bit 0 the leftmost pixel; the advance is 8 pixels, so text width is `8 × chars × scale`.
//!
//! Tests: `tests` at the bottom.

use font8x8::legacy::BASIC_LEGACY;

/// Height and advance of one glyph at scale 1, in pixels.
pub(super) const GLYPH: u32 = 8;

/// The glyph of `c`: printable ASCII as itself, anything else as `?`.
pub(super) fn glyph(c: char) -> [u8; 8] {
    let i = if (' '..='~').contains(&c) {
        c as usize
    } else {
        usize::from(b'?')
    };
    BASIC_LEGACY[i]
}

/// Width of `s` in pixels at `scale`.
pub(super) fn text_width(s: &str, scale: u32) -> u32 {
    let n = u32::try_from(s.chars().count()).unwrap_or(u32::MAX);
    n.saturating_mul(GLYPH).saturating_mul(scale)
}

/// `s`, shortened with a trailing `~` so that it is at most `max_px` wide at `scale`.
pub(super) fn fit(s: &str, max_px: u32, scale: u32) -> String {
    if text_width(s, scale) <= max_px {
        return s.to_string();
    }
    let room = (max_px / GLYPH.saturating_mul(scale.max(1))) as usize;
    if room == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(room - 1).collect();
    out.push('~');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_glyphs_are_drawn_and_others_fall_back_to_question_mark() {
        assert_eq!(glyph(' '), [0; 8]);
        // 'A' has ink, and differs from 'B'.
        assert!(glyph('A').iter().any(|r| *r != 0));
        assert_ne!(glyph('A'), glyph('B'));
        assert_eq!(glyph('é'), glyph('?'));
        assert_eq!(glyph('\n'), glyph('?'));
        // '|' is a vertical bar: the same single column set in its rows.
        let bar = glyph('|');
        assert!(bar.iter().filter(|r| **r != 0).count() >= 6);
    }

    #[test]
    fn widths_and_fitting() {
        assert_eq!(text_width("abc", 1), 24);
        assert_eq!(text_width("abc", 2), 48);
        assert_eq!(text_width("", 3), 0);
        assert_eq!(fit("abc", 24, 1), "abc");
        assert_eq!(fit("abcdef", 24, 1), "ab~");
        assert!(text_width(&fit("a long title", 40, 2), 2) <= 40);
        assert_eq!(fit("abc", 7, 1), "");
    }
}
