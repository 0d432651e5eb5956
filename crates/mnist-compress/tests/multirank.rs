//! Multi-rank tests on an in-process world of 2 and 3 threads: every method leaves
//! bit-identical buckets on every rank; dense methods match the true average; top-k and
//! PowerSGD match independent oracles; PowerSGD averages plainly before its start step.

mod common;

use common::{grads, run_ranks};
use mnist_compress::{
    build, kind_name, topk_count, topk_select, CompressionKind, CompressionParams, TensorLayout,
    ALL_KINDS,
};

/// LeNet's parameters, split into two buckets (convolutions, then fully-connected layers).
fn lenet_buckets() -> Vec<Vec<TensorLayout>> {
    let conv: &[&[usize]] = &[&[6, 1, 5, 5], &[6], &[16, 6, 5, 5], &[16]];
    let fc: &[&[usize]] = &[&[120, 256], &[120], &[84, 120], &[84], &[10, 84], &[10]];
    [conv, fc].iter().map(|shapes| pack(shapes)).collect()
}

/// Lay `shapes` out back to back from offset 0.
fn pack(shapes: &[&[usize]]) -> Vec<TensorLayout> {
    let mut offset = 0;
    shapes
        .iter()
        .map(|s| {
            let t = TensorLayout {
                offset,
                shape: s.to_vec(),
            };
            offset += t.numel();
            t
        })
        .collect()
}

fn bucket_len(layout: &[TensorLayout]) -> usize {
    layout
        .iter()
        .map(|t| t.offset + t.numel())
        .max()
        .unwrap_or(0)
}

fn params(kind: CompressionKind, start: usize) -> CompressionParams {
    CompressionParams {
        kind,
        topk_ratio: 0.01,
        powersgd_rank: 2,
        powersgd_start_iter: start,
        seed: 17,
    }
}

/// `out[rank][step][bucket]`: each rank's buckets after reduction, for seeded gradients that
/// differ per rank, step and bucket.
fn run(
    p: CompressionParams,
    world: usize,
    steps: usize,
    buckets: Vec<Vec<TensorLayout>>,
) -> Vec<Vec<Vec<Vec<f32>>>> {
    run_ranks(world, move |rank, comm| {
        let mut c = build(&p);
        let mut out = Vec::new();
        for step in 0..steps {
            let mut per_bucket = Vec::new();
            for (b, layout) in buckets.iter().enumerate() {
                let seed = (rank * 1000 + step * 10 + b) as u64;
                let mut g = grads(seed, bucket_len(layout), 0.1);
                c.reduce_bucket(b, &mut g, layout, comm)
                    .expect("reduce_bucket");
                per_bucket.push(g);
            }
            c.end_step();
            out.push(per_bucket);
        }
        out
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_method_leaves_identical_buckets_on_every_rank() {
    for kind in ALL_KINDS {
        for world in [2, 3] {
            let out = run(params(kind, 2), world, 5, lenet_buckets());
            for rank in 1..world {
                for (step, buckets) in out[rank].iter().enumerate() {
                    for (b, g) in buckets.iter().enumerate() {
                        assert_eq!(
                            bits(g),
                            bits(&out[0][step][b]),
                            "{} world {world}: rank {rank} step {step} bucket {b} differs",
                            kind_name(kind)
                        );
                    }
                }
            }
            let own = grads(0, out[0][4][1].len(), 0.1);
            assert_ne!(
                out[0][4][1],
                own,
                "{}: bucket was not reduced",
                kind_name(kind)
            );
            assert!(out[0].iter().flatten().flatten().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn dense_methods_match_the_true_average() {
    let layout = lenet_buckets();
    for world in [2, 3] {
        for (kind, rel) in [
            (CompressionKind::None, 2f64.powi(-22)),
            (CompressionKind::Fp16, 2f64.powi(-10)),
            (CompressionKind::Bf16, 2f64.powi(-7)),
        ] {
            let out = run(params(kind, 0), world, 2, layout.clone());
            for (step, got) in out[0].iter().enumerate() {
                for (b, l) in layout.iter().enumerate() {
                    let n = bucket_len(l);
                    let inputs: Vec<Vec<f32>> = (0..world)
                        .map(|r| grads((r * 1000 + step * 10 + b) as u64, n, 0.1))
                        .collect();
                    for i in 0..n {
                        let avg = inputs.iter().map(|g| g[i] as f64).sum::<f64>() / world as f64;
                        let mag =
                            inputs.iter().map(|g| g[i].abs() as f64).sum::<f64>() / world as f64;
                        let err = (got[b][i] as f64 - avg).abs();
                        // 6e-8: fp16's subnormal spacing, for values near zero.
                        assert!(
                            err <= rel * mag + 6e-8,
                            "{} world {world} step {step} bucket {b} [{i}]: {} vs {avg}",
                            kind_name(kind),
                            got[b][i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn powersgd_is_a_plain_average_before_its_start_step() {
    let layout = lenet_buckets();
    for (ps, plain) in [
        (CompressionKind::PowerSgd, CompressionKind::None),
        (CompressionKind::BatchedPowerSgd, CompressionKind::None),
        (CompressionKind::PowerSgdFp16, CompressionKind::Fp16),
        (CompressionKind::BatchedPowerSgdFp16, CompressionKind::Fp16),
    ] {
        let a = run(params(ps, 2), 3, 3, layout.clone());
        let b = run(params(plain, 2), 3, 3, layout.clone());
        for step in 0..2 {
            assert_eq!(a[1][step], b[1][step], "{} step {step}", kind_name(ps));
        }
        assert_ne!(a[1][2], b[1][2], "{} compresses from step 2", kind_name(ps));
    }
}

#[test]
fn topk_matches_an_independent_oracle() {
    let layout = pack(&[&[50, 40], &[50]]);
    let n = bucket_len(&layout);
    for world in [2, 3] {
        let out = run(
            params(CompressionKind::TopK, 0),
            world,
            1,
            vec![layout.clone()],
        );
        let k = topk_count(0.01, n);
        let mut want = vec![0f32; n];
        for r in 0..world {
            let g = grads((r * 1000) as u64, n, 0.1);
            for i in topk_select(&g, k) {
                want[i as usize] += g[i as usize];
            }
        }
        want.iter_mut().for_each(|x| *x /= world as f32);
        assert_eq!(bits(&out[0][0][0]), bits(&want), "world {world}");
        // Ratio 1 sends everything: exactly the plain average.
        let mut all = params(CompressionKind::TopK, 0);
        all.topk_ratio = 1.0;
        let dense = run(all, world, 1, vec![layout.clone()]);
        let none = run(
            params(CompressionKind::None, 0),
            world,
            1,
            vec![layout.clone()],
        );
        assert_eq!(bits(&dense[0][0][0]), bits(&none[0][0][0]), "world {world}");
    }
}

/// Ranks hold different gradients A·B_rᵀ with a shared column space of rank 2, so their
/// average is rank 2 too and PowerSGD at rank 2 must reproduce it.
#[test]
fn powersgd_recovers_the_average_of_rank_two_gradients() {
    let (n, m) = (24, 30);
    let layout = vec![TensorLayout {
        offset: 0,
        shape: vec![n, m],
    }];
    let a = grads(99, n * 2, 1.0);
    let grad = move |rank: usize| -> Vec<f32> {
        let b = grads(200 + rank as u64, m * 2, 1.0);
        (0..n * m)
            .map(|x| {
                (0..2)
                    .map(|k| a[(x / m) * 2 + k] * b[(x % m) * 2 + k])
                    .sum()
            })
            .collect()
    };
    for (kind, tol) in [
        (CompressionKind::PowerSgd, 1e-4),
        (CompressionKind::PowerSgdFp16, 3e-3),
    ] {
        let world = 3;
        let p = params(kind, 0);
        let l = layout.clone();
        let g2 = grad.clone();
        let out = run_ranks(world, move |rank, comm| {
            let mut c = build(&p);
            let mut g = g2(rank);
            c.reduce_bucket(0, &mut g, &l, comm).expect("reduce");
            g
        });
        let want: Vec<f32> = (0..n * m)
            .map(|i| (0..world).map(|r| grad(r)[i]).sum::<f32>() / world as f32)
            .collect();
        let num: f32 = out[0].iter().zip(&want).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f32 = want.iter().map(|y| y * y).sum();
        assert!(
            (num / den).sqrt() < tol,
            "{}: rel err {}",
            kind_name(kind),
            (num / den).sqrt()
        );
    }
}

/// A 16-value bucket is a full 4×4 square; at rank 4 batched PowerSGD is exact.
#[test]
fn batched_powersgd_at_full_rank_is_the_exact_average() {
    let world = 3;
    let mut p = params(CompressionKind::BatchedPowerSgd, 0);
    p.powersgd_rank = 4;
    let out = run_ranks(world, move |rank, comm| {
        let mut c = build(&p);
        let mut g = grads(rank as u64 + 5, 16, 1.0);
        c.reduce_bucket(0, &mut g, &[], comm).expect("reduce");
        g
    });
    for (i, &got) in out[2].iter().enumerate() {
        let want = (0..world)
            .map(|r| grads(r as u64 + 5, 16, 1.0)[i])
            .sum::<f32>()
            / world as f32;
        assert!((got - want).abs() < 1e-5, "[{i}] {got} vs {want}");
    }
}

/// Bytes one rank sends per step in steady state (2 ranks, PowerSGD from step 0), for LeNet
/// and the MLP as single buckets, checked against the closed-form figures and printed:
/// `cargo test -p mnist-compress --test multirank -- --nocapture bytes_table`.
#[test]
fn bytes_table() {
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
    println!("\n| model | method | bytes/step/rank | ratio vs none |");
    println!("|---|---|---:|---:|");
    for (model, layout) in [("LeNet", lenet), ("MLP", mlp)] {
        let n = bucket_len(&layout);
        let mut none_bytes = 0;
        for kind in ALL_KINDS {
            let p = params(kind, 0);
            let l = layout.clone();
            let per_rank = run_ranks(2, move |_rank, comm| {
                let mut c = build(&p);
                let mut deltas = Vec::new();
                for step in 0..3u64 {
                    let before = mnist_compress::Communicator::bytes_sent(comm);
                    let mut g = grads(step, n, 0.1);
                    c.reduce_bucket(0, &mut g, &l, comm).expect("reduce");
                    c.end_step();
                    deltas.push(mnist_compress::Communicator::bytes_sent(comm) - before);
                }
                deltas
            });
            let bytes = per_rank[0][2];
            assert!(
                per_rank.iter().flatten().all(|&b| b == bytes),
                "{per_rank:?}"
            );
            assert_eq!(
                bytes,
                expected_bytes(kind, &layout, n),
                "{model} {}",
                kind_name(kind)
            );
            if kind == CompressionKind::None {
                none_bytes = bytes;
            }
            let ratio = none_bytes as f64 / bytes as f64;
            println!(
                "| {model} ({n} values) | {} | {bytes} | {ratio:.1}× |",
                kind_name(kind)
            );
        }
    }
}

/// Closed-form bytes per step and rank for world 2 (ring all-reduce of b bytes sends b;
/// all-gather sends its own bytes once).
fn expected_bytes(kind: CompressionKind, layout: &[TensorLayout], n: usize) -> u64 {
    let (r, ratio) = (2usize, 0.01);
    let powersgd_values = || {
        let mut values = n;
        for t in layout.iter().filter(|t| t.shape.len() >= 2) {
            let (rows, cols) = (t.shape[0], t.numel() / t.shape[0]);
            let rr = r.min(rows).min(cols);
            if (rows + cols) * rr < rows * cols {
                values = values - rows * cols + (rows + cols) * rr;
            }
        }
        values
    };
    let side = mnist_compress::square_side(n);
    (match kind {
        CompressionKind::None => 4 * n,
        CompressionKind::Fp16 | CompressionKind::Bf16 => 2 * n,
        CompressionKind::TopK => 8 * topk_count(ratio, n),
        CompressionKind::PowerSgd => 4 * powersgd_values(),
        CompressionKind::PowerSgdFp16 => 2 * powersgd_values(),
        CompressionKind::BatchedPowerSgd => 4 * 2 * side * r,
        CompressionKind::BatchedPowerSgdFp16 => 2 * 2 * side * r,
    }) as u64
}
