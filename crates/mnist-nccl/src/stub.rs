//! The API without the `nccl` feature: every entry point returns
//! [`NcclError::NotCompiled`], so callers compile unchanged and fail with one clear message.

use crate::{NcclDType, NcclError, NcclOp, NOT_COMPILED, UNIQUE_ID_BYTES};
use std::time::Duration;

fn not_compiled() -> NcclError {
    NcclError::NotCompiled(NOT_COMPILED.to_string())
}

/// Whether CUDA and NCCL can be used; always [`NcclError::NotCompiled`] in this build.
pub fn available() -> Result<(), NcclError> {
    Err(not_compiled())
}

/// NCCL's version as `(major, minor, patch)`; always [`NcclError::NotCompiled`] in this build.
pub fn nccl_version() -> Result<(u32, u32, u32), NcclError> {
    Err(not_compiled())
}

/// A fresh NCCL unique id (rank 0); always [`NcclError::NotCompiled`] in this build.
pub fn new_unique_id() -> Result<[u8; UNIQUE_ID_BYTES], NcclError> {
    Err(not_compiled())
}

/// An NCCL communicator; cannot be created in this build. `Send` but not `Sync`, like the
/// GPU build's, so code written against either compiles against both.
#[derive(Debug)]
pub struct NcclComm {
    rank: usize,
    world: usize,
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl NcclComm {
    /// Join a communicator; always [`NcclError::NotCompiled`] in this build.
    pub fn init(
        unique_id: &[u8],
        rank: usize,
        world: usize,
        device_ordinal: usize,
    ) -> Result<Self, NcclError> {
        Self::init_with_timeout(
            unique_id,
            rank,
            world,
            device_ordinal,
            crate::DEFAULT_TIMEOUT,
        )
    }

    /// Join a communicator with a timeout; always [`NcclError::NotCompiled`] in this build.
    pub fn init_with_timeout(
        _unique_id: &[u8],
        _rank: usize,
        _world: usize,
        _device_ordinal: usize,
        _timeout: Duration,
    ) -> Result<Self, NcclError> {
        Err(not_compiled())
    }

    /// In-place all-reduce; unreachable in this build (no communicator can exist).
    ///
    /// # Safety
    /// Same contract as the GPU build: `ptr` must be a device pointer to `count` elements.
    pub unsafe fn all_reduce_in_place(
        &self,
        _ptr: u64,
        _count: usize,
        _dtype: NcclDType,
        _op: NcclOp,
    ) -> Result<(), NcclError> {
        Err(not_compiled())
    }

    /// In-place broadcast from `root`; unreachable in this build.
    ///
    /// # Safety
    /// Same contract as the GPU build: `ptr` must be a device pointer to `count` elements.
    pub unsafe fn broadcast_in_place(
        &self,
        _ptr: u64,
        _count: usize,
        _dtype: NcclDType,
        _root: usize,
    ) -> Result<(), NcclError> {
        Err(not_compiled())
    }

    /// Abort the communicator (nothing to do in this build).
    pub fn abort(self) {}

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// GPU ordinal the communicator runs on.
    pub fn device_ordinal(&self) -> usize {
        0
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        crate::DEFAULT_TIMEOUT
    }
}
