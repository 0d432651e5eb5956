//! Training-mode BatchNorm2d forward and backward written out by hand, with the batch
//! statistics and the two gradient sums summed over ranks by a caller-supplied all-reduce:
//! `nn.SyncBatchNorm`'s mathematics on any device, CPU included.
//!
//! The caller cuts the autograd graph at the normalisation: [`forward_train`] takes the
//! convolution's output (detached), [`backward`] turns the gradient of the normalised output
//! into the gradient of that input plus the local gradients of `weight` and `bias` (which
//! DDP then averages with the other gradients, as PyTorch does). With a reducer that
//! leaves its vector unchanged this is plain single-process BatchNorm.

use tch::{Kind, Tensor};

/// PyTorch's default `eps` for `BatchNorm2d`.
pub const EPS: f64 = 1e-5;
/// PyTorch's default `momentum` for `BatchNorm2d`.
pub const MOMENTUM: f64 = 0.1;

/// What the backward pass needs from the forward pass.
#[derive(Debug)]
pub struct BnCache {
    /// The input `x`, `[N, C, H, W]` (a shallow copy; no gradient).
    pub x: Tensor,
    /// Per-channel mean of the (global) batch, `[C]`, in `x`'s kind.
    pub mean: Tensor,
    /// Per-channel `1 / sqrt(var + eps)` of the (global) batch, `[C]`, in `x`'s kind.
    pub invstd: Tensor,
    /// The same mean and inverse standard deviation in float64, for the backward's
    /// per-channel coefficients.
    mean_invstd: Vec<(f64, f64)>,
    /// Number of values per channel over all ranks (N·H·W summed).
    pub count: f64,
}

/// Gradients returned by [`backward`].
#[derive(Debug)]
pub struct BnGrads {
    /// Gradient of the input, `[N, C, H, W]`.
    pub dx: Tensor,
    /// This rank's gradient of `weight`, `[C]`.
    pub dweight: Tensor,
    /// This rank's gradient of `bias`, `[C]`.
    pub dbias: Tensor,
}

/// Per-channel sums over `[N, C, H, W]` (in `t`'s kind; libtorch's reductions).
fn channel_sums(t: &Tensor) -> Tensor {
    t.sum_dim_intlist([0i64, 2, 3].as_slice(), false, t.kind())
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(
        &t.to_device(tch::Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous(),
    )
    .expect("a double tensor converts to Vec<f64>")
}

/// `[1, C, 1, 1]` tensor of `v` in `kind` on `dev`, to broadcast over `[N, C, H, W]`.
fn per_channel(v: &[f64], kind: Kind, dev: tch::Device) -> Tensor {
    Tensor::from_slice(v)
        .to_kind(kind)
        .to_device(dev)
        .view([1, -1, 1, 1])
}

/// Training-mode forward of BatchNorm2d on `x` (`[N, C, H, W]`, no gradient needed).
///
/// Each rank computes its batch's per-channel mean and biased variance with libtorch's
/// `batch_norm_update_stats` (one fused pass) and turns them into float64 sums of
/// `x - K` and `(x - K)²` around the current running mean `K` (equal on every rank: the
/// running statistics are kept in step), which keeps the variance `E[(x-K)²] - E[x-K]²`
/// free of cancellation once the running mean tracks the batch mean. `reduce` sums a
/// vector over all ranks in place (identity for one process); it is called once with
/// `[count, sum_0..C, sumsq_0..C]`. Updates `running_mean` and `running_var` (unbiased
/// variance of the global batch) with `momentum`; the caller increments
/// `num_batches_tracked`. Returns `weight · (x - mean) / sqrt(var + eps) + bias` (one fused
/// pass) and the cache for [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn forward_train<E>(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    momentum: f64,
    eps: f64,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<(Tensor, BnCache), E> {
    let size = x.size();
    let c = size[1] as usize;
    let local_count = (size[0] * size[2] * size[3]) as f64;
    let shift = to_vec(running_mean);
    let mut v = vec![0.0; 1 + 2 * c];
    v[0] = local_count;
    if local_count > 0.0 {
        let (m, var) =
            tch::no_grad(|| x.batch_norm_update_stats(None::<Tensor>, None::<Tensor>, 0.0));
        let (m, var) = (to_vec(&m), to_vec(&var));
        for i in 0..c {
            let d = m[i] - shift[i];
            v[1 + i] = local_count * d;
            v[1 + c + i] = local_count * (var[i] + d * d);
        }
    }
    reduce(&mut v)?;
    let n = v[0];
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for i in 0..c {
        let d = v[1 + i] / n;
        mean[i] = shift[i] + d;
        // Biased variance; clamp tiny negative rounding.
        var[i] = (v[1 + c + i] / n - d * d).max(0.0);
    }
    let invstd: Vec<f64> = var.iter().map(|s| 1.0 / (s + eps).sqrt()).collect();
    let w = to_vec(weight);
    let b = to_vec(bias);
    let dev = x.device();
    let kind = x.kind();
    // y = x·scale + offset with scale = w·invstd, offset = b - mean·scale.
    let scale: Vec<f64> = (0..c).map(|i| w[i] * invstd[i]).collect();
    let offset: Vec<f64> = (0..c).map(|i| b[i] - mean[i] * scale[i]).collect();
    let y = tch::no_grad(|| {
        per_channel(&offset, kind, dev).addcmul(x, &per_channel(&scale, kind, dev))
    });
    let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    let var_unbiased: Vec<f64> = var.iter().map(|s| s * unbias).collect();
    tch::no_grad(|| {
        let m = Tensor::from_slice(&mean)
            .to_kind(running_mean.kind())
            .to_device(dev);
        let vv = Tensor::from_slice(&var_unbiased)
            .to_kind(running_var.kind())
            .to_device(dev);
        let new_mean = &*running_mean * (1.0 - momentum) + m * momentum;
        let new_var = &*running_var * (1.0 - momentum) + vv * momentum;
        running_mean.copy_(&new_mean);
        running_var.copy_(&new_var);
    });
    let cache = BnCache {
        x: x.shallow_clone(),
        mean: Tensor::from_slice(&mean).to_kind(kind).to_device(dev),
        invstd: Tensor::from_slice(&invstd).to_kind(kind).to_device(dev),
        mean_invstd: mean.into_iter().zip(invstd).collect(),
        count: n,
    };
    Ok((y, cache))
}

/// Backward of [`forward_train`]: from `dy` (gradient of the output) to the input's gradient
/// and this rank's `weight`/`bias` gradients. `reduce` is called once with
/// `[sum(dy)_0..C, sum(dy·xhat)_0..C]`, as `nn.SyncBatchNorm` all-reduces them; then
/// `dx = w·invstd·(dy - mean(dy) - xhat·mean(dy·xhat))` over the global batch, computed as
/// `a·dy + b·x + c` with per-channel `a`, `b`, `c` (two fused passes).
pub fn backward<E>(
    dy: &Tensor,
    cache: &BnCache,
    weight: &Tensor,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<BnGrads, E> {
    let kind = dy.kind();
    let dev = dy.device();
    let (sum_dy, sum_dy_xhat) = tch::no_grad(|| {
        let centred = &cache.x - cache.mean.view([1, -1, 1, 1]);
        let sum_dy = channel_sums(dy);
        let sum_dy_xhat = channel_sums(&(dy * centred)) * &cache.invstd;
        (sum_dy, sum_dy_xhat)
    });
    let c = cache.mean_invstd.len();
    let mut v = to_vec(&sum_dy);
    v.extend(to_vec(&sum_dy_xhat));
    reduce(&mut v)?;
    let n = cache.count;
    let w = to_vec(weight);
    let (mut a, mut b, mut k) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    for i in 0..c {
        let (mean, invstd) = cache.mean_invstd[i];
        let (mean_dy, mean_dy_xhat) = (v[i] / n, v[c + i] / n);
        // dx = a·(dy - mean_dy - (x - mean)·invstd·mean_dy_xhat)
        a[i] = w[i] * invstd;
        b[i] = -a[i] * invstd * mean_dy_xhat;
        k[i] = -a[i] * mean_dy - b[i] * mean;
    }
    let dx = tch::no_grad(|| {
        let mut dx = per_channel(&k, kind, dev).addcmul(&cache.x, &per_channel(&b, kind, dev));
        let _ = dx.addcmul_(dy, &per_channel(&a, kind, dev));
        dx
    });
    Ok(BnGrads {
        dx,
        dweight: sum_dy_xhat,
        dbias: sum_dy,
    })
}
