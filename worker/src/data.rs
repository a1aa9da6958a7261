//! Decoded images as tensors, augmentation and batching.
//!
//! Owns: turning a [`LoadedDataset`] into device tensors once, fastai's `rand_pad` and
//! horizontal flips on whole batches, and per-channel normalisation. Not scanning or decoding
//! (`ringtrain_common::data`).
//!
//! ```text
//! training images  u8 [N, C, S, S] ──zero-pad P──▶ u8 [N, C, S+2P, S+2P]  (once, on the device)
//! batch b          index_select(perm[b]) ▶ gather rows ▶ gather cols ▶ u8 [B, C, S, S]
//!                  ▶ flip where flips[b] (with `flip`) ▶ f32 · 1/(255·std_c) − mean_c/std_c
//! ```
//! Crop offsets (0..=2P per axis, per image), flips and the shuffle come from `common::rng`
//! streams keyed by (seed, epoch, rank), uploaded once per epoch, so a step needs no host data
//! and the order is a pure function of (seed, epoch, rank): resuming at any step reproduces it.
//! The lesson's MNIST (C = 1, P = 3, no flips) draws exactly the streams it always drew.
//!
//! Tests: `tests` at the bottom.

use ringtrain_common::data::{Augment, DecodedSplit, LoadedDataset, PixelStats};
use ringtrain_common::rng::{Purpose, Stream};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// fastai `rand_pad(padding=3, size=28)`: the default padding.
pub const PAD: i64 = ringtrain_common::data::augment::DEFAULT_PAD as i64;

/// Normalisation constants, one per channel, recorded with the run for inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalize {
    /// From the training pixels' per-channel statistics.
    pub fn from_stats(s: &[PixelStats]) -> Self {
        Self {
            mean: s.iter().map(PixelStats::mean).collect(),
            std: s.iter().map(PixelStats::std).collect(),
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// u8 pixels `[.., C, H, W]` → normalised f32, in place on a fresh float tensor. One
    /// channel uses scalar arithmetic (the lesson's MNIST arithmetic, bit for bit).
    pub fn apply(&self, pixels_u8: &Tensor) -> Tensor {
        self.apply_with(pixels_u8, self.per_channel(pixels_u8.device()).as_ref())
    }

    /// For more than one channel, the `[C, 1, 1]` scale `1/(255·std)` and shift `−mean/std`
    /// on `device`: made once by whoever normalises every batch (no upload per step).
    pub fn per_channel(&self, device: Device) -> Option<(Tensor, Tensor)> {
        if self.mean.len() == 1 {
            return None;
        }
        let c = self.mean.len() as i64;
        let per = |f: &dyn Fn(f64, f64) -> f64| -> Tensor {
            let v: Vec<f32> = self
                .mean
                .iter()
                .zip(&self.std)
                .map(|(&m, &s)| f(m, s) as f32)
                .collect();
            Tensor::from_slice(&v).view([c, 1, 1]).to_device(device)
        };
        Some((per(&|_, s| 1.0 / (255.0 * s)), per(&|m, s| -m / s)))
    }

    /// [`Normalize::apply`] with the tensors of [`Normalize::per_channel`] made beforehand.
    pub fn apply_with(&self, pixels_u8: &Tensor, per_channel: Option<&(Tensor, Tensor)>) -> Tensor {
        let mut x = pixels_u8.to_kind(Kind::Float);
        match (per_channel, self.mean.as_slice(), self.std.as_slice()) {
            (Some((scale, shift)), _, _) => {
                let _ = x.g_mul_(scale);
                let _ = x.g_add_(shift);
            }
            (None, [mean, ..], [std, ..]) => {
                let _ = x.g_mul_scalar_(1.0 / (255.0 * std));
                let _ = x.g_add_scalar_(-mean / std);
            }
            (None, _, _) => {}
        }
        x
    }
}

fn images_tensor(split: &DecodedSplit, device: Device) -> Tensor {
    Tensor::from_slice(&split.pixels)
        .view([
            split.len() as i64,
            i64::from(split.channels.max(1)),
            i64::from(split.height),
            i64::from(split.width),
        ])
        .to_device(device)
}

fn labels_tensor(split: &DecodedSplit, device: Device) -> Tensor {
    let labels: Vec<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::from_slice(&labels).to_device(device)
}

/// The training split on the device, pre-padded.
#[derive(Debug)]
pub struct TrainSet {
    padded: Tensor,
    labels: Tensor,
    len: usize,
    channels: i64,
    height: i64,
    width: i64,
    pad: i64,
    flip: bool,
    arange_h: Tensor,
    arange_w: Tensor,
    /// `norm`'s per-channel scale and shift on the device (RGB), made once.
    norm_tensors: Option<(Tensor, Tensor)>,
    pub norm: Normalize,
}

/// Shuffle, crop offsets and flips of one epoch, on the device.
#[derive(Debug)]
pub struct EpochPlan {
    perm: Tensor,
    offsets: Tensor,
    /// `[N, 1, 1, 1]` booleans when flipping.
    flips: Option<Tensor>,
    pub steps: usize,
    pub batch_size: usize,
}

impl TrainSet {
    pub fn new(split: &DecodedSplit, norm: Normalize, augment: Augment, device: Device) -> Self {
        let pad = i64::from(augment.pad);
        let images = images_tensor(split, device);
        let padded = if pad > 0 {
            images.constant_pad_nd([pad, pad, pad, pad])
        } else {
            images
        };
        let (h, w) = (i64::from(split.height), i64::from(split.width));
        Self {
            padded,
            labels: labels_tensor(split, device),
            len: split.len(),
            channels: i64::from(split.channels.max(1)),
            height: h,
            width: w,
            pad,
            flip: augment.flip,
            arange_h: Tensor::arange(h, (Kind::Int64, device)),
            arange_w: Tensor::arange(w, (Kind::Int64, device)),
            norm_tensors: norm.per_channel(device),
            norm,
        }
    }

    /// Number of training images.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shuffle, crops and flips of `epoch` on `rank`; drops the last partial batch like
    /// fastai's train loader.
    pub fn plan_epoch(&self, seed: u64, epoch: u64, rank: u64, batch_size: usize) -> EpochPlan {
        self.plan_epoch_min(seed, epoch, rank, batch_size, 0)
    }

    /// [`TrainSet::plan_epoch`] with at least `min_steps` batches: when the shard holds fewer
    /// than `min_steps × batch_size` images (`--skip-bad` left some of a distributed shard
    /// out, and every rank must take the plan's steps), further permutations of the shard fill
    /// the epoch, drawn on from the same streams. A full shard draws exactly what it always
    /// drew. An empty one gives 0 steps.
    pub fn plan_epoch_min(
        &self,
        seed: u64,
        epoch: u64,
        rank: u64,
        batch_size: usize,
        min_steps: usize,
    ) -> EpochPlan {
        let device = self.padded.device();
        let mut shuffle = Stream::new(seed, &[Purpose::Shuffle as u64, epoch, rank]);
        let mut perm: Vec<i64> = shuffle
            .permutation(self.len)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let want = min_steps.saturating_mul(batch_size);
        while self.len > 0 && perm.len() < want {
            perm.extend(shuffle.permutation(self.len).into_iter().map(|i| i as i64));
        }
        if perm.len() > self.len {
            tracing::warn!(
                images = self.len,
                positions = perm.len(),
                "shard smaller than the plan's steps (files skipped): repeating images this epoch"
            );
        }
        let positions = perm.len();
        let mut crop = Stream::new(seed, &[Purpose::Crop as u64, epoch, rank]);
        let span = (2 * self.pad + 1) as u64;
        let offsets: Vec<i64> = (0..2 * positions)
            .map(|_| crop.below(span) as i64)
            .collect();
        let flips = self.flip.then(|| {
            let mut s = Stream::new(seed, &[Purpose::Flip as u64, epoch, rank]);
            let f: Vec<bool> = (0..self.len).map(|_| s.below(2) == 1).collect();
            Tensor::from_slice(&f)
                .view([self.len as i64, 1, 1, 1])
                .to_device(device)
        });
        EpochPlan {
            perm: Tensor::from_slice(&perm).to_device(device),
            offsets: Tensor::from_slice(&offsets)
                .view([positions as i64, 2])
                .to_device(device),
            flips,
            steps: positions / batch_size,
            batch_size,
        }
    }

    /// Batch `step` of `plan`: augmented, normalised images `[B, C, H, W]` and labels `[B]`.
    pub fn batch(&self, plan: &EpochPlan, step: usize) -> (Tensor, Tensor) {
        let b = plan.batch_size as i64;
        let c = self.channels;
        let start = step as i64 * b;
        let idx = plan.perm.narrow(0, start, b);
        let off = plan.offsets.narrow(0, start, b);
        let imgs = self.padded.index_select(0, &idx);
        let pw = self.width + 2 * self.pad;
        let rows = (off.narrow(1, 0, 1) + &self.arange_h.unsqueeze(0))
            .view([b, 1, self.height, 1])
            .expand([b, c, self.height, pw], false);
        let imgs = imgs.gather(2, &rows, false);
        let cols = (off.narrow(1, 1, 1) + &self.arange_w.unsqueeze(0))
            .view([b, 1, 1, self.width])
            .expand([b, c, self.height, self.width], false);
        let mut imgs = imgs.gather(3, &cols, false);
        if let Some(flips) = &plan.flips {
            let mask = flips.index_select(0, &idx);
            imgs = imgs.flip([3]).where_self(&mask, &imgs);
        }
        (
            self.norm.apply_with(&imgs, self.norm_tensors.as_ref()),
            self.labels.index_select(0, &idx),
        )
    }
}

/// The validation split on the device, normalised once.
#[derive(Debug)]
pub struct ValidSet {
    pub images: Tensor,
    pub labels: Tensor,
}

impl ValidSet {
    pub fn new(split: &DecodedSplit, norm: &Normalize, device: Device) -> Self {
        Self {
            images: norm.apply(&images_tensor(split, device)),
            labels: labels_tensor(split, device),
        }
    }

    /// Number of validation images.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Normalisation from the training split of a loaded dataset.
pub fn normalize_for(ds: &LoadedDataset) -> Normalize {
    Normalize::from_stats(&PixelStats::per_channel(&ds.train))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> DecodedSplit {
        // Image i is filled with value i+1 except pixel (0,0) which is 200.
        let mut pixels = Vec::new();
        for i in 0..n {
            let mut img = vec![(i + 1) as u8; 28 * 28];
            img[0] = 200;
            pixels.extend(img);
        }
        DecodedSplit {
            channels: 1,
            height: 28,
            width: 28,
            pixels,
            labels: (0..n as u32).collect(),
        }
    }

    #[test]
    fn batches_are_padded_crops_of_the_right_images() {
        let s = split(10);
        let norm = Normalize {
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        };
        let ts = TrainSet::new(&s, norm, Augment::default(), Device::Cpu);
        let plan = ts.plan_epoch(5, 0, 0, 4);
        assert_eq!(
            plan.steps, 2,
            "10 images, batch 4: last partial batch dropped"
        );
        let (x, y) = ts.batch(&plan, 1);
        assert_eq!(x.size(), vec![4, 1, 28, 28]);
        // std = 1/255 and mean 0 make the float values equal the u8 values.
        for i in 0..4 {
            let label = y.int64_value(&[i]);
            let img = x.get(i).get(0);
            let max = img.max().double_value(&[]);
            let total = img.sum(Kind::Double).double_value(&[]);
            // Either the 200 pixel survived the crop or it was cropped away; the rest is the label's fill.
            let fill = (label + 1) as f64;
            assert!(max == 200.0 || max == fill, "max {max}");
            // Zero padding: 28*28 pixels, at least (28-3)^2 of them from the image.
            let nonzero = img.ne(0.0).sum(Kind::Int64).int64_value(&[]);
            assert!((25 * 25..=28 * 28).contains(&nonzero), "nonzero {nonzero}");
            assert!(total > 0.0);
        }
    }

    #[test]
    fn plan_is_a_pure_function_of_seed_and_epoch() {
        let s = split(50);
        let ts = TrainSet::new(
            &s,
            Normalize {
                mean: vec![0.1],
                std: vec![0.3],
            },
            Augment::default(),
            Device::Cpu,
        );
        let (a, _) = ts.batch(&ts.plan_epoch(1, 3, 0, 8), 2);
        let (b, _) = ts.batch(&ts.plan_epoch(1, 3, 0, 8), 2);
        let (c, _) = ts.batch(&ts.plan_epoch(1, 4, 0, 8), 2);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        let p = ts.plan_epoch(1, 3, 0, 8);
        let mut seen: Vec<i64> = Vec::<i64>::try_from(&p.perm).unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        let offs: Vec<i64> = Vec::<i64>::try_from(&p.offsets.view([-1])).unwrap();
        assert!(offs.iter().all(|&o| (0..=6).contains(&o)));
        assert!(offs.contains(&0) && offs.contains(&6));
    }

    #[test]
    fn normalize_matches_formula() {
        let n = Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let x = n.apply(&Tensor::from_slice(&[0u8, 255, 51]));
        let v: Vec<f32> = Vec::<f32>::try_from(&x).unwrap();
        assert!(
            (v[0] + 2.0).abs() < 1e-6
                && (v[1] - 2.0).abs() < 1e-6
                && (v[2] - (0.2 - 0.5) / 0.25).abs() < 1e-5
        );
    }

    /// Three-channel images: channel c of image i is filled with 3·i + c.
    fn rgb_split(n: usize, size: u32) -> DecodedSplit {
        let plane = (size * size) as usize;
        let mut pixels = Vec::new();
        for i in 0..n {
            for c in 0..3 {
                let mut p = vec![(3 * i + c) as u8; plane];
                // A marker in the top-left corner of channel 0, to see flips.
                if c == 0 {
                    p[0] = 250;
                }
                pixels.extend(p);
            }
        }
        DecodedSplit {
            channels: 3,
            height: size,
            width: size,
            pixels,
            labels: (0..n as u32).collect(),
        }
    }

    #[test]
    fn rgb_batches_keep_channels_apart_and_flip_half() {
        let s = rgb_split(64, 8);
        let unit = Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0 / 255.0; 3],
        };
        let ts = TrainSet::new(&s, unit, Augment { pad: 0, flip: true }, Device::Cpu);
        let plan = ts.plan_epoch(9, 0, 0, 64);
        let (x, y) = ts.batch(&plan, 0);
        assert_eq!(x.size(), vec![64, 3, 8, 8]);
        let mut flipped = 0;
        for k in 0..64 {
            let i = y.int64_value(&[k]);
            for c in 0..3 {
                let v = x.get(k).get(c).get(4).get(4).double_value(&[]);
                assert_eq!(v, (3 * i + c) as f64, "image {i} channel {c}");
            }
            let left = x.get(k).get(0).get(0).get(0).double_value(&[]);
            let right = x.get(k).get(0).get(0).get(7).double_value(&[]);
            match (left == 250.0, right == 250.0) {
                (true, false) => {}
                (false, true) => flipped += 1,
                other => panic!("marker lost: {other:?}"),
            }
        }
        assert!((16..=48).contains(&flipped), "{flipped} of 64 flipped");
        // Without flips nothing moves.
        let ts = TrainSet::new(
            &s,
            Normalize {
                mean: vec![0.0; 3],
                std: vec![1.0 / 255.0; 3],
            },
            Augment {
                pad: 0,
                flip: false,
            },
            Device::Cpu,
        );
        let (x, _) = ts.batch(&ts.plan_epoch(9, 0, 0, 64), 0);
        assert_eq!(x.get(0).get(0).get(0).get(0).double_value(&[]), 250.0);
    }

    #[test]
    fn per_channel_normalisation() {
        let n = Normalize {
            mean: vec![0.5, 0.0, 1.0],
            std: vec![0.25, 1.0, 0.5],
        };
        let x = Tensor::from_slice(&[255u8, 255, 255]).view([1, 3, 1, 1]);
        let v: Vec<f32> = Vec::<f32>::try_from(&n.apply(&x).view([-1])).unwrap();
        assert_eq!(v, vec![2.0, 1.0, 0.0]);
        let stats = PixelStats::per_channel(&rgb_split(2, 2));
        assert_eq!(Normalize::from_stats(&stats).channels(), 3);
    }

    #[test]
    fn a_short_shard_fills_the_plan_by_repeating_images() {
        let s = split(10);
        let ts = TrainSet::new(
            &s,
            Normalize {
                mean: vec![0.0],
                std: vec![1.0],
            },
            Augment::default(),
            Device::Cpu,
        );
        let full = ts.plan_epoch(3, 1, 0, 4);
        let same = ts.plan_epoch_min(3, 1, 0, 4, 2);
        assert!(full.perm.equal(&same.perm) && full.offsets.equal(&same.offsets));
        assert_eq!(full.steps, 2);
        let long = ts.plan_epoch_min(3, 1, 0, 4, 7);
        assert_eq!(long.steps, 7);
        let perm = Vec::<i64>::try_from(&long.perm).unwrap();
        assert_eq!(perm.len(), 30, "three permutations of 10");
        assert_eq!(&perm[..10], &Vec::<i64>::try_from(&full.perm).unwrap()[..]);
        for chunk in perm.chunks(10) {
            let mut c = chunk.to_vec();
            c.sort_unstable();
            assert_eq!(c, (0..10).collect::<Vec<_>>());
        }
        let (x, _) = ts.batch(&long, 6);
        assert_eq!(x.size(), vec![4, 1, 28, 28]);
    }
}
