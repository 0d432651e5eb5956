//! The MNIST splits on disk: the accepted file names, [`locate`], [`load_split`] and
//! [`write_split`].
//!
//! Each of the four files is accepted under four names, tried in this order (raw before gzip,
//! so a folder where someone decompressed the files reads the decompressed copy):
//! `train-images-idx3-ubyte`, `train-images.idx3-ubyte`, `train-images-idx3-ubyte.gz`,
//! `train-images.idx3-ubyte.gz` (likewise `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`). Gzip is detected by content, so a misnamed file still reads.

use crate::error::DataError;
use crate::idx::{read_images, read_labels, write_images, write_labels, IdxImages};
use std::path::{Path, PathBuf};

/// Which half of MNIST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 60,000 training examples (`train-*`).
    Train,
    /// The 10,000 test examples (`t10k-*`).
    Test,
}

impl Split {
    /// Standard (raw, dash-style) name of this split's images file.
    pub fn images_name(self) -> &'static str {
        match self {
            Split::Train => "train-images-idx3-ubyte",
            Split::Test => "t10k-images-idx3-ubyte",
        }
    }

    /// Standard (raw, dash-style) name of this split's labels file.
    pub fn labels_name(self) -> &'static str {
        match self {
            Split::Train => "train-labels-idx1-ubyte",
            Split::Test => "t10k-labels-idx1-ubyte",
        }
    }

    /// "training" or "test", for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Split::Train => "training",
            Split::Test => "test",
        }
    }
}

/// The standard names of all four MNIST files (raw, dash-style), train first.
pub const STANDARD_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// One split in memory: `images.count == labels.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MnistSplit {
    /// The images.
    pub images: IdxImages,
    /// One label in 0..=9 per image.
    pub labels: Vec<u8>,
}

impl MnistSplit {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The four accepted names for a file whose standard name is `standard`, in lookup order:
/// dash raw, dot raw, dash gzip, dot gzip (`-idx` becomes `.idx` in the dot style).
pub fn accepted_names(standard: &str) -> [String; 4] {
    let dotted = standard.replacen("-idx", ".idx", 1);
    [
        standard.to_string(),
        dotted.clone(),
        format!("{standard}.gz"),
        format!("{dotted}.gz"),
    ]
}

/// The first accepted name for `standard` that is a file in `dir`, if any.
pub fn find_file(dir: &Path, standard: &str) -> Option<PathBuf> {
    accepted_names(standard)
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn find_or_err(dir: &Path, standard: &str, what: String) -> Result<PathBuf, DataError> {
    find_file(dir, standard).ok_or_else(|| DataError::NotFound {
        dir: dir.to_path_buf(),
        what,
        tried: accepted_names(standard).to_vec(),
    })
}

/// Finds `(images, labels)` of `split` in `dir` under any accepted name (raw preferred).
pub fn locate(dir: &Path, split: Split) -> Result<(PathBuf, PathBuf), DataError> {
    let images = find_or_err(
        dir,
        split.images_name(),
        format!("{} images", split.describe()),
    )?;
    let labels = find_or_err(
        dir,
        split.labels_name(),
        format!("{} labels", split.describe()),
    )?;
    Ok((images, labels))
}

/// Locates and reads one split, checking that it has as many labels as images.
///
/// Any image size is accepted (MNIST's is 28 x 28); labels must be in 0..=9.
pub fn load_split(dir: &Path, split: Split) -> Result<MnistSplit, DataError> {
    let (images_path, labels_path) = locate(dir, split)?;
    let images = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path,
            images: images.count,
            labels_path,
            labels: labels.len(),
        });
    }
    Ok(MnistSplit { images, labels })
}

/// Writes `data` into `dir` (created if needed) under the standard names, with `.gz` appended
/// when `gzip`.
pub fn write_split(dir: &Path, split: Split, data: &MnistSplit, gzip: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ext = if gzip { ".gz" } else { "" };
    write_images(
        &dir.join(format!("{}{ext}", split.images_name())),
        &data.images,
        gzip,
    )?;
    write_labels(
        &dir.join(format!("{}{ext}", split.labels_name())),
        &data.labels,
        gzip,
    )
}
