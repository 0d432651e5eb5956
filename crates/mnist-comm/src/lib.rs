//! Collective communication between the ranks of one training job.
//!
//! [`Communicator`] is the small trait every backend implements; it is passed explicitly to
//! the training loop (no global singleton). A backend that can also work on buffers in GPU
//! memory (NCCL, in `mnist-nccl`) says so through [`Communicator::device`], so the training
//! loop holds one communicator whatever the backend. [`Solo`] is the trivial world of one process;
//! [`connect`] joins a multi-process group through the rendezvous file (or the TCP rendezvous
//! store) and returns the shared-memory backend ([`ShmComm`], all ranks on one node) or the
//! hierarchical one ([`HierComm`]: shared memory inside each node, a bandwidth-optimal TCP ring
//! between node leaders). [`TcpComm`], the former star through rank 0, stays for benchmarks.

/// Inside `impl Communicator for X`: the three typed all-reduce methods, each forwarding to
/// `X`'s own generic `all_reduce(buf, op)`.
macro_rules! typed_all_reduce_via_generic {
    () => {
        fn all_reduce_f32(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
            self.all_reduce(buf, op)
        }
        fn all_reduce_f16(&mut self, buf: &mut [half::f16], op: ReduceOp) -> Result<(), CommError> {
            self.all_reduce(buf, op)
        }
        fn all_reduce_bf16(
            &mut self,
            buf: &mut [half::bf16],
            op: ReduceOp,
        ) -> Result<(), CommError> {
            self.all_reduce(buf, op)
        }
    };
}
pub(crate) use typed_all_reduce_via_generic;

mod connect;
mod group;
mod hier;
mod liveness;
mod reduce;
mod ring;
mod shm;
mod solo;
mod tcp;

pub use connect::{connect, CommOptions, Transport};
pub use hier::HierComm;
pub use shm::{shm_name_for, ShmComm};
pub use solo::Solo;
pub use tcp::TcpComm;

use mnist_common::FailureKind;

/// How an all-reduce combines the ranks' buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size.
    Average,
}

/// A failed collective; every message names the rank and the operation.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// A peer exited, crashed or reported an error of its own.
    #[error("rank {rank}: {op} failed: peer rank {peer} {what}")]
    PeerFailed {
        /// This rank.
        rank: usize,
        /// The collective that was under way.
        op: String,
        /// The peer that failed.
        peer: usize,
        /// What happened to it.
        what: String,
    },
    /// A peer did not arrive within the timeout.
    #[error("rank {rank}: {op} timed out after {seconds:.1}s waiting for rank(s) {missing:?}")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The collective that was under way.
        op: String,
        /// Seconds waited.
        seconds: f64,
        /// Ranks that had not arrived.
        missing: Vec<usize>,
    },
    /// Ranks called different collectives, or the same one with different sizes.
    #[error("rank {rank}: collective mismatch at sequence {seq}: {detail}")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// Sequence number of the collective.
        seq: u64,
        /// Which ranks called what.
        detail: String,
    },
    /// Setting up the process group failed.
    #[error("rank {rank}: rendezvous failed: {detail}")]
    Rendezvous {
        /// This rank.
        rank: usize,
        /// What went wrong.
        detail: String,
    },
    /// A collective was called with an argument that cannot work (e.g. a root out of range).
    #[error("rank {rank}: {op}: {detail}")]
    InvalidArgument {
        /// This rank.
        rank: usize,
        /// The collective.
        op: String,
        /// What is wrong.
        detail: String,
    },
    /// An earlier collective failed; the group cannot be used any more.
    #[error("rank {rank}: communicator unusable after an earlier failure: {first}")]
    Poisoned {
        /// This rank.
        rank: usize,
        /// The first failure.
        first: String,
    },
    /// An operating-system call failed.
    #[error("rank {rank}: {op}")]
    Io {
        /// This rank.
        rank: usize,
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The device backend (NCCL) failed.
    #[error("rank {rank}: {op} failed on the device backend")]
    Device {
        /// This rank.
        rank: usize,
        /// The collective.
        op: String,
        /// Whether the backend says a peer was lost (remote error, timeout) rather than this
        /// rank failing by itself.
        peer_lost: bool,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CommError {
    /// Whose failure this is: another rank's ([`FailureKind::PeerFailed`]: it died, aborted,
    /// or did not arrive within the timeout) or this rank's own.
    pub fn kind(&self) -> FailureKind {
        match self {
            CommError::PeerFailed { .. } | CommError::Timeout { .. } => FailureKind::PeerFailed,
            CommError::Device {
                peer_lost: true, ..
            } => FailureKind::PeerFailed,
            CommError::Mismatch { .. }
            | CommError::Rendezvous { .. }
            | CommError::InvalidArgument { .. }
            | CommError::Poisoned { .. }
            | CommError::Io { .. }
            | CommError::Device { .. } => FailureKind::OwnFault,
        }
    }
}

/// Element type of a buffer in GPU memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceDType {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DeviceDType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DeviceDType::F32 => 4,
            DeviceDType::F16 | DeviceDType::BF16 => 2,
        }
    }
}

/// A contiguous buffer in the memory of the communicator's GPU: `count` elements of `dtype`
/// starting at device address `ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceBuffer {
    /// Device address of the first element.
    pub ptr: u64,
    /// Number of elements.
    pub count: usize,
    /// Element type.
    pub dtype: DeviceDType,
}

/// Collectives on buffers in GPU memory, in place. Ordered after the work already queued on
/// the device's default stream (where libtorch runs its kernels); each call returns once the
/// result is in the buffer.
pub trait DeviceCollectives {
    /// All-reduce `buf` in place.
    ///
    /// # Safety
    /// `buf` must describe live device memory of this communicator's GPU holding at least
    /// `count` elements of `dtype`, not freed or written by anything else until the call
    /// returns.
    unsafe fn all_reduce_device(
        &mut self,
        buf: DeviceBuffer,
        op: ReduceOp,
    ) -> Result<(), CommError>;
    /// Copy `root`'s `buf` into every rank's `buf`.
    ///
    /// # Safety
    /// As for [`DeviceCollectives::all_reduce_device`].
    unsafe fn broadcast_device(&mut self, buf: DeviceBuffer, root: usize) -> Result<(), CommError>;
}

/// Collectives over the ranks of one job. Every rank must call the same collectives in the
/// same order with the same sizes; a mismatch is an error on every rank, never a hang.
pub trait Communicator: Send {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// All-reduce f32 values in place.
    fn all_reduce_f32(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError>;
    /// All-reduce fp16 values in place (accumulated in f32).
    fn all_reduce_f16(&mut self, buf: &mut [half::f16], op: ReduceOp) -> Result<(), CommError>;
    /// All-reduce bf16 values in place (accumulated in f32).
    fn all_reduce_bf16(&mut self, buf: &mut [half::bf16], op: ReduceOp) -> Result<(), CommError>;
    /// Copy `root`'s bytes into every rank's `buf` (all the same length).
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError>;
    /// Gather every rank's bytes (lengths may differ); index r holds rank r's.
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError>;
    /// Wait until every rank has arrived.
    fn barrier(&mut self) -> Result<(), CommError>;
    /// Payload bytes this rank has sent so far (what a network would carry: for an all-reduce
    /// of n bytes over w ranks, the ring figure 2·n·(w−1)/w; for an all-gather, its own bytes
    /// times (w−1)). Used to report compression ratios.
    fn bytes_sent(&self) -> u64;
    /// Tell the peers this rank is failing, so they stop instead of waiting (best effort).
    fn abort(&mut self, reason: &str);
    /// Collectives on GPU memory, when this communicator has them (NCCL); `None` for the CPU
    /// backends, whose callers stage device buffers through host memory.
    fn device(&mut self) -> Option<&mut dyn DeviceCollectives> {
        None
    }
}
