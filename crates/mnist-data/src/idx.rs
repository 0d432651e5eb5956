//! Reading and writing IDX files (the MNIST container format), gzipped or raw.
//!
//! Layout: a big-endian `u32` magic (`0x00000803` for 3-dim unsigned-byte images,
//! `0x00000801` for 1-dim unsigned-byte labels), one big-endian `u32` per dimension, then the
//! data. Gzip is recognised by its magic bytes `1f 8b`, never by the file name.

use crate::error::DataError;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
const IMAGES_HEADER: usize = 16;
const LABELS_HEADER: usize = 8;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A stack of grey-level images, as stored in an IDX images file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// Pixels, row-major, image after image: `count * rows * cols` bytes.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels of one image (`rows * cols` bytes), or `None` when `index >= count`.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let size = self.rows * self.cols;
        self.pixels.get(index * size..(index + 1) * size)
    }
}

/// Reads a whole file, decompressing it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io_err = |op, source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        }
    };
    let mut file = File::open(path).map_err(|e| io_err("open", e))?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).map_err(|e| io_err("read", e))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

/// Checks the magic; `bytes` must hold at least 4 bytes.
fn check_magic(
    path: &Path,
    bytes: &[u8],
    expected: u32,
    kind: &'static str,
) -> Result<(), DataError> {
    let found = be_u32(bytes, 0);
    if found == expected {
        return Ok(());
    }
    let hint = match found {
        IMAGES_MAGIC => " (this looks like an images file)".to_string(),
        LABELS_MAGIC => " (this looks like a labels file)".to_string(),
        _ => String::new(),
    };
    Err(DataError::BadMagic {
        path: path.to_path_buf(),
        found,
        expected,
        kind,
        hint,
    })
}

fn check_len(path: &Path, detail: String, expected: u64, actual: usize) -> Result<(), DataError> {
    if expected == actual as u64 {
        Ok(())
    } else {
        Err(DataError::Length {
            path: path.to_path_buf(),
            detail,
            expected,
            actual: actual as u64,
        })
    }
}

/// The error for a file too short to hold its header.
fn short_header(path: &Path, kind: &str, header: usize, actual: usize) -> DataError {
    DataError::Length {
        path: path.to_path_buf(),
        detail: format!("IDX {kind} header"),
        expected: header as u64,
        actual: actual as u64,
    }
}

/// Parses IDX images already in memory; `path` is only used in error messages.
pub fn parse_images(path: &Path, mut bytes: Vec<u8>) -> Result<IdxImages, DataError> {
    if bytes.len() < IMAGES_HEADER {
        if bytes.len() >= 4 {
            check_magic(path, &bytes, IMAGES_MAGIC, "images")?;
        }
        return Err(short_header(path, "images", IMAGES_HEADER, bytes.len()));
    }
    check_magic(path, &bytes, IMAGES_MAGIC, "images")?;
    let (count, rows, cols) = (be_u32(&bytes, 4), be_u32(&bytes, 8), be_u32(&bytes, 12));
    if rows == 0 || cols == 0 {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            detail: format!("images of {rows} x {cols} pixels; rows and cols must be > 0"),
        });
    }
    let expected = IMAGES_HEADER as u64 + u64::from(count) * u64::from(rows) * u64::from(cols);
    let detail = format!("IDX images ({count} x {rows} x {cols})");
    check_len(path, detail, expected, bytes.len())?;
    bytes.drain(..IMAGES_HEADER);
    Ok(IdxImages {
        count: count as usize,
        rows: rows as usize,
        cols: cols as usize,
        pixels: bytes,
    })
}

/// Parses IDX labels already in memory and checks each is in 0..=9; `path` names the file in errors.
pub fn parse_labels(path: &Path, mut bytes: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if bytes.len() < LABELS_HEADER {
        if bytes.len() >= 4 {
            check_magic(path, &bytes, LABELS_MAGIC, "labels")?;
        }
        return Err(short_header(path, "labels", LABELS_HEADER, bytes.len()));
    }
    check_magic(path, &bytes, LABELS_MAGIC, "labels")?;
    let count = be_u32(&bytes, 4);
    let expected = LABELS_HEADER as u64 + u64::from(count);
    check_len(path, format!("IDX labels ({count})"), expected, bytes.len())?;
    bytes.drain(..LABELS_HEADER);
    if let Some((index, &value)) = bytes.iter().enumerate().find(|(_, &v)| v > 9) {
        return Err(DataError::LabelRange {
            path: path.to_path_buf(),
            index,
            value,
        });
    }
    Ok(bytes)
}

/// Reads and validates an IDX images file (gzipped or raw, detected by content).
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    parse_images(path, read_maybe_gz(path)?)
}

/// Reads and validates an IDX labels file (gzipped or raw); every label must be in 0..=9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    parse_labels(path, read_maybe_gz(path)?)
}

fn to_u32(value: usize, what: &str) -> std::io::Result<u32> {
    u32::try_from(value).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} {value} does not fit in u32"),
        )
    })
}

fn write_file(path: &Path, header: &[u8], data: &[u8], gzip: bool) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    if gzip {
        let mut enc = GzEncoder::new(file, Compression::default());
        enc.write_all(header)?;
        enc.write_all(data)?;
        enc.finish()?.flush()
    } else {
        let mut file = file;
        file.write_all(header)?;
        file.write_all(data)?;
        file.flush()
    }
}

/// Writes `img` as an IDX images file, gzipped when `gzip` (for tests and tools).
///
/// Fails with `InvalidInput` when `pixels.len() != count * rows * cols` or a size exceeds `u32`.
pub fn write_images(path: &Path, img: &IdxImages, gzip: bool) -> std::io::Result<()> {
    if img
        .count
        .checked_mul(img.rows)
        .and_then(|n| n.checked_mul(img.cols))
        != Some(img.pixels.len())
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: {} pixels do not make {} images of {} x {}",
                path.display(),
                img.pixels.len(),
                img.count,
                img.rows,
                img.cols
            ),
        ));
    }
    let mut header = Vec::with_capacity(IMAGES_HEADER);
    header.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for (v, what) in [(img.count, "count"), (img.rows, "rows"), (img.cols, "cols")] {
        header.extend_from_slice(&to_u32(v, what)?.to_be_bytes());
    }
    write_file(path, &header, &img.pixels, gzip)
}

/// Writes `labels` as an IDX labels file, gzipped when `gzip` (for tests and tools).
pub fn write_labels(path: &Path, labels: &[u8], gzip: bool) -> std::io::Result<()> {
    let mut header = Vec::with_capacity(LABELS_HEADER);
    header.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    header.extend_from_slice(&to_u32(labels.len(), "label count")?.to_be_bytes());
    write_file(path, &header, labels, gzip)
}
