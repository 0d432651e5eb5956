//! The error type of this crate: every variant names the file and what is wrong with it.
//! A `Display` never repeats its source; callers print the chain once (`error_line`).

use std::path::PathBuf;

/// Failure reading or writing a checkpoint; messages quote the file and the offending values.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading a file failed.
    #[error("I/O error while {action} {path}")]
    Io {
        /// The file (or temp file) involved.
        path: PathBuf,
        /// What was being done, e.g. "reading", "renaming the temp file onto".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed (our own output, not a file we were given).
    #[error("I/O error while {action} {path}")]
    Save {
        /// The file (or temp file) involved.
        path: PathBuf,
        /// What was being done, e.g. "writing", "renaming the temp file onto".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a zip archive nor a safetensors file.
    #[error("{path} is not a PyTorch checkpoint (zip) or safetensors file")]
    NotACheckpoint {
        /// The file that was read.
        path: PathBuf,
    },
    /// The zip container is damaged (truncated, bad central directory, ...).
    #[error("{path}: damaged zip archive")]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The zip crate's error.
        #[source]
        source: zip::result::ZipError,
    },
    /// A record the format requires is not in the archive.
    #[error("{path}: record '{record}' is missing from the archive")]
    MissingRecord {
        /// The archive.
        path: PathBuf,
        /// The missing record's name inside the archive.
        record: String,
    },
    /// The content is structurally wrong (bad pickle, not a dict of tensors, sizes that do
    /// not match the storage, unsupported dtype, ...).
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the values involved.
        message: String,
    },
    /// The safetensors parser rejected the file.
    #[error("{path}: invalid safetensors file")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A tensor handed to a save function is inconsistent.
    #[error("cannot save {path}: tensor '{name}': {message}")]
    InvalidTensor {
        /// The destination file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl CheckpointError {
    /// Whether saving failed (an output of ours, or tensors we handed over), rather than
    /// reading a file someone gave us.
    pub fn during_save(&self) -> bool {
        matches!(
            self,
            CheckpointError::Save { .. } | CheckpointError::InvalidTensor { .. }
        )
    }
}
