//! Net's training step: BatchNorm with batch statistics that a caller-supplied all-reduce may
//! sum over ranks (`nn.SyncBatchNorm`'s mathematics, see [`crate::batchnorm`]), and dropout
//! with masks from a per-rank random stream ([`Dropout`]).
//!
//! The autograd graph is cut at each BatchNorm: segment A is `conv1(x)`, segment B is
//! `conv2(relu(y1))` from a leaf `y1`, segment C is the rest of the network from a leaf `y2`
//! down to the loss. Backward runs C, then BatchNorm 2 by hand (its two gradient sums
//! reduced over ranks), then B with that gradient, then BatchNorm 1, then A. The gradients
//! land in the parameters' `.grad` (for the trainer: views of the flat gradient buffer).

use crate::batchnorm::{self, BnCache};
use crate::{Model, ModelKind};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Reduction, Tensor};

/// Net's first dropout probability (`Dropout(0.25)`, after the pooling).
pub const DROPOUT1: f64 = 0.25;
/// Net's second dropout probability (`Dropout(0.5)`, after `fc1`).
pub const DROPOUT2: f64 = 0.5;

/// A reproducible stream of dropout masks: ChaCha8 seeded with `--seed`, one stream per rank
/// and epoch, so each rank draws its own masks, a rerun draws the same ones, and a run
/// resumed at an epoch draws what the uninterrupted run drew; [`Dropout::at_batch`] gives
/// each batch its own stream so that a run resumed inside an epoch does too.
#[derive(Clone, Debug)]
pub struct Dropout {
    rng: ChaCha8Rng,
}

impl Dropout {
    /// The stream of rank `rank` in epoch `epoch` for seed `seed`.
    pub fn new(seed: u64, rank: usize, epoch: usize) -> Dropout {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(((rank as u64) << 32) ^ epoch as u64);
        Dropout { rng }
    }

    /// The stream of rank `rank` for batch `batch` of epoch `epoch` (independent of how many
    /// masks earlier batches drew, so `--checkpoint-every` resumes exactly).
    pub fn at_batch(seed: u64, rank: usize, epoch: usize, batch: usize) -> Dropout {
        // Distinct 64-bit seeds per batch (golden-ratio increments never collide for
        // realistic batch counts); the stream keeps rank and epoch apart.
        let batch_seed = seed ^ (batch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Dropout::new(batch_seed, rank, epoch)
    }

    /// A float32 mask of `shape` on `device` for dropout probability `p` (in `[0, 1)`): each
    /// value independently `0` with probability `p`, else `1 / (1 - p)` (PyTorch's scaling).
    pub fn mask(&mut self, shape: &[i64], p: f64, device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        // Drop when a uniform 32-bit word falls below p·2³² (exact for p = k/2³²).
        let threshold = (p * 4_294_967_296.0).round() as u64;
        let keep = (1.0 / (1.0 - p)) as f32;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if u64::from(self.rng.next_u32()) < threshold {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        Tensor::from_slice(&values).view(shape).to_device(device)
    }
}

/// What one training step computed.
#[derive(Debug)]
pub struct TrainStep {
    /// The batch's mean negative log-likelihood times the step's loss weight (detached).
    pub loss: Tensor,
    /// The network's output, log-probabilities `[N, 10]` (detached).
    pub output: Tensor,
}

/// Indices of Net's parameters in `state_dict` order.
mod idx {
    pub const CONV1: usize = 0;
    pub const BN1: usize = 2;
    pub const CONV2: usize = 4;
    pub const BN2: usize = 6;
    pub const FC1: usize = 8;
    pub const FC2: usize = 10;
    /// First buffer of bn1 and bn2: running_mean, then running_var, then the counter.
    pub const BN1_BUF: usize = 0;
    pub const BN2_BUF: usize = 3;
}

/// One training-mode forward and backward pass of Net on `(x, y)`: the loss is the mean
/// negative log-likelihood of the `log_softmax` output (the example's cross-entropy on that
/// output) times `loss_weight`; its gradients are accumulated into the parameters' `.grad`.
///
/// BatchNorm normalises with the statistics of the batch summed by `reduce` (identity: this
/// batch alone; a sum over ranks: SyncBatchNorm), updates the running statistics (momentum
/// 0.1, unbiased variance of the summed batch) and counts `num_batches_tracked`. `reduce` is
/// called four times per step, in the same order on every rank. `dropout` draws the two
/// dropout masks; `None` turns dropout off (tests).
///
/// Panics (as tch does for libtorch errors) if `model` is not a Net.
pub fn train_step<E>(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    loss_weight: f64,
    dropout: Option<&mut Dropout>,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<TrainStep, E> {
    assert_eq!(model.kind(), ModelKind::Net, "train_step is Net's");
    let p = |i: usize| model.p(i);
    let conv = |x: &Tensor, i: usize| x.conv2d(p(i), Some(p(i + 1)), [1, 1], [0, 0], [1, 1], 1);

    // Segment A and BatchNorm 1.
    let h1 = conv(x, idx::CONV1);
    let (y1, bn1) = bn_forward(model, &h1.detach(), idx::BN1, idx::BN1_BUF, reduce)?;
    let y1 = y1.set_requires_grad(true);
    // Segment B and BatchNorm 2.
    let h2 = conv(&y1.relu(), idx::CONV2);
    let (y2, bn2) = bn_forward(model, &h2.detach(), idx::BN2, idx::BN2_BUF, reduce)?;
    let y2 = y2.set_requires_grad(true);
    // Segment C (dropout as a product with a mask: not in place, relu's backward needs its
    // output).
    let mut dropout = dropout;
    let z = relu_max_pool(&y2);
    let z = match dropout.as_deref_mut() {
        Some(d) => {
            let m = d.mask(&z.size(), DROPOUT1, z.device());
            z * m
        }
        None => z,
    };
    let z = z
        .flatten(1, -1)
        .linear(p(idx::FC1), Some(p(idx::FC1 + 1)))
        .relu();
    let z = match dropout {
        Some(d) => {
            let m = d.mask(&z.size(), DROPOUT2, z.device());
            z * m
        }
        None => z,
    };
    let output = z
        .linear(p(idx::FC2), Some(p(idx::FC2 + 1)))
        .log_softmax(-1, Kind::Float);
    let loss = output.g_nll_loss::<Tensor>(y, None, Reduction::Mean, -100);
    let loss = if loss_weight == 1.0 {
        loss
    } else {
        loss * loss_weight
    };

    // Backward: C, BatchNorm 2, B, BatchNorm 1, A.
    loss.backward();
    let dh2 = bn_backward(model, &y2.grad(), &bn2, idx::BN2, reduce)?;
    backward_with(&h2, &dh2);
    let dh1 = bn_backward(model, &y1.grad(), &bn1, idx::BN1, reduce)?;
    backward_with(&h1, &dh1);
    Ok(TrainStep {
        loss: loss.detach(),
        output: output.detach(),
    })
}

/// `max_pool2d(relu(y), 2)` as `relu(max_pool2d(y, 2))` (equal: relu is monotonic; the
/// gradient reaches the same element or, where the window's maximum is not positive, none).
/// On the CPU the pooling is [`crate::lenet_cpu::max_pool_2x2`] (`max_pool2d`'s element and
/// gradient, several times faster than libtorch's scalar CPU kernel), and relu runs on a
/// quarter of the values.
pub(crate) fn relu_max_pool(y: &Tensor) -> Tensor {
    let s = y.size();
    if y.device() == Device::Cpu && y.kind() == Kind::Float && s[2] % 2 == 0 && s[3] % 2 == 0 {
        crate::lenet_cpu::max_pool_2x2(&y.reshape([s[0] * s[1], s[2], s[3]]))
            .view([s[0], s[1], s[2] / 2, s[3] / 2])
            .relu()
    } else {
        y.max_pool2d_default(2).relu()
    }
}

/// BatchNorm layer `w` (its weight; bias at `w + 1`) with buffers from `b` in training mode.
fn bn_forward<E>(
    model: &Model,
    h: &Tensor,
    w: usize,
    b: usize,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<(Tensor, BnCache), E> {
    let mut mean = model.buf(b).shallow_clone();
    let mut var = model.buf(b + 1).shallow_clone();
    let out = batchnorm::forward_train(
        h,
        model.p(w),
        model.p(w + 1),
        &mut mean,
        &mut var,
        batchnorm::MOMENTUM,
        batchnorm::EPS,
        reduce,
    )?;
    let mut count = model.buf(b + 2).shallow_clone();
    tch::no_grad(|| {
        let _ = count.g_add_scalar_(1);
    });
    Ok(out)
}

/// Backward of BatchNorm layer `w`: adds its weight and bias gradients to theirs and returns
/// the gradient of its input.
fn bn_backward<E>(
    model: &Model,
    dy: &Tensor,
    cache: &BnCache,
    w: usize,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<Tensor, E> {
    let g = batchnorm::backward(dy, cache, model.p(w), reduce)?;
    add_grad(model.p(w), &g.dweight);
    add_grad(model.p(w + 1), &g.dbias);
    Ok(g.dx)
}

/// Accumulate `g` into the gradient of leaf `p` (defining it if it has none yet).
fn add_grad(p: &Tensor, g: &Tensor) {
    let mut grad = p.grad();
    if grad.defined() {
        tch::no_grad(|| {
            let _ = grad.g_add_(g);
        });
    } else {
        // d/dp Σ p·g = g: autograd defines the gradient.
        (p * g.detach()).sum(Kind::Float).backward();
    }
}

/// Backpropagate the gradient `g` of `h` through `h`'s graph (as the backward of the scalar
/// `h·g`: one dot product, whose backward hands `g` to `h`).
fn backward_with(h: &Tensor, g: &Tensor) {
    h.flatten(0, -1)
        .dot(&g.detach().contiguous().flatten(0, -1))
        .backward();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_right_share_and_scale_and_repeat_per_seed_and_rank() {
        let mut d = Dropout::new(5, 0, 0);
        for p in [DROPOUT1, DROPOUT2] {
            let m = d.mask(&[64, 9216], p, Device::Cpu);
            let n = m.numel() as f64;
            let kept = m.ne(0.0).sum(Kind::Float).double_value(&[]) / n;
            // 589 824 draws: the standard deviation of the kept share is < 0.0007.
            assert!((kept - (1.0 - p)).abs() < 0.004, "p {p}: kept {kept}");
            let max = m.max().double_value(&[]);
            assert!((max - 1.0 / (1.0 - p)).abs() < 1e-6, "scale {max}");
            // Expected value 1: dropout keeps the mean.
            let mean = m.mean(Kind::Float).double_value(&[]);
            assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        }
        let mask =
            |seed, rank, epoch| Dropout::new(seed, rank, epoch).mask(&[1000], 0.5, Device::Cpu);
        let a = mask(5, 0, 0);
        assert!(
            a.equal(&mask(5, 0, 0)),
            "same seed, rank and epoch: same mask"
        );
        assert!(!a.equal(&mask(5, 1, 0)), "ranks draw different masks");
        assert!(!a.equal(&mask(6, 0, 0)), "seeds draw different masks");
        assert!(!a.equal(&mask(5, 0, 1)), "epochs draw different masks");
    }
}
