//! `--augment`: the training augmentation, as a value the coordinator hands every worker.
//!
//! ```text
//! pad[=P]   fastai's rand_pad(padding=P, mode='zeros'): zero-pad by P, crop back at a random
//!           offset (P = 3 when not given: the lesson's default, and ringtrain's)
//! flip      horizontal flip with probability 1/2 (for photos; off for digits and text)
//! none      no augmentation
//! ```
//! Items are comma-separated (`pad,flip`, `pad=4,flip`). Validation images are never augmented.
//!
//! Tests: `tests` at the bottom.

use serde::{Deserialize, Serialize};

/// The lesson's `rand_pad` padding.
pub const DEFAULT_PAD: u32 = 3;

/// Largest padding accepted: more than this is a blank crop for small images.
pub const MAX_PAD: u32 = 64;

/// The training augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Augment {
    /// `rand_pad` padding in pixels; 0: off.
    pub pad: u32,
    /// Random horizontal flips.
    pub flip: bool,
}

impl Default for Augment {
    /// The lesson's: `rand_pad(3)`, no flips.
    fn default() -> Self {
        Self {
            pad: DEFAULT_PAD,
            flip: false,
        }
    }
}

impl std::fmt::Display for Augment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.pad > 0 {
            parts.push(format!("pad={}", self.pad));
        }
        if self.flip {
            parts.push("flip".into());
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for Augment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Augment {
            pad: 0,
            flip: false,
        };
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        for item in &items {
            match *item {
                "none" if items.len() == 1 => {}
                "pad" => out.pad = DEFAULT_PAD,
                "flip" => out.flip = true,
                _ => match item.strip_prefix("pad=").map(str::parse::<u32>) {
                    Some(Ok(p)) if p <= MAX_PAD => out.pad = p,
                    Some(_) => {
                        return Err(format!("pad=P needs P in 0..={MAX_PAD}, got {item:?}"))
                    }
                    None => {
                        return Err(format!(
                            "unknown augmentation {item:?}: expected pad, pad=P, flip or none (comma-separated)"
                        ))
                    }
                },
            }
        }
        Ok(out)
    }
}

impl Serialize for Augment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Augment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for (text, pad, flip, printed) in [
            ("pad", 3, false, "pad=3"),
            ("pad=4,flip", 4, true, "pad=4,flip"),
            ("flip", 0, true, "flip"),
            ("none", 0, false, "none"),
            ("pad=0", 0, false, "none"),
        ] {
            let a: Augment = text.parse().unwrap();
            assert_eq!((a.pad, a.flip), (pad, flip), "{text}");
            assert_eq!(a.to_string(), printed);
            assert_eq!(printed.parse::<Augment>().unwrap(), a);
        }
        assert_eq!(Augment::default().to_string(), "pad=3");
        for bad in ["rotate", "pad=x", "pad=65", "none,flip", ""] {
            assert!(bad.parse::<Augment>().is_err(), "{bad}");
        }
        let a: Augment = serde_json::from_str("\"pad,flip\"").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"pad=3,flip\"");
    }
}
