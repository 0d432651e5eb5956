//! Net's training step (crates/mnist-models/src/net.rs): one process equals the same network
//! written with libtorch's own training-mode `batch_norm` and autograd (loss, output, every
//! gradient, running statistics, counters); N simulated ranks with summed BatchNorm statistics
//! (SyncBatchNorm) equal one rank with the whole batch, for N = 2 and 3 and uneven batches;
//! dropout masks are reproducible per seed and rank and change the step.

use std::convert::Infallible;
use std::sync::{Arc, Barrier, Mutex};

use mnist_models::batchnorm::{EPS, MOMENTUM};
use mnist_models::net::{train_step, Dropout};
use mnist_models::{Model, ModelKind};
use tch::{Device, Kind, Reduction, Tensor};

fn identity(_: &mut [f64]) -> Result<(), Infallible> {
    Ok(())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Largest difference relative to the larger of 1 and `b`'s largest magnitude.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_diff(a, b) / b.abs().max().double_value(&[]).max(1.0)
}

/// Net's parameter values with BatchNorm weights and biases away from 1 and 0 (so a wrong
/// use of them shows), from seed 3.
fn weights() -> Vec<Vec<f32>> {
    tch::manual_seed(3);
    let m = Model::new(ModelKind::Net, Device::Cpu);
    let mut v = m.values();
    for (p, vals) in m.parameters().iter().zip(v.iter_mut()) {
        if p.name.starts_with("bn") {
            for (i, x) in vals.iter_mut().enumerate() {
                *x = if p.name.ends_with("weight") {
                    0.5 + (i % 7) as f32 * 0.2
                } else {
                    (i % 5) as f32 * 0.1 - 0.2
                };
            }
        }
    }
    v
}

fn net(values: &[Vec<f32>]) -> Model {
    let mut m = Model::new(ModelKind::Net, Device::Cpu);
    m.load_values(values).unwrap();
    m
}

fn batch(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let x = Tensor::randn([n, 1, 28, 28], (Kind::Float, Device::Cpu)) + 0.3;
    let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    (x, y)
}

fn grads(m: &Model) -> Vec<Tensor> {
    m.parameters()
        .iter()
        .map(|p| p.tensor.grad().copy())
        .collect()
}

#[test]
fn one_step_equals_libtorch_batch_norm_and_autograd() {
    tch::set_num_threads(1);
    let values = weights();
    let ours = net(&values);
    let reference = net(&values);
    let p = |i: usize| &reference.parameters()[i].tensor;
    let stats: Vec<Tensor> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                Tensor::zeros([if i < 2 { 32 } else { 64 }], (Kind::Float, Device::Cpu))
            } else {
                Tensor::ones([if i < 2 { 32 } else { 64 }], (Kind::Float, Device::Cpu))
            }
        })
        .collect();
    for (step, n) in [(0, 6), (1, 5)] {
        let (x, y) = batch(n, 10 + step);
        let out = train_step(&ours, &x, &y, 1.0, None, &mut identity).unwrap();

        let bn = |h: Tensor, w: usize, s: usize| {
            h.batch_norm(
                Some(p(w)),
                Some(p(w + 1)),
                Some(&stats[s]),
                Some(&stats[s + 1]),
                true,
                MOMENTUM,
                EPS,
                false,
            )
        };
        let h = x.conv2d(p(0), Some(p(1)), [1, 1], [0, 0], [1, 1], 1);
        let h = bn(h, 2, 0).relu();
        let h = h.conv2d(p(4), Some(p(5)), [1, 1], [0, 0], [1, 1], 1);
        let h = bn(h, 6, 2).relu().max_pool2d_default(2).flatten(1, -1);
        let h = h.linear(p(8), Some(p(9))).relu();
        let logp = h.linear(p(10), Some(p(11))).log_softmax(-1, Kind::Float);
        let loss = logp.g_nll_loss::<Tensor>(&y, None, Reduction::Mean, -100);
        loss.backward();

        let dl = (out.loss.double_value(&[]) - loss.double_value(&[])).abs();
        assert!(dl < 1e-5, "step {step}: loss differs by {dl}");
        let d = max_diff(&out.output, &logp);
        assert!(d < 1e-5, "step {step}: output differs by {d}");
        // Gradients accumulate over both steps in both models.
        for ((prm, a), b) in ours
            .parameters()
            .iter()
            .zip(grads(&ours))
            .zip(grads(&reference))
        {
            let d = rel_diff(&a, &b);
            assert!(
                d < 1e-5,
                "step {step}: {} gradient differs by {d}",
                prm.name
            );
        }
        let bufs = ours.buffers();
        for (i, s) in [0usize, 1, 3, 4].iter().zip(&stats) {
            let d = max_diff(&bufs[*i].tensor, s);
            assert!(d < 1e-5, "step {step}: {} differs by {d}", bufs[*i].name);
        }
        for i in [2, 5] {
            assert_eq!(
                bufs[i].tensor.int64_value(&[]),
                step + 1,
                "{}",
                bufs[i].name
            );
        }
    }
}

/// Sums each rank's vector over `ranks` threads, like an all-reduce.
struct FakeAllReduce {
    barrier: Barrier,
    acc: Mutex<Vec<f64>>,
}

impl FakeAllReduce {
    fn reduce(&self, v: &mut [f64]) {
        if self.barrier.wait().is_leader() {
            let mut acc = self.acc.lock().unwrap();
            acc.clear();
            acc.resize(v.len(), 0.0);
        }
        self.barrier.wait();
        {
            let mut acc = self.acc.lock().unwrap();
            for (a, x) in acc.iter_mut().zip(v.iter()) {
                *a += x;
            }
        }
        self.barrier.wait();
        v.copy_from_slice(&self.acc.lock().unwrap());
        self.barrier.wait();
    }
}

/// What a rank ends with after two steps: outputs per step, gradients, buffers.
struct RankOut {
    outputs: Vec<Tensor>,
    grads: Vec<Tensor>,
    buffers: Vec<Vec<f32>>,
}

/// Two steps on `sizes[r]` images per rank with summed statistics, against two steps of one
/// rank on all of them. Each rank's loss is weighted by its share of the batch, so the sum of
/// the ranks' gradients is the whole batch's (DDP averages equal shares the same way).
fn check_ranks(sizes: &[i64]) {
    tch::set_num_threads(1);
    let values = weights();
    let total: i64 = sizes.iter().sum();
    let batches: Vec<(Tensor, Tensor)> = (0..2).map(|s| batch(total, 20 + s)).collect();

    let whole = net(&values);
    let mut whole_outputs = Vec::new();
    for (x, y) in &batches {
        let out = train_step(&whole, x, y, 1.0, None, &mut identity).unwrap();
        whole_outputs.push(out.output);
    }

    let ar = Arc::new(FakeAllReduce {
        barrier: Barrier::new(sizes.len()),
        acc: Mutex::new(Vec::new()),
    });
    let mut lo = 0;
    let handles: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let parts: Vec<(Tensor, Tensor)> = batches
                .iter()
                .map(|(x, y)| (x.narrow(0, lo, n).copy(), y.narrow(0, lo, n).copy()))
                .collect();
            lo += n;
            let (ar, values) = (ar.clone(), values.clone());
            std::thread::spawn(move || {
                tch::set_num_threads(1);
                let m = net(&values);
                let mut reduce = |v: &mut [f64]| -> Result<(), Infallible> {
                    ar.reduce(v);
                    Ok(())
                };
                let outputs = parts
                    .iter()
                    .map(|(x, y)| {
                        train_step(&m, x, y, n as f64 / total as f64, None, &mut reduce)
                            .unwrap()
                            .output
                    })
                    .collect();
                RankOut {
                    outputs,
                    grads: grads(&m),
                    buffers: m.buffer_values(),
                }
            })
        })
        .collect();
    let ranks: Vec<RankOut> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    for (s, want) in whole_outputs.iter().enumerate() {
        let got = Tensor::cat(
            &ranks
                .iter()
                .map(|r| r.outputs[s].shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let d = max_diff(&got, want);
        assert!(d < 1e-5, "{sizes:?} step {s}: outputs differ by {d}");
    }
    for (i, (p, want)) in whole.parameters().iter().zip(grads(&whole)).enumerate() {
        let sum = ranks
            .iter()
            .map(|r| r.grads[i].shallow_clone())
            .reduce(|a, b| a + b)
            .unwrap();
        let d = rel_diff(&sum, &want);
        assert!(d < 1e-5, "{sizes:?}: {} gradient differs by {d}", p.name);
    }
    let want = whole.buffer_values();
    for (r, rank) in ranks.iter().enumerate() {
        for ((b, got), w) in whole.buffers().iter().zip(&rank.buffers).zip(&want) {
            let d = got
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-5, "{sizes:?}: rank {r} {} differs by {d}", b.name);
        }
    }
}

#[test]
fn two_ranks_with_sync_bn_equal_one_rank_with_the_whole_batch() {
    check_ranks(&[4, 4]);
    check_ranks(&[5, 2]);
}

#[test]
fn three_ranks_with_uneven_batches_equal_one_rank() {
    check_ranks(&[3, 3, 3]);
    check_ranks(&[4, 4, 1]);
}

/// Without summed statistics two ranks do NOT equal one rank (the test above can fail).
#[test]
fn unsynchronised_ranks_differ_from_the_whole_batch() {
    tch::set_num_threads(1);
    let values = weights();
    let (x, y) = batch(8, 30);
    let whole = net(&values);
    let want = train_step(&whole, &x, &y, 1.0, None, &mut identity)
        .unwrap()
        .output;
    let halves: Vec<Tensor> = (0..2)
        .map(|r| {
            let m = net(&values);
            let (xs, ys) = (x.narrow(0, 4 * r, 4), y.narrow(0, 4 * r, 4));
            train_step(&m, &xs, &ys, 0.5, None, &mut identity)
                .unwrap()
                .output
        })
        .collect();
    let d = max_diff(&Tensor::cat(&halves, 0), &want);
    assert!(
        d > 1e-3,
        "local statistics should change the output (diff {d})"
    );
}

#[test]
fn dropout_steps_are_reproducible_per_seed_and_rank() {
    tch::set_num_threads(1);
    let values = weights();
    let (x, y) = batch(6, 40);
    let loss = |d: Option<&mut Dropout>| {
        let m = net(&values);
        train_step(&m, &x, &y, 1.0, d, &mut identity)
            .unwrap()
            .loss
            .double_value(&[])
    };
    let plain = loss(None);
    let a = loss(Some(&mut Dropout::new(1, 0, 0)));
    let b = loss(Some(&mut Dropout::new(1, 0, 0)));
    let other = loss(Some(&mut Dropout::new(1, 1, 0)));
    assert_eq!(a, b, "same seed and rank: same masks, same loss");
    assert_ne!(a, plain, "dropout changes the step");
    assert_ne!(a, other, "another rank draws other masks");
}
