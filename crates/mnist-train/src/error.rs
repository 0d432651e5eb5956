//! Errors of the training library; each names the file, flag or rank involved.

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
    /// NCCL failed or is unavailable.
    #[error(transparent)]
    Nccl(#[from] mnist_nccl::NcclError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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
    /// The data does not fit the models.
    #[error("{0}")]
    Shape(String),
}
