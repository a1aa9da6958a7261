//! Decoded images as tensors, augmentation and batching.
//!
//! Owns: turning a [`LoadedDataset`] into device tensors once, fastai's `rand_pad` on whole
//! batches, and normalisation. Not scanning or decoding (`ringtrain_common::data`).
//!
//! ```text
//! training images  u8 [N, 28, 28] ──zero-pad 3──▶ u8 [N, 34, 34]   (once, kept on the device)
//! batch b          index_select(perm[b]) ▶ gather rows ▶ gather cols ▶ u8 [B, 28, 28]
//!                  ▶ f32 · 1/(255·std) − mean/std ▶ [B, 1, 28, 28]
//! ```
//! Crop offsets (0..=6 per axis, per image) and the shuffle come from `common::rng` streams keyed
//! by (seed, epoch, rank), uploaded once per epoch, so a step needs no host data and the order is a pure
//! function of (seed, epoch, rank): resuming at any step reproduces it.
//!
//! Tests: `tests` at the bottom.

use ringtrain_common::data::{DecodedSplit, LoadedDataset, PixelStats};
use ringtrain_common::rng::{Purpose, Stream};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// fastai `rand_pad(padding=3, size=28)`.
pub const PAD: i64 = 3;

/// Normalisation constants (single channel), recorded with the run for inference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: f64,
    pub std: f64,
}

impl Normalize {
    /// From the training pixels' statistics.
    pub fn from_stats(s: &PixelStats) -> Self {
        Self {
            mean: s.mean(),
            std: s.std(),
        }
    }

    /// u8 pixels → normalised f32, in place on a fresh float tensor.
    pub fn apply(&self, pixels_u8: &Tensor) -> Tensor {
        let mut x = pixels_u8.to_kind(Kind::Float);
        let _ = x.g_mul_scalar_(1.0 / (255.0 * self.std));
        let _ = x.g_add_scalar_(-self.mean / self.std);
        x
    }
}

fn images_tensor(split: &DecodedSplit, device: Device) -> Tensor {
    Tensor::from_slice(&split.pixels)
        .view([
            split.len() as i64,
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
    height: i64,
    width: i64,
    arange_h: Tensor,
    arange_w: Tensor,
    pub norm: Normalize,
}

/// Shuffle and crop offsets of one epoch, on the device.
#[derive(Debug)]
pub struct EpochPlan {
    perm: Tensor,
    offsets: Tensor,
    pub steps: usize,
    pub batch_size: usize,
}

impl TrainSet {
    pub fn new(split: &DecodedSplit, norm: Normalize, device: Device) -> Self {
        let images = images_tensor(split, device);
        let padded = images.constant_pad_nd([PAD, PAD, PAD, PAD]);
        let (h, w) = (i64::from(split.height), i64::from(split.width));
        Self {
            padded,
            labels: labels_tensor(split, device),
            len: split.len(),
            height: h,
            width: w,
            arange_h: Tensor::arange(h, (Kind::Int64, device)),
            arange_w: Tensor::arange(w, (Kind::Int64, device)),
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

    /// Shuffle and crops of `epoch` on `rank`; drops the last partial batch like fastai's train
    /// loader.
    pub fn plan_epoch(&self, seed: u64, epoch: u64, rank: u64, batch_size: usize) -> EpochPlan {
        let device = self.padded.device();
        let perm: Vec<i64> = Stream::new(seed, &[Purpose::Shuffle as u64, epoch, rank])
            .permutation(self.len)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let mut crop = Stream::new(seed, &[Purpose::Crop as u64, epoch, rank]);
        let span = (2 * PAD + 1) as u64;
        let offsets: Vec<i64> = (0..2 * self.len).map(|_| crop.below(span) as i64).collect();
        EpochPlan {
            perm: Tensor::from_slice(&perm).to_device(device),
            offsets: Tensor::from_slice(&offsets)
                .view([self.len as i64, 2])
                .to_device(device),
            steps: self.len / batch_size,
            batch_size,
        }
    }

    /// Batch `step` of `plan`: augmented, normalised images `[B, 1, H, W]` and labels `[B]`.
    pub fn batch(&self, plan: &EpochPlan, step: usize) -> (Tensor, Tensor) {
        let b = plan.batch_size as i64;
        let start = step as i64 * b;
        let idx = plan.perm.narrow(0, start, b);
        let off = plan.offsets.narrow(0, start, b);
        let imgs = self.padded.index_select(0, &idx);
        let pw = self.width + 2 * PAD;
        let rows = (off.narrow(1, 0, 1) + &self.arange_h.unsqueeze(0))
            .unsqueeze(2)
            .expand([b, self.height, pw], false);
        let imgs = imgs.gather(1, &rows, false);
        let cols = (off.narrow(1, 1, 1) + &self.arange_w.unsqueeze(0))
            .unsqueeze(1)
            .expand([b, self.height, self.width], false);
        let imgs = imgs.gather(2, &cols, false);
        (
            self.norm.apply(&imgs).unsqueeze(1),
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
    pub fn new(split: &DecodedSplit, norm: Normalize, device: Device) -> Self {
        Self {
            images: norm.apply(&images_tensor(split, device)).unsqueeze(1),
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
    Normalize::from_stats(&PixelStats::of(&ds.train.pixels))
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
            mean: 0.0,
            std: 1.0 / 255.0,
        };
        let ts = TrainSet::new(&s, norm, Device::Cpu);
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
                mean: 0.1,
                std: 0.3,
            },
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
            mean: 0.5,
            std: 0.25,
        };
        let x = n.apply(&Tensor::from_slice(&[0u8, 255, 51]));
        let v: Vec<f32> = Vec::<f32>::try_from(&x).unwrap();
        assert!(
            (v[0] + 2.0).abs() < 1e-6
                && (v[1] - 2.0).abs() < 1e-6
                && (v[2] - (0.2 - 0.5) / 0.25).abs() < 1e-5
        );
    }
}
