//! All trainable parameters, and their gradients, as views into one flat buffer each.
//!
//! ```text
//!  params: [ 0.0.0.weight | 0.0.2.bias | 0.0.2.weight | ... ]   one f32 buffer, names sorted
//!  comm:   [ grads: same layout                   | control ]  one all-reduce per step
//! ```
//! `grads` is a view of `comm`; the extra `control` element rides along in the step's
//! all-reduce, so the ranks agree on a decision (stop and checkpoint now) at the same step
//! without another message.
//! With this layout a step needs one all-reduce and one fused optimiser update for the whole
//! model instead of one per tensor; that matters most on GPUs, where this small model is bound
//! by kernel launches.
//!
//! How: each parameter's storage is replaced by a view of the flat buffer (`set_data`), and so is
//! each gradient after a warm-up backward pass allocated it. Autograd then accumulates into the
//! existing gradient in place (`grad += new`, the no-grad-mode path of `AccumulateGrad`), i.e.
//! straight into the flat gradient buffer. [`FlatParams::check_aliasing`] verifies the layout.
//!
//! Tests: `tests` at the bottom.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Why the flat layout could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FlatError {
    /// The model has no trainable parameter.
    #[error("the model has no trainable parameters")]
    NoParams,
    /// A parameter got no gradient in the warm-up pass (it does not influence the loss).
    #[error("parameter {name} received no gradient in the warm-up pass")]
    NoGrad { name: String },
    /// A tensor does not alias the flat buffer although it should.
    #[error("{what} of parameter {name} does not alias the flat buffer")]
    NotAliased { name: String, what: &'static str },
}

/// One parameter's place in the flat buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<i64>,
    pub offset: i64,
    pub numel: i64,
}

/// Flat parameter and gradient buffers with the per-name layout.
#[derive(Debug)]
pub struct FlatParams {
    pub slots: Vec<Slot>,
    pub params: Tensor,
    /// The gradients: `comm[..numel]`.
    pub grads: Tensor,
    /// What the step's all-reduce reduces: the gradients and one control element.
    pub comm: Tensor,
    handles: Vec<Tensor>,
}

impl FlatParams {
    /// Moves every trainable variable of `vs` into one flat buffer.
    ///
    /// `warmup` must run a forward and backward pass that touches every parameter (use eval
    /// mode so BatchNorm running statistics are not changed); it allocates the gradients that
    /// are then re-pointed into the flat gradient buffer, which starts zeroed.
    pub fn new(vs: &VarStore, warmup: impl FnOnce()) -> Result<Self, FlatError> {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        if named.is_empty() {
            return Err(FlatError::NoParams);
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut slots = Vec::with_capacity(named.len());
        let mut offset = 0;
        for (name, t) in &named {
            let numel = t.numel() as i64;
            slots.push(Slot {
                name: name.clone(),
                shape: t.size(),
                offset,
                numel,
            });
            offset += numel;
        }
        let flat: Vec<Tensor> = named
            .iter()
            .map(|(_, t)| t.detach().reshape([-1]))
            .collect();
        let params = Tensor::cat(&flat, 0);
        let mut handles = Vec::with_capacity(named.len());
        for ((_, mut t), s) in named.into_iter().zip(&slots) {
            t.set_data(&params.narrow(0, s.offset, s.numel).view(s.shape.as_slice()));
            handles.push(t);
        }
        warmup();
        let n = params.numel() as i64;
        let comm = Tensor::zeros([n + 1], (params.kind(), params.device()));
        let grads = comm.narrow(0, 0, n);
        for (t, s) in handles.iter().zip(&slots) {
            let mut g = t.grad();
            if !g.defined() {
                return Err(FlatError::NoGrad {
                    name: s.name.clone(),
                });
            }
            g.set_data(&grads.narrow(0, s.offset, s.numel).view(s.shape.as_slice()));
        }
        let me = Self {
            slots,
            params,
            grads,
            comm,
            handles,
        };
        me.check_aliasing()?;
        Ok(me)
    }

    /// Total number of trainable parameters.
    pub fn numel(&self) -> i64 {
        self.params.numel() as i64
    }

    /// Checks that every parameter and gradient still points into the flat buffers.
    pub fn check_aliasing(&self) -> Result<(), FlatError> {
        let elem = self.params.kind().elt_size_in_bytes();
        let p0 = self.params.data_ptr() as usize;
        let g0 = self.grads.data_ptr() as usize;
        for (t, s) in self.handles.iter().zip(&self.slots) {
            let off = s.offset as usize * elem;
            if t.data_ptr() as usize != p0 + off {
                return Err(FlatError::NotAliased {
                    name: s.name.clone(),
                    what: "data",
                });
            }
            let g = t.grad();
            if !g.defined() || g.data_ptr() as usize != g0 + off {
                return Err(FlatError::NotAliased {
                    name: s.name.clone(),
                    what: "gradient",
                });
            }
        }
        Ok(())
    }

    /// Sets the control element that the next all-reduce of `comm` averages over the ranks.
    pub fn set_control(&mut self, value: f64) {
        let _ = self.comm.narrow(0, self.numel(), 1).fill_(value);
    }

    /// Sets the control element to the value of the one-element tensor `t`, on the device
    /// (no host synchronisation).
    pub fn set_control_from(&mut self, t: &Tensor) {
        self.comm
            .narrow(0, self.numel(), 1)
            .copy_(&t.detach().to_kind(self.comm.kind()).reshape([1]));
    }

    /// The control element (after the all-reduce: the mean over the ranks).
    pub fn control(&self) -> f64 {
        self.comm.double_value(&[self.numel()])
    }

    /// Zeroes all gradients (one kernel).
    pub fn zero_grad(&mut self) {
        let _ = self.grads.zero_();
    }

    /// A view of `buffer` (laid out like the parameters) for each parameter name.
    pub fn named_views<'a>(
        &'a self,
        buffer: &'a Tensor,
    ) -> impl Iterator<Item = (&'a str, Tensor)> + 'a {
        self.slots.iter().map(move |s| {
            (
                s.name.as_str(),
                buffer.narrow(0, s.offset, s.numel).view(s.shape.as_slice()),
            )
        })
    }

    /// A stable hash of the parameter bytes (replicas must agree bit for bit).
    pub fn hash(&self) -> u64 {
        let host = self
            .params
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let n = host.numel();
        let mut v = vec![0f32; n];
        host.copy_data(&mut v, n);
        // FNV-1a over the raw bits: order-sensitive and bit-exact.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for x in v {
            for b in x.to_bits().to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, Model};
    use tch::{Device, Kind};

    fn setup() -> (VarStore, Model, FlatParams) {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), Arch::Resnet, 1, 10, 28);
        let flat = FlatParams::new(&vs, || {
            let x = Tensor::ones([2, 1, 28, 28], (Kind::Float, Device::Cpu));
            model.forward_t(&x, false).sum(Kind::Float).backward();
        })
        .unwrap();
        (vs, model, flat)
    }

    #[test]
    fn params_and_grads_alias_the_flat_buffers() {
        let (vs, model, mut flat) = setup();
        assert_eq!(flat.numel(), 41_132);
        assert_eq!(flat.grads.abs().sum(Kind::Float).double_value(&[]), 0.0);
        // Backward writes into the flat gradient buffer (a conv outside the res branches, whose
        // gradients start at zero because their second BN has γ=0)...
        let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        model.forward_t(&x, true).sum(Kind::Float).backward();
        flat.check_aliasing().unwrap();
        let vars = vs.variables();
        let g = vars["2.0.0.weight"].grad();
        let s = flat
            .slots
            .iter()
            .find(|s| s.name == "2.0.0.weight")
            .unwrap();
        let from_flat = flat
            .grads
            .narrow(0, s.offset, s.numel)
            .view(s.shape.as_slice());
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(g.equal(&from_flat));
        // ...and a write to the flat parameter buffer is seen by the model.
        let _ = flat.params.fill_(0.5);
        assert_eq!(
            vars["0.0.0.weight"].mean(Kind::Float).double_value(&[]),
            0.5
        );
        flat.zero_grad();
        assert_eq!(
            vars["4.0.weight"]
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
    }

    #[test]
    fn hash_is_bit_sensitive() {
        let (_vs, _model, flat) = setup();
        let h = flat.hash();
        assert_eq!(h, flat.hash());
        let _ = flat.params.get(7).g_add_scalar_(1e-7);
        assert_ne!(h, flat.hash());
    }
}
