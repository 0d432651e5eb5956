//! The one error type of this crate; every message names the file or flag involved.

use std::path::PathBuf;

/// Why a picture, summary or configuration file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// A run folder without `metrics.jsonl`.
    #[error("{}: no metrics.jsonl in this folder (expected the --path of a training run that finished at least one epoch)", dir.display())]
    NoMetrics {
        /// The run folder.
        dir: PathBuf,
    },
    /// `metrics.jsonl` could not be read.
    #[error("reading {}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of `metrics.jsonl` that is not an epoch record.
    #[error("{}, line {line}: not an epoch record ({detail})", file.display())]
    BadRecord {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the JSON parser said.
        detail: String,
    },
    /// `metrics.jsonl` holds no epoch at all.
    #[error("{}: no epoch records (the run has not finished an epoch yet)", file.display())]
    Empty {
        /// The file.
        file: PathBuf,
    },
    /// An output name whose extension says neither PNG nor SVG.
    #[error("{}: expected a file name ending in .png or .svg", path.display())]
    BadExtension {
        /// The name given.
        path: PathBuf,
    },
    /// Drawing failed inside the plotting library.
    #[error("drawing {}: {detail}", path.display())]
    Draw {
        /// The picture being drawn.
        path: PathBuf,
        /// The library's message.
        detail: String,
    },
    /// The output file could not be written (atomically).
    #[error(transparent)]
    Write(#[from] mnist_common::atomic_file::AtomicWriteError),
}

impl VizError {
    /// Whether the input given was at fault (a folder without metrics, a bad record, an output
    /// name that is neither .png nor .svg), as opposed to drawing or writing failing.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            VizError::NoMetrics { .. }
                | VizError::Read { .. }
                | VizError::BadRecord { .. }
                | VizError::Empty { .. }
                | VizError::BadExtension { .. }
        )
    }
}
