//! NCCL collectives (in-place all-reduce and broadcast) on raw CUDA device pointers, for the
//! GPU gradient path of the training loop; [`NcclGroup`] offers them as a
//! `mnist_comm::Communicator` with device collectives.
//!
//! The GPU code sits behind this crate's cargo feature **`nccl`** (off by default). Without
//! it the same API exists and every entry point returns [`NcclError::NotCompiled`], so the CPU
//! build never compiles `cudarc`. With it, `cudarc` loads `libcuda` and `libnccl` at run time
//! (dynamic loading), so the GPU path still *builds* on a machine without CUDA; [`available`]
//! then says, without panicking, why it cannot *run*.
//!
//! # Finding libnccl
//! cudarc 0.19 looks for NCCL under the names `libnccl.so`, `libnccl.so.13`, `libnccl.so.12`,
//! … `libnccl.so.1` (see `cudarc::get_lib_name_candidates("nccl")`) — but **not**
//! `libnccl.so.2`, the only name the `nvidia-nccl-cu13` wheel (what PyTorch installs) ships.
//! The loader reads `LD_LIBRARY_PATH` once at process start, so the fix must happen before the
//! process starts: put a folder holding a symlink `libnccl.so -> …/nvidia/nccl/lib/libnccl.so.2`
//! on `LD_LIBRARY_PATH` (`scripts/gpu-check.sh run` does exactly this). [`available`] detects
//! the case and says so.
//!
//! # Stream ordering
//! Collectives are enqueued on the **legacy default stream** (the null stream, `0`) of the
//! device's primary context. libtorch (and so tch) runs its kernels on its *current* stream,
//! which is the default stream — `cudaStreamLegacy` semantics, since PyTorch is not built with
//! per-thread default streams — unless the program sets another one. The legacy stream waits
//! for prior work on every blocking stream of the context, so the collective starts after the
//! backward kernels that wrote the gradients. Each call then waits until the stream has drained
//! (polling `cuStreamQuery` and `ncclCommGetAsyncError` against a deadline), so when it returns
//! the buffer holds the result and a failed or hung peer surfaces as an error, not a hang.

mod error;
mod group;
pub use error::NcclError;
pub use group::{device_error, NcclGroup};

#[cfg(feature = "nccl")]
mod comm;
#[cfg(feature = "nccl")]
mod loader;
#[cfg(feature = "nccl")]
pub use comm::{available, nccl_version, new_unique_id, NcclComm};

#[cfg(not(feature = "nccl"))]
mod stub;
#[cfg(not(feature = "nccl"))]
pub use stub::{available, nccl_version, new_unique_id, NcclComm};

use std::time::Duration;

/// Size of an NCCL unique id (`sizeof(ncclUniqueId)`), the bytes rank 0 publishes in the
/// rendezvous file's payload.
pub const UNIQUE_ID_BYTES: usize = 128;

/// How long a collective or the communicator set-up waits for its peers when no timeout is
/// given (the `--timeout` flag's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The text of [`NcclError::NotCompiled`].
pub const NOT_COMPILED: &str =
    "built without the `nccl` feature; rebuild with --features mnist-worker/nccl";

/// Element type of a device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcclDType {
    /// 32-bit IEEE float (`ncclFloat32`).
    F32,
    /// 16-bit IEEE float (`ncclFloat16`).
    F16,
    /// bfloat16 (`ncclBfloat16`).
    BF16,
}

impl NcclDType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            NcclDType::F32 => 4,
            NcclDType::F16 | NcclDType::BF16 => 2,
        }
    }
}

/// Reduction applied by [`NcclComm::all_reduce_in_place`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcclOp {
    /// Element-wise sum over the ranks.
    Sum,
    /// Element-wise mean over the ranks (`ncclAvg`).
    Avg,
}

/// Bytes of `count` elements of `dtype`, saturating instead of overflowing (for messages).
#[cfg(any(test, feature = "nccl"))]
pub(crate) fn byte_count(count: usize, dtype: NcclDType) -> usize {
    count.saturating_mul(dtype.size_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_byte_counts() {
        assert_eq!(NcclDType::F32.size_bytes(), 4);
        assert_eq!(NcclDType::F16.size_bytes(), 2);
        assert_eq!(NcclDType::BF16.size_bytes(), 2);
        assert_eq!(byte_count(10, NcclDType::F32), 40);
        assert_eq!(byte_count(usize::MAX, NcclDType::BF16), usize::MAX);
    }
}
