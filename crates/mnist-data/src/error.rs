//! [`DataError`]: every way reading, locating or downloading MNIST can fail, each message naming
//! the file (or URL) and quoting the values involved.

use std::path::PathBuf;

/// A failure to read, locate, validate or download MNIST data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file that should exist does not.
    #[error("{}: file not found", .path.display())]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// None of the accepted names for one MNIST file exists in the data folder.
    #[error(
        "no MNIST {what} in {}: tried {}; pass --download to fetch the files there, \
         or --data DIR to point at a folder that holds them",
        .dir.display(),
        .tried.join(", ")
    )]
    NotFound {
        /// The folder searched.
        dir: PathBuf,
        /// Which file, e.g. "training images".
        what: String,
        /// The file names tried, in order.
        tried: Vec<String>,
    },
    /// Reading or writing a file failed.
    #[error("{}: {op} failed", .path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file starts like gzip (1f 8b) but does not decompress.
    #[error("{}: corrupt gzip data", .path.display())]
    Gzip {
        /// The file involved.
        path: PathBuf,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// The IDX magic number is not the one expected for this kind of file.
    #[error("{}: bad IDX magic 0x{found:08x}, expected 0x{expected:08x} ({kind}){hint}", .path.display())]
    BadMagic {
        /// The file involved.
        path: PathBuf,
        /// The magic number found.
        found: u32,
        /// The magic number expected.
        expected: u32,
        /// "images" or "labels".
        kind: &'static str,
        /// Extra advice, e.g. that the file looks like the other kind; empty if none.
        hint: String,
    },
    /// A header dimension is unusable (e.g. zero rows).
    #[error("{}: bad IDX header: {detail}", .path.display())]
    BadHeader {
        /// The file involved.
        path: PathBuf,
        /// What is wrong, quoting the values.
        detail: String,
    },
    /// The (decompressed) file length does not match what its header announces.
    #[error(
        "{}: {} {detail}: header implies {expected} bytes, file has {actual} bytes",
        .path.display(),
        if .actual < .expected { "truncated" } else { "trailing bytes after" }
    )]
    Length {
        /// The file involved.
        path: PathBuf,
        /// What the header describes, e.g. "IDX images (60000 x 28 x 28)".
        detail: String,
        /// Bytes the header implies (header included).
        expected: u64,
        /// Bytes the file actually has (after decompression).
        actual: u64,
    },
    /// A label outside 0..=9.
    #[error("{}: label at index {index} is {value}, expected 0..=9", .path.display())]
    LabelRange {
        /// The file involved.
        path: PathBuf,
        /// Index of the offending label.
        index: usize,
        /// Its value.
        value: u8,
    },
    /// The image and label files of one split hold different numbers of items.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        .images_path.display(),
        .labels_path.display()
    )]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Number of images.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Number of labels.
        labels: usize,
    },
    /// Every mirror failed for one file.
    #[error(
        "could not download {file} into {}: {}",
        .dir.display(),
        if .failures.is_empty() { "no mirrors given".to_string() } else { .failures.join("; ") }
    )]
    Download {
        /// The file name (without `.gz`).
        file: String,
        /// The target folder.
        dir: PathBuf,
        /// One line per mirror: its URL and why it failed.
        failures: Vec<String>,
    },
    /// Invalid distributed-sampler parameters.
    #[error("invalid sampler: {detail}")]
    Sampler {
        /// What is wrong, quoting the values.
        detail: String,
    },
}
