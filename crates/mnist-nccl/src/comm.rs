//! The NCCL communicator over cudarc (built with the `nccl` feature): non-blocking set-up,
//! in-place all-reduce and broadcast on the legacy default stream, and a deadline on every
//! wait so a dead peer turns into [`NcclError::Timeout`] after an `ncclCommAbort`.
//!
//! How a call waits: the communicator is created non-blocking (`ncclConfig_t.blocking = 0`),
//! so `ncclCommInitRankConfig` and the collectives may return `ncclInProgress`; the caller
//! then polls `ncclCommGetAsyncError` until it leaves that state. After a collective is
//! enqueued, the caller polls `cuStreamQuery(0)` until the stream has drained, checking
//! `ncclCommGetAsyncError` between polls (a peer that died shows up there as
//! `ncclRemoteError`/`ncclSystemError`). A deadline bounds both loops; when it passes, or
//! NCCL reports an asynchronous error, the communicator is aborted (which also frees the
//! NCCL kernel stuck on the stream) and cannot be used again.

use crate::loader::{cuda_library, nccl_library};
use crate::{byte_count, NcclDType, NcclError, NcclOp, DEFAULT_TIMEOUT, UNIQUE_ID_BYTES};
use cudarc::driver::{result as cu, sys as cusys, CudaContext, DriverError};
use cudarc::nccl::sys;
use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `NCCL_CONFIG_UNDEF_INT`: "let NCCL choose".
const UNDEF_INT: c_int = c_int::MIN;
/// Magic of `NCCL_CONFIG_INITIALIZER`.
const CONFIG_MAGIC: u32 = 0xcafe_beef;
/// Layout version of cudarc's `ncclConfig_t` (NCCL 2.30 headers); older libraries copy only
/// the prefix they know (NCCL reads `min(config.size, sizeof(its ncclConfig_t))` bytes).
const CONFIG_VERSION: u32 = 2 * 10000 + 30 * 100;
/// Polls spent yielding before the wait loops start sleeping between polls.
const SPIN_POLLS: u32 = 2000;
/// Sleep between polls after the spinning phase.
const POLL_SLEEP: Duration = Duration::from_micros(50);

/// Whether CUDA and NCCL can be used: libcuda and libnccl load with every symbol this crate
/// calls, `cuInit` succeeds and there is at least one GPU. Never panics.
pub fn available() -> Result<(), NcclError> {
    let cuda = cuda_library();
    let nccl = nccl_library();
    match (cuda, nccl) {
        (Ok(_), Ok(_)) => {}
        (Err(c), Err(n)) => return Err(NcclError::Unavailable(format!("{c}; and {n}"))),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(NcclError::Unavailable(e)),
    }
    cu::init().map_err(|e| NcclError::Unavailable(format!("cuInit failed: {}", driver_msg(e))))?;
    let n = cu::device::get_count().map_err(|e| {
        NcclError::Unavailable(format!("cuDeviceGetCount failed: {}", driver_msg(e)))
    })?;
    if n < 1 {
        return Err(NcclError::Unavailable("no CUDA device visible".into()));
    }
    Ok(())
}

/// NCCL's version as `(major, minor, patch)`; needs only libnccl, not a GPU.
pub fn nccl_version() -> Result<(u32, u32, u32), NcclError> {
    nccl_library().map_err(NcclError::Unavailable)?;
    let mut v: c_int = 0;
    // SAFETY: libnccl and the symbol were checked; `v` is a valid out-pointer.
    let r = unsafe { sys::ncclGetVersion(&mut v) };
    check(r, 0, "get_version", 0, std::ptr::null_mut())?;
    let v = u32::try_from(v).unwrap_or(0);
    Ok((v / 10000, (v % 10000) / 100, v % 100))
}

/// A fresh NCCL unique id, made by rank 0 and handed to every rank (the rendezvous payload).
/// Needs libnccl; NCCL also opens the bootstrap socket it names.
pub fn new_unique_id() -> Result<[u8; UNIQUE_ID_BYTES], NcclError> {
    nccl_library().map_err(NcclError::Unavailable)?;
    let mut id = sys::ncclUniqueId {
        internal: [0; UNIQUE_ID_BYTES],
    };
    // SAFETY: libnccl and the symbol were checked; `id` is a valid out-pointer.
    let r = unsafe { sys::ncclGetUniqueId(&mut id) };
    check(r, 0, "get_unique_id", 0, std::ptr::null_mut())?;
    Ok(id.internal.map(|c| c as u8))
}

/// An NCCL communicator: one rank of `world`, bound to one GPU. Dropping it finalizes and
/// destroys it (aborting when that does not finish within the timeout).
pub struct NcclComm {
    /// Null once aborted or destroyed.
    comm: Cell<sys::ncclComm_t>,
    ctx: Arc<CudaContext>,
    rank: usize,
    world: usize,
    timeout: Duration,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap;
// `NcclComm` is not `Sync` (the `Cell`), so only one thread at a time can call it, and every
// call first makes the communicator's CUDA context current on that thread.
unsafe impl Send for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.ctx.ordinal())
            .field("aborted", &self.comm.get().is_null())
            .finish()
    }
}

impl NcclComm {
    /// Join the communicator named by `unique_id` as `rank` of `world` on GPU
    /// `device_ordinal` (`ncclCommInitRankConfig`), waiting up to [`DEFAULT_TIMEOUT`] for
    /// the other ranks.
    pub fn init(
        unique_id: &[u8],
        rank: usize,
        world: usize,
        device_ordinal: usize,
    ) -> Result<Self, NcclError> {
        Self::init_with_timeout(unique_id, rank, world, device_ordinal, DEFAULT_TIMEOUT)
    }

    /// [`NcclComm::init`] with a timeout, which also bounds every later collective.
    pub fn init_with_timeout(
        unique_id: &[u8],
        rank: usize,
        world: usize,
        device_ordinal: usize,
        timeout: Duration,
    ) -> Result<Self, NcclError> {
        let id_bytes: [u8; UNIQUE_ID_BYTES] =
            unique_id.try_into().map_err(|_| NcclError::InvalidId {
                len: unique_id.len(),
            })?;
        if world == 0 || rank >= world || c_int::try_from(world).is_err() {
            return Err(NcclError::InvalidArgument(format!(
                "rank {rank} of world size {world}: need 0 <= rank < world"
            )));
        }
        available()?;
        let ctx = CudaContext::new(device_ordinal).map_err(|e| NcclError::Cuda {
            rank,
            op: "retain primary context",
            message: format!("GPU {device_ordinal}: {}", driver_msg(e)),
        })?;
        let id = sys::ncclUniqueId {
            internal: id_bytes.map(|b| b as _),
        };
        let mut config = nonblocking_config();
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        let deadline = Instant::now() + timeout;
        // SAFETY: symbols checked by `available`; the out-pointer and config are valid for
        // the call; world and rank fit in c_int (checked above); the device's primary
        // context is current, so NCCL picks `device_ordinal`.
        let r = unsafe {
            sys::ncclCommInitRankConfig(&mut comm, world as c_int, id, rank as c_int, &mut config)
        };
        let this = NcclComm {
            comm: Cell::new(comm),
            ctx,
            rank,
            world,
            timeout,
        };
        if !matches!(
            r,
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
        ) {
            let err = this.error(r, "init", 0);
            this.abort_now();
            return Err(err);
        }
        this.wait_enqueued("init", 0, deadline)?;
        Ok(this)
    }

    /// In-place all-reduce of `count` elements of `dtype` at device address `ptr`, on the
    /// legacy default stream; returns once the result is in the buffer.
    ///
    /// # Safety
    /// `ptr` must be the address of at least `count` elements of `dtype` in device memory of
    /// this communicator's GPU, not freed or written by others until the call returns, and
    /// every rank must call the same collective with the same `count`, `dtype` and `op`.
    pub unsafe fn all_reduce_in_place(
        &self,
        ptr: u64,
        count: usize,
        dtype: NcclDType,
        op: NcclOp,
    ) -> Result<(), NcclError> {
        let name = "all_reduce";
        let bytes = byte_count(count, dtype);
        let comm = self.prepare(name, ptr, count)?;
        let Some(comm) = comm else { return Ok(()) };
        let deadline = Instant::now() + self.timeout;
        let buf = ptr as usize as *mut c_void;
        // SAFETY: the caller guarantees the buffer; the communicator is live; stream 0 is
        // the legacy default stream of the current (primary) context.
        let r = unsafe {
            sys::ncclAllReduce(
                buf,
                buf,
                count,
                dtype_raw(dtype),
                op_raw(op),
                comm,
                null_stream(),
            )
        };
        self.finish(r, name, bytes, deadline)
    }

    /// In-place broadcast of `count` elements of `dtype` at `ptr` from rank `root` to every
    /// rank, on the legacy default stream; returns once the data is in the buffer.
    ///
    /// # Safety
    /// As for [`NcclComm::all_reduce_in_place`], with every rank passing the same `root`.
    pub unsafe fn broadcast_in_place(
        &self,
        ptr: u64,
        count: usize,
        dtype: NcclDType,
        root: usize,
    ) -> Result<(), NcclError> {
        let name = "broadcast";
        let bytes = byte_count(count, dtype);
        if root >= self.world {
            return Err(NcclError::InvalidArgument(format!(
                "broadcast root {root} on rank {}: world size is {}",
                self.rank, self.world
            )));
        }
        let comm = self.prepare(name, ptr, count)?;
        let Some(comm) = comm else { return Ok(()) };
        let deadline = Instant::now() + self.timeout;
        let buf = ptr as usize as *mut c_void;
        // SAFETY: as in `all_reduce_in_place`; root < world fits in c_int.
        let r = unsafe {
            sys::ncclBroadcast(
                buf,
                buf,
                count,
                dtype_raw(dtype),
                root as c_int,
                comm,
                null_stream(),
            )
        };
        self.finish(r, name, bytes, deadline)
    }

    /// Abort the communicator at once (`ncclCommAbort`), for shutting down after a failure
    /// elsewhere; pending collectives on every rank of it fail instead of hanging.
    pub fn abort(self) {
        self.abort_now();
    }

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
        self.ctx.ordinal()
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Check the arguments and make the context current; `None` when there is nothing to do.
    fn prepare(
        &self,
        op: &'static str,
        ptr: u64,
        count: usize,
    ) -> Result<Option<sys::ncclComm_t>, NcclError> {
        let comm = self.comm.get();
        if comm.is_null() {
            return Err(NcclError::Aborted {
                rank: self.rank,
                op,
            });
        }
        if count == 0 {
            return Ok(None);
        }
        if ptr == 0 {
            return Err(NcclError::InvalidArgument(format!(
                "{op} on rank {} given a null device pointer for {count} elements",
                self.rank
            )));
        }
        self.ctx.bind_to_thread().map_err(|e| NcclError::Cuda {
            rank: self.rank,
            op: "make context current",
            message: driver_msg(e),
        })?;
        Ok(Some(comm))
    }

    /// Handle a collective's return value, then wait for it to be enqueued and to complete.
    fn finish(
        &self,
        r: sys::ncclResult_t,
        op: &'static str,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), NcclError> {
        if !matches!(
            r,
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
        ) {
            // Rejected before anything was enqueued (bad argument): the communicator is fine.
            return Err(self.error(r, op, bytes));
        }
        self.wait_enqueued(op, bytes, deadline)?;
        self.wait_stream(op, bytes, deadline)
    }

    /// Poll `ncclCommGetAsyncError` until it leaves `ncclInProgress`.
    fn wait_enqueued(
        &self,
        op: &'static str,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), NcclError> {
        let mut polls = 0u32;
        loop {
            match self.async_state() {
                sys::ncclResult_t::ncclSuccess => return Ok(()),
                sys::ncclResult_t::ncclInProgress => {}
                r => return Err(self.fail(r, op, bytes)),
            }
            self.pause(op, deadline, &mut polls)?;
        }
    }

    /// Poll `cuStreamQuery(0)` until the legacy default stream has drained, watching for
    /// asynchronous NCCL errors.
    fn wait_stream(
        &self,
        op: &'static str,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), NcclError> {
        let mut polls = 0u32;
        loop {
            // SAFETY: the symbol was checked; the context is current on this thread.
            let q = unsafe { cusys::cuStreamQuery(null_stream() as cusys::CUstream) };
            match q {
                cusys::CUresult::CUDA_SUCCESS => return Ok(()),
                cusys::CUresult::CUDA_ERROR_NOT_READY => {}
                e => {
                    self.abort_now();
                    return Err(NcclError::Cuda {
                        rank: self.rank,
                        op,
                        message: format!("cuStreamQuery: {}", driver_msg(DriverError(e))),
                    });
                }
            }
            match self.async_state() {
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => {}
                r => return Err(self.fail(r, op, bytes)),
            }
            self.pause(op, deadline, &mut polls)?;
        }
    }

    /// One step of a wait loop: spin a while, then sleep; abort once `deadline` has passed.
    fn pause(&self, op: &'static str, deadline: Instant, polls: &mut u32) -> Result<(), NcclError> {
        if Instant::now() >= deadline {
            self.abort_now();
            return Err(NcclError::Timeout {
                rank: self.rank,
                op,
                seconds: self.timeout.as_secs_f64(),
            });
        }
        *polls = polls.saturating_add(1);
        if *polls < SPIN_POLLS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(POLL_SLEEP);
        }
        Ok(())
    }

    /// `ncclCommGetAsyncError` (a failing query counts as that failure).
    fn async_state(&self) -> sys::ncclResult_t {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: the communicator is live (callers checked) and `state` a valid out-pointer.
        let r = unsafe { sys::ncclCommGetAsyncError(self.comm.get(), &mut state) };
        if r != sys::ncclResult_t::ncclSuccess {
            return r;
        }
        state
    }

    /// An asynchronous failure: build the error, then abort the communicator.
    fn fail(&self, r: sys::ncclResult_t, op: &'static str, bytes: usize) -> NcclError {
        let err = self.error(r, op, bytes);
        self.abort_now();
        err
    }

    fn error(&self, r: sys::ncclResult_t, op: &'static str, bytes: usize) -> NcclError {
        match check(r, self.rank, op, bytes, self.comm.get()) {
            Err(e) => e,
            Ok(()) => NcclError::Aborted {
                rank: self.rank,
                op,
            },
        }
    }

    /// `ncclCommAbort` once; later calls see a null communicator.
    fn abort_now(&self) {
        let comm = self.comm.replace(std::ptr::null_mut());
        if !comm.is_null() {
            let _ = self.ctx.bind_to_thread();
            // SAFETY: `comm` came from ncclCommInitRankConfig and is aborted exactly once.
            let _ = unsafe { sys::ncclCommAbort(comm) };
        }
    }
}

impl Drop for NcclComm {
    /// Finalize (flushing pending work, bounded by the timeout) and destroy; abort when
    /// finalizing fails or does not finish in time.
    fn drop(&mut self) {
        let comm = self.comm.get();
        if comm.is_null() {
            return;
        }
        if self.ctx.bind_to_thread().is_err() {
            self.abort_now();
            return;
        }
        let deadline = Instant::now() + self.timeout;
        // SAFETY: the communicator is live.
        let r = unsafe { sys::ncclCommFinalize(comm) };
        let finalized = matches!(
            r,
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
        ) && self.wait_enqueued("finalize", 0, deadline).is_ok();
        // `wait_enqueued` aborted (and nulled) the communicator on failure or timeout.
        let comm = self.comm.replace(std::ptr::null_mut());
        if comm.is_null() {
            return;
        }
        if finalized {
            // SAFETY: finalized communicator, destroyed exactly once.
            let _ = unsafe { sys::ncclCommDestroy(comm) };
        } else {
            // SAFETY: live communicator, aborted exactly once.
            let _ = unsafe { sys::ncclCommAbort(comm) };
        }
    }
}

/// `NCCL_CONFIG_INITIALIZER` with `blocking = 0`.
fn nonblocking_config() -> sys::ncclConfig_t {
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: CONFIG_MAGIC,
        version: CONFIG_VERSION,
        blocking: 0,
        cgaClusterSize: UNDEF_INT,
        minCTAs: UNDEF_INT,
        maxCTAs: UNDEF_INT,
        netName: std::ptr::null(),
        splitShare: UNDEF_INT,
        trafficClass: UNDEF_INT,
        commName: std::ptr::null(),
        collnetEnable: UNDEF_INT,
        CTAPolicy: UNDEF_INT,
        shrinkShare: UNDEF_INT,
        nvlsCTAs: UNDEF_INT,
        nChannelsPerNetPeer: UNDEF_INT,
        nvlinkCentricSched: UNDEF_INT,
        graphUsageMode: UNDEF_INT,
        numRmaCtx: UNDEF_INT,
        maxP2pPeers: UNDEF_INT,
    }
}

/// The null stream: the legacy default stream of the current context.
fn null_stream() -> sys::cudaStream_t {
    std::ptr::null_mut()
}

fn dtype_raw(d: NcclDType) -> sys::ncclDataType_t {
    match d {
        NcclDType::F32 => sys::ncclDataType_t::ncclFloat32,
        NcclDType::F16 => sys::ncclDataType_t::ncclFloat16,
        NcclDType::BF16 => sys::ncclDataType_t::ncclBfloat16,
    }
}

fn op_raw(o: NcclOp) -> sys::ncclRedOp_t {
    match o {
        NcclOp::Sum => sys::ncclRedOp_t::ncclSum,
        NcclOp::Avg => sys::ncclRedOp_t::ncclAvg,
    }
}

/// `Ok` for `ncclSuccess`, else [`NcclError::Nccl`] with NCCL's error string and, when it
/// adds something, `ncclGetLastError(comm)` (`comm` may be null).
fn check(
    r: sys::ncclResult_t,
    rank: usize,
    op: &'static str,
    bytes: usize,
    comm: sys::ncclComm_t,
) -> Result<(), NcclError> {
    if r == sys::ncclResult_t::ncclSuccess {
        return Ok(());
    }
    // SAFETY: both functions return static or thread-local NUL-terminated strings (or null).
    let (what, last) = unsafe {
        (
            cstr(sys::ncclGetErrorString(r)),
            cstr(sys::ncclGetLastError(comm)),
        )
    };
    let message = if last.is_empty() || last == what {
        what
    } else {
        format!("{what}; last error: {last}")
    };
    Err(NcclError::Nccl {
        rank,
        op,
        bytes,
        code: r as i32,
        message,
    })
}

/// Copy a C string (null → empty).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// "CUDA_ERROR_X (description)" for a driver error.
fn driver_msg(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("CUresult {}", e.0 as i32));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}
