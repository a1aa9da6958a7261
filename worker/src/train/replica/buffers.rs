//! BatchNorm running statistics: collected, averaged across replicas, and hashed with the
//! parameters (the run's `params_hash`).

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::collective::{Collective, CollectiveError};
use crate::flat::FlatParams;

/// BatchNorm running statistics, sorted by name.
pub(super) fn buffers(vs: &VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// Averages BatchNorm running statistics across replicas (before validation and at the end), so
/// every replica validates and saves the same model.
pub(super) fn average_buffers(
    bufs: &[Tensor],
    collective: &mut dyn Collective,
) -> Result<(), CollectiveError> {
    if collective.world_size() == 1 || bufs.is_empty() {
        return Ok(());
    }
    let flat: Vec<Tensor> = bufs.iter().map(|b| b.reshape([-1])).collect();
    let mut flat = Tensor::cat(&flat, 0);
    collective.all_reduce_mean(&mut flat)?;
    let mut offset = 0;
    tch::no_grad(|| {
        for b in bufs {
            let n = b.numel() as i64;
            let mut b = b.shallow_clone();
            b.copy_(&flat.narrow(0, offset, n).view(b.size().as_slice()));
            offset += n;
        }
    });
    Ok(())
}

/// Parameters and buffers, hashed together.
pub(super) fn replica_hash(flat: &FlatParams, bufs: &[Tensor]) -> u64 {
    let mut h = flat.hash();
    for b in bufs {
        let host = b
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]);
        let v: Vec<f32> = Vec::<f32>::try_from(&host).unwrap_or_default();
        for x in v {
            h = (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
