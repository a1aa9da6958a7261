//! Pixel statistics for normalisation, kept as exact integer sums so that shards can be added.
//!
//! Tests: `tests` module at the bottom.

use serde::{Deserialize, Serialize};

use super::DecodedSplit;

/// Sums over `u8` pixels of one channel; mergeable across shards without rounding error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelStats {
    /// Sum of pixel values (0..=255).
    pub sum: u64,
    /// Sum of squared pixel values.
    pub sum_sq: u64,
    /// Number of pixels.
    pub count: u64,
}

impl PixelStats {
    /// Statistics of a pixel buffer.
    pub fn of(pixels: &[u8]) -> Self {
        // Per-chunk u64 accumulation; u64 cannot overflow below 2^64 / 255^2 ≈ 2.8e14 pixels.
        let mut hist = [0u64; 256];
        for &p in pixels {
            hist[p as usize] += 1;
        }
        Self::of_histogram(&hist)
    }

    /// One entry per channel of a split's planar images (one for grayscale, three for RGB).
    pub fn per_channel(split: &DecodedSplit) -> Vec<Self> {
        let c = split.channels.max(1) as usize;
        if c == 1 {
            return vec![Self::of(&split.pixels)];
        }
        let plane = (split.height * split.width) as usize;
        let mut hist = vec![[0u64; 256]; c];
        for image in split.pixels.chunks_exact(c * plane) {
            for (ch, values) in image.chunks_exact(plane).enumerate() {
                for &p in values {
                    hist[ch][p as usize] += 1;
                }
            }
        }
        hist.iter().map(Self::of_histogram).collect()
    }

    fn of_histogram(hist: &[u64; 256]) -> Self {
        let mut s = Self::default();
        for (v, &n) in hist.iter().enumerate() {
            let v = v as u64;
            s.sum += v * n;
            s.sum_sq += v * v * n;
            s.count += n;
        }
        s
    }

    /// Channel-wise [`PixelStats::checked_merge`] of two per-channel lists of equal length.
    pub fn checked_merge_all(a: &[Self], b: &[Self]) -> Option<Vec<Self>> {
        if a.len() != b.len() {
            return None;
        }
        a.iter().zip(b).map(|(x, y)| x.checked_merge(*y)).collect()
    }

    /// The statistics of the union of two pixel sets.
    pub fn merge(self, other: Self) -> Self {
        Self {
            sum: self.sum + other.sum,
            sum_sq: self.sum_sq + other.sum_sq,
            count: self.count + other.count,
        }
    }

    /// The statistics of the union, or `None` when a sum would not fit (untrusted inputs).
    pub fn checked_merge(self, other: Self) -> Option<Self> {
        Some(Self {
            sum: self.sum.checked_add(other.sum)?,
            sum_sq: self.sum_sq.checked_add(other.sum_sq)?,
            count: self.count.checked_add(other.count)?,
        })
    }

    /// Whether these can be the sums of `count` pixels of 0..=255: `sum ≤ 255·count`,
    /// `sum_sq ≤ 255²·count` and `sum² ≤ count·sum_sq` (Cauchy–Schwarz), in exact integers.
    pub fn plausible(&self) -> bool {
        let (s, q, n) = (
            u128::from(self.sum),
            u128::from(self.sum_sq),
            u128::from(self.count),
        );
        s <= 255 * n && q <= 255 * 255 * n && s * s <= n * q
    }

    /// Mean on the `[0, 1]` scale (pixel / 255).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum as f64 / self.count as f64 / 255.0
    }

    /// Population standard deviation on the `[0, 1]` scale; 1.0 for a constant or empty set so
    /// that normalising never divides by zero.
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            return 1.0;
        }
        let n = self.count as f64;
        let var = (self.sum_sq as f64 / n - (self.sum as f64 / n).powi(2)).max(0.0);
        let std = var.sqrt() / 255.0;
        if std > 0.0 {
            std
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_sums_are_plausible_and_forged_ones_are_not() {
        let a = PixelStats::of(&[0, 17, 255, 255, 3]);
        assert!(a.plausible());
        assert!(PixelStats::default().plausible());
        for forged in [
            PixelStats {
                sum: 256,
                sum_sq: 65536,
                count: 1,
            },
            PixelStats {
                sum: 10,
                sum_sq: 65026,
                count: 1,
            },
            // Mean 100 but no spread claimed: sum² > count·sum_sq.
            PixelStats {
                sum: 200,
                sum_sq: 100,
                count: 2,
            },
            PixelStats {
                sum: u64::MAX,
                sum_sq: u64::MAX,
                count: 1,
            },
        ] {
            assert!(!forged.plausible(), "{forged:?}");
        }
        let big = PixelStats {
            sum: u64::MAX - 1,
            sum_sq: 0,
            count: 0,
        };
        assert_eq!(big.checked_merge(a), None);
        assert_eq!(a.checked_merge(a), Some(a.merge(a)));
    }

    #[test]
    fn mean_std_and_merge() {
        let a = PixelStats::of(&[0, 255]);
        assert_eq!(a.mean(), 0.5);
        assert!((a.std() - 0.5).abs() < 1e-12);
        let b = PixelStats::of(&[255, 255]);
        let m = a.merge(b);
        assert_eq!(m, PixelStats::of(&[0, 255, 255, 255]));
        assert!((m.mean() - 0.75).abs() < 1e-12);
        assert_eq!(PixelStats::of(&[7, 7]).std(), 1.0);
    }

    #[test]
    fn per_channel_splits_planes() {
        let split = DecodedSplit {
            channels: 3,
            height: 1,
            width: 2,
            // Two images, planar: R R G G B B.
            pixels: vec![0, 10, 20, 20, 255, 255, 2, 4, 20, 20, 0, 0],
            labels: vec![0, 1],
        };
        let s = PixelStats::per_channel(&split);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], PixelStats::of(&[0, 10, 2, 4]));
        assert_eq!(s[1], PixelStats::of(&[20; 4]));
        assert_eq!(s[2], PixelStats::of(&[255, 255, 0, 0]));
        let gray = DecodedSplit {
            channels: 1,
            ..split.clone()
        };
        assert_eq!(
            PixelStats::per_channel(&gray),
            vec![PixelStats::of(&gray.pixels)]
        );
        assert_eq!(PixelStats::checked_merge_all(&s, &s[..2]), None);
        assert_eq!(
            PixelStats::checked_merge_all(&s, &s).unwrap()[2],
            s[2].merge(s[2])
        );
    }
}
