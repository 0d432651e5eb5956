//! Times one training step's forward and backward pass (`BatchSplitter::forward_backward`) on a
//! random LeNet batch, split into `parts` threads of one intra-op thread each.
//!
//! `cargo run --release -p mnist-train --example split_scaling -- [batch 64] [parts 2]`
use mnist_models::{Model, ModelKind};
use mnist_train::flat::FlatParams;
use mnist_train::split::BatchSplitter;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let n = *args.first().unwrap_or(&64) as i64;
    let parts = *args.get(1).unwrap_or(&2);
    tch::set_num_threads(1);
    let mut model = Model::new(ModelKind::LeNet, Device::Cpu);
    let mut flat = FlatParams::new(&mut model);
    let mut split = BatchSplitter::new(&model, &flat, parts).unwrap();
    let x = Tensor::randn([n, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    for _ in 0..20 {
        split.forward_backward(&model, &mut flat, &x, &y).unwrap();
    }
    let reps = 300;
    let s = Instant::now();
    for _ in 0..reps {
        split.forward_backward(&model, &mut flat, &x, &y).unwrap();
    }
    println!(
        "parts {parts}: {:.1} us per step (batch {n})",
        s.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
}
