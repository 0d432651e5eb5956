//! The error type of every NCCL entry point: which rank, which operation, how many bytes, and
//! NCCL's own words for what went wrong.

use crate::UNIQUE_ID_BYTES;

/// Why an NCCL call could not be made or did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NcclError {
    /// This build has no NCCL support (the `nccl` feature was off).
    #[error("NCCL backend not available: {0}")]
    NotCompiled(String),
    /// The feature is on but CUDA or NCCL cannot be used here (no driver, no GPU, no libnccl);
    /// the text says what was tried and how to fix it.
    #[error("NCCL backend unavailable: {0}")]
    Unavailable(String),
    /// NCCL reported an error.
    #[error("NCCL {op} failed on rank {rank} ({bytes} bytes): ncclResult_t {code}: {message}")]
    Nccl {
        /// Rank that saw the error.
        rank: usize,
        /// The operation (`init`, `all_reduce`, `broadcast`, `get_unique_id`, …).
        op: &'static str,
        /// Bytes the operation covered (0 for set-up calls).
        bytes: usize,
        /// The `ncclResult_t` value.
        code: i32,
        /// `ncclGetErrorString(code)`, then `ncclGetLastError` when it says more.
        message: String,
    },
    /// A CUDA driver call failed (bad device ordinal, illegal address, …).
    #[error("CUDA {op} failed on rank {rank}: {message}")]
    Cuda {
        /// Rank that saw the error.
        rank: usize,
        /// The driver call or the step it belonged to.
        op: &'static str,
        /// The driver's error name and description.
        message: String,
    },
    /// The operation did not finish in time (a peer died or stopped calling the same
    /// collective); the communicator was aborted.
    #[error(
        "NCCL {op} on rank {rank} did not finish within {seconds} s (a peer died, hung or did \
         not call {op}); the communicator was aborted (see --timeout)"
    )]
    Timeout {
        /// Rank that gave up.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The timeout that expired, in seconds.
        seconds: f64,
    },
    /// The unique id does not have [`UNIQUE_ID_BYTES`] bytes.
    #[error(
        "NCCL unique id has {len} bytes, expected {UNIQUE_ID_BYTES} (rendezvous payload empty, \
         truncated or written by another backend)"
    )]
    InvalidId {
        /// Length received.
        len: usize,
    },
    /// An argument is out of range (rank ≥ world size, null pointer, root ≥ world size, …).
    #[error("invalid NCCL argument: {0}")]
    InvalidArgument(String),
    /// The communicator was aborted after an earlier failure and cannot be used again.
    #[error("NCCL {op} on rank {rank}: the communicator was aborted after an earlier failure")]
    Aborted {
        /// Rank of the communicator.
        rank: usize,
        /// The operation that was attempted.
        op: &'static str,
    },
}

impl NcclError {
    /// Whose failure this is: a lost peer (NCCL's remote or system error, a timeout) or this
    /// rank's own; asking for NCCL where it cannot work is bad input.
    pub fn kind(&self) -> mnist_common::FailureKind {
        use mnist_common::FailureKind;
        /// `ncclSystemError` (network, peer process gone) and `ncclRemoteError`.
        const SYSTEM_ERROR: i32 = 2;
        const REMOTE_ERROR: i32 = 6;
        match self {
            NcclError::NotCompiled(_) | NcclError::Unavailable(_) => FailureKind::BadInput,
            NcclError::Timeout { .. } => FailureKind::PeerFailed,
            NcclError::Nccl { code, .. } if *code == SYSTEM_ERROR || *code == REMOTE_ERROR => {
                FailureKind::PeerFailed
            }
            NcclError::Nccl { .. }
            | NcclError::Cuda { .. }
            | NcclError::InvalidId { .. }
            | NcclError::InvalidArgument(_)
            | NcclError::Aborted { .. } => FailureKind::OwnFault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_quote_the_values() {
        let e = NcclError::Nccl {
            rank: 3,
            op: "all_reduce",
            bytes: 4096,
            code: 6,
            message: "remote process exited or there was a network error".into(),
        };
        let s = e.to_string();
        for want in [
            "all_reduce",
            "rank 3",
            "4096 bytes",
            "ncclResult_t 6",
            "remote process",
        ] {
            assert!(s.contains(want), "{s:?} lacks {want:?}");
        }
        let t = NcclError::Timeout {
            rank: 1,
            op: "broadcast",
            seconds: 2.5,
        }
        .to_string();
        assert!(t.contains("rank 1") && t.contains("2.5 s") && t.contains("broadcast"));
        assert_eq!(e.kind(), mnist_common::FailureKind::PeerFailed);
        assert_eq!(
            NcclError::Timeout {
                rank: 1,
                op: "broadcast",
                seconds: 2.5
            }
            .kind(),
            mnist_common::FailureKind::PeerFailed
        );
        let i = NcclError::InvalidId { len: 7 }.to_string();
        assert!(i.contains("7 bytes") && i.contains("128"), "{i}");
    }
}
