//! What the decoded images look like: channels and size, as asked for (`--channels`,
//! `--image-size`) and as resolved for a dataset.
//!
//! # Contract
//! * `--channels auto` is fastai's `convert_mode` chosen from the data: 1 when every image is
//!   grayscale (by its header: gray, gray+alpha, or a palette of grays), 3 otherwise.
//! * Without `--image-size` the images keep their size: the dataset's most common size, which
//!   must be square; an image of another size is a per-file error. With `--image-size N` every
//!   image that is not already N×N is resized (shorter side to N) and centre-cropped to N×N;
//!   an image that is N×N is never resampled.
//!
//! Tests: `tests` at the bottom.

use serde::{Deserialize, Serialize};

/// `--channels`: how many colour channels the network sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Channels {
    /// 1 when every image is grayscale, else 3 (the default).
    #[default]
    Auto,
    /// Grayscale: colour images are converted like PIL's `convert('L')`.
    Gray,
    /// RGB: grayscale images are repeated into three channels like PIL's `convert('RGB')`.
    Rgb,
}

impl Channels {
    /// The channel count when fixed, `None` for `auto`.
    pub fn fixed(self) -> Option<u32> {
        match self {
            Channels::Auto => None,
            Channels::Gray => Some(1),
            Channels::Rgb => Some(3),
        }
    }
}

impl std::fmt::Display for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Channels::Auto => "auto",
            Channels::Gray => "1",
            Channels::Rgb => "3",
        })
    }
}

impl std::str::FromStr for Channels {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Channels::Auto),
            "1" | "l" | "gray" | "grey" => Ok(Channels::Gray),
            "3" | "rgb" => Ok(Channels::Rgb),
            _ => Err(format!("expected auto, 1 or 3, got {s:?}")),
        }
    }
}

impl Serialize for Channels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Channels {
    /// `"auto"`, `"1"`, `"3"` or the numbers 1 and 3 (a TOML file may write either).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => n.to_string().parse(),
            Raw::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// What the user asked for: `--channels` and `--image-size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// Colour channels.
    pub channels: Channels,
    /// Resize every image to `N`×`N`; `None`: keep the dataset's own (square) size.
    pub size: Option<u32>,
}

/// Largest `--image-size`: the decoded cache and the tensors index pixels with `u32`/`i64`,
/// and an image of 4096×4096×3 is already 48 MiB.
pub const MAX_IMAGE_SIZE: u32 = 4096;

/// The resolved shape of every decoded image: `channels` × `size` × `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u32,
    /// Width and height in pixels.
    pub size: u32,
    /// Images of another size are resized (`--image-size` was given); otherwise they are
    /// [`super::DataError::WrongSize`].
    pub resize: bool,
}

impl Geometry {
    /// The lesson's MNIST: 1 × 28 × 28, no resizing.
    pub const MNIST: Geometry = Geometry {
        channels: 1,
        size: 28,
        resize: false,
    };

    /// The same geometry, resizing images of other sizes.
    pub fn with_resize(self) -> Self {
        Self {
            resize: true,
            ..self
        }
    }

    /// Bytes of one decoded image.
    pub fn image_bytes(&self) -> u64 {
        u64::from(self.channels) * u64::from(self.size) * u64::from(self.size)
    }

    /// Checks the ranges: 1 or 3 channels, size in `1..=MAX_IMAGE_SIZE`.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.channels, 1 | 3) {
            return Err(format!("channels must be 1 or 3, got {}", self.channels));
        }
        if !(1..=MAX_IMAGE_SIZE).contains(&self.size) {
            return Err(format!(
                "image size must be in 1..={MAX_IMAGE_SIZE}, got {}",
                self.size
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.size, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_print_and_deserialize_from_text_or_numbers() {
        for (text, want) in [
            ("auto", Channels::Auto),
            ("1", Channels::Gray),
            ("3", Channels::Rgb),
            ("RGB", Channels::Rgb),
        ] {
            assert_eq!(text.parse::<Channels>().unwrap(), want);
        }
        assert!("2"
            .parse::<Channels>()
            .unwrap_err()
            .contains("auto, 1 or 3"));
        assert_eq!(Channels::Rgb.to_string(), "3");
        let v: Channels = serde_json::from_str("3").unwrap();
        assert_eq!(v, Channels::Rgb);
        let v: Channels = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(v, Channels::Auto);
        assert!(serde_json::from_str::<Channels>("4").is_err());
        assert_eq!(serde_json::to_string(&Channels::Gray).unwrap(), "\"1\"");
    }

    #[test]
    fn geometry_ranges_and_bytes() {
        assert_eq!(Geometry::MNIST.image_bytes(), 784);
        assert!(Geometry::MNIST.validate().is_ok());
        let g = Geometry {
            channels: 3,
            size: 64,
            resize: true,
        };
        assert_eq!(g.image_bytes(), 3 * 64 * 64);
        assert_eq!(g.to_string(), "3x64x64");
        for bad in [
            Geometry { channels: 2, ..g },
            Geometry { size: 0, ..g },
            Geometry {
                size: MAX_IMAGE_SIZE + 1,
                ..g
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
