//! What watching a run costs, measured part by part (`cargo bench -p mnist-train --bench
//! observe_overhead`; scripts/bench-overhead.sh runs it): the bookkeeping the training loop
//! does per step with the time breakdown and `--tensorboard` on (phase marks, step times, the
//! loss handle and wall time kept for TensorBoard), what rank 0 does per epoch (summarising the
//! step times, reading the losses, writing and flushing the events), and a LeNet training
//! step (batch 64, one thread: forward, backward, SGD) to compare them with. A run's wall time
//! on a shared machine scatters by far more than these costs; measured in isolation, they do
//! not depend on the load as much (each is the median of several repetitions).

use mnist_models::{Model, ModelKind};
use mnist_train::breakdown::{self, StepTimes};
use mnist_train::flat::FlatParams;
use mnist_train::optim::Sgd;
use mnist_train::phases::{Phase, StepMarks};
use mnist_train::split::BatchSplitter;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Steps of one epoch of 60,000 images at batch 64 on one process.
const STEPS: usize = 938;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per step of the per-step bookkeeping, over `n` steps.
fn per_step_bookkeeping(n: usize, loss: &Tensor) -> f64 {
    let mut times = StepTimes::default();
    let mut losses = Vec::with_capacity(n);
    let mut walls = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let mut m = StepMarks::start();
        for p in [
            Phase::Data,
            Phase::Forward,
            Phase::Backward,
            Phase::Check,
            Phase::Reduce,
            Phase::Optimizer,
        ] {
            m.mark(p);
        }
        times.push(m.compute(), m.reduce());
        losses.push(loss.shallow_clone());
        walls.push(mnist_tensorboard::now());
    }
    let s = t0.elapsed().as_secs_f64() / n as f64;
    assert_eq!((times.len(), losses.len(), walls.len()), (n, n, n));
    s
}

/// Seconds of rank 0's end-of-epoch work for an epoch of `STEPS` steps on 2 ranks.
fn per_epoch(dir: &std::path::Path) -> f64 {
    let times: Vec<StepTimes> = (0..2)
        .map(|r| StepTimes {
            compute_ms: (0..STEPS).map(|i| (10 + (i * 7 + r) % 5) as f32).collect(),
            reduce_ms: vec![1.0; STEPS],
        })
        .collect();
    let losses: Vec<Tensor> = (0..STEPS).map(|i| Tensor::from(i as f32)).collect();
    let mut w = mnist_tensorboard::EventWriter::create(dir).unwrap();
    let t0 = Instant::now();
    let b = breakdown::summarize(&times);
    let values = mnist_train::flat::tensor_to_vec(&Tensor::stack(&losses, 0));
    for (i, v) in values.iter().enumerate() {
        w.scalars(
            1.0,
            i as i64,
            &[("train/loss", *v as f64), ("train/lr", 0.01)],
        )
        .unwrap();
    }
    let epoch: Vec<(&str, f64)> = (0..13).map(|_| ("x", b.epoch_compute_s)).collect();
    w.scalars(1.0, STEPS as i64, &epoch).unwrap();
    w.flush().unwrap();
    t0.elapsed().as_secs_f64()
}

/// Seconds of one LeNet training step at batch 64 on one thread.
fn training_step(model: &Model, flat: &mut FlatParams, split: &mut BatchSplitter) -> f64 {
    let x = Tensor::randn([64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [64], (Kind::Int64, Device::Cpu));
    let mut sgd = Sgd::new(0.9, 5e-4);
    let t0 = Instant::now();
    let out = split.forward_backward(model, flat, &x, &y).unwrap();
    sgd.step(&mut flat.params, &mut flat.grads, 0.01);
    let _ = out.loss.double_value(&[]);
    t0.elapsed().as_secs_f64()
}

fn main() {
    tch::set_num_threads(1);
    tch::manual_seed(1);
    let loss = Tensor::from(0.5f32);
    let book = median(
        (0..7)
            .map(|_| per_step_bookkeeping(100_000, &loss))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let epoch = median((0..7).map(|_| per_epoch(dir.path())).collect());
    let mut model = Model::new(ModelKind::LeNet, Device::Cpu);
    let mut flat = FlatParams::new(&mut model);
    let mut split = BatchSplitter::new(&model, &flat, 1).unwrap();
    for _ in 0..10 {
        training_step(&model, &mut flat, &mut split); // warm-up
    }
    let step = median(
        (0..100)
            .map(|_| training_step(&model, &mut flat, &mut split))
            .collect(),
    );
    let loop_s = STEPS as f64 * step;
    let cost = STEPS as f64 * book + epoch;
    println!("observe_overhead: what the time breakdown and --tensorboard cost (medians)");
    println!(
        "  per step, bookkeeping:                {:>10.3} µs",
        book * 1e6
    );
    println!(
        "  per epoch, rank 0's summary + events: {:>10.3} ms ({STEPS} steps)",
        epoch * 1e3
    );
    println!(
        "  LeNet training step, batch 64, 1 thread: {:>7.3} ms",
        step * 1e3
    );
    println!(
        "  overhead on a {STEPS}-step epoch: {:.4}% ({:.2} ms of {:.1} s); target <= 2%: {}",
        100.0 * cost / loop_s,
        cost * 1e3,
        loop_s,
        if cost / loop_s <= 0.02 {
            "PASS"
        } else {
            "MISS"
        }
    );
}
