//! Hand-written BatchNorm2d (crates/mnist-models/src/batchnorm.rs): one process matches
//! libtorch's own training-mode `batch_norm` (outputs, running statistics, gradients), and
//! N simulated ranks with summed statistics match one rank with the whole batch, for N = 2
//! and 3 and uneven per-rank batches, also when the channel means are thousands of standard
//! deviations from the running mean.

use std::convert::Infallible;
use std::sync::{Arc, Barrier, Mutex};

use mnist_models::batchnorm::{backward, forward_train, EPS, MOMENTUM};
use tch::{Kind, Tensor};

const C: i64 = 4;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn identity(_: &mut [f64]) -> Result<(), Infallible> {
    Ok(())
}

struct Out {
    y: Tensor,
    dx: Tensor,
    dw: Tensor,
    db: Tensor,
    rm: Tensor,
    rv: Tensor,
}

fn run_one(
    x: &Tensor,
    dy: &Tensor,
    w: &Tensor,
    b: &Tensor,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), Infallible>,
) -> Out {
    let mut rm = Tensor::zeros([C], (Kind::Float, tch::Device::Cpu));
    let mut rv = Tensor::ones([C], (Kind::Float, tch::Device::Cpu));
    let (y, cache) = forward_train(x, w, b, &mut rm, &mut rv, MOMENTUM, EPS, reduce).unwrap();
    let g = backward(dy, &cache, w, reduce).unwrap();
    Out {
        y,
        dx: g.dx,
        dw: g.dweight,
        db: g.dbias,
        rm,
        rv,
    }
}

fn inputs(n: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    tch::manual_seed(7);
    let x = Tensor::randn([n, C, 5, 6], (Kind::Float, tch::Device::Cpu)) * 3.0 + 1.5;
    let dy = Tensor::randn([n, C, 5, 6], (Kind::Float, tch::Device::Cpu));
    let w = Tensor::rand([C], (Kind::Float, tch::Device::Cpu)) + 0.5;
    let b = Tensor::randn([C], (Kind::Float, tch::Device::Cpu));
    (x, dy, w, b)
}

#[test]
fn single_process_matches_libtorch_batch_norm() {
    let (x, dy, w, b) = inputs(7);
    let ours = run_one(&x, &dy, &w, &b, &mut identity);

    let xr = x.detach().set_requires_grad(true);
    let wr = w.detach().set_requires_grad(true);
    let br = b.detach().set_requires_grad(true);
    let rm = Tensor::zeros([C], (Kind::Float, tch::Device::Cpu));
    let rv = Tensor::ones([C], (Kind::Float, tch::Device::Cpu));
    let y = xr.batch_norm(
        Some(&wr),
        Some(&br),
        Some(&rm),
        Some(&rv),
        true,
        MOMENTUM,
        EPS,
        false,
    );
    (&y * &dy).sum(Kind::Float).backward();
    assert!(
        max_diff(&ours.y, &y) < 1e-5,
        "output {}",
        max_diff(&ours.y, &y)
    );
    assert!(max_diff(&ours.rm, &rm) < 1e-5, "running_mean");
    assert!(
        max_diff(&ours.rv, &rv) < 1e-5,
        "running_var {}",
        max_diff(&ours.rv, &rv)
    );
    assert!(
        max_diff(&ours.dx, &xr.grad()) < 1e-5,
        "dx {}",
        max_diff(&ours.dx, &xr.grad())
    );
    assert!(max_diff(&ours.dw, &wr.grad()) < 1e-4, "dweight");
    assert!(max_diff(&ours.db, &br.grad()) < 1e-4, "dbias");
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

/// Each rank of `sizes` runs forward and backward on its rows of `x` and `dy` in a thread,
/// statistics summed by a [`FakeAllReduce`].
fn run_ranks(sizes: &[i64], x: &Tensor, dy: &Tensor, w: &Tensor, b: &Tensor) -> Vec<Out> {
    let ar = Arc::new(FakeAllReduce {
        barrier: Barrier::new(sizes.len()),
        acc: Mutex::new(Vec::new()),
    });
    let xs = x.split_with_sizes(sizes, 0);
    let dys = dy.split_with_sizes(sizes, 0);
    let handles: Vec<_> = xs
        .into_iter()
        .zip(dys)
        .map(|(xp, dyp)| {
            let ar = ar.clone();
            let (w, b) = (w.shallow_clone(), b.shallow_clone());
            std::thread::spawn(move || {
                let mut reduce = |v: &mut [f64]| -> Result<(), Infallible> {
                    ar.reduce(v);
                    Ok(())
                };
                run_one(&xp, &dyp, &w, &b, &mut reduce)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn check_ranks(sizes: &[i64]) {
    let total: i64 = sizes.iter().sum();
    let (x, dy, w, b) = inputs(total);
    let whole = run_one(&x, &dy, &w, &b, &mut identity);

    let outs = run_ranks(sizes, &x, &dy, &w, &b);

    let y = Tensor::cat(
        &outs.iter().map(|o| o.y.shallow_clone()).collect::<Vec<_>>(),
        0,
    );
    let dx = Tensor::cat(
        &outs
            .iter()
            .map(|o| o.dx.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let dw = outs
        .iter()
        .map(|o| o.dw.shallow_clone())
        .reduce(|a, b| a + b)
        .unwrap();
    let db = outs
        .iter()
        .map(|o| o.db.shallow_clone())
        .reduce(|a, b| a + b)
        .unwrap();
    assert!(max_diff(&y, &whole.y) < 1e-5, "{sizes:?}: output");
    assert!(max_diff(&dx, &whole.dx) < 1e-5, "{sizes:?}: dx");
    assert!(max_diff(&dw, &whole.dw) < 1e-4, "{sizes:?}: dweight");
    assert!(max_diff(&db, &whole.db) < 1e-4, "{sizes:?}: dbias");
    for (r, o) in outs.iter().enumerate() {
        assert!(
            max_diff(&o.rm, &whole.rm) < 1e-5,
            "{sizes:?}: rank {r} running_mean"
        );
        assert!(
            max_diff(&o.rv, &whole.rv) < 1e-5,
            "{sizes:?}: rank {r} running_var"
        );
    }
}

#[test]
fn two_ranks_equal_one_rank_with_the_whole_batch() {
    check_ranks(&[4, 4]);
    check_ranks(&[5, 2]);
}

#[test]
fn three_ranks_with_uneven_batches_equal_one_rank() {
    check_ranks(&[3, 3, 3]);
    check_ranks(&[4, 4, 1]);
}

/// Channels whose mean is 4000 standard deviations away from 0 (after the first step the
/// running mean is 0): the statistics still match a float64 reference, so the sums the ranks
/// add do not cancel (a float32 sum of squares would lose the variance entirely).
#[test]
fn large_channel_means_keep_the_variance() {
    let (x, dy, w, b) = inputs(8);
    let offsets = Tensor::from_slice(&[200.0f32, -150.0, 80.0, 1000.0]).view([1, C, 1, 1]);
    let x = x * 0.05 + offsets;
    let outs = run_ranks(&[5, 3], &x, &dy, &w, &b);
    let x64 = x.to_kind(Kind::Double);
    let mean = x64.mean_dim([0i64, 2, 3].as_slice(), true, Kind::Double);
    let var = (&x64 - &mean)
        .square()
        .mean_dim([0i64, 2, 3].as_slice(), true, Kind::Double);
    let n = x.numel() as f64 / C as f64;
    let want_var = var.view([C]) * (n / (n - 1.0));
    let want_y = (&x64 - &mean) / (&var + EPS).sqrt() * w.to_kind(Kind::Double).view([1, C, 1, 1])
        + b.to_kind(Kind::Double).view([1, C, 1, 1]);
    let y = Tensor::cat(&[outs[0].y.shallow_clone(), outs[1].y.shallow_clone()], 0);
    for (r, o) in outs.iter().enumerate() {
        // The batch's unbiased variance, as the running variance (1 before) took it in.
        let got = (o.rv.to_kind(Kind::Double) - (1.0 - MOMENTUM)) / MOMENTUM;
        let rel = ((got - &want_var).abs() / &want_var)
            .max()
            .double_value(&[]);
        assert!(
            rel < 1e-3,
            "rank {r}: batch variance off by {rel} (relative)"
        );
    }
    // float32 x carries 1000·2⁻²⁴ ≈ 6e-5 of rounding, 1.2e-3 standard deviations.
    let d = max_diff(&y.to_kind(Kind::Double), &want_y);
    assert!(d < 5e-3, "output differs from float64 by {d}");
}
