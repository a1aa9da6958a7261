//! The lesson-7 MNIST models (fast.ai course-v3, lesson 7, fastai v1), built with tch.
//!
//! Dataset: MNIST as 28×28 grayscale images, 10 classes. Expected accuracy on the 10,000 test
//! images with the lesson's recipe (Adam, one-cycle, batch 128, `rand_pad`):
//!
//! | arch     | definition                                              | params | epochs/max_lr | lesson |
//! |----------|---------------------------------------------------------|--------|---------------|--------|
//! | `basic`  | 5 × [Conv(bias) → BN → ReLU], last without ReLU, 1-8-16-32-16-10 | 12,126 | 3 / 0.1 | 98.64% |
//! | `resnet` | conv2(1,8)+res(8), conv2(8,16)+res(16), conv2(16,32)+res(32), conv2(32,16)+res(16), conv2(16,10) | 41,132 | 12 / 0.05 | 99.54% |
//! | `dense`  | `resnet` with concatenating merges (DenseNet-style)     | 52,940 | —             | —      |
//!
//! # Other image folders
//! The input channels and the classes come from the data: the first convolution of every arch
//! takes `in_channels` (1 for grayscale, 3 for RGB; at 3 each table count grows by 144, the first
//! conv's extra 2 × 8 × 3 × 3 weights) and the last one outputs `classes`. The five stride-2
//! convolutions map an `s`×`s` image to [`final_size`]`(s)` = ⌈s/32⌉:
//!
//! ```text
//! 28 → 14 → 7 → 4 → 2 → 1    flatten                  (the lesson, unchanged)
//! 64 → 32 → 16 → 8 → 4 → 2   AdaptiveAvgPool2d(1) → flatten
//! ```
//!
//! Up to 32×32 the head is the lesson's bare flatten; above, it first averages the map to 1×1
//! (fastai's `AdaptiveAvgPool2d`), which has no parameters, so names and counts do not change
//! and the pooled network also takes non-square inputs.
//!
//! Tensor names follow the PyTorch `state_dict` of the lesson's `nn.Sequential` models, so a
//! checkpoint maps one-to-one onto the fastai model (e.g. `1.1.layers.0.2.weight` is the first
//! BN inside the second stage's res_block). These names are the checkpoint format: keep them.
//!
//! Tests: `tests` at the bottom (parameter counts, shapes per size and channels, the unpooled
//! 28×28 head, init, names).

pub mod layers;
pub mod summary;

use tch::nn;
use tch::Tensor;

use layers::{conv_layer, plain_conv, ConvLayer, ResBlock};

/// Which lesson-7 network: the recipe's `Model` (one enum for the coordinator and the worker),
/// named `Arch` here because [`Model`] is the network itself.
pub use ringtrain_common::recipe::Model as Arch;

/// One stage of a network.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a handful per model, built once
pub enum Block {
    /// A convolution with BN and ReLU.
    Conv(ConvLayer),
    /// A residual (or dense) block.
    Res(ResBlock),
}

/// Stride-2 convolutions between the input and the head: each halves the side, rounding up.
const DOWNSAMPLINGS: u32 = 5;

/// Side of the last feature map for an `image_size`×`image_size` input: ⌈image_size/32⌉, since
/// each 3×3 convolution with padding 1 and stride 2 maps a side `s` to `(s + 1) / 2`.
pub fn final_size(image_size: i64) -> i64 {
    (0..DOWNSAMPLINGS).fold(image_size, |s, _| (s + 1) / 2)
}

/// A lesson-7 network: blocks, then (for images above 32×32) global average pooling, then
/// flatten to `[batch, classes]`.
#[derive(Debug)]
pub struct Model {
    pub arch: Arch,
    pub blocks: Vec<Block>,
    /// Channels of the input images.
    pub in_channels: i64,
    /// Side of the square images the network was built for.
    pub image_size: i64,
    /// Whether the head averages the last feature map to 1×1 before the flatten: true exactly
    /// when [`final_size`]`(image_size) > 1`.
    pub pool: bool,
}

impl Model {
    /// Builds `arch` for `in_channels`-channel `image_size`×`image_size` images and `classes`
    /// outputs under `vs` with fastai's initialisation.
    ///
    /// Valid inputs, checked by the caller (the data layer knows them): `in_channels ≥ 1` (1 or 3
    /// from the data), `classes ≥ 1`, `image_size ≥ 1`. `image_size` only chooses the head
    /// ([`Model::pool`]): at 1 channel the tensors and their initial values are the lesson's at
    /// any size, and up to 32×32 the forward pass is too.
    ///
    /// Without pooling the last map must be 1×1, or the logits flatten to
    /// `[batch, classes·h'·w']`; with pooling any input, square or not, gives `[batch, classes]`.
    pub fn new(vs: &nn::Path, arch: Arch, in_channels: i64, classes: i64, image_size: i64) -> Self {
        let blocks = match arch {
            Arch::Basic => {
                let chans = [in_channels, 8, 16, 32, 16, classes];
                (0..5)
                    .map(|i| {
                        let (c, b) = (3 * i, 3 * i + 1);
                        Block::Conv(plain_conv(
                            vs / c.to_string(),
                            vs / b.to_string(),
                            chans[i],
                            chans[i + 1],
                            i == 4,
                        ))
                    })
                    .collect()
            }
            Arch::Resnet | Arch::Dense => {
                let dense = arch == Arch::Dense;
                let mut blocks = Vec::new();
                let mut ni = in_channels;
                for (i, nf) in [8, 16, 32, 16].into_iter().enumerate() {
                    let stage = vs / i.to_string();
                    blocks.push(Block::Conv(conv_layer(&(&stage / "0"), ni, nf, 2, false)));
                    let res = ResBlock::new(&(&stage / "1"), nf, dense);
                    ni = res.out_channels();
                    blocks.push(Block::Res(res));
                }
                blocks.push(Block::Conv(conv_layer(&(vs / "4"), ni, classes, 2, false)));
                blocks
            }
        };
        Self {
            arch,
            blocks,
            in_channels,
            image_size,
            pool: final_size(image_size) > 1,
        }
    }

    /// Forward pass of `[batch, in_channels, h, w]` images to logits `[batch, classes]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.features_t(xs, train);
        // Only add the pooling op when the map can be larger than 1×1: at 28×28 the graph (and
        // so every bit of the lesson's run) stays exactly blocks → flatten.
        let x = if self.pool {
            x.adaptive_avg_pool2d([1, 1])
        } else {
            x
        };
        x.flatten(1, -1)
    }

    /// The blocks alone: the last feature map `[batch, classes, h', w']` before the head.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for b in &self.blocks {
            x = match b {
                Block::Conv(c) => c.forward_t(&x, train),
                Block::Res(r) => r.forward_t(&x, train),
            };
        }
        x
    }

    /// Trainable parameter count.
    pub fn num_params(&self) -> i64 {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Conv(c) => c.num_params(),
                Block::Res(r) => r.first.num_params() + r.second.num_params(),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn build(arch: Arch) -> (nn::VarStore, Model) {
        build_for(arch, 1, 28)
    }

    fn build_for(arch: Arch, in_channels: i64, image_size: i64) -> (nn::VarStore, Model) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Model::new(&vs.root(), arch, in_channels, 10, image_size);
        (vs, m)
    }

    fn trainable(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn parameter_counts_match_the_lesson() {
        for (arch, want) in [
            (Arch::Basic, 12_126),
            (Arch::Resnet, 41_132),
            (Arch::Dense, 52_940),
        ] {
            let (vs, m) = build(arch);
            assert_eq!(m.num_params(), want, "{arch}");
            assert_eq!(trainable(&vs), want, "{arch} (var store)");
        }
    }

    #[test]
    fn parameter_counts_at_three_channels() {
        // Only the first conv sees the input: 8 filters × 2 more channels × 3×3 = 144 weights.
        for (arch, want) in [
            (Arch::Basic, 12_270),
            (Arch::Resnet, 41_276),
            (Arch::Dense, 53_084),
        ] {
            let (vs, m) = build_for(arch, 3, 28);
            assert_eq!(m.num_params(), want, "{arch}");
            assert_eq!(trainable(&vs), want, "{arch} (var store)");
            let first = if arch == Arch::Basic {
                "0.weight"
            } else {
                "0.0.0.weight"
            };
            assert_eq!(vs.variables()[first].size(), vec![8, 3, 3, 3], "{arch}");
        }
    }

    #[test]
    fn names_and_shapes_do_not_depend_on_the_size() {
        // The checkpoint format: the pooling head adds no tensor. (Initial values are not
        // compared: tests run in parallel and share the global RNG.)
        let shapes = |vs: &nn::VarStore| {
            let mut n: Vec<_> = vs
                .variables()
                .into_iter()
                .map(|(name, t)| (name, t.size()))
                .collect();
            n.sort();
            n
        };
        for arch in Arch::ALL {
            let (vs28, m28) = build_for(arch, 1, 28);
            let (vs96, m96) = build_for(arch, 1, 96);
            assert!(!m28.pool && m96.pool);
            assert_eq!(shapes(&vs28), shapes(&vs96), "{arch}");
            assert_eq!(m28.num_params(), m96.num_params(), "{arch}");
        }
    }

    #[test]
    fn final_size_halves_five_times_rounding_up() {
        for (s, want) in [
            (1, 1),
            (8, 1),
            (16, 1),
            (28, 1),
            (32, 1),
            (33, 2),
            (40, 2),
            (64, 2),
        ] {
            assert_eq!(final_size(s), want, "{s}");
        }
        assert_eq!(final_size(96), 3);
        assert_eq!(final_size(224), 7);
        // Against the layers themselves: the feature map of a real forward pass.
        for arch in Arch::ALL {
            for s in [8, 28, 33, 64, 96] {
                let (_vs, m) = build_for(arch, 1, s);
                let x = Tensor::randn([2, 1, s, s], (Kind::Float, Device::Cpu));
                let f = final_size(s);
                assert_eq!(
                    m.features_t(&x, false).size(),
                    vec![2, 10, f, f],
                    "{arch} {s}"
                );
            }
        }
    }

    #[test]
    fn pooling_head_only_above_32() {
        for (s, pool) in [
            (8, false),
            (16, false),
            (28, false),
            (32, false),
            (33, true),
            (64, true),
        ] {
            let (_vs, m) = build_for(Arch::Resnet, 3, s);
            assert_eq!(m.pool, pool, "{s}");
            assert_eq!((m.in_channels, m.image_size), (3, s));
        }
    }

    #[test]
    fn unpooled_head_is_blocks_then_flatten() {
        // The lesson's arithmetic: at 28×28 (and 32×32) the logits are the blocks' 1×1 map
        // flattened, bit for bit, with no pooling op in between.
        for arch in Arch::ALL {
            for s in [28, 32] {
                let (_vs, m) = build_for(arch, 1, s);
                assert!(!m.pool);
                let x = Tensor::randn([4, 1, s, s], (Kind::Float, Device::Cpu));
                for train in [false, true] {
                    let bare = m.features_t(&x, train).flatten(1, -1);
                    assert!(m.forward_t(&x, train).equal(&bare), "{arch} {s} {train}");
                }
            }
        }
    }

    #[test]
    fn pooled_head_averages_the_last_map() {
        for arch in Arch::ALL {
            let (_vs, m) = build_for(arch, 3, 64);
            let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            let f = m.features_t(&x, false);
            assert_eq!(f.size(), vec![2, 10, 2, 2]);
            let mean = f.mean_dim([2, 3].as_slice(), false, Kind::Float);
            let y = m.forward_t(&x, false);
            assert!(y.allclose(&mean, 1e-6, 1e-6, false), "{arch}");
        }
    }

    #[test]
    fn logits_shape_for_every_size_and_channel_count() {
        // (built for, input h, input w); 40×48 is non-square, which only the pooled head takes.
        let sizes = [
            (8, 8, 8),
            (16, 16, 16),
            (28, 28, 28),
            (32, 32, 32),
            (48, 40, 48),
            (64, 64, 64),
            (96, 96, 96),
        ];
        for arch in Arch::ALL {
            for channels in [1, 3] {
                for (size, h, w) in sizes {
                    let (_vs, m) = build_for(arch, channels, size);
                    let x = Tensor::randn([2, channels, h, w], (Kind::Float, Device::Cpu));
                    for train in [true, false] {
                        let y = m.forward_t(&x, train);
                        assert_eq!(y.size(), vec![2, 10], "{arch} {channels}×{h}×{w} {train}");
                    }
                }
            }
        }
    }

    #[test]
    fn classes_set_the_logits() {
        for arch in Arch::ALL {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Model::new(&vs.root(), arch, 3, 37, 64);
            let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            assert_eq!(m.forward_t(&x, false).size(), vec![2, 37], "{arch}");
        }
    }

    #[test]
    fn logits_shape_for_every_arch() {
        for arch in Arch::ALL {
            let (_vs, m) = build(arch);
            let x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
            assert_eq!(m.forward_t(&x, true).size(), vec![3, 10], "{arch}");
            assert_eq!(m.forward_t(&x, false).size(), vec![3, 10], "{arch}");
        }
    }

    #[test]
    fn fastai_init() {
        let (vs, _m) = build(Arch::Resnet);
        let vars = vs.variables();
        // conv_layer BN: γ=1, β=1e-3; second BN of a res_block: γ=0.
        assert_eq!(
            vars["0.0.2.weight"].mean(Kind::Float).double_value(&[]),
            1.0
        );
        assert!((vars["0.0.2.bias"].mean(Kind::Float).double_value(&[]) - 1e-3).abs() < 1e-9);
        assert_eq!(
            vars["0.1.layers.1.2.weight"]
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        assert_eq!(
            vars["0.1.layers.0.2.weight"]
                .mean(Kind::Float)
                .double_value(&[]),
            1.0
        );
        assert!(
            !vars.contains_key("0.0.0.bias"),
            "fastai conv_layer has no conv bias"
        );
        // kaiming normal, fan-in, gain sqrt 2: std = sqrt(2 / (32*9)) for the 32->32 convs.
        let w = &vars["2.1.layers.0.0.weight"];
        let std = w.std(true).double_value(&[]);
        let want = (2.0f64 / (32.0 * 9.0)).sqrt();
        assert!((std - want).abs() / want < 0.05, "std {std} want {want}");
        assert!(w.mean(Kind::Float).double_value(&[]).abs() < 0.01);
    }

    #[test]
    fn plain_cnn_uses_pytorch_defaults() {
        let (vs, _m) = build(Arch::Basic);
        let vars = vs.variables();
        let bound = 1.0 / (8.0f64 * 9.0).sqrt();
        let w = &vars["3.weight"];
        assert!(w.abs().max().double_value(&[]) <= bound);
        assert!(vars["3.bias"].abs().max().double_value(&[]) <= bound);
        assert_eq!(vars["4.weight"].mean(Kind::Float).double_value(&[]), 1.0);
        assert_eq!(vars["4.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(vars.contains_key("13.running_var"));
    }

    #[test]
    fn dense_block_concatenates() {
        let (vs, _m) = build(Arch::Dense);
        let vars = vs.variables();
        // conv2(16 -> 16) after dense(8): input channels doubled.
        assert_eq!(vars["1.0.0.weight"].size(), vec![16, 16, 3, 3]);
        // dense blocks keep γ=1 in their second BN (fastai zeroes it only for additive merges).
        assert_eq!(
            vars["0.1.layers.1.2.weight"]
                .mean(Kind::Float)
                .double_value(&[]),
            1.0
        );
    }

    #[test]
    fn arch_parses() {
        assert_eq!("resnet".parse::<Arch>().unwrap(), Arch::Resnet);
        assert!("resnet50".parse::<Arch>().is_err());
    }
}
