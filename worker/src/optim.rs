//! Adam with decoupled weight decay (fastai v1 `true_wd=True, bn_wd=True`), over flat buffers.
//!
//! For step t (1-based), learning rate `lr` and first-moment coefficient `beta1` (both from the
//! one-cycle schedule), on every element:
//! ```text
//! p ← p · (1 − lr·wd)                       decoupled weight decay, BN parameters included
//! m ← beta1·m + (1 − beta1)·g
//! v ← beta2·v + (1 − beta2)·g²
//! p ← p − lr/(1 − beta1^t) · m / (sqrt(v/(1 − beta2^t)) + eps)
//! ```
//! This is `torch.optim.AdamW` with the current `beta1` in the bias correction, which is what
//! fastai v1 ran (it sets `betas[0]` every batch). The moments are plain tensors laid out like
//! the flat parameters, so checkpoints can store them by parameter name.
//!
//! Tests: `tests` at the bottom (against a scalar reference implementation).

use tch::Tensor;

/// Fixed Adam hyper-parameters (the schedule supplies `lr` and `beta1` per step); part of the
/// training recipe, so defined with it in `ringtrain_common::recipe`.
pub use ringtrain_common::recipe::AdamConfig;

/// Optimiser state: both moments and the step count.
#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: u64,
}

impl Adam {
    /// Zero moments shaped like `params`.
    pub fn new(params: &Tensor, config: AdamConfig) -> Self {
        Self {
            config,
            exp_avg: params.zeros_like(),
            exp_avg_sq: params.zeros_like(),
            step: 0,
        }
    }

    /// One update of `params` from `grads` (same layout), without building an autograd graph.
    pub fn step(&mut self, params: &mut Tensor, grads: &Tensor, lr: f64, beta1: f64) {
        let c = self.config;
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        tch::no_grad(|| {
            if c.weight_decay != 0.0 {
                let _ = params.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = self.exp_avg.lerp_(grads, 1.0 - beta1);
            let _ = self.exp_avg_sq.g_mul_scalar_(c.beta2);
            let _ = self.exp_avg_sq.addcmul_(&(grads * (1.0 - c.beta2)), grads);
            let mut denom = (&self.exp_avg_sq / bias2).sqrt();
            let _ = denom.g_add_scalar_(c.eps);
            let _ = params.addcdiv_(&(&self.exp_avg * (-lr / bias1)), &denom);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Scalar AdamW, written independently from the formula in the module docs.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        t: i32,
        lr: f64,
        b1: f64,
        c: AdamConfig,
    ) {
        for i in 0..p.len() {
            p[i] *= 1.0 - lr * c.weight_decay;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let mhat = m[i] / (1.0 - b1.powi(t));
            let vhat = v[i] / (1.0 - c.beta2.powi(t));
            p[i] -= lr * mhat / (vhat.sqrt() + c.eps);
        }
    }

    #[test]
    fn matches_scalar_reference_with_changing_beta1() {
        let c = AdamConfig::default();
        let mut p = Tensor::from_slice(&[0.5f64, -1.0, 2.0, 0.0]).to_kind(Kind::Double);
        let mut adam = Adam::new(&p, c);
        let mut rp = vec![0.5, -1.0, 2.0, 0.0];
        let (mut rm, mut rv) = (vec![0.0; 4], vec![0.0; 4]);
        for t in 1..=5 {
            let gs: Vec<f64> = (0..4).map(|i| ((t * 7 + i) % 5) as f64 - 2.0).collect();
            let g = Tensor::from_slice(&gs);
            let (lr, b1) = (0.01 * t as f64, 0.95 - 0.02 * t as f64);
            adam.step(&mut p, &g, lr, b1);
            reference(&mut rp, &gs, &mut rm, &mut rv, t, lr, b1, c);
        }
        let got: Vec<f64> = Vec::<f64>::try_from(&p).unwrap();
        for (a, b) in got.iter().zip(&rp) {
            assert!((a - b).abs() < 1e-12, "{got:?} vs {rp:?}");
        }
        assert_eq!(adam.step, 5);
    }

    #[test]
    fn torch_adamw_agrees_on_float32() {
        // Same update through libtorch's own AdamW (tch nn::AdamW has no bias-correction quirks).
        let c = AdamConfig::default();
        let init = Tensor::randn([64], (Kind::Float, Device::Cpu));
        let mut p = init.copy();
        let mut adam = Adam::new(&p, c);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let q = vs.root().var_copy("q", &init);
        let mut opt = tch::nn::OptimizerConfig::build(
            tch::nn::AdamW {
                beta1: 0.9,
                beta2: c.beta2,
                wd: c.weight_decay,
                eps: c.eps,
                amsgrad: false,
            },
            &vs,
            1e-2,
        )
        .unwrap();
        for t in 0..3 {
            let g = Tensor::randn([64], (Kind::Float, Device::Cpu)) * (t + 1) as f64;
            adam.step(&mut p, &g, 1e-2, 0.9);
            opt.zero_grad();
            (&q * &g).sum(Kind::Float).backward();
            opt.step();
        }
        let diff = (&p - &q).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max diff {diff}");
    }
}
