//! LeNet's forward pass on the CPU, computed the same way but with cheaper kernels.
//!
//! On a CPU, libtorch spends most of a LeNet step in three places that do little arithmetic:
//! the backward pass of `conv1` (one input channel: its weight gradient runs at a few GFLOP/s),
//! and both `max_pool2d` calls (a scalar kernel, ~7 ns per element, slower than the
//! convolutions around them). This module keeps autograd and the parameters exactly as they
//! are and changes only how those three are expressed:
//!
//! - `conv1` is one matrix product, `W[6×25] · cols[25 × N·576] + b`, over the 25 shifted
//!   copies of the input (`cols`, built here; the input needs no gradient). Autograd's
//!   backward is then a second matrix product and a sum.
//! - 2×2 max-pooling picks, per window, the index of the first maximum in row-major order —
//!   the element `max_pool2d` picks, NaN included — in a plain loop here, then takes the
//!   values with `gather`, whose backward scatters the gradient to those elements, as
//!   `max_pool2d`'s backward does.
//!
//! The result equals [`crate::Model::forward_reference`] up to float rounding in `conv1`'s sums
//! (pooling is exact); `tests` checks logits and every gradient.

use tch::kind::Element;
use tch::{Device, Kind, Tensor};

/// Side of the input images.
const SIDE: usize = 28;
/// Side of `conv1`'s kernel.
const K: usize = 5;
/// Side of `conv1`'s output.
const OUT1: usize = SIDE - K + 1;
/// Largest batch computed in one piece.
const CHUNK: i64 = 128;

/// Whether [`forward`] applies: a non-empty float CPU batch of `[N, 1, 28, 28]` images that
/// needs no gradient of its own (the shifted copies are built outside autograd).
pub fn applies(x: &Tensor) -> bool {
    x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && !x.requires_grad()
        && x.dim() == 4
        && x.size()[0] > 0
        && x.size()[1..] == [1, SIDE as i64, SIDE as i64]
}

/// LeNet's logits for `x` (`[N, 1, 28, 28]`, see [`applies`]); `p` holds the ten parameters in
/// `state_dict` order.
pub fn forward(x: &Tensor, p: &[&Tensor; 10]) -> Tensor {
    let n = x.size()[0];
    if n > CHUNK {
        // Large batches (evaluation's 1000) in cache-sized chunks: `cols` grows with the batch
        // (57 MB at 1000 images) and would make each image ~2.5× slower.
        let logits: Vec<Tensor> = x.split(CHUNK, 0).iter().map(|c| forward(c, p)).collect();
        return Tensor::cat(&logits, 0);
    }
    let cols = conv1_columns(x); // [25, N·576]
    let c1 = p[1]
        .view([6, 1])
        .addmm(&p[0].view([6, (K * K) as i64]), &cols); // [6, N·576]: channel-major
    let h1 = max_pool_2x2(&c1.view([6 * n, OUT1 as i64, OUT1 as i64])).relu(); // [6N, 12, 12]
    let h1 = h1.view([6, n, 12, 12]).transpose(0, 1).contiguous(); // [N, 6, 12, 12]
    let c2 = h1
        .conv2d(p[2], Some(p[3]), [1, 1], [0, 0], [1, 1], 1)
        .contiguous(); // [N, 16, 8, 8]
    let h2 = max_pool_2x2(&c2.view([n * 16, 8, 8])).relu(); // [16N, 4, 4]
    let h = h2.view([n, 256]);
    let h = h.linear(p[4], Some(p[5])).relu();
    let h = h.linear(p[6], Some(p[7])).relu();
    h.linear(p[8], Some(p[9]))
}

/// `cols[kh·5 + kw, n·576 + i·24 + j] = x[n, 0, i + kh, j + kw]`: the input under each of the
/// 25 kernel taps, so that `conv1(x) = W · cols + b`.
pub fn conv1_columns(x: &Tensor) -> Tensor {
    let x = x.detach().contiguous();
    let n = x.size()[0] as usize;
    let mut cols = Tensor::empty(
        [(K * K) as i64, (n * OUT1 * OUT1) as i64],
        (Kind::Float, Device::Cpu),
    );
    {
        // SAFETY: `x` is only read here. Its storage may be shared with the caller's tensor;
        // a write to it from another thread during this call would race with any libtorch
        // kernel reading the input just as well (tch's `Tensor` is `Send` and can be shallow-
        // cloned), so callers already must not do that; nothing in this crate does.
        let src = unsafe { slice::<f32>(&x) };
        // SAFETY: `cols` was just created here, is contiguous and not shared.
        let dst = unsafe { slice_mut::<f32>(&mut cols) };
        let plane = OUT1 * OUT1;
        for (tap, dst_tap) in dst.chunks_exact_mut(n * plane).enumerate() {
            let (kh, kw) = (tap / K, tap % K);
            for (img, dst_img) in dst_tap.chunks_exact_mut(plane).enumerate() {
                let src_img = &src[img * SIDE * SIDE..(img + 1) * SIDE * SIDE];
                for (i, row) in dst_img.chunks_exact_mut(OUT1).enumerate() {
                    let start = (i + kh) * SIDE + kw;
                    row.copy_from_slice(&src_img[start..start + OUT1]);
                }
            }
        }
    }
    cols
}

/// 2×2, stride-2 max pooling of `x` (`[P, H, W]`, float, CPU, H and W even) with
/// `max_pool2d`'s choice of element and gradient; returns `[P, H/2, W/2]`.
pub fn max_pool_2x2(x: &Tensor) -> Tensor {
    let size = x.size();
    let (planes, h, w) = (size[0], size[1], size[2]);
    let x = x.contiguous();
    let idx = first_max_indices(&x.detach(), h as usize, w as usize);
    x.view([planes, h * w])
        .gather(1, &idx, false)
        .view([planes, h / 2, w / 2])
}

/// For each 2×2 window of each `h × w` plane of `x`, the index within the plane of the element
/// `max_pool2d` picks: the first maximum in row-major order, or the last NaN.
pub fn first_max_indices(x: &Tensor, h: usize, w: usize) -> Tensor {
    let plane = h * w;
    let planes = x.numel() / plane;
    let (oh, ow) = (h / 2, w / 2);
    let mut idx = Tensor::empty(
        [planes as i64, (oh * ow) as i64],
        (Kind::Int64, Device::Cpu),
    );
    {
        // SAFETY: `x` is only read, as in `conv1_columns`.
        let src = unsafe { slice::<f32>(x) };
        // SAFETY: `idx` was just created here, is contiguous and not shared.
        let dst = unsafe { slice_mut::<i64>(&mut idx) };
        for (p, out) in dst.chunks_exact_mut(oh * ow).enumerate() {
            let v = &src[p * plane..(p + 1) * plane];
            for (i, out_row) in out.chunks_exact_mut(ow).enumerate() {
                let top = 2 * i * w;
                let (r0, r1) = (&v[top..top + w], &v[top + w..top + 2 * w]);
                for (j, ((o, a), b)) in out_row
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                    .enumerate()
                {
                    // Branch-free (the comparisons are unpredictable on real data).
                    let (mut max, mut at) = (a[0], 0usize);
                    for (val, k) in [(a[1], 1), (b[0], w), (b[1], w + 1)] {
                        let take = (val > max) | val.is_nan();
                        max = if take { val } else { max };
                        at = if take { k } else { at };
                    }
                    *o = (top + 2 * j + at) as i64;
                }
            }
        }
    }
    idx
}

/// Check that `t` is a contiguous CPU tensor of `T`s and return its length.
fn checked_len<T: Element>(t: &Tensor) -> usize {
    assert!(t.device() == Device::Cpu && t.kind() == T::KIND && t.is_contiguous());
    t.numel()
}

/// The elements of a contiguous CPU tensor of `T`s (checked).
///
/// # Safety
/// `t`'s storage may be shared with other tensors (views, shallow clones); nothing may write
/// to it, through any of them or from another thread, while the slice lives.
unsafe fn slice<T: Element>(t: &Tensor) -> &[T] {
    let len = checked_len::<T>(t);
    if len == 0 {
        return &[];
    }
    // SAFETY: the tensor is a contiguous CPU tensor of `len` `T`s (checked), so its data
    // pointer is valid and aligned for `len` reads while `t` is borrowed; no writes happen
    // meanwhile (this function's contract).
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, len) }
}

/// The elements of a contiguous CPU tensor of `T`s (checked), writable.
///
/// # Safety
/// Nothing else may read or write `t`'s storage (through another tensor sharing it, or from
/// another thread) while the slice lives.
unsafe fn slice_mut<T: Element>(t: &mut Tensor) -> &mut [T] {
    let len = checked_len::<T>(t);
    if len == 0 {
        return &mut [];
    }
    // SAFETY: as in `slice`, for reads and writes; exclusivity is the caller's promise.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_matches_max_pool2d_values_and_gradients() {
        tch::manual_seed(3);
        // Random values plus ties (a constant region) and a NaN, as after a convolution of
        // MNIST's uniform background.
        let x = Tensor::randn([5, 8, 12], (Kind::Float, Device::Cpu));
        let _ = x.narrow(1, 0, 4).fill_(0.25);
        let _ = x.get(2).get(5).get(7).fill_(f64::NAN);
        let a = x.detach().set_requires_grad(true);
        let b = x.detach().set_requires_grad(true);
        let ours = max_pool_2x2(&a);
        let theirs = b.unsqueeze(1).max_pool2d_default(2).squeeze_dim(1);
        assert_eq!(ours.size(), vec![5, 4, 6]);
        assert!(
            ours.isnan()
                .eq_tensor(&theirs.isnan())
                .all()
                .int64_value(&[])
                == 1
        );
        assert!(ours
            .nan_to_num(0.0, None, None)
            .equal(&theirs.nan_to_num(0.0, None, None)));
        let g = Tensor::randn([5, 4, 6], (Kind::Float, Device::Cpu));
        (&ours * &g).sum(Kind::Float).backward();
        (&theirs * &g).sum(Kind::Float).backward();
        assert!(a.grad().equal(&b.grad()), "gradients differ");
    }

    #[test]
    fn columns_give_conv1() {
        tch::manual_seed(4);
        let x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([6, 1, 5, 5], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([6], (Kind::Float, Device::Cpu));
        let ours = b
            .view([6, 1])
            .addmm(&w.view([6, 25]), &conv1_columns(&x))
            .view([6, 3, 24, 24])
            .transpose(0, 1);
        let theirs = x.conv2d(&w, Some(&b), [1, 1], [0, 0], [1, 1], 1);
        let diff = (&ours - &theirs).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "max |diff| = {diff}");
    }
}
