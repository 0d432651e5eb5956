//! Gradient compression for data-parallel training, after PyTorch's DDP communication hooks.
//!
//! A [`GradCompressor`] replaces one rank's flat f32 gradient *bucket* with the average over
//! all ranks of the (possibly lossy-compressed) gradients, talking to its peers through a
//! [`Communicator`]. Every method leaves bit-identical buckets on every rank, so the replicas'
//! parameters never drift apart.
//!
//! | method | wire format | state |
//! |---|---|---|
//! | `none` | f32 all-reduce (average) | – |
//! | `fp16` / `bf16` | divide by world, all-reduce sum in 16 bits | – |
//! | `topk` | (u32 index, f32 value) pairs by all-gather | residual (error feedback) |
//! | `powersgd(_fp16)` | per-matrix low-rank factors P, Q | residual, warm-start Q |
//! | `batched_powersgd(_fp16)` | one P, Q per bucket viewed as a square | residual, warm-start Q |
//!
//! *Error feedback*: what a lossy method did not send this step (the residual) is added to the
//! next step's gradient, so nothing is lost, only delayed.

mod dense;
mod linalg;
mod powersgd;
mod powersgd_batched;
#[cfg(test)]
mod powersgd_tests;
mod topk;

pub use dense::{DenseAllReduce, Wire};
pub use linalg::{orthogonalize, ORTHO_EPSILON};
pub use mnist_comm::{CommError, Communicator, ReduceOp};
pub use mnist_common::CompressionKind;
pub use powersgd::{PowerSgd, MIN_COMPRESSION_RATE};
pub use powersgd_batched::{pad_to_square, square_side, BatchedPowerSgd};
pub use topk::{topk_count, topk_select, TopK};

/// Where one parameter's gradient lies inside a bucket: `shape.iter().product()` values
/// starting at `offset`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorLayout {
    /// Index of the tensor's first value in the bucket.
    pub offset: usize,
    /// The parameter's shape (e.g. `[16, 6, 5, 5]` for a conv weight).
    pub shape: Vec<usize>,
}

impl TensorLayout {
    /// Number of values the tensor holds.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything needed to build a compressor (the values of the worker's compression flags).
#[derive(Clone, Debug, PartialEq)]
pub struct CompressionParams {
    /// Which method.
    pub kind: CompressionKind,
    /// Fraction of each bucket's values that top-k sends, in (0, 1].
    pub topk_ratio: f64,
    /// PowerSGD's matrix approximation rank r (≥ 1; 0 is treated as 1).
    pub powersgd_rank: usize,
    /// Optimizer steps of plain all-reduce before PowerSGD starts.
    pub powersgd_start_iter: usize,
    /// Seed of PowerSGD's initial Q matrices (must be the same on every rank).
    pub seed: u64,
}

impl CompressionParams {
    /// Parameters for `kind` with PyTorch-like defaults: top-k ratio 0.01, PowerSGD rank 2,
    /// start after 1000 steps, seed 0.
    pub fn new(kind: CompressionKind) -> Self {
        CompressionParams {
            kind,
            topk_ratio: 0.01,
            powersgd_rank: 2,
            powersgd_start_iter: 1000,
            seed: 0,
        }
    }
}

/// A gradient-averaging method. One instance per rank, kept for the whole run (it holds the
/// error-feedback residuals and warm-start matrices, keyed by bucket index).
pub trait GradCompressor: Send {
    /// Replace `grad` (this rank's bucket `bucket`, laid out as `layout`) with the AVERAGE over
    /// ranks of the (compressed) gradients; leaves bit-identical results on every rank.
    /// Every rank must call it for the same buckets, in the same order, with the same lengths.
    fn reduce_bucket(
        &mut self,
        bucket: usize,
        grad: &mut [f32],
        layout: &[TensorLayout],
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError>;
    /// Call once per optimizer step after all buckets (PowerSGD counts iterations).
    fn end_step(&mut self) {}
    /// Name as on the command line (`none`, `fp16`, `powersgd_fp16`, …).
    fn name(&self) -> &'static str;
}

/// The command-line name of a method.
pub fn kind_name(kind: CompressionKind) -> &'static str {
    match kind {
        CompressionKind::None => "none",
        CompressionKind::Fp16 => "fp16",
        CompressionKind::Bf16 => "bf16",
        CompressionKind::TopK => "topk",
        CompressionKind::PowerSgd => "powersgd",
        CompressionKind::PowerSgdFp16 => "powersgd_fp16",
        CompressionKind::BatchedPowerSgd => "batched_powersgd",
        CompressionKind::BatchedPowerSgdFp16 => "batched_powersgd_fp16",
    }
}

/// Every method, in command-line order.
pub const ALL_KINDS: [CompressionKind; 8] = [
    CompressionKind::None,
    CompressionKind::Fp16,
    CompressionKind::Bf16,
    CompressionKind::TopK,
    CompressionKind::PowerSgd,
    CompressionKind::PowerSgdFp16,
    CompressionKind::BatchedPowerSgd,
    CompressionKind::BatchedPowerSgdFp16,
];

/// Build the compressor `params` describes. Out-of-range values never panic: the top-k
/// count is clamped to [1, bucket length] and a PowerSGD rank of 0 is treated as 1
/// (`TrainConfig::validate` rejects both earlier).
pub fn build(params: &CompressionParams) -> Box<dyn GradCompressor> {
    let rank = params.powersgd_rank.max(1);
    let start = params.powersgd_start_iter;
    let seed = params.seed;
    match params.kind {
        CompressionKind::None => Box::new(DenseAllReduce::new(Wire::F32)),
        CompressionKind::Fp16 => Box::new(DenseAllReduce::new(Wire::F16)),
        CompressionKind::Bf16 => Box::new(DenseAllReduce::new(Wire::Bf16)),
        CompressionKind::TopK => Box::new(TopK::new(params.topk_ratio)),
        CompressionKind::PowerSgd => Box::new(PowerSgd::new(rank, start, seed, Wire::F32)),
        CompressionKind::PowerSgdFp16 => Box::new(PowerSgd::new(rank, start, seed, Wire::F16)),
        CompressionKind::BatchedPowerSgd => {
            Box::new(BatchedPowerSgd::new(rank, start, seed, Wire::F32))
        }
        CompressionKind::BatchedPowerSgdFp16 => {
            Box::new(BatchedPowerSgd::new(rank, start, seed, Wire::F16))
        }
    }
}
