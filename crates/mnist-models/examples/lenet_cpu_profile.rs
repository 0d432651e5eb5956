//! Times LeNet's forward and backward pass on the CPU: the fast path of `lenet_cpu` against
//! the reference ops, then the pieces of the fast path.
//!
//! `cargo run --release -p mnist-models --example lenet_cpu_profile -- [batch 64] [threads 1]`
use mnist_models::{Model, ModelKind};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    for _ in 0..20 {
        f();
    }
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!(
        "{name:40} {:9.1} us",
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let n = *args.first().unwrap_or(&64) as i64;
    tch::set_num_threads(*args.get(1).unwrap_or(&1) as i32);
    tch::manual_seed(1);
    let m = Model::new(ModelKind::LeNet, Device::Cpu);
    let x = Tensor::randn([n, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    time("reference fwd", reps, || {
        let _ = tch::no_grad(|| m.forward_reference(&x));
    });
    time("fast fwd", reps, || {
        let _ = tch::no_grad(|| m.forward(&x));
    });
    time("reference fwd+bwd", reps, || {
        m.forward_reference(&x)
            .cross_entropy_for_logits(&y)
            .backward();
    });
    time("fast fwd+bwd", reps, || {
        m.forward(&x).cross_entropy_for_logits(&y).backward();
    });
    let h = Tensor::randn([n, 6, 12, 12], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let p = m.parameters();
    time("conv2 fwd+bwd", reps, || {
        h.conv2d(&p[2].tensor, Some(&p[3].tensor), [1, 1], [0, 0], [1, 1], 1)
            .sum(Kind::Float)
            .backward();
    });
    let c1 = Tensor::randn([6 * n, 24, 24], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    time("pool1 fwd+bwd", reps, || {
        mnist_models::lenet_cpu::max_pool_2x2(&c1)
            .sum(Kind::Float)
            .backward();
    });
    use mnist_models::lenet_cpu as l;
    time("cols", reps, || {
        let _ = l::conv1_columns(&x);
    });
    let cols = l::conv1_columns(&x);
    time("conv1 addmm fwd", reps, || {
        let _ = tch::no_grad(|| {
            p[1].tensor
                .view([6, 1])
                .addmm(&p[0].tensor.view([6, 25]), &cols)
        });
    });
    time("conv1 addmm fwd+bwd", reps, || {
        p[1].tensor
            .view([6, 1])
            .addmm(&p[0].tensor.view([6, 25]), &cols)
            .sum(Kind::Float)
            .backward();
    });
    let c1d = c1.detach();
    time("pool1 indices", reps, || {
        let _ = l::first_max_indices(&c1d, 24, 24);
    });
    let idx = l::first_max_indices(&c1d, 24, 24);
    let c1v = c1d.view([6 * n, 576]);
    time("pool1 gather", reps, || {
        let _ = c1v.gather(1, &idx, false);
    });
    time("pool1 fwd", reps, || {
        let _ = tch::no_grad(|| l::max_pool_2x2(&c1d));
    });
    let hp = Tensor::randn([6, n, 12, 12], (Kind::Float, Device::Cpu));
    time("transpose contiguous", reps, || {
        let _ = hp.transpose(0, 1).contiguous();
    });
    let hc = hp.transpose(0, 1).contiguous();
    time("conv2 fwd", reps, || {
        let _ =
            tch::no_grad(|| hc.conv2d(&p[2].tensor, Some(&p[3].tensor), [1, 1], [0, 0], [1, 1], 1));
    });
    let h2 = Tensor::randn([n, 256], (Kind::Float, Device::Cpu));
    time("fc fwd+bwd", reps, || {
        let a = h2.linear(&p[4].tensor, Some(&p[5].tensor)).relu();
        let a = a.linear(&p[6].tensor, Some(&p[7].tensor)).relu();
        a.linear(&p[8].tensor, Some(&p[9].tensor))
            .cross_entropy_for_logits(&y)
            .backward();
    });
}
