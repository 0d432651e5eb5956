//! The small dense matrix kernels PowerSGD needs: tall-skinny products with r ≤ a few
//! columns, Gram-Schmidt orthogonalisation, and seeded standard-normal fills.
//!
//! All matrices are row-major slices. The rank r is tiny (1–8), so every kernel walks the
//! big matrix M once, row by row, touching r contiguous values of the skinny factor per
//! element of M; that keeps the access pattern sequential without a BLAS. Every kernel is
//! single-threaded and deterministic, so identical inputs give bit-identical outputs on
//! every rank.

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;

/// The epsilon added to each column norm in [`orthogonalize`] (PyTorch's
/// `orthogonalization_epsilon`, at the value its docs recommend), so an all-zero column
/// (e.g. a layer whose gradient is exactly zero) becomes zero instead of NaN.
pub const ORTHO_EPSILON: f32 = 1e-8;

/// `p[n×r] = m[n×c] · q[c×r]`.
pub(crate) fn mul_m_q(m: &[f32], n: usize, c: usize, q: &[f32], r: usize, p: &mut [f32]) {
    debug_assert!(m.len() == n * c && q.len() == c * r && p.len() == n * r);
    for (m_row, p_row) in m.chunks_exact(c).zip(p.chunks_exact_mut(r)) {
        p_row.fill(0.0);
        for (&x, q_row) in m_row.iter().zip(q.chunks_exact(r)) {
            for (acc, &y) in p_row.iter_mut().zip(q_row) {
                *acc += x * y;
            }
        }
    }
}

/// `q[c×r] = m[n×c]ᵀ · p[n×r]`.
pub(crate) fn mul_mt_p(m: &[f32], n: usize, c: usize, p: &[f32], r: usize, q: &mut [f32]) {
    debug_assert!(m.len() == n * c && p.len() == n * r && q.len() == c * r);
    q.fill(0.0);
    for (m_row, p_row) in m.chunks_exact(c).zip(p.chunks_exact(r)) {
        for (&x, q_row) in m_row.iter().zip(q.chunks_exact_mut(r)) {
            for (acc, &y) in q_row.iter_mut().zip(p_row) {
                *acc += x * y;
            }
        }
    }
}

/// One row of `p · qᵀ`: `out[j] = Σₖ p_row[k] · q[j, k]` for the `out.len()` rows of `q[·×r]`.
pub(crate) fn row_p_qt(p_row: &[f32], q: &[f32], out: &mut [f32]) {
    let r = p_row.len();
    debug_assert!(q.len() == out.len() * r);
    for (o, q_row) in out.iter_mut().zip(q.chunks_exact(r)) {
        *o = p_row.iter().zip(q_row).map(|(a, b)| a * b).sum();
    }
}

/// Orthonormalise the columns of `mat[rows×cols]` in place by Gram-Schmidt, as PyTorch's
/// `_orthogonalize`: each column in order loses its components along the earlier columns,
/// then is divided by (its norm + `epsilon`). Norms and dot products accumulate in f64.
///
/// The projection is done twice ("twice is enough", Giraud et al. 2005). PyTorch's single
/// pass breaks down when the matrix has lower rank than `cols` (a rank-2 gradient at rank 3,
/// or a padded batched square): the leftover column is rounding noise that keeps a
/// component along the earlier columns as large as itself, so after normalisation P Pᵀ is
/// no projection. PyTorch sidesteps this with QR for r > 2; the second pass does it here,
/// and leaves well-conditioned inputs unchanged up to rounding.
pub fn orthogonalize(mat: &mut [f32], rows: usize, cols: usize, epsilon: f32) {
    debug_assert_eq!(mat.len(), rows * cols);
    for i in 0..cols {
        for _pass in 0..2 {
            for j in 0..i {
                let dot = mat
                    .chunks_exact(cols)
                    .map(|row| row[i] as f64 * row[j] as f64)
                    .sum::<f64>() as f32;
                for row in mat.chunks_exact_mut(cols) {
                    row[i] -= dot * row[j];
                }
            }
        }
        let norm = mat
            .chunks_exact(cols)
            .map(|row| row[i] as f64 * row[i] as f64)
            .sum::<f64>()
            .sqrt() as f32;
        let denom = norm + epsilon;
        for row in mat.chunks_exact_mut(cols) {
            row[i] = if denom > 0.0 { row[i] / denom } else { 0.0 };
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

    #[test]
    fn products_match_naive_definitions() {
        let (n, c, r) = (7, 5, 3);
        let m = randn(1, n * c);
        let q = randn(2, c * r);
        let mut p = vec![0.0; n * r];
        mul_m_q(&m, n, c, &q, r, &mut p);
        for i in 0..n {
            for k in 0..r {
                let want: f32 = (0..c).map(|j| m[i * c + j] * q[j * r + k]).sum();
                assert!((p[i * r + k] - want).abs() < 1e-5);
            }
        }
        let mut qt = vec![0.0; c * r];
        mul_mt_p(&m, n, c, &p, r, &mut qt);
        for j in 0..c {
            for k in 0..r {
                let want: f32 = (0..n).map(|i| m[i * c + j] * p[i * r + k]).sum();
                assert!((qt[j * r + k] - want).abs() < 1e-4);
            }
        }
        let mut row = vec![0.0; c];
        row_p_qt(&p[0..r], &qt, &mut row);
        for (j, &x) in row.iter().enumerate() {
            let want: f32 = (0..r).map(|k| p[k] * qt[j * r + k]).sum();
            assert!((x - want).abs() < 1e-4);
        }
    }

    #[test]
    fn gram_schmidt_gives_orthonormal_columns() {
        let (rows, cols) = (50, 4);
        let mut a = randn(3, rows * cols);
        orthogonalize(&mut a, rows, cols, 0.0);
        for i in 0..cols {
            for j in 0..cols {
                let dot: f32 = (0..rows).map(|k| a[k * cols + i] * a[k * cols + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "column {i}·{j} = {dot}");
            }
        }
    }

    #[test]
    fn rank_deficient_input_still_gets_orthogonal_columns() {
        // Third column = first + second: after projection only rounding noise is left.
        let (rows, cols) = (40, 3);
        let base = randn(5, rows * 2);
        let mut a = vec![0.0; rows * cols];
        for k in 0..rows {
            a[k * 3] = base[k * 2];
            a[k * 3 + 1] = base[k * 2 + 1];
            a[k * 3 + 2] = base[k * 2] + base[k * 2 + 1];
        }
        orthogonalize(&mut a, rows, cols, ORTHO_EPSILON);
        for i in 0..cols {
            for j in 0..i {
                let dot: f32 = (0..rows).map(|k| a[k * cols + i] * a[k * cols + j]).sum();
                assert!(dot.abs() < 1e-4, "columns {i}, {j}: {dot}");
            }
        }
    }

    #[test]
    fn zero_column_stays_zero_not_nan() {
        let mut a = vec![0.0, 1.0, 0.0, 2.0, 0.0, 3.0];
        orthogonalize(&mut a, 3, 2, ORTHO_EPSILON);
        assert!(a.iter().all(|x| x.is_finite()));
        assert_eq!([a[0], a[2], a[4]], [0.0, 0.0, 0.0]);
        let norm: f32 = [a[1], a[3], a[5]].iter().map(|x| x * x).sum();
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
