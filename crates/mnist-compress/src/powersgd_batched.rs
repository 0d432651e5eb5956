//! Batched PowerSGD (PyTorch's `batched_powerSGD_hook`): the whole bucket, zero-padded to a
//! `side × side` matrix with `side = ceil(sqrt(len))`, is compressed as one matrix, with one
//! P and one Q (side × r) per bucket, error feedback over the padded matrix and warm start.
//! Faster than the layer-wise variant but blind to layer structure. The `_fp16` variant
//! sends P, Q and the pre-start averages in fp16 (see `powersgd.rs`).

use crate::dense::{average, Wire};
use crate::linalg::{fill_standard_normal, mul_m_q, mul_mt_p, orthogonalize, row_p_qt};
use crate::powersgd::reduce_p;
use crate::{GradCompressor, TensorLayout, ORTHO_EPSILON};
use mnist_comm::{CommError, Communicator};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// `ceil(sqrt(len))`, computed exactly in integers.
pub fn square_side(len: usize) -> usize {
    let mut s = (len as f64).sqrt() as usize;
    while s.saturating_mul(s) < len {
        s += 1;
    }
    while s > 0 && (s - 1) * (s - 1) >= len {
        s -= 1;
    }
    s
}

/// `values` zero-padded to `side²` (row-major `side × side`); returns `(side, padded)`.
/// The first `values.len()` entries of `padded` are `values`: truncating un-pads.
pub fn pad_to_square(values: &[f32]) -> (usize, Vec<f32>) {
    let side = square_side(values.len());
    let mut padded = vec![0.0; side * side];
    padded[..values.len()].copy_from_slice(values);
    (side, padded)
}

/// One bucket's state across steps.
#[derive(Debug, Clone)]
struct BucketState {
    len: usize,
    side: usize,
    r: usize,
    /// `M = padded grad + residual`, then `residual = M − out`: kept as the residual.
    residual: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
}

/// Batched PowerSGD (methods `batched_powersgd` and `batched_powersgd_fp16`).
#[derive(Debug, Clone)]
pub struct BatchedPowerSgd {
    rank: usize,
    start_iter: usize,
    seed: u64,
    wire: Wire,
    iter: usize,
    buckets: HashMap<usize, BucketState>,
    matrix: Vec<f32>,
    row: Vec<f32>,
}

impl BatchedPowerSgd {
    /// Batched PowerSGD of rank `rank` (at most the square's side) starting after
    /// `start_iter` steps, Q seeded by `seed`, sending values as `wire` (F32 or F16).
    pub fn new(rank: usize, start_iter: usize, seed: u64, wire: Wire) -> Self {
        BatchedPowerSgd {
            rank: rank.max(1),
            start_iter,
            seed,
            wire,
            iter: 0,
            buckets: HashMap::new(),
            matrix: Vec::new(),
            row: Vec::new(),
        }
    }

    /// The error-feedback residual of `bucket`, over the padded `side²` values.
    pub fn residual(&self, bucket: usize) -> Option<&[f32]> {
        self.buckets.get(&bucket).map(|s| s.residual.as_slice())
    }
}

impl GradCompressor for BatchedPowerSgd {
    fn reduce_bucket(
        &mut self,
        bucket: usize,
        grad: &mut [f32],
        _layout: &[TensorLayout],
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError> {
        if self.iter < self.start_iter {
            return average(grad, self.wire, comm);
        }
        let len = grad.len();
        if len == 0 {
            return Ok(());
        }
        let st = self.buckets.entry(bucket).or_insert_with(|| BucketState {
            len: usize::MAX,
            side: 0,
            r: 0,
            residual: Vec::new(),
            p: Vec::new(),
            q: Vec::new(),
        });
        if st.len != len {
            let side = square_side(len);
            let r = self.rank.min(side);
            let mut q = vec![0.0; side * r];
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(bucket as u64);
            fill_standard_normal(&mut rng, &mut q);
            *st = BucketState {
                len,
                side,
                r,
                residual: vec![0.0; side * side],
                p: vec![0.0; side * r],
                q,
            };
        }
        let (side, r) = (st.side, st.r);

        // M = padded grad + residual.
        let m = &mut self.matrix;
        m.clear();
        m.extend_from_slice(grad);
        m.resize(side * side, 0.0);
        for (x, &e) in m.iter_mut().zip(&st.residual) {
            *x += e;
        }

        orthogonalize(&mut st.q, side, r, ORTHO_EPSILON);
        mul_m_q(m, side, side, &st.q, r, &mut st.p);
        reduce_p(&mut st.p, self.wire, comm)?;
        orthogonalize(&mut st.p, side, r, ORTHO_EPSILON);
        mul_mt_p(m, side, side, &st.p, r, &mut st.q);
        average(&mut st.q, self.wire, comm)?;

        // out = P Qᵀ; residual = M − out over the padded square; grad = out, un-padded.
        self.row.resize(side, 0.0);
        for i in 0..side {
            row_p_qt(&st.p, side, i, &st.q, &mut self.row);
            let at = i * side;
            for (j, &a) in self.row.iter().enumerate() {
                st.residual[at + j] = m[at + j] - a;
                if let Some(g) = grad.get_mut(at + j) {
                    *g = a;
                }
            }
        }
        Ok(())
    }

    fn end_step(&mut self) {
        self.iter += 1;
    }

    fn name(&self) -> &'static str {
        match self.wire {
            Wire::F32 => "batched_powersgd",
            _ => "batched_powersgd_fp16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_comm::Solo;

    #[test]
    fn side_is_ceil_sqrt() {
        for (len, side) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (4, 2),
            (5, 3),
            (9, 3),
            (10, 4),
            (44_426, 211),
        ] {
            assert_eq!(square_side(len), side, "len {len}");
        }
        for len in 0..2000usize {
            let s = square_side(len);
            assert!(
                s * s >= len && (s == 0 || (s - 1) * (s - 1) < len),
                "len {len}"
            );
        }
    }

    #[test]
    fn pad_and_unpad_round_trip() {
        let v: Vec<f32> = (0..10).map(|i| i as f32 - 4.5).collect();
        let (side, padded) = pad_to_square(&v);
        assert_eq!(side, 4);
        assert_eq!(padded.len(), 16);
        assert_eq!(&padded[..10], &v[..]);
        assert!(padded[10..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn full_rank_reproduces_the_bucket_and_residual_vanishes() {
        // 10 values → 4×4 square; rank 4 spans it, so one step reproduces the bucket.
        let v: Vec<f32> = (0..10).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let mut c = BatchedPowerSgd::new(4, 0, 1, Wire::F32);
        let mut out = v.clone();
        c.reduce_bucket(0, &mut out, &[], &mut Solo).expect("solo");
        for (a, b) in out.iter().zip(&v) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let res = c.residual(0).expect("state");
        assert_eq!(res.len(), 16);
        assert!(res.iter().all(|x| x.abs() < 1e-5), "{res:?}");
    }

    #[test]
    fn low_rank_error_is_fed_back() {
        let v: Vec<f32> = (0..30)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let mut c = BatchedPowerSgd::new(1, 0, 1, Wire::F32);
        let mut out = v.clone();
        c.reduce_bucket(0, &mut out, &[], &mut Solo).expect("solo");
        let res = c.residual(0).expect("state");
        let mut worst = 0f32;
        for i in 0..v.len() {
            worst = worst.max((out[i] + res[i] - v[i]).abs());
        }
        assert!(
            worst < 1e-5,
            "out + residual must equal the input, off by {worst}"
        );
        assert!(
            res.iter().any(|x| x.abs() > 1e-3),
            "rank 1 cannot be exact here"
        );
    }
}
