//! The building blocks of fast.ai v1 (`fastai/layers.py`), with fastai's initialisation.
//!
//! * `conv_layer(ni, nf, stride)` = Conv2d 3x3 (padding 1, no bias, kaiming normal, fan-in,
//!   gain sqrt 2 as `nn.init.kaiming_normal_`) → ReLU → BatchNorm2d with γ=1, β=1e-3
//!   (`batchnorm_2d`). With `zero_bn` γ starts at 0 (`NormType.BatchZero`).
//! * `plain_conv(ni, nf)` = PyTorch's default `nn.Conv2d(ni, nf, 3, stride=2, padding=1)`
//!   (kaiming uniform with a=sqrt 5, i.e. U(±1/sqrt(fan_in)) for weight and bias) → BatchNorm2d
//!   with PyTorch defaults γ=1, β=0, then optionally ReLU: the lesson's plain CNN.
//!
//! tch's defaults differ on purpose-relevant points (BN γ ~ U(0,1), conv bias on, kaiming
//! uniform), so every init here is explicit.

use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

/// BatchNorm momentum and eps: PyTorch's defaults, which fastai keeps.
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Order of the operations after the convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Conv → ReLU → BN (fastai `conv_layer`).
    ReluBn,
    /// Conv → BN → ReLU (the lesson's plain CNN).
    BnRelu,
    /// Conv → BN (last layer of the plain CNN).
    Bn,
}

/// A convolution followed by ReLU and BatchNorm in the order given by `tail`.
#[derive(Debug)]
pub struct ConvLayer {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
    pub tail: Tail,
    pub in_channels: i64,
    pub out_channels: i64,
    pub stride: i64,
}

fn bn(vs: nn::Path, nf: i64, gamma: f64, beta: f64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        cudnn_enabled: true,
        eps: BN_EPS,
        momentum: BN_MOMENTUM,
        affine: true,
        ws_init: Init::Const(gamma),
        bs_init: Init::Const(beta),
    };
    nn::batch_norm2d(vs, nf, config)
}

/// fastai v1 `conv_layer(ni, nf, ks=3, stride)`: names `{p}.0` (conv), `{p}.2` (bn) as in PyTorch's
/// `nn.Sequential(conv, relu, bn)` state dict.
pub fn conv_layer(p: &nn::Path, ni: i64, nf: i64, stride: i64, zero_bn: bool) -> ConvLayer {
    let config = nn::ConvConfig {
        stride,
        padding: 1,
        bias: false,
        ws_init: nn::init::DEFAULT_KAIMING_NORMAL,
        ..Default::default()
    };
    ConvLayer {
        conv: nn::conv2d(p / "0", ni, nf, 3, config),
        bn: bn(p / "2", nf, if zero_bn { 0.0 } else { 1.0 }, 1e-3),
        tail: Tail::ReluBn,
        in_channels: ni,
        out_channels: nf,
        stride,
    }
}

/// The lesson's plain `conv(ni, nf)` with PyTorch default init, followed by BN (and ReLU unless
/// `last`). Names `{conv}` and `{bn}` are given by the caller (flat `nn.Sequential` indices).
pub fn plain_conv(
    conv_path: nn::Path,
    bn_path: nn::Path,
    ni: i64,
    nf: i64,
    last: bool,
) -> ConvLayer {
    let bound = 1.0 / ((ni * 9) as f64).sqrt();
    let config = nn::ConvConfig {
        stride: 2,
        padding: 1,
        bias: true,
        ws_init: Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: Init::Uniform {
            lo: -bound,
            up: bound,
        },
        ..Default::default()
    };
    ConvLayer {
        conv: nn::conv2d(conv_path, ni, nf, 3, config),
        bn: bn(bn_path, nf, 1.0, 0.0),
        tail: if last { Tail::Bn } else { Tail::BnRelu },
        in_channels: ni,
        out_channels: nf,
        stride: 2,
    }
}

impl ConvLayer {
    /// Forward pass; `train` selects batch statistics (and updates running ones) in BN.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut y = xs.apply(&self.conv);
        match self.tail {
            // In-place ReLU is safe: conv backward needs its input and weight, not its output.
            Tail::ReluBn => self.bn.forward_t(&y.relu_(), train),
            Tail::BnRelu => self.bn.forward_t(&y, train).relu_(),
            Tail::Bn => self.bn.forward_t(&y, train),
        }
    }

    /// Trainable parameter count.
    pub fn num_params(&self) -> i64 {
        let conv =
            self.conv.ws.numel() as i64 + self.conv.bs.as_ref().map_or(0, |b| b.numel() as i64);
        conv + 2 * self.out_channels
    }
}

/// fastai v1 `res_block(nf, dense)`: `x + f(x)` (or `cat([f(x), x])` when dense), where
/// f = conv_layer → conv_layer and the second BN starts at γ=0 unless dense (fastai only zeroes
/// it for the additive merge). Names `{p}.layers.0`, `{p}.layers.1` as fastai's `SequentialEx`.
#[derive(Debug)]
pub struct ResBlock {
    pub first: ConvLayer,
    pub second: ConvLayer,
    pub dense: bool,
}

impl ResBlock {
    pub fn new(p: &nn::Path, nf: i64, dense: bool) -> Self {
        let layers = p / "layers";
        Self {
            first: conv_layer(&(&layers / "0"), nf, nf, 1, false),
            second: conv_layer(&(&layers / "1"), nf, nf, 1, !dense),
            dense,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self
            .second
            .forward_t(&self.first.forward_t(xs, train), train);
        if self.dense {
            // fastai MergeLayer(dense=True): torch.cat([x, x.orig], dim=1).
            Tensor::cat(&[y, xs.shallow_clone()], 1)
        } else {
            y + xs
        }
    }

    /// Channels coming out of the merge.
    pub fn out_channels(&self) -> i64 {
        if self.dense {
            2 * self.second.out_channels
        } else {
            self.second.out_channels
        }
    }
}
