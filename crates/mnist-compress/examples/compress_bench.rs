//! Local compute cost of each method per step (world of one, so no communication time):
//! `cargo run --release -p mnist-compress --example compress_bench`.

use mnist_comm::Solo;
use mnist_compress::{build, kind_name, CompressionParams, TensorLayout, ALL_KINDS};
use std::time::Instant;

fn pack(shapes: &[&[usize]]) -> (Vec<TensorLayout>, usize) {
    let mut offset = 0;
    let layout = shapes
        .iter()
        .map(|s| {
            let t = TensorLayout {
                offset,
                shape: s.to_vec(),
            };
            offset += t.numel();
            t
        })
        .collect();
    (layout, offset)
}

fn main() {
    let lenet = pack(&[
        &[6, 1, 5, 5],
        &[6],
        &[16, 6, 5, 5],
        &[16],
        &[120, 256],
        &[120],
        &[84, 120],
        &[84],
        &[10, 84],
        &[10],
    ]);
    let mlp = pack(&[&[500, 784], &[500], &[250, 500], &[250], &[10, 250], &[10]]);
    println!("| model | method | µs/step (compute only, 1 rank) |");
    println!("|---|---|---:|");
    for (model, (layout, n)) in [("LeNet", lenet), ("MLP", mlp)] {
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4)
            .collect();
        for kind in ALL_KINDS {
            let mut p = CompressionParams::new(kind);
            p.powersgd_start_iter = 0;
            let mut c = build(&p);
            let steps = 50;
            let mut g = grad.clone();
            let t = Instant::now();
            for _ in 0..steps {
                g.copy_from_slice(&grad);
                if let Err(e) = c.reduce_bucket(0, &mut g, &layout, &mut Solo) {
                    eprintln!("{model} {}: {e}", kind_name(kind));
                    std::process::exit(1);
                }
                c.end_step();
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / steps as f64;
            println!("| {model} | {} | {us:.0} |", kind_name(kind));
        }
    }
}
