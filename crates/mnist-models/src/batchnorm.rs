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
    /// Normalised input `(x - mean) * invstd`, `[N, C, H, W]`.
    pub xhat: Tensor,
    /// Per-channel `1 / sqrt(var + eps)` of the (global) batch, `[C]`.
    pub invstd: Tensor,
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

fn channel_sums(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Double)
        .sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu).contiguous())
        .expect("a double tensor converts to Vec<f64>")
}

/// Training-mode forward of BatchNorm2d on `x` (`[N, C, H, W]`, no gradient needed).
///
/// `reduce` sums a vector over all ranks in place (identity for one process); it is called
/// once with `[count, sum_0..C, sumsq_0..C]`. Updates `running_mean` and `running_var`
/// (unbiased variance of the global batch) with `momentum`; the caller increments
/// `num_batches_tracked`. Returns the normalised, scaled output and the cache for
/// [`backward`].
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
    let sum = to_vec(&channel_sums(x));
    let sumsq = to_vec(&channel_sums(&(x.to_kind(Kind::Double).square())));
    let mut v = Vec::with_capacity(1 + 2 * c);
    v.push(local_count);
    v.extend_from_slice(&sum);
    v.extend_from_slice(&sumsq);
    reduce(&mut v)?;
    let n = v[0];
    let mean: Vec<f64> = v[1..=c].iter().map(|s| s / n).collect();
    // Biased variance; clamp tiny negative rounding.
    let var: Vec<f64> = (0..c)
        .map(|i| (v[1 + c + i] / n - mean[i] * mean[i]).max(0.0))
        .collect();
    let invstd: Vec<f64> = var.iter().map(|s| 1.0 / (s + eps).sqrt()).collect();
    let dev = x.device();
    let kind = x.kind();
    let mean_t = Tensor::from_slice(&mean).to_kind(kind).to_device(dev);
    let invstd_t = Tensor::from_slice(&invstd).to_kind(kind).to_device(dev);
    let xhat = (x - mean_t.view([1, -1, 1, 1])) * invstd_t.view([1, -1, 1, 1]);
    let y = &xhat * weight.detach().view([1, -1, 1, 1]) + bias.detach().view([1, -1, 1, 1]);
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
    Ok((
        y,
        BnCache {
            xhat,
            invstd: invstd_t,
            count: n,
        },
    ))
}

/// Backward of [`forward_train`]: from `dy` (gradient of the output) to the input's gradient
/// and this rank's `weight`/`bias` gradients. `reduce` is called once with
/// `[sum(dy)_0..C, sum(dy·xhat)_0..C]`, as `nn.SyncBatchNorm` all-reduces them.
pub fn backward<E>(
    dy: &Tensor,
    cache: &BnCache,
    weight: &Tensor,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<BnGrads, E> {
    let kind = dy.kind();
    let dev = dy.device();
    let sum_dy = channel_sums(dy);
    let sum_dy_xhat = channel_sums(&(dy * &cache.xhat));
    let c = sum_dy.size()[0] as usize;
    let mut v = to_vec(&sum_dy);
    v.extend(to_vec(&sum_dy_xhat));
    let dbias = sum_dy.to_kind(kind);
    let dweight = sum_dy_xhat.to_kind(kind);
    reduce(&mut v)?;
    let n = cache.count;
    let mean_dy: Vec<f64> = v[..c].iter().map(|s| s / n).collect();
    let mean_dy_xhat: Vec<f64> = v[c..].iter().map(|s| s / n).collect();
    let mean_dy = Tensor::from_slice(&mean_dy).to_kind(kind).to_device(dev);
    let mean_dy_xhat = Tensor::from_slice(&mean_dy_xhat)
        .to_kind(kind)
        .to_device(dev);
    let scale = (weight.detach() * &cache.invstd).view([1, -1, 1, 1]);
    let dx =
        (dy - mean_dy.view([1, -1, 1, 1]) - &cache.xhat * mean_dy_xhat.view([1, -1, 1, 1])) * scale;
    Ok(BnGrads { dx, dweight, dbias })
}
