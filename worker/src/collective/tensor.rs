//! [`Collective`] for the TCP [`Ring`]: a CPU f32 tensor reduced in place as `&mut [f32]`.
//!
//! Owns the checks that make borrowing a tensor's memory sound; the reduction itself is
//! `ring.rs`. No copy: the ring reads and writes the tensor's storage directly.
//!
//! # Contract
//! * Accepted: a defined, dense, contiguous `Kind::Float` tensor on `Device::Cpu` (any shape).
//!   Anything else is [`CollectiveError::UnsupportedTensor`], before any byte is sent, so the
//!   peers see the failure as a lost peer rather than reducing garbage.
//! * The write bypasses autograd's version counter, like any optimiser update of gradients;
//!   pass gradient buffers or detached data, not tensors saved for a backward pass.
//!
//! Tests: `tests` at the bottom (world size 2 through real sockets, rejections).

use tch::{Device, Kind, Tensor};

use super::{Collective, CollectiveError, Ring};

impl Collective for Ring {
    fn rank(&self) -> u32 {
        Ring::rank(self)
    }

    fn world_size(&self) -> u32 {
        Ring::world_size(self)
    }

    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<(), CollectiveError> {
        let data = cpu_f32_slice(buf)?;
        Ring::all_reduce_mean(self, data)
    }
}

/// Borrows the elements of a contiguous CPU f32 tensor as a mutable slice.
fn cpu_f32_slice(t: &mut Tensor) -> Result<&mut [f32], CollectiveError> {
    let unsupported = |reason: String| Err(CollectiveError::UnsupportedTensor { reason });
    // Order matters: the later queries throw (and tch panics) on undefined or sparse tensors.
    if !t.defined() {
        return unsupported("undefined tensor".into());
    }
    if t.is_sparse() || t.is_mkldnn() {
        return unsupported("not a dense (strided) tensor".into());
    }
    let device = t.device();
    if device != Device::Cpu {
        return unsupported(format!(
            "on {device:?}, the TCP ring reduces CPU tensors only"
        ));
    }
    match t.f_kind() {
        Ok(Kind::Float) => {}
        Ok(kind) => return unsupported(format!("dtype {kind:?}, the ring reduces f32 only")),
        Err(e) => return unsupported(format!("unknown dtype: {e}")),
    }
    if !t.is_contiguous() {
        return unsupported("not contiguous; call .contiguous() first".into());
    }
    let len = t.numel();
    if len == 0 {
        // An empty tensor may have a null data pointer, which a slice must never hold.
        return Ok(&mut []);
    }
    let ptr = t.data_ptr().cast::<f32>();
    if ptr.is_null() || !ptr.is_aligned() {
        return unsupported(format!(
            "data pointer {ptr:?} is null or not aligned for f32"
        ));
    }
    // SAFETY: checked above: the tensor is a defined, dense, contiguous f32 CPU tensor with
    // `len > 0` elements, so `ptr` (which includes the storage offset) points at `len`
    // initialised, properly aligned f32 values in one allocation. The slice borrows `t`
    // mutably, so this handle cannot be used or dropped while the slice lives; other handles
    // to the same storage (views, e.g. per-parameter gradients) belong to the training thread,
    // which is inside this call, and libtorch only touches them during ops started from it.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collective::ring::tests::on_ranks;

    fn rejected(t: &mut Tensor) -> bool {
        matches!(
            cpu_f32_slice(t),
            Err(CollectiveError::UnsupportedTensor { .. })
        )
    }

    #[test]
    fn mean_of_two_cpu_tensors_through_the_trait() {
        let out = on_ranks(2, Duration::from_secs(5), 3, |rank, mut ring| {
            let r = rank as f32;
            let data: Vec<f32> = (0..7).map(|i| i as f32 + 10.0 * r).collect();
            let mut t = Tensor::from_slice(&data).view([7, 1]);
            let c: &mut dyn Collective = &mut ring;
            assert_eq!((c.rank(), c.world_size()), (rank, 2));
            c.all_reduce_mean(&mut t).unwrap();
            assert_eq!(t.size(), [7, 1]);
            Vec::<f32>::try_from(&t.view([-1])).unwrap()
        });
        let want: Vec<f32> = (0..7).map(|i| i as f32 + 5.0).collect();
        assert_eq!(out, vec![want.clone(), want]);
    }

    #[test]
    fn borrows_the_tensor_storage_without_copying() {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let ptr = t.data_ptr() as usize;
        let s = cpu_f32_slice(&mut t).unwrap();
        assert_eq!(s.as_ptr() as usize, ptr);
        s[1] = 20.0;
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.0, 20.0, 3.0]);
        // A view with a storage offset starts at its own first element.
        let mut tail = t.narrow(0, 1, 2);
        assert_eq!(cpu_f32_slice(&mut tail).unwrap(), [20.0, 3.0]);
    }

    #[test]
    fn rejects_other_dtypes_layouts_and_empty_is_fine() {
        assert!(rejected(&mut Tensor::from_slice(&[1.0f64, 2.0])));
        assert!(rejected(&mut Tensor::from_slice(&[1i64, 2])));
        let m = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]);
        assert!(rejected(&mut m.tr()));
        assert!(rejected(&mut Tensor::new()));
        let mut empty = Tensor::from_slice::<f32>(&[]);
        assert_eq!(cpu_f32_slice(&mut empty).unwrap().len(), 0);
    }
}
