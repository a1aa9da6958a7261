//! Host staging: the TCP ring for tensors on a GPU (`--collective ring` with CUDA workers).
//!
//! Copies the buffer to a reused CPU tensor, reduces it with the inner collective and copies
//! the result back. This is how several workers share one GPU (NCCL refuses two ranks on one
//! device) and how CUDA workers on machines without a usable NCCL still train. The copies
//! synchronise the host with the GPU once per step; the NCCL path avoids that.
//!
//! Tests: `tests` at the bottom (CPU tensors pass straight through; a CPU "device" tensor is
//! staged and reduced like any other).

use tch::{Device, Tensor};

use super::{Collective, CollectiveError};

/// Wraps a CPU-only collective so it accepts tensors on any device.
pub struct HostStaged<C> {
    inner: C,
    host: Option<Tensor>,
}

impl<C: Collective> HostStaged<C> {
    pub fn new(inner: C) -> Self {
        Self { inner, host: None }
    }

    /// The wrapped collective.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Collective> Collective for HostStaged<C> {
    fn rank(&self) -> u32 {
        self.inner.rank()
    }

    fn world_size(&self) -> u32 {
        self.inner.world_size()
    }

    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<(), CollectiveError> {
        if buf.device() == Device::Cpu {
            return self.inner.all_reduce_mean(buf);
        }
        let fits = self
            .host
            .as_ref()
            .is_some_and(|h| h.size() == buf.size() && h.kind() == buf.kind());
        if !fits {
            self.host = Some(Tensor::empty(buf.size(), (buf.kind(), Device::Cpu)));
        }
        let host = self.host.as_mut().ok_or_else(|| CollectiveError::Config {
            reason: "staging buffer missing".into(),
        })?;
        tch::no_grad(|| host.copy_(buf));
        self.inner.all_reduce_mean(host)?;
        tch::no_grad(|| buf.copy_(host));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    /// Adds one to every element: stands in for a peer's contribution.
    struct AddOne;
    impl Collective for AddOne {
        fn rank(&self) -> u32 {
            0
        }
        fn world_size(&self) -> u32 {
            2
        }
        fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<(), CollectiveError> {
            if buf.device() != Device::Cpu {
                return Err(CollectiveError::UnsupportedTensor {
                    reason: "cpu only".into(),
                });
            }
            tch::no_grad(|| {
                let _ = buf.g_add_scalar_(1.0);
            });
            Ok(())
        }
    }

    #[test]
    fn cpu_tensors_pass_straight_through() {
        let mut c = HostStaged::new(AddOne);
        let mut t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        c.all_reduce_mean(&mut t).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0; 3]);
        assert!(c.host.is_none(), "no staging buffer for CPU tensors");
        assert_eq!(c.world_size(), 2);
    }

    #[test]
    fn gpu_tensors_are_staged_through_the_host() {
        if !tch::Cuda::is_available() {
            // The CUDA half runs in tests/tests/gpu.rs (cuda-tests feature) on a GPU machine.
            return;
        }
        let mut c = HostStaged::new(AddOne);
        let mut t = Tensor::zeros([5], (Kind::Float, Device::Cuda(0)));
        c.all_reduce_mean(&mut t).unwrap();
        assert_eq!(t.device(), Device::Cuda(0));
        assert_eq!(
            Vec::<f32>::try_from(&t.to_device(Device::Cpu)).unwrap(),
            vec![1.0; 5]
        );
    }
}
