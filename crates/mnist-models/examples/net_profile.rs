//! Times Net's training step on the CPU (one thread, batch 32): `net::train_step` (graph cut
//! at each BatchNorm, hand-written BatchNorm, host dropout masks) against the same network as
//! one autograd graph with libtorch's `batch_norm` and `dropout` (what PyTorch runs).
//! Run: cargo run --release -p mnist-models --example net_profile [steps]

use mnist_models::batchnorm::{EPS, MOMENTUM};
use mnist_models::net::{train_step, Dropout};
use mnist_models::{Model, ModelKind};
use std::convert::Infallible;
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

/// User + system CPU seconds of this process so far (from /proc/self/stat, 10 ms ticks):
/// on a shared machine CPU time is steadier than wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after_name
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let m = Model::new(ModelKind::Net, Device::Cpu);
    let x = Tensor::randn([32, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
    let mut reduce = |_: &mut [f64]| -> Result<(), Infallible> { Ok(()) };
    let time = |name: &str, f: &mut dyn FnMut()| {
        for _ in 0..3 {
            f();
        }
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..steps {
            f();
        }
        println!(
            "{name}: {:.2} ms/step wall, {:.2} ms/step CPU",
            t.elapsed().as_secs_f64() * 1e3 / steps as f64,
            (cpu_seconds() - c) * 1e3 / steps as f64
        );
    };
    let mut d = Dropout::new(1, 0, 0);
    time("net::train_step with dropout", &mut || {
        train_step(&m, &x, &y, 1.0, Some(&mut d), &mut reduce).unwrap();
    });
    time("net::train_step without dropout", &mut || {
        train_step(&m, &x, &y, 1.0, None, &mut reduce).unwrap();
    });
    time("dropout masks only", &mut || {
        let _ = d.mask(&[32, 64, 12, 12], 0.25, Device::Cpu);
        let _ = d.mask(&[32, 128], 0.5, Device::Cpu);
    });
    let p = |i: usize| &m.parameters()[i].tensor;
    let b = |i: usize| m.buffers()[i].tensor.shallow_clone();
    let autograd = |dropout: bool| {
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
        let h = bn(h, 6, 3)
            .relu()
            .max_pool2d_default(2)
            .dropout(0.25, dropout);
        let h = h
            .flatten(1, -1)
            .linear(p(8), Some(p(9)))
            .relu()
            .dropout(0.5, dropout);
        let out = h.linear(p(10), Some(p(11))).log_softmax(-1, Kind::Float);
        out.g_nll_loss::<Tensor>(&y, None, Reduction::Mean, -100)
            .backward();
    };
    time(
        "one autograd graph, libtorch batch_norm + dropout",
        &mut || autograd(true),
    );
    time(
        "one autograd graph, libtorch batch_norm, no dropout",
        &mut || autograd(false),
    );
    let h2 = Tensor::randn([32, 64, 24, 24], (Kind::Float, Device::Cpu));
    let (w2, b2) = (p(6).detach(), p(7).detach());
    time("ours: BatchNorm 2 forward + backward", &mut || {
        let (mut rm, mut rv) = (b(3), b(4));
        let (y, cache) = mnist_models::batchnorm::forward_train(
            &h2,
            &w2,
            &b2,
            &mut rm,
            &mut rv,
            MOMENTUM,
            EPS,
            &mut reduce,
        )
        .unwrap();
        let _ = mnist_models::batchnorm::backward(&y, &cache, &w2, &mut reduce).unwrap();
    });
    let h2g = h2.copy().set_requires_grad(true);
    let (w2g, b2g) = (
        w2.copy().set_requires_grad(true),
        b2.copy().set_requires_grad(true),
    );
    time(
        "libtorch batch_norm 2 forward + autograd backward",
        &mut || {
            let y = h2g.batch_norm(
                Some(&w2g),
                Some(&b2g),
                Some(&b(3)),
                Some(&b(4)),
                true,
                MOMENTUM,
                EPS,
                false,
            );
            (&y * &y).sum(Kind::Float).backward();
        },
    );
    time(
        "elementwise y*y + sum + backward (the line above's extra)",
        &mut || {
            let y = h2g.shallow_clone() * 1.0;
            (&y * &y).sum(Kind::Float).backward();
        },
    );
    time("var_mean + eval batch_norm of conv2's output", &mut || {
        let _ = h2.batch_norm_update_stats(None::<Tensor>, None::<Tensor>, 0.1);
    });
}
