//! Validation of one replica's split: summed loss and correct count, batch size independent.

use tch::{Kind, Tensor};

use crate::amp::{autocast, Precision};
use crate::data::ValidSet;
use crate::model::Model;

/// Loss sum, correct count and count over the validation split, in eval mode, in batches of
/// `batch` (results do not depend on it).
pub(crate) fn validate(
    model: &Model,
    valid: &ValidSet,
    batch: usize,
    precision: Precision,
) -> (f64, u64, u64) {
    tch::no_grad(|| {
        let n = valid.len() as i64;
        let device = valid.images.device();
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        while start < n {
            let len = (batch as i64).min(n - start);
            let x = valid.images.narrow(0, start, len);
            let y = valid.labels.narrow(0, start, len);
            let logits =
                autocast(precision, device, || model.forward_t(&x, false)).to_kind(Kind::Float);
            let loss =
                logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0);
            loss_sum += loss.to_kind(Kind::Double);
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            start += len;
        }
        (
            loss_sum.double_value(&[]),
            correct.int64_value(&[]) as u64,
            n as u64,
        )
    })
}
