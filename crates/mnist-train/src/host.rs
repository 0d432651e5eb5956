//! Host views of flat f32 tensors for the CPU communication backend: CPU tensors are used in
//! place; CUDA tensors are staged through a host buffer and copied back.

use tch::{Device, Kind, Tensor};

/// Run `f` on `t`'s values as a mutable host slice, writing any change back to `t`.
///
/// `t` must be a contiguous f32 tensor (checked). `staging` is reused between calls for CUDA
/// tensors.
///
/// # Safety
/// For a CPU tensor the slice aliases `t`'s storage, which other tensors (views, shallow
/// clones, model parameters pointing into a flat buffer) may share. The caller guarantees
/// that nothing else reads or writes that storage while `f` runs: no other thread uses a
/// tensor sharing it, and `f` itself touches it only through the slice.
pub unsafe fn with_host_slice<R>(
    t: &mut Tensor,
    staging: &mut Vec<f32>,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    assert_eq!(t.kind(), Kind::Float, "flat buffers are f32");
    assert!(t.is_contiguous(), "flat buffers are contiguous");
    let n = t.numel();
    if t.device() == Device::Cpu {
        // SAFETY: `t` is a contiguous f32 CPU tensor of `n` elements (checked above), so its
        // data pointer is valid and aligned for `n` f32 reads and writes; the caller
        // guarantees that no other access to its storage happens while `f` holds the slice.
        let slice = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
        f(slice)
    } else {
        staging.resize(n, 0.0);
        t.copy_data(staging, n);
        let r = f(staging);
        let src = Tensor::from_slice(staging).to_device(t.device());
        tch::no_grad(|| {
            t.copy_(&src);
        });
        r
    }
}

/// Reinterpret f32 values as bytes (for broadcasts).
pub fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: any f32 bit pattern is valid as bytes and vice versa, u8 has alignment 1, and
    // the byte length is exactly that of the f32 slice, which stays borrowed mutably.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
