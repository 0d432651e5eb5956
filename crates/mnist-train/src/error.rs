//! Errors of the training library; each names the file, flag or rank involved, and says what
//! kind of failure it is ([`TrainError::kind`]), which decides the worker's exit code.

use mnist_common::panics::Panic;
use mnist_common::FailureKind;
use std::path::PathBuf;

/// Anything that stops training or evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A flag value that cannot be used.
    #[error(transparent)]
    Config(#[from] mnist_common::ConfigError),
    /// Reading or downloading the data set failed.
    #[error(transparent)]
    Data(#[from] mnist_data::DataError),
    /// Reading or writing a model file failed.
    #[error(transparent)]
    Checkpoint(#[from] mnist_checkpoint::CheckpointError),
    /// A collective failed.
    #[error(transparent)]
    Comm(#[from] mnist_comm::CommError),
    /// The data set shared by the ranks of a machine could not be written or mapped.
    #[error(transparent)]
    SharedData(#[from] crate::dataset::SharedError),
    /// NCCL failed or is unavailable.
    #[error(transparent)]
    Nccl(#[from] mnist_nccl::NcclError),
    /// libtorch reported an error (a tch panic caught at the step boundary, or a `f_*` call):
    /// a shape mismatch, out of memory, a CUDA error.
    #[error("libtorch error{}: {message}", .during.map(|d| format!(" during {d}")).unwrap_or_default())]
    Torch {
        /// What was being done (`training step`, `evaluation`, …), when known.
        during: Option<&'static str>,
        /// libtorch's message, first line.
        message: String,
    },
    /// The worker was told to stop (SIGINT, SIGTERM, SIGHUP) and stopped between steps.
    #[error("stopped by signal {signal} between steps")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// Something that should not happen (a panic that is not a libtorch error).
    #[error("internal error: {0}")]
    Internal(String),
    /// The output folder cannot be created or written. (The cause is the error's source, not
    /// part of this message: `{:#}` printing would show it twice.)
    #[error("--path {path}: cannot write there")]
    OutputDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder that an output flag asks for cannot be written (`--tensorboard`'s
    /// event files, `--profile-steps`' trace).
    #[error("{flag}: cannot write {path}")]
    Output {
        /// The flag.
        flag: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A model file that does not fit the chosen model.
    #[error("{file}: {detail}")]
    StateDict {
        /// The model file.
        file: PathBuf,
        /// Missing, unexpected or mis-shaped keys.
        detail: String,
    },
    /// The requested device cannot be used.
    #[error("{0}")]
    Device(String),
    /// The resumable checkpoint cannot be used.
    #[error("--resume: {file}: {detail}")]
    Resume {
        /// The checkpoint file.
        file: PathBuf,
        /// Why.
        detail: String,
    },
    /// Ranks hold different parameters.
    #[error("--check-sync: parameters differ across ranks after step {step}: {detail}")]
    OutOfSync {
        /// Global step.
        step: u64,
        /// Checksums per rank.
        detail: String,
    },
    /// This rank's own gradient was NaN or Inf before the all-reduce ([`crate::guard`]).
    /// (The worker's message names the rank: `rank R: the local gradient …`, and a peer's says
    /// `peer rank R aborted: …`.)
    #[error("the local gradient of step {step} holds NaN or Inf before the all-reduce (the model diverged on this rank's data, or the gradient was corrupted)")]
    NonFiniteGradient {
        /// The rank whose gradient it was.
        rank: usize,
        /// Global step (steps done before it).
        step: u64,
    },
    /// `MNIST_FAULT` cannot be understood or names a rank the job lacks.
    #[error(transparent)]
    Fault(#[from] mnist_common::fault::FaultError),
    /// The data does not fit the models.
    #[error("{0}")]
    Shape(String),
}

impl From<tch::TchError> for TrainError {
    fn from(e: tch::TchError) -> Self {
        let text = match e {
            tch::TchError::Torch(m) => m,
            other => other.to_string(),
        };
        TrainError::Torch {
            during: None,
            message: text.lines().next().unwrap_or("").trim().to_string(),
        }
    }
}

impl TrainError {
    /// A panic caught while doing `during`: libtorch's error when it is one, else an internal
    /// error.
    pub fn from_panic(p: Panic, during: &'static str) -> TrainError {
        match p.libtorch_message() {
            Some(message) => TrainError::Torch {
                during: Some(during),
                message,
            },
            None => TrainError::Internal(format!("{during}: {}", p.one_line())),
        }
    }

    /// Whose failure this is: bad input (flags, data, model files: retrying cannot help), a
    /// peer's, this process's own, or an interruption.
    pub fn kind(&self) -> FailureKind {
        use mnist_data::DataError as D;
        match self {
            TrainError::Config(_)
            | TrainError::OutputDir { .. }
            | TrainError::Output { .. }
            | TrainError::StateDict { .. }
            | TrainError::Device(_)
            | TrainError::Resume { .. }
            | TrainError::Shape(_)
            | TrainError::Fault(_) => FailureKind::BadInput,
            TrainError::Data(D::Download { .. }) => FailureKind::OwnFault,
            TrainError::Data(_) => FailureKind::BadInput,
            // Reading a model file the user named is input; writing ours is our own fault.
            TrainError::Checkpoint(e) if e.during_save() => FailureKind::OwnFault,
            TrainError::Checkpoint(_) => FailureKind::BadInput,
            TrainError::Comm(e) => e.kind(),
            TrainError::Nccl(e) => e.kind(),
            TrainError::Interrupted { signal } => FailureKind::Interrupted(*signal),
            TrainError::Torch { .. }
            | TrainError::OutOfSync { .. }
            | TrainError::NonFiniteGradient { .. }
            | TrainError::Internal(_)
            | TrainError::SharedData(_) => FailureKind::OwnFault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_common::contract::EXIT_PEER_FAILED;

    #[test]
    fn a_lost_peer_exits_3_on_every_backend() {
        let nccl = mnist_nccl::device_error(
            1,
            "all_reduce",
            mnist_nccl::NcclError::Nccl {
                rank: 1,
                op: "all_reduce",
                bytes: 4,
                code: 6,
                message: "remote process exited or there was a network error".into(),
            },
        );
        let cpu = mnist_comm::CommError::PeerFailed {
            rank: 1,
            op: "all_reduce(4 x f32, sum)".into(),
            peer: 0,
            what: "(pid 7) exited or closed its connection".into(),
        };
        let timeout = mnist_nccl::NcclError::Timeout {
            rank: 1,
            op: "broadcast",
            seconds: 30.0,
        };
        for e in [
            TrainError::from(nccl),
            TrainError::from(cpu),
            TrainError::from(timeout),
        ] {
            assert_eq!(e.kind(), FailureKind::PeerFailed, "{e}");
            assert_eq!(e.kind().exit_code(), EXIT_PEER_FAILED, "{e}");
        }
    }
}
