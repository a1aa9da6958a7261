//! Deterministic, portable randomness for data order and augmentation.
//!
//! Owns the pseudo-random streams that decide which image goes in which batch and where each
//! training image is cropped. Not tensor initialisation (libtorch's generator does that, seeded
//! once by the worker).
//!
//! # Contract
//! * A stream is a pure function of `(seed, keys)`: epoch 7 of rank 2 gets the same numbers on any
//!   machine, in any process, after any restart. Exact resume therefore needs no saved RNG state
//!   beyond the seed and the position (epoch, step).
//! * SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, passes BigCrush; good enough for shuffles
//!   and crop offsets, not for cryptography.
//!
//! Tests at the bottom of this file.

/// A SplitMix64 stream keyed by a seed and a list of stream keys (epoch, rank, purpose...).
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Stream {
    /// A stream for `seed` and the given keys; different keys give independent streams.
    pub fn new(seed: u64, keys: &[u64]) -> Self {
        let mut state = mix(seed ^ GOLDEN);
        for &k in keys {
            state = mix(state.wrapping_add(GOLDEN) ^ mix(k.wrapping_add(GOLDEN)));
        }
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (Lemire's multiply-shift with rejection: no modulo bias).
    /// `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0) has no valid result");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A uniformly random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<u64> {
        let mut p: Vec<u64> = (0..n as u64).collect();
        self.shuffle(&mut p);
        p
    }
}

/// Purposes of the streams a worker draws, so that no two purposes share numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Order of training images within an epoch.
    Shuffle = 1,
    /// Crop offsets of `rand_pad`.
    Crop = 2,
    /// Horizontal flips (`--augment flip`).
    Flip = 3,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_keys_same_numbers_different_keys_differ() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut s = Stream::new(42, &[1, 2]);
                move |_| s.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut s = Stream::new(42, &[1, 2]);
                move |_| s.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut s = Stream::new(42, &[2, 1]);
                move |_| s.next_u64()
            })
            .collect();
        let d: Vec<u64> = (0..8)
            .map({
                let mut s = Stream::new(43, &[1, 2]);
                move |_| s.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Stream::new(7, &[0]).permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut s = Stream::new(1, &[]);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            let v = s.below(7);
            counts[v as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
    }
}
