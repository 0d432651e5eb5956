//! Net's training step (crates/mnist-models/src/net.rs): one process equals the same network
//! written with libtorch's own training-mode `batch_norm` and autograd (loss, output, every
//! gradient, running statistics, counters); N simulated ranks with summed BatchNorm statistics
//! (SyncBatchNorm) equal one rank with the whole batch, for N = 2 and 3 and uneven batches;
//! dropout masks are reproducible per seed and rank and change the step; training-mode
//! dropout is PyTorch's (`x * keep / (1 - p)` after the pooling and after `fc1`) and keeps
//! a share 1 - p of the values, per layer and per mask.

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

/// Training-mode dropout is PyTorch's `F.dropout` at PyTorch's places: with the masks a
/// [`Dropout`] stream draws (which values are kept), a step equals the same network written
/// with libtorch's `batch_norm` and dropout as `x * keep / (1 - p)` after the pooling (p 0.25)
/// and after `fc1`'s relu (p 0.5): loss, output and every gradient to 1e-5.
#[test]
fn training_dropout_is_pytorchs_dropout_at_pytorchs_places() {
    tch::set_num_threads(1);
    let values = weights();
    let ours = net(&values);
    let reference = net(&values);
    let (x, y) = batch(6, 50);
    let mut d = Dropout::at_batch(1, 0, 2, 7);
    let mut masks = d.clone();
    let out = train_step(&ours, &x, &y, 1.0, Some(&mut d), &mut identity).unwrap();

    let keep1 = masks.mask(&[6, 64, 12, 12], 0.25, Device::Cpu).ne(0.0);
    let keep2 = masks.mask(&[6, 128], 0.5, Device::Cpu).ne(0.0);
    let dropped = |keep: &Tensor| {
        1.0 - keep
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    };
    // Both masks drop something and keep something: the comparison below tests dropout.
    assert!((0.1..0.4).contains(&dropped(&keep1)), "{}", dropped(&keep1));
    assert!((0.3..0.7).contains(&dropped(&keep2)), "{}", dropped(&keep2));
    let p = |i: usize| &reference.parameters()[i].tensor;
    let b = |i: usize| reference.buffers()[i].tensor.shallow_clone();
    let bn = |h: Tensor, w: usize, s: usize| {
        h.batch_norm(
            Some(p(w)),
            Some(p(w + 1)),
            Some(&b(s)),
            Some(&b(s + 1)),
            true,
            MOMENTUM,
            EPS,
            false,
        )
    };
    let h = x.conv2d(p(0), Some(p(1)), [1, 1], [0, 0], [1, 1], 1);
    let h = bn(h, 2, 0).relu();
    let h = h.conv2d(p(4), Some(p(5)), [1, 1], [0, 0], [1, 1], 1);
    let h = bn(h, 6, 3).relu().max_pool2d_default(2);
    let h = h * keep1.to_kind(Kind::Float) / 0.75;
    let h = h.flatten(1, -1).linear(p(8), Some(p(9))).relu();
    let h = h * keep2.to_kind(Kind::Float) / 0.5;
    let logp = h.linear(p(10), Some(p(11))).log_softmax(-1, Kind::Float);
    let loss = logp.g_nll_loss::<Tensor>(&y, None, Reduction::Mean, -100);
    loss.backward();

    let dl = (out.loss.double_value(&[]) - loss.double_value(&[])).abs();
    assert!(dl < 1e-5, "loss differs by {dl}");
    let d = max_diff(&out.output, &logp);
    assert!(d < 1e-5, "output differs by {d}");
    for ((prm, a), b) in ours
        .parameters()
        .iter()
        .zip(grads(&ours))
        .zip(grads(&reference))
    {
        let d = rel_diff(&a, &b);
        assert!(d < 1e-5, "{} gradient differs by {d}", prm.name);
    }
}

/// The keep rate of the masks the trainer draws (`Dropout::at_batch`, Net's shapes at batch
/// 32, 2 ranks × 40 batches of an epoch) is 1 - p, per layer and per mask, kept values are
/// scaled by exactly 1/(1 - p), and masks of different batches and ranks are independent
/// (they agree on a share p² + (1-p)² of positions). Bounds are 6 standard deviations of the
/// binomial share (a fair stream fails one with probability < 2e-9; the seeds are fixed, so
/// the test is deterministic anyway); a stream that drops p/2 too many or reuses a mask fails.
#[test]
fn dropout_keep_rate_per_layer_and_mask_is_one_minus_p() {
    let six_sigma = |p: f64, n: f64| 6.0 * (p * (1.0 - p) / n).sqrt();
    for (shape, p) in [(vec![32i64, 64, 12, 12], 0.25), (vec![32, 128], 0.5)] {
        let per_mask = shape.iter().product::<i64>() as f64;
        let (mut kept, mut total) = (0.0, 0.0);
        let mut previous: Option<Tensor> = None;
        let (mut agree, mut pairs) = (0.0, 0.0);
        for rank in 0..2 {
            for b in 0..40 {
                let mut d = Dropout::at_batch(1, rank, 3, b);
                // Net draws the first mask, then the second, from each batch's stream.
                if p == 0.5 {
                    let _ = d.mask(&[32, 64, 12, 12], 0.25, Device::Cpu);
                }
                let m = d.mask(&shape, p, Device::Cpu);
                let keep = m.ne(0.0);
                let k = keep.to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
                let share = k / per_mask;
                assert!(
                    (share - (1.0 - p)).abs() < six_sigma(p, per_mask),
                    "p {p}, rank {rank}, batch {b}: kept share {share}"
                );
                let kept_values = m.masked_select(&keep);
                let scale = 1.0 / (1.0 - p);
                let off = (kept_values - scale).abs().max().double_value(&[]);
                assert!(
                    off < 1e-6,
                    "p {p}: kept values are not 1/(1-p) (off by {off})"
                );
                kept += k;
                total += per_mask;
                if let Some(prev) = &previous {
                    agree += keep
                        .eq_tensor(prev)
                        .to_kind(Kind::Float)
                        .sum(Kind::Float)
                        .double_value(&[]);
                    pairs += per_mask;
                }
                previous = Some(keep);
            }
        }
        let share = kept / total;
        assert!(
            (share - (1.0 - p)).abs() < six_sigma(p, total),
            "p {p}: kept share {share} over {total} values"
        );
        let q = p * p + (1.0 - p) * (1.0 - p);
        let a = agree / pairs;
        assert!(
            (a - q).abs() < six_sigma(q, pairs),
            "p {p}: consecutive masks agree on {a} of positions, independent ones on {q}"
        );
    }
}
