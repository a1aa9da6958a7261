//! Times the parts of one training step (augment, forward, backward, optimiser) on random data.
//! `cargo run --release -p ringtrain-worker --example stepbench -- [threads] [steps]`

use std::time::Instant;

use ringtrain_common::data::DecodedSplit;
use ringtrain_worker::data::{Normalize, TrainSet};
use ringtrain_worker::flat::FlatParams;
use ringtrain_worker::model::{Arch, Model};
use ringtrain_worker::optim::{Adam, AdamConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    tch::set_num_threads(threads);
    let n = 128 * (steps + 5);
    let split = DecodedSplit {
        channels: 1,
        height: 28,
        width: 28,
        pixels: (0..n * 784).map(|i| (i % 251) as u8).collect(),
        labels: (0..n as u32).map(|i| i % 10).collect(),
    };
    let ts = TrainSet::new(
        &split,
        Normalize {
            mean: vec![0.13],
            std: vec![0.31],
        },
        ringtrain_common::data::Augment::default(),
        Device::Cpu,
    );
    let plan = ts.plan_epoch(1, 0, 0, 128);
    let vs = VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), Arch::Resnet, 1, 10, 28);
    let mut flat = FlatParams::new(&vs, || {
        model
            .forward_t(
                &Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)),
                false,
            )
            .sum(Kind::Float)
            .backward();
    })
    .unwrap();
    let mut adam = Adam::new(&flat.params, AdamConfig::default());
    let (mut ta, mut tf, mut tb, mut to) = (0.0, 0.0, 0.0, 0.0);
    for s in 0..steps + 5 {
        let t0 = Instant::now();
        let (x, y) = ts.batch(&plan, s);
        let t1 = Instant::now();
        let loss = model.forward_t(&x, true).cross_entropy_for_logits(&y);
        let t2 = Instant::now();
        flat.zero_grad();
        loss.backward();
        let t3 = Instant::now();
        adam.step(&mut flat.params, &flat.grads, 1e-3, 0.9);
        let _ = loss.double_value(&[]);
        let t4 = Instant::now();
        if s >= 5 {
            ta += (t1 - t0).as_secs_f64();
            tf += (t2 - t1).as_secs_f64();
            tb += (t3 - t2).as_secs_f64();
            to += (t4 - t3).as_secs_f64();
        }
    }
    let k = 1000.0 / steps as f64;
    let total = ta + tf + tb + to;
    println!(
        "threads {threads}: augment {:.2} ms, forward {:.1} ms, backward {:.1} ms, optim {:.2} ms; {:.0} img/s",
        ta * k, tf * k, tb * k, to * k, (steps * 128) as f64 / total
    );
}
