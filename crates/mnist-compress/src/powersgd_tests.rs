//! Single-rank tests of layer-wise PowerSGD: exact low-rank reconstruction, what goes
//! uncompressed, the start-iteration switch, and layout errors.

use crate::{GradCompressor, PowerSgd, TensorLayout, Wire};
use mnist_comm::Solo;

/// Deterministic pseudo-random values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed ^ 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A rank-`r` n×m matrix A·Bᵀ.
fn low_rank(n: usize, m: usize, r: usize, seed: u64) -> Vec<f32> {
    let a = values(seed, n * r);
    let b = values(seed + 1, m * r);
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..r).map(|k| a[i * r + k] * b[j * r + k]).sum();
        }
    }
    out
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn layout(offset: usize, shape: &[usize]) -> TensorLayout {
    TensorLayout {
        offset,
        shape: shape.to_vec(),
    }
}

#[test]
fn rank_r_matrix_is_reproduced_after_one_step_at_rank_at_least_r() {
    // A conv-shaped [8, 3, 5, 5] tensor of matrix rank 2 (viewed as 8×75).
    let m = low_rank(8, 75, 2, 11);
    let lay = [layout(0, &[8, 3, 5, 5])];
    for (rank, wire, tol) in [
        (2, Wire::F32, 1e-4),
        (3, Wire::F32, 1e-4),
        (2, Wire::F16, 2e-3),
    ] {
        let mut c = PowerSgd::new(rank, 0, 7, wire);
        for step in 0..3 {
            let mut g = m.clone();
            c.reduce_bucket(0, &mut g, &lay, &mut Solo).expect("solo");
            c.end_step();
            let e = rel_err(&g, &m);
            assert!(
                e < tol,
                "rank {rank} {wire:?} step {step}: relative error {e}"
            );
        }
        assert_eq!(c.compressed_offsets(0), Some(vec![0]));
    }
}

#[test]
fn rank_below_matrix_rank_is_not_exact_but_feeds_the_error_back() {
    let m = low_rank(30, 40, 3, 5);
    let lay = [layout(0, &[30, 40])];
    let mut c = PowerSgd::new(1, 0, 7, Wire::F32);
    let mut g = m.clone();
    c.reduce_bucket(0, &mut g, &lay, &mut Solo).expect("solo");
    assert!(
        rel_err(&g, &m) > 1e-2,
        "rank 1 cannot capture a rank-3 matrix"
    );
    let res = c.residual(0).expect("state");
    for i in 0..m.len() {
        assert!(
            (g[i] + res[i] - m[i]).abs() < 1e-5,
            "out + residual ≠ M at {i}"
        );
    }
    // Warm start + error feedback: repeated steps on a fixed gradient transmit it all.
    let mut sent = g.clone();
    for _ in 0..40 {
        let mut g = m.clone();
        c.reduce_bucket(0, &mut g, &lay, &mut Solo).expect("solo");
        sent.iter_mut().zip(&g).for_each(|(s, x)| *s += x);
    }
    let mean: Vec<f32> = sent.iter().map(|s| s / 41.0).collect();
    assert!(
        rel_err(&mean, &m) < 0.05,
        "time-averaged output {}",
        rel_err(&mean, &m)
    );
}

#[test]
fn biases_small_matrices_and_gaps_go_uncompressed() {
    // weight [20, 30] at 0, bias [20] at 600, [3, 2] matrix at 620 ((3+2)·2 ≥ 6: not worth
    // it), scalar at 626, 3 values no tensor claims at 627..630.
    let lay = [
        layout(0, &[20, 30]),
        layout(600, &[20]),
        layout(620, &[3, 2]),
        layout(626, &[]),
    ];
    let g0 = values(3, 630);
    let mut c = PowerSgd::new(2, 0, 1, Wire::F32);
    let mut g = g0.clone();
    c.reduce_bucket(4, &mut g, &lay, &mut Solo).expect("solo");
    assert_eq!(c.compressed_offsets(4), Some(vec![0]));
    assert_eq!(
        &g[600..],
        &g0[600..],
        "uncompressed values must pass through exactly"
    );
    assert!(
        rel_err(&g[..600], &g0[..600]) > 1e-2,
        "the random weight is compressed"
    );
    let res = c.residual(4).expect("state");
    assert!(res[600..].iter().all(|&x| x == 0.0));
    assert!(res[..600].iter().any(|&x| x != 0.0));
}

#[test]
fn plain_average_before_start_iter() {
    let lay = [layout(0, &[20, 30])];
    let g0 = values(9, 600);
    let mut c = PowerSgd::new(1, 2, 1, Wire::F32);
    for step in 0..2 {
        let mut g = g0.clone();
        c.reduce_bucket(0, &mut g, &lay, &mut Solo).expect("solo");
        assert_eq!(g, g0, "step {step} is a plain all-reduce");
        assert!(c.residual(0).is_none(), "no state before start");
        c.end_step();
    }
    assert_eq!(c.iter(), 2);
    let mut g = g0.clone();
    c.reduce_bucket(0, &mut g, &lay, &mut Solo).expect("solo");
    assert_ne!(g, g0, "step 2 compresses");
}

#[test]
fn zero_gradient_gives_zeros_not_nan() {
    let lay = [layout(0, &[10, 12]), layout(120, &[10])];
    for wire in [Wire::F32, Wire::F16] {
        let mut c = PowerSgd::new(2, 0, 1, wire);
        let mut g = vec![0.0; 130];
        c.reduce_bucket(0, &mut g, &lay, &mut Solo).expect("solo");
        assert!(g.iter().all(|&x| x == 0.0), "{wire:?}: {g:?}");
    }
}

#[test]
fn layout_errors_are_reported_not_panics() {
    let mut c = PowerSgd::new(2, 0, 1, Wire::F32);
    let mut g = vec![0.0; 100];
    let err = c
        .reduce_bucket(1, &mut g, &[layout(90, &[4, 4])], &mut Solo)
        .expect_err("out of bounds");
    assert!(
        err.to_string().contains("bucket 1") && err.to_string().contains("[4, 4]"),
        "{err}"
    );
    let err = c
        .reduce_bucket(
            1,
            &mut g,
            &[layout(0, &[5, 5]), layout(20, &[10])],
            &mut Solo,
        )
        .expect_err("overlap");
    assert!(err.to_string().contains("overlap"), "{err}");
    let overflow = [layout(usize::MAX, &[2])];
    assert!(c.reduce_bucket(1, &mut g, &overflow, &mut Solo).is_err());
}

#[test]
fn changed_layout_rebuilds_state() {
    let mut c = PowerSgd::new(2, 0, 1, Wire::F32);
    let mut g = values(1, 600);
    c.reduce_bucket(0, &mut g, &[layout(0, &[20, 30])], &mut Solo)
        .expect("solo");
    let mut g = values(2, 640);
    c.reduce_bucket(0, &mut g, &[layout(0, &[32, 20])], &mut Solo)
        .expect("solo");
    assert_eq!(c.residual(0).map(<[f32]>::len), Some(640));
}
