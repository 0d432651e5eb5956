//! Gradient averaging with NCCL on the device: the flat gradient is all-reduced in place in
//! device memory (no host copies), on the legacy default stream that libtorch also uses, so
//! NCCL runs after the backward kernels; the call returns once the result is in the buffer.
//! fp16/bf16 compression casts on the device and reduces in the narrow type. Methods that need
//! all-gathers or several dependent collectives (top-k, PowerSGD) go through the host path.

use crate::TrainError;
use mnist_common::CompressionKind;
use mnist_nccl::{NcclComm, NcclDType, NcclOp};
use tch::{Kind, Tensor};

/// Whether `kind` runs entirely on NCCL.
pub fn on_device(kind: CompressionKind) -> bool {
    matches!(
        kind,
        CompressionKind::None | CompressionKind::Fp16 | CompressionKind::Bf16
    )
}

/// Average `grads` (a contiguous f32 CUDA tensor) over the ranks of `nccl`; returns the
/// payload bytes this rank sent (ring figure 2·n·(w−1)/w).
pub fn reduce(
    nccl: &NcclComm,
    grads: &mut Tensor,
    kind: CompressionKind,
) -> Result<u64, TrainError> {
    let world = nccl.world_size();
    let n = grads.numel();
    let ring = |bytes: usize| (2 * bytes * (world - 1) / world) as u64;
    match kind {
        CompressionKind::Fp16 | CompressionKind::Bf16 => {
            let (k, d) = if kind == CompressionKind::Fp16 {
                (Kind::Half, NcclDType::F16)
            } else {
                (Kind::BFloat16, NcclDType::BF16)
            };
            let narrow = (&*grads / world as f64).to_kind(k).contiguous();
            // SAFETY: `narrow` is a contiguous CUDA tensor of n elements of `d` that lives
            // until after the call, which returns only once NCCL has finished with it.
            unsafe { nccl.all_reduce_in_place(narrow.data_ptr() as u64, n, d, NcclOp::Sum)? };
            tch::no_grad(|| grads.copy_(&narrow));
            Ok(ring(n * 2))
        }
        _ => {
            // SAFETY: `grads` is the contiguous f32 CUDA flat gradient of n elements, held
            // mutably for the duration of the call.
            unsafe {
                nccl.all_reduce_in_place(grads.data_ptr() as u64, n, NcclDType::F32, NcclOp::Avg)?
            };
            Ok(ring(n * 4))
        }
    }
}

/// Copy rank 0's `params` (contiguous f32 CUDA tensor) to every rank.
pub fn broadcast(nccl: &NcclComm, params: &mut Tensor) -> Result<(), TrainError> {
    // SAFETY: as in `reduce`.
    unsafe {
        nccl.broadcast_in_place(params.data_ptr() as u64, params.numel(), NcclDType::F32, 0)?
    };
    Ok(())
}
