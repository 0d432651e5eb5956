//! [`NcclGroup`]: NCCL as a [`Communicator`], so the training loop holds one communicator for
//! every backend. Buffers in GPU memory go through NCCL ([`DeviceCollectives`]); the small
//! host-side collectives (metrics, checksums, the all-gathers of top-k and PowerSGD) and the
//! liveness channel go through the CPU process group the ranks met in, which also tells the
//! peers when this rank aborts.

use crate::{NcclComm, NcclDType, NcclError, NcclOp};
use mnist_comm::{CommError, Communicator, DeviceBuffer, DeviceCollectives, DeviceDType, ReduceOp};
use mnist_common::FailureKind;

/// One rank's NCCL communicator together with the CPU process group it was set up through.
pub struct NcclGroup {
    /// `None` once aborted.
    nccl: Option<NcclComm>,
    host: Box<dyn Communicator>,
    device_bytes: u64,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("nccl", &self.nccl)
            .field("rank", &self.host.rank())
            .finish()
    }
}

impl NcclGroup {
    /// Combine `nccl` with the CPU group `host` of the same ranks.
    pub fn new(nccl: NcclComm, host: Box<dyn Communicator>) -> NcclGroup {
        NcclGroup {
            nccl: Some(nccl),
            host,
            device_bytes: 0,
        }
    }

    fn comm(&self, op: &str) -> Result<&NcclComm, CommError> {
        self.nccl.as_ref().ok_or_else(|| CommError::Poisoned {
            rank: self.host.rank(),
            first: format!("{op}: the NCCL communicator was aborted"),
        })
    }

    fn wrap(&self, op: &str, e: NcclError) -> CommError {
        device_error(self.host.rank(), op, e)
    }
}

/// An NCCL failure as the communicator's error: a lost peer (`ncclRemoteError`,
/// `ncclSystemError`, our own timeout) stays a peer failure, so the worker exits with
/// [`mnist_common::contract::EXIT_PEER_FAILED`] for NCCL as for the CPU backends.
pub fn device_error(rank: usize, op: &str, e: NcclError) -> CommError {
    CommError::Device {
        rank,
        op: op.to_string(),
        peer_lost: e.kind() == FailureKind::PeerFailed,
        source: Box::new(e),
    }
}

fn dtype(d: DeviceDType) -> NcclDType {
    match d {
        DeviceDType::F32 => NcclDType::F32,
        DeviceDType::F16 => NcclDType::F16,
        DeviceDType::BF16 => NcclDType::BF16,
    }
}

impl DeviceCollectives for NcclGroup {
    unsafe fn all_reduce_device(
        &mut self,
        buf: DeviceBuffer,
        op: ReduceOp,
    ) -> Result<(), CommError> {
        let nccl_op = match op {
            ReduceOp::Sum => NcclOp::Sum,
            ReduceOp::Average => NcclOp::Avg,
        };
        let comm = self.comm("all_reduce")?;
        let world = comm.world_size() as u64;
        // SAFETY: the caller guarantees `buf` (this trait method's contract is the same as
        // `all_reduce_in_place`'s).
        let r = unsafe { comm.all_reduce_in_place(buf.ptr, buf.count, dtype(buf.dtype), nccl_op) };
        r.map_err(|e| self.wrap("all_reduce", e))?;
        let bytes = (buf.count * buf.dtype.size_bytes()) as u64;
        self.device_bytes += 2 * bytes * (world - 1) / world.max(1);
        Ok(())
    }

    unsafe fn broadcast_device(&mut self, buf: DeviceBuffer, root: usize) -> Result<(), CommError> {
        let comm = self.comm("broadcast")?;
        // SAFETY: as above, the caller guarantees `buf`.
        let r = unsafe { comm.broadcast_in_place(buf.ptr, buf.count, dtype(buf.dtype), root) };
        r.map_err(|e| self.wrap("broadcast", e))
    }
}

impl Communicator for NcclGroup {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world_size(&self) -> usize {
        self.host.world_size()
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        self.host.all_reduce_f32(buf, op)
    }
    fn all_reduce_f16(&mut self, buf: &mut [half::f16], op: ReduceOp) -> Result<(), CommError> {
        self.host.all_reduce_f16(buf, op)
    }
    fn all_reduce_bf16(&mut self, buf: &mut [half::bf16], op: ReduceOp) -> Result<(), CommError> {
        self.host.all_reduce_bf16(buf, op)
    }
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        self.host.broadcast(buf, root)
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.host.all_gather_bytes(send)
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        self.host.barrier()
    }
    fn bytes_sent(&self) -> u64 {
        self.host.bytes_sent() + self.device_bytes
    }
    fn abort(&mut self, reason: &str) {
        self.host.abort(reason);
        if let Some(c) = self.nccl.take() {
            c.abort();
        }
    }
    fn device(&mut self) -> Option<&mut dyn DeviceCollectives> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_common::contract::{EXIT_FAILURE, EXIT_PEER_FAILED};

    fn nccl(code: i32) -> NcclError {
        NcclError::Nccl {
            rank: 0,
            op: "all_reduce",
            bytes: 64,
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn a_lost_peer_is_a_peer_failure_and_exits_3() {
        let lost = [
            nccl(6), // ncclRemoteError: the peer process exited or the network failed
            nccl(2), // ncclSystemError
            NcclError::Timeout {
                rank: 0,
                op: "broadcast",
                seconds: 30.0,
            },
        ];
        for e in lost {
            let what = e.to_string();
            let c = device_error(0, "all_reduce", e);
            assert_eq!(c.kind(), FailureKind::PeerFailed, "{what}");
            assert_eq!(c.kind().exit_code(), EXIT_PEER_FAILED, "{what}");
        }
        for e in [nccl(3), NcclError::InvalidArgument("root 5".into())] {
            let what = e.to_string();
            let c = device_error(0, "all_reduce", e);
            assert_eq!(c.kind(), FailureKind::OwnFault, "{what}");
            assert_eq!(c.kind().exit_code(), EXIT_FAILURE, "{what}");
        }
    }
}
