//! Element types and the reduction kernel shared by the backends: sums accumulate in f32,
//! half-precision inputs are widened once and rounded back once.

use crate::ReduceOp;
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// Elements per reduction block: 2,048 f32 = 8 KiB of accumulator that stays in L1.
pub(crate) const BLOCK: usize = 2048;

/// Wire/shared-memory code of an element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum DType {
    /// Raw bytes (broadcast, all-gather, barrier).
    U8 = 1,
    /// IEEE single precision.
    F32 = 2,
    /// IEEE half precision.
    F16 = 3,
    /// bfloat16.
    Bf16 = 4,
}

impl DType {
    /// Human name used in error messages.
    pub(crate) fn name(code: u32) -> &'static str {
        match code {
            1 => "u8",
            2 => "f32",
            3 => "f16",
            4 => "bf16",
            _ => "?",
        }
    }
}

/// An element an all-reduce can sum (a plain number, so it can also travel through shared
/// memory).
pub(crate) trait Elem: crate::shm::Plain + Default + Send + 'static {
    /// Its type code.
    const DTYPE: DType;
    /// `acc[i] = src[i]` widened to f32.
    fn load(acc: &mut [f32], src: &[Self]);
    /// `acc[i] += src[i]` widened to f32.
    fn add(acc: &mut [f32], src: &[Self]);
    /// `dst[i] = acc[i]` rounded once.
    fn store(dst: &mut [Self], acc: &[f32]);
    /// The same elements as f32 when they are f32 (the ring then adds what it receives in
    /// place, with no conversion), else `None`.
    fn as_f32_mut(_buf: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    /// Little-endian bytes of `src` appended to `out` (one copy on a little-endian machine).
    fn to_le(src: &[Self], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(as_bytes(src));
        if cfg!(target_endian = "big") {
            for c in out[start..].chunks_exact_mut(std::mem::size_of::<Self>()) {
                c.reverse();
            }
        }
    }
    /// Fill `dst` from little-endian bytes (`bytes.len() == dst.len() * size`; a shorter
    /// `bytes` fills the front).
    fn from_le(bytes: &[u8], dst: &mut [Self]) {
        let d = as_bytes_mut(dst);
        let n =
            bytes.len().min(d.len()) / std::mem::size_of::<Self>() * std::mem::size_of::<Self>();
        d[..n].copy_from_slice(&bytes[..n]);
        if cfg!(target_endian = "big") {
            for c in d[..n].chunks_exact_mut(std::mem::size_of::<Self>()) {
                c.reverse();
            }
        }
    }
}

/// The memory of `v` as bytes.
pub(crate) fn as_bytes<T: crate::shm::Plain>(v: &[T]) -> &[u8] {
    // SAFETY: `Plain` types have no padding, so all `size_of_val(v)` bytes are initialised;
    // u8 has alignment 1 and the shared borrow is carried over.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The memory of `v` as mutable bytes.
pub(crate) fn as_bytes_mut<T: crate::shm::Plain>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; in addition every bit pattern is a valid `T` (`Plain`), so any
    // bytes written through the view leave valid values, and the exclusive borrow is carried
    // over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    fn load(acc: &mut [f32], src: &[f32]) {
        acc.copy_from_slice(src);
    }
    fn add(acc: &mut [f32], src: &[f32]) {
        for (a, s) in acc.iter_mut().zip(src) {
            *a += *s;
        }
    }
    fn store(dst: &mut [f32], acc: &[f32]) {
        dst.copy_from_slice(acc);
    }
    fn as_f32_mut(buf: &mut [f32]) -> Option<&mut [f32]> {
        Some(buf)
    }
}

macro_rules! half_elem {
    ($t:ty, $code:expr) => {
        impl Elem for $t {
            const DTYPE: DType = $code;
            fn load(acc: &mut [f32], src: &[$t]) {
                src.convert_to_f32_slice(acc);
            }
            fn add(acc: &mut [f32], src: &[$t]) {
                let mut tmp = [0f32; BLOCK];
                let tmp = &mut tmp[..src.len()];
                src.convert_to_f32_slice(tmp);
                f32::add(acc, tmp);
            }
            fn store(dst: &mut [$t], acc: &[f32]) {
                dst.convert_from_f32_slice(acc);
            }
        }
    };
}
half_elem!(f16, DType::F16);
half_elem!(bf16, DType::Bf16);

/// `dst = reduce(srcs)` element-wise, summing in rank order in f32 blocks of [`BLOCK`]
/// (every rank that reduces the same data gets bit-identical results). `srcs` all have
/// `dst.len()` elements; `world` divides for [`ReduceOp::Average`].
pub(crate) fn reduce_into<T: Elem>(dst: &mut [T], srcs: &[&[T]], op: ReduceOp, world: usize) {
    assert!(
        srcs.iter().all(|s| s.len() == dst.len()),
        "reduce_into: sources and destination differ in length"
    );
    let ptrs: Vec<*const T> = srcs.iter().map(|s| s.as_ptr()).collect();
    // SAFETY: every source is a live slice of `dst.len()` elements (asserted), `dst` a live
    // exclusive one, so they cannot overlap and nothing else writes them during the call.
    unsafe { reduce_raw(dst.as_mut_ptr(), &ptrs, dst.len(), op, world) }
}

/// [`reduce_into`] over raw pointers, for sources in shared memory that other processes write
/// at other times (no slice of them may exist). Each block of every source is first copied
/// into a local buffer, the result is copied out block by block.
///
/// # Safety
/// Each of `srcs` points to `len` aligned elements valid for reads and `dst` to `len` aligned
/// elements valid for writes, and nothing else writes any of them during the call. `dst` may
/// be one of the `srcs` (every block is read in full before it is written) but must not
/// otherwise overlap them.
pub(crate) unsafe fn reduce_raw<T: Elem>(
    dst: *mut T,
    srcs: &[*const T],
    len: usize,
    op: ReduceOp,
    world: usize,
) {
    let mut acc = [0f32; BLOCK];
    let mut tmp = [T::default(); BLOCK];
    let inv = world as f32;
    let mut start = 0;
    while start < len {
        let n = (len - start).min(BLOCK);
        let (a, t) = (&mut acc[..n], &mut tmp[..n]);
        for (i, src) in srcs.iter().enumerate() {
            // SAFETY: `src` has `len` readable elements and `start + n <= len` (contract); `t`
            // is local, so they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.add(start), t.as_mut_ptr(), n) };
            if i == 0 {
                T::load(a, t);
            } else {
                T::add(a, t);
            }
        }
        if srcs.is_empty() {
            a.fill(0.0);
        }
        if op == ReduceOp::Average {
            for v in a.iter_mut() {
                *v /= inv;
            }
        }
        T::store(t, a);
        // SAFETY: `dst` has `len` writable elements (contract); `t` is local.
        unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), dst.add(start), n) };
        start += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_averages_in_f32() {
        let a: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..5000).map(|i| 2.0 * i as f32).collect();
        let mut d = vec![0f32; 5000];
        reduce_into(&mut d, &[&a, &b], ReduceOp::Sum, 2);
        assert!(d.iter().enumerate().all(|(i, v)| *v == 3.0 * i as f32));
        reduce_into(&mut d, &[&a, &b], ReduceOp::Average, 2);
        assert_eq!(d[4000], 6000.0);
        let h: Vec<f16> = [1.0f32, 2.5, -3.0]
            .iter()
            .map(|v| f16::from_f32(*v))
            .collect();
        let mut dh = vec![f16::ZERO; 3];
        reduce_into(&mut dh, &[&h, &h, &h], ReduceOp::Sum, 3);
        assert_eq!(dh[1].to_f32(), 7.5);
        let mut bytes = Vec::new();
        f16::to_le(&h, &mut bytes);
        f16::from_le(&bytes, &mut dh);
        assert_eq!(dh, h);
    }
}
