//! The small dense matrix kernels PowerSGD needs: tall-skinny products with r ≤ a few
//! columns, Gram-Schmidt orthogonalisation, and seeded standard-normal fills.
//!
//! M is row-major `[n×c]`; the skinny factors P `[n×r]` and Q `[c×r]` are stored
//! *column by column* (`pt[k·n + i] = P[i, k]`), so each of their r columns is one
//! contiguous vector. Every kernel then reduces to dot products and `y += a·x` updates over
//! contiguous rows, which the compiler vectorises (dots keep 8 independent partial sums in a
//! fixed order). Every kernel is single-threaded and deterministic, so identical inputs give
//! bit-identical outputs on every rank.

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;

/// The epsilon added to each column norm in [`orthogonalize`] (PyTorch's
/// `orthogonalization_epsilon`, at the value its docs recommend), so an all-zero column
/// (e.g. a layer whose gradient is exactly zero) becomes zero instead of NaN.
pub const ORTHO_EPSILON: f32 = 1e-8;

/// `Σ a[i]·b[i]` with 8 partial sums (vectorisable, fixed order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a·x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `P = M·Q` for M `[n×c]` row-major, Q `[c×r]` and P `[n×r]` column by column.
pub(crate) fn mul_m_q(m: &[f32], n: usize, c: usize, qt: &[f32], r: usize, pt: &mut [f32]) {
    debug_assert!(m.len() == n * c && qt.len() == c * r && pt.len() == n * r);
    if c == 0 {
        pt.fill(0.0);
        return;
    }
    for (i, m_row) in m.chunks_exact(c).enumerate() {
        for (k, q_col) in qt.chunks_exact(c).enumerate() {
            pt[k * n + i] = dot(m_row, q_col);
        }
    }
}

/// `Q = Mᵀ·P` for M `[n×c]` row-major, P `[n×r]` and Q `[c×r]` column by column.
pub(crate) fn mul_mt_p(m: &[f32], n: usize, c: usize, pt: &[f32], r: usize, qt: &mut [f32]) {
    debug_assert!(m.len() == n * c && pt.len() == n * r && qt.len() == c * r);
    qt.fill(0.0);
    if c == 0 {
        return;
    }
    for (i, m_row) in m.chunks_exact(c).enumerate() {
        for (k, q_col) in qt.chunks_exact_mut(c).enumerate() {
            axpy(q_col, pt[k * n + i], m_row);
        }
    }
}

/// Row `i` of `P·Qᵀ` into `out` (length c), for P `[n×r]` and Q `[c×r]` column by column.
pub(crate) fn row_p_qt(pt: &[f32], n: usize, i: usize, qt: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    for (k, q_col) in qt.chunks_exact(out.len()).enumerate() {
        axpy(out, pt[k * n + i], q_col);
    }
}

/// Orthonormalise `count` vectors of length `len`, stored one after another in `vectors`
/// (the columns of a `[len×count]` matrix, as P and Q are kept), by Gram-Schmidt as
/// PyTorch's `_orthogonalize`: each vector in order loses its components along the earlier
/// ones, then is divided by (its norm + `epsilon`). Norms and dots accumulate in f64.
///
/// The projection is done twice ("twice is enough", Giraud et al. 2005). PyTorch's single
/// pass breaks down when the matrix has lower rank than `count` (a rank-2 gradient at rank
/// 3, or a padded batched square): the leftover vector is rounding noise that keeps a
/// component along the earlier ones as large as itself, so after normalisation P Pᵀ is no
/// projection. PyTorch sidesteps this with QR for r > 2; the second pass does it here, and
/// leaves well-conditioned inputs unchanged up to rounding.
pub fn orthogonalize(vectors: &mut [f32], len: usize, count: usize, epsilon: f32) {
    debug_assert_eq!(vectors.len(), len * count);
    let dot64 = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum::<f64>()
    };
    for i in 0..count {
        let (done, rest) = vectors.split_at_mut(i * len);
        let v = &mut rest[..len];
        for _pass in 0..2 {
            for u in done.chunks_exact(len) {
                let d = dot64(u, v) as f32;
                for (x, &y) in v.iter_mut().zip(u) {
                    *x -= d * y;
                }
            }
        }
        let denom = dot64(v, v).sqrt() as f32 + epsilon;
        for x in v.iter_mut() {
            *x = if denom > 0.0 { *x / denom } else { 0.0 };
        }
    }
}

/// Fill `out` with standard-normal samples (Box-Muller on ChaCha8's 53-bit uniforms).
pub(crate) fn fill_standard_normal(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    let mut uniform = || (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    for pair in out.chunks_mut(2) {
        let u1 = 1.0 - uniform(); // in (0, 1]: ln is finite
        let u2 = uniform();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        pair[0] = (radius * angle.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (radius * angle.sin()) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn randn(seed: u64, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        fill_standard_normal(&mut ChaCha8Rng::seed_from_u64(seed), &mut v);
        v
    }

    /// Element (row, col) of a `[rows×cols]` matrix stored column by column.
    fn at(v: &[f32], rows: usize, row: usize, col: usize) -> f32 {
        v[col * rows + row]
    }

    #[test]
    fn products_match_naive_definitions() {
        for (n, c, r) in [(7, 5, 3), (3, 21, 2), (20, 9, 1)] {
            let m = randn(1, n * c);
            let qt = randn(2, c * r);
            let mut pt = vec![0.0; n * r];
            mul_m_q(&m, n, c, &qt, r, &mut pt);
            for i in 0..n {
                for k in 0..r {
                    let want: f32 = (0..c).map(|j| m[i * c + j] * at(&qt, c, j, k)).sum();
                    assert!((at(&pt, n, i, k) - want).abs() < 1e-5);
                }
            }
            let mut q2 = vec![0.0; c * r];
            mul_mt_p(&m, n, c, &pt, r, &mut q2);
            for j in 0..c {
                for k in 0..r {
                    let want: f32 = (0..n).map(|i| m[i * c + j] * at(&pt, n, i, k)).sum();
                    assert!((at(&q2, c, j, k) - want).abs() < 1e-4);
                }
            }
            let mut row = vec![0.0; c];
            for i in 0..n {
                row_p_qt(&pt, n, i, &q2, &mut row);
                for (j, &x) in row.iter().enumerate() {
                    let want: f32 = (0..r).map(|k| at(&pt, n, i, k) * at(&q2, c, j, k)).sum();
                    assert!((x - want).abs() < 1e-3 * want.abs().max(1.0));
                }
            }
        }
    }

    fn assert_orthonormal(v: &[f32], len: usize, count: usize, tol: f32) {
        for i in 0..count {
            for j in 0..=i {
                let d: f32 = (0..len).map(|k| v[i * len + k] * v[j * len + k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((d - want).abs() < tol, "vectors {i}·{j} = {d}");
            }
        }
    }

    #[test]
    fn gram_schmidt_gives_orthonormal_columns() {
        let (len, count) = (50, 4);
        let mut a = randn(3, len * count);
        orthogonalize(&mut a, len, count, 0.0);
        assert_orthonormal(&a, len, count, 1e-5);
    }

    #[test]
    fn rank_deficient_input_still_gets_orthogonal_columns() {
        // Third vector = first + second: after projection only rounding noise is left.
        let len = 40;
        let mut a = randn(5, len * 3);
        for k in 0..len {
            a[2 * len + k] = a[k] + a[len + k];
        }
        orthogonalize(&mut a, len, 3, ORTHO_EPSILON);
        for i in 0..3 {
            for j in 0..i {
                let d: f32 = (0..len).map(|k| a[i * len + k] * a[j * len + k]).sum();
                assert!(d.abs() < 1e-4, "vectors {i}, {j}: {d}");
            }
        }
    }

    #[test]
    fn zero_column_stays_zero_not_nan() {
        let mut a = vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0];
        orthogonalize(&mut a, 3, 2, ORTHO_EPSILON);
        assert!(a.iter().all(|x| x.is_finite()));
        assert_eq!(&a[..3], &[0.0; 3]);
        let norm: f32 = a[3..].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        // Without epsilon a zero column is zeroed too (PyTorch's fallback), not NaN.
        let mut z = vec![0.0; 4];
        orthogonalize(&mut z, 2, 2, 0.0);
        assert_eq!(z, vec![0.0; 4]);
    }

    #[test]
    fn normal_samples_are_seeded_and_plausible() {
        let a = randn(42, 10_001);
        assert_eq!(a, randn(42, 10_001));
        assert_ne!(a, randn(43, 10_001));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }
}
