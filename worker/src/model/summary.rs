//! `learn.summary()` for the lesson-7 models: layer, output shape, parameters, trainable.
//!
//! Shapes come from a real forward pass of one `[1, in_channels, h, w]` image (the channels are
//! the model's) in eval mode, layer by layer. When the model pools (images above 32×32) an
//! `AdaptiveAvgPool2d` row comes before the `Flatten` row, as in fastai's summary of a model
//! ending in `AdaptiveAvgPool2d(1)`; otherwise the table is the lesson's.
//! Tests: `tests` at the bottom.

use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use super::layers::{ConvLayer, Tail};
use super::{Block, Model};

/// One row of the summary table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Layer type as PyTorch names it (`Conv2d`, `ReLU`, `BatchNorm2d`, `MergeLayer`,
    /// `AdaptiveAvgPool2d`, `Flatten`).
    pub layer: &'static str,
    /// Output shape without the batch dimension.
    pub shape: Vec<i64>,
    /// Parameter count.
    pub params: i64,
    /// Whether the layer has trainable parameters.
    pub trainable: bool,
}

fn push(rows: &mut Vec<Row>, layer: &'static str, t: &Tensor, params: i64) {
    rows.push(Row {
        layer,
        shape: t.size()[1..].to_vec(),
        params,
        trainable: params > 0,
    });
}

fn conv_rows(c: &ConvLayer, x: &Tensor, rows: &mut Vec<Row>) -> Tensor {
    let y = x.apply(&c.conv);
    let conv_params = c.conv.ws.numel() as i64 + c.conv.bs.as_ref().map_or(0, |b| b.numel() as i64);
    push(rows, "Conv2d", &y, conv_params);
    let bn_params = 2 * c.out_channels;
    match c.tail {
        Tail::ReluBn => {
            let y = y.relu();
            push(rows, "ReLU", &y, 0);
            let y = c.bn.forward_t(&y, false);
            push(rows, "BatchNorm2d", &y, bn_params);
            y
        }
        Tail::BnRelu | Tail::Bn => {
            let y = c.bn.forward_t(&y, false);
            push(rows, "BatchNorm2d", &y, bn_params);
            if c.tail == Tail::BnRelu {
                let y = y.relu();
                push(rows, "ReLU", &y, 0);
                y
            } else {
                y
            }
        }
    }
}

/// The summary rows of `model` for a `[1, model.in_channels, h, w]` input.
pub fn rows(model: &Model, h: i64, w: i64) -> Vec<Row> {
    tch::no_grad(|| {
        let mut rows = Vec::new();
        let mut x = Tensor::zeros([1, model.in_channels, h, w], (Kind::Float, Device::Cpu));
        for b in &model.blocks {
            x = match b {
                Block::Conv(c) => conv_rows(c, &x, &mut rows),
                Block::Res(r) => {
                    let y = conv_rows(&r.first, &x, &mut rows);
                    let y = conv_rows(&r.second, &y, &mut rows);
                    let y = if r.dense {
                        Tensor::cat(&[y, x], 1)
                    } else {
                        y + x
                    };
                    push(&mut rows, "MergeLayer", &y, 0);
                    y
                }
            };
        }
        if model.pool {
            x = x.adaptive_avg_pool2d([1, 1]);
            push(&mut rows, "AdaptiveAvgPool2d", &x, 0);
        }
        let y = x.flatten(1, -1);
        push(&mut rows, "Flatten", &y, 0);
        rows
    })
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The table as fastai v1 prints it.
pub fn render(model: &Model, rows: &[Row]) -> String {
    let rule = "=".repeat(70);
    let thin = "_".repeat(70);
    let mut s = format!("{} ({})\n{rule}\n", "Sequential", model.arch);
    s += &format!(
        "{:<20} {:<20} {:<10} {:<10}\n{rule}\n",
        "Layer (type)", "Output Shape", "Param #", "Trainable"
    );
    for r in rows {
        let shape = format!("{:?}", r.shape);
        s += &format!(
            "{:<20} {:<20} {:<10} {:<10}\n{thin}\n",
            r.layer,
            shape,
            thousands(r.params),
            if r.trainable { "True" } else { "False" }
        );
    }
    let total: i64 = rows.iter().map(|r| r.params).sum();
    s += &format!(
        "\nTotal params: {}\nTotal trainable params: {}\nTotal non-trainable params: 0\n",
        thousands(total),
        thousands(total)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;
    use tch::nn;

    #[test]
    fn resnet_summary_matches_the_lesson() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Model::new(&vs.root(), Arch::Resnet, 1, 10, 28);
        let rows = rows(&m, 28, 28);
        assert_eq!(
            rows[0],
            Row {
                layer: "Conv2d",
                shape: vec![8, 14, 14],
                params: 72,
                trainable: true
            }
        );
        assert_eq!(
            rows[2],
            Row {
                layer: "BatchNorm2d",
                shape: vec![8, 14, 14],
                params: 16,
                trainable: true
            }
        );
        assert_eq!(rows.iter().filter(|r| r.layer == "MergeLayer").count(), 4);
        assert_eq!(rows.last().unwrap().shape, vec![10]);
        assert_eq!(rows.iter().map(|r| r.params).sum::<i64>(), 41_132);
        assert!(rows.iter().all(|r| r.layer != "AdaptiveAvgPool2d"));
        let text = render(&m, &rows);
        assert!(text.contains("Total params: 41,132"), "{text}");
    }

    #[test]
    fn rgb_64_summary_pools_before_the_flatten() {
        for (arch, params) in [
            (Arch::Basic, 12_270),
            (Arch::Resnet, 41_276),
            (Arch::Dense, 53_084),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Model::new(&vs.root(), arch, 3, 10, 64);
            let rows = rows(&m, 64, 64);
            let first = &rows[0];
            assert_eq!(
                (first.layer, &first.shape[..]),
                ("Conv2d", &[8, 32, 32][..])
            );
            let n = rows.len();
            assert_eq!(
                rows[n - 2],
                Row {
                    layer: "AdaptiveAvgPool2d",
                    shape: vec![10, 1, 1],
                    params: 0,
                    trainable: false
                },
                "{arch}"
            );
            // The map the pool averages: 64 halved five times.
            assert_eq!(rows[n - 3].shape, vec![10, 2, 2], "{arch}");
            assert_eq!(
                rows[n - 1],
                Row {
                    layer: "Flatten",
                    shape: vec![10],
                    params: 0,
                    trainable: false
                },
                "{arch}"
            );
            assert_eq!(rows.iter().map(|r| r.params).sum::<i64>(), params, "{arch}");
            assert_eq!(params, m.num_params(), "{arch}");
        }
    }

    #[test]
    fn thousands_separator() {
        assert_eq!(thousands(12126), "12,126");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
