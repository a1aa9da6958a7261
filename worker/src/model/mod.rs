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
//! Tensor names follow the PyTorch `state_dict` of the lesson's `nn.Sequential` models, so a
//! checkpoint maps one-to-one onto the fastai model (e.g. `1.1.layers.0.2.weight` is the first
//! BN inside the second stage's res_block). These names are the checkpoint format: keep them.
//!
//! Tests: `tests` at the bottom (parameter counts, shapes, init, names).

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

/// A lesson-7 network: blocks, then flatten to `[batch, classes]`.
#[derive(Debug)]
pub struct Model {
    pub arch: Arch,
    pub blocks: Vec<Block>,
}

impl Model {
    /// Builds `arch` for `classes` outputs under `vs` with fastai's initialisation.
    ///
    /// The network maps 28×28 inputs to 1×1 after five stride-2 convolutions; other sizes would
    /// leave a spatial map, which `forward_t` rejects through the flatten shape check.
    pub fn new(vs: &nn::Path, arch: Arch, classes: i64) -> Self {
        let blocks = match arch {
            Arch::Basic => {
                let chans = [1, 8, 16, 32, 16, classes];
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
                let mut ni = 1;
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
        Self { arch, blocks }
    }

    /// Forward pass to logits `[batch, classes]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for b in &self.blocks {
            x = match b {
                Block::Conv(c) => c.forward_t(&x, train),
                Block::Res(r) => r.forward_t(&x, train),
            };
        }
        x.flatten(1, -1)
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
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Model::new(&vs.root(), arch, 10);
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
