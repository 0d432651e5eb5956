//! PowerSGD, layer by layer (PyTorch's `powerSGD_hook` with error feedback and warm start).
//!
//! Each bucket is split into the matrices worth compressing (tensors with ≥ 2 dimensions,
//! viewed as `[shape[0], rest]`, where `(n + m)·r < n·m`) and everything else (biases,
//! small matrices, gaps), which is all-reduced uncompressed as one packed buffer. For every
//! compressed matrix M (n×m, rank r' = min(n, m, r)), per step:
//!
//! ```text
//!   M  = grad + residual               error feedback
//!   Q  = orthogonalize(Q)              warm start: last step's Q (first step: seeded N(0,1))
//!   P  = M Q              ─ all-reduce all P's of the bucket at once (sum)
//!   P  = orthogonalize(P)
//!   Q  = Mᵀ P             ─ all-reduce all Q's at once, divide by world
//!   out = P Qᵀ            identical on every rank: built only from all-reduced values
//!   residual = M − out
//! ```
//!
//! Before `start_iter` optimizer steps have ended, buckets are plainly averaged.
//! The `_fp16` variant sends every buffer as fp16, as PyTorch's
//! `fp16_compress_wrapper(powerSGD_hook)` does, dividing P by the world size before its
//! fp16 sum to stay clear of fp16 overflow (orthogonalisation removes the scale); the maths
//! between collectives stays in f32.
//!
//! One deviation: PyTorch's residual spans the whole bucket, so for uncompressed tensors it
//! holds `local − average`, whose sum over ranks is zero and which therefore cancels in the
//! next average. We keep residuals for compressed matrices only.

use crate::dense::{average, Wire};
use crate::linalg::{fill_standard_normal, mul_m_q, mul_mt_p, orthogonalize, row_p_qt};
use crate::{GradCompressor, TensorLayout, ORTHO_EPSILON};
use mnist_comm::{CommError, Communicator, ReduceOp};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::ops::Range;

/// A matrix is compressed only when `(n + m)·r · MIN_COMPRESSION_RATE < n·m`. PyTorch's
/// default is 2; we use 1: compress whenever it saves bytes at all.
pub const MIN_COMPRESSION_RATE: usize = 1;

/// One compressed matrix of a bucket.
#[derive(Debug, Clone, PartialEq)]
struct Matrix {
    offset: usize,
    n: usize,
    m: usize,
    r: usize,
    /// Offsets of this matrix's P (n×r) and Q (m×r), stored column by column, in the
    /// bucket's packed P and Q buffers.
    p_off: usize,
    q_off: usize,
}

impl Matrix {
    fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.n * self.m
    }
    fn p(&self) -> Range<usize> {
        self.p_off..self.p_off + self.n * self.r
    }
    fn q(&self) -> Range<usize> {
        self.q_off..self.q_off + self.m * self.r
    }
}

/// How one bucket is split, and its state across steps.
#[derive(Debug, Clone)]
struct BucketState {
    len: usize,
    layout: Vec<TensorLayout>,
    matrices: Vec<Matrix>,
    uncompressed: Vec<Range<usize>>,
    residual: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
}

impl BucketState {
    /// Plan the split and draw the initial Q's (seeded by `seed` and the bucket index).
    fn new(
        len: usize,
        layout: &[TensorLayout],
        rank: usize,
        seed: u64,
        bucket: usize,
    ) -> Result<Self, String> {
        let mut spans: Vec<Range<usize>> = Vec::new();
        let mut matrices = Vec::new();
        let (mut p_len, mut q_len) = (0, 0);
        for (t, tensor) in layout.iter().enumerate() {
            let numel = tensor.numel();
            let end = tensor
                .offset
                .checked_add(numel)
                .filter(|&e| e <= len)
                .ok_or_else(|| {
                    format!(
                    "tensor {t} (offset {}, shape {:?}) does not fit in the bucket's {len} values",
                    tensor.offset, tensor.shape
                )
                })?;
            if numel == 0 {
                continue;
            }
            spans.push(tensor.offset..end);
            if tensor.shape.len() < 2 {
                continue; // biases and scalars: uncompressed
            }
            let (n, m) = (tensor.shape[0], numel / tensor.shape[0]);
            let r = rank.min(n).min(m);
            if (n + m) * r * MIN_COMPRESSION_RATE < n * m {
                matrices.push(Matrix {
                    offset: tensor.offset,
                    n,
                    m,
                    r,
                    p_off: p_len,
                    q_off: q_len,
                });
                p_len += n * r;
                q_len += m * r;
            }
        }
        spans.sort_by_key(|s| s.start);
        for pair in spans.windows(2) {
            if pair[1].start < pair[0].end {
                return Err(format!(
                    "tensors at {:?} and {:?} overlap",
                    pair[0], pair[1]
                ));
            }
        }
        let mut compressed: Vec<Range<usize>> = matrices.iter().map(Matrix::range).collect();
        compressed.sort_by_key(|s| s.start);
        let mut uncompressed = Vec::new();
        let mut at = 0;
        for s in compressed.iter().chain(std::iter::once(&(len..len))) {
            if s.start > at {
                uncompressed.push(at..s.start);
            }
            at = s.end;
        }
        let mut q = vec![0.0; q_len];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(bucket as u64);
        fill_standard_normal(&mut rng, &mut q);
        Ok(BucketState {
            len,
            layout: layout.to_vec(),
            matrices,
            uncompressed,
            residual: vec![0.0; len],
            p: vec![0.0; p_len],
            q,
        })
    }
}

/// Sum the packed P's over ranks (f32, as PyTorch), or average them in a 16-bit format.
pub(crate) fn reduce_p(
    p: &mut [f32],
    wire: Wire,
    comm: &mut dyn Communicator,
) -> Result<(), CommError> {
    match wire {
        Wire::F32 => comm.all_reduce_f32(p, ReduceOp::Sum),
        _ => average(p, wire, comm),
    }
}

/// Layer-wise PowerSGD (methods `powersgd` and `powersgd_fp16`).
#[derive(Debug, Clone)]
pub struct PowerSgd {
    rank: usize,
    start_iter: usize,
    seed: u64,
    wire: Wire,
    iter: usize,
    buckets: HashMap<usize, BucketState>,
    packed: Vec<f32>,
    row: Vec<f32>,
}

impl PowerSgd {
    /// PowerSGD of rank `rank` starting after `start_iter` steps, Q's seeded by `seed`,
    /// sending values as `wire` (F32 or F16).
    pub fn new(rank: usize, start_iter: usize, seed: u64, wire: Wire) -> Self {
        PowerSgd {
            rank: rank.max(1),
            start_iter,
            seed,
            wire,
            iter: 0,
            buckets: HashMap::new(),
            packed: Vec::new(),
            row: Vec::new(),
        }
    }

    /// Optimizer steps ended so far.
    pub fn iter(&self) -> usize {
        self.iter
    }

    /// The error-feedback residual of `bucket` (zero outside compressed matrices).
    pub fn residual(&self, bucket: usize) -> Option<&[f32]> {
        self.buckets.get(&bucket).map(|s| s.residual.as_slice())
    }

    /// Offsets of the tensors of `bucket` that are compressed (the rest go uncompressed).
    pub fn compressed_offsets(&self, bucket: usize) -> Option<Vec<usize>> {
        self.buckets
            .get(&bucket)
            .map(|s| s.matrices.iter().map(|m| m.offset).collect())
    }
}

impl GradCompressor for PowerSgd {
    fn reduce_bucket(
        &mut self,
        bucket: usize,
        grad: &mut [f32],
        layout: &[TensorLayout],
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError> {
        if self.iter < self.start_iter {
            return average(grad, self.wire, comm);
        }
        let stale = self
            .buckets
            .get(&bucket)
            .is_none_or(|s| s.len != grad.len() || s.layout != layout);
        if stale {
            let state = BucketState::new(grad.len(), layout, self.rank, self.seed, bucket)
                .map_err(|detail| CommError::Mismatch {
                    rank: comm.rank(),
                    seq: self.iter as u64,
                    detail: format!("powersgd bucket {bucket} layout: {detail}"),
                })?;
            self.buckets.insert(bucket, state);
        }
        let Some(st) = self.buckets.get_mut(&bucket) else {
            return Ok(()); // unreachable: inserted just above
        };
        let wire = self.wire;

        // Error feedback: M = grad + residual, for the compressed matrices.
        for mat in &st.matrices {
            for (g, &r) in grad[mat.range()].iter_mut().zip(&st.residual[mat.range()]) {
                *g += r;
            }
        }
        // Everything else travels uncompressed, packed into one buffer.
        let packed = &mut self.packed;
        packed.clear();
        for s in &st.uncompressed {
            packed.extend_from_slice(&grad[s.clone()]);
        }
        average(packed, wire, comm)?;
        let mut at = 0;
        for s in &st.uncompressed {
            grad[s.clone()].copy_from_slice(&packed[at..at + s.len()]);
            at += s.len();
        }
        if st.matrices.is_empty() {
            return Ok(());
        }

        for mat in &st.matrices {
            orthogonalize(&mut st.q[mat.q()], mat.m, mat.r, ORTHO_EPSILON);
            mul_m_q(
                &grad[mat.range()],
                mat.n,
                mat.m,
                &st.q[mat.q()],
                mat.r,
                &mut st.p[mat.p()],
            );
        }
        reduce_p(&mut st.p, wire, comm)?;
        for mat in &st.matrices {
            orthogonalize(&mut st.p[mat.p()], mat.n, mat.r, ORTHO_EPSILON);
            mul_mt_p(
                &grad[mat.range()],
                mat.n,
                mat.m,
                &st.p[mat.p()],
                mat.r,
                &mut st.q[mat.q()],
            );
        }
        average(&mut st.q, wire, comm)?;

        // out = P Qᵀ; residual = M − out.
        for mat in &st.matrices {
            self.row.resize(mat.m, 0.0);
            let (pt, qt) = (&st.p[mat.p()], &st.q[mat.q()]);
            let rows = grad[mat.range()].chunks_exact_mut(mat.m);
            let res_rows = st.residual[mat.range()].chunks_exact_mut(mat.m);
            for (i, (g_row, res_row)) in rows.zip(res_rows).enumerate() {
                row_p_qt(pt, mat.n, i, qt, &mut self.row);
                for ((g, res), &a) in g_row.iter_mut().zip(res_row.iter_mut()).zip(&self.row) {
                    *res = *g - a;
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
            Wire::F32 => "powersgd",
            _ => "powersgd_fp16",
        }
    }
}
