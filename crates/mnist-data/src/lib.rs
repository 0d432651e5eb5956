//! MNIST data for the training job: reading and validating IDX files (gzipped or raw),
//! locating and loading the splits, downloading them with SHA-256 checks, the per-rank
//! [`DistributedSampler`], and a learnable [`synthetic`] stand-in for tests.
//!
//! Pure Rust; no libtorch. Every [`DataError`] names the file (or URL) and the values at fault.

mod download;
mod error;
mod idx;
mod mnist;
mod sampler;
mod synthetic;

pub use download::{download, download_with_sums, mirror_url, MNIST_SHA256};
pub use error::DataError;
pub use idx::{
    parse_images, parse_labels, read_images, read_labels, read_maybe_gz, write_images,
    write_labels, IdxImages, IMAGES_MAGIC, LABELS_MAGIC,
};
pub use mnist::{
    accepted_names, find_file, load_split, locate, write_split, MnistSplit, Split, STANDARD_NAMES,
};
pub use sampler::DistributedSampler;
pub use synthetic::{synthetic, SIDE};
