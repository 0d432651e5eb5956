//! The data set as tensors: the raw bytes (`[N, 1, 28, 28]` u8 images, i64 labels), normalised
//! (mean 0.1307, std 0.3081) per batch when a batch is taken, so a worker never holds the whole
//! set as floats (220 MB for MNIST's two splits).
//!
//! The ranks of one machine training on the CPU share one copy of the bytes ([`load_splits`]):
//! the machine's local rank 0 loads the files and writes each split to a file in shared memory
//! (`contract::shm_data_name`), every rank maps it read-only after a barrier, and once all have
//! mapped it (a second barrier) the file is removed; the mappings stay valid. On a GPU, or for
//! a single process, each process keeps its own copy (on the device).

use crate::TrainError;
use mnist_comm::Communicator;
use mnist_common::atomic_file::write_atomic;
use mnist_common::contract::{self, WorkerIdentity, SHM_DIR};
use mnist_data::{MnistSplit, Split};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// MNIST mean used by the reference's `transforms.Normalize`.
pub const MEAN: f64 = 0.1307;
/// MNIST standard deviation used by the reference.
pub const STD: f64 = 0.3081;

/// Image side the models take.
const SIDE: usize = 28;
/// First bytes of a shared split file.
const MAGIC: &[u8; 8] = b"MNISTSH1";
/// Header: magic, then the image count as a little-endian u64; pixels and labels follow.
const HEADER: usize = 16;

/// One split, held on a device as raw bytes.
#[derive(Debug)]
pub struct TensorDataset {
    /// Images `[N, 1, 28, 28]`, u8 (on the CPU possibly a view of `shared`).
    images: Tensor,
    /// Labels `[N]`, i64.
    labels: Tensor,
    /// N.
    pub len: usize,
    /// The shared mapping `images` points into; declared after it, so dropped after it.
    shared: Option<memmap2::Mmap>,
}

/// Normalise u8 images as the reference does: `(x / 255 - MEAN) / STD` in f32 (the same
/// operations in the same order as normalising the whole set up front, so the same values).
fn normalise(images: &Tensor) -> Tensor {
    (images.to_kind(Kind::Float) / 255.0 - MEAN) / STD
}

fn check_side(rows: usize, cols: usize) -> Result<(), TrainError> {
    if rows != SIDE || cols != SIDE {
        return Err(TrainError::Shape(format!(
            "images are {rows}x{cols} pixels; LeNet and MLP need {SIDE}x{SIDE}"
        )));
    }
    Ok(())
}

impl TensorDataset {
    /// This process's own copy of `split`'s bytes, on `device`.
    pub fn new(split: &MnistSplit, device: Device) -> Result<TensorDataset, TrainError> {
        let img = &split.images;
        check_side(img.rows, img.cols)?;
        let n = img.count as i64;
        let images = Tensor::from_slice(&img.pixels)
            .view([n, 1, SIDE as i64, SIDE as i64])
            .to_device(device);
        let labels = Tensor::from_slice(&split.labels)
            .to_kind(Kind::Int64)
            .to_device(device);
        Ok(TensorDataset {
            images,
            labels,
            len: img.count,
            shared: None,
        })
    }

    /// A split from a shared file written by [`write_shared`], mapped read-only (CPU).
    fn map_shared(path: &Path) -> Result<TensorDataset, SharedError> {
        let err = |action, source| SharedError {
            action,
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| err("opening", e))?;
        // SAFETY: the file was written completely by the machine's local rank 0 before the
        // barrier this rank has passed, and nobody writes or truncates it afterwards (it is
        // only removed, which leaves the mapping intact); the mapping is read-only.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err("mapping", e))?;
        let bad = |what: String| err("reading", std::io::Error::other(what));
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not a shared data file".into()));
        }
        let n = u64::from_le_bytes(map[8..16].try_into().unwrap_or_default()) as usize;
        let pixels = n * SIDE * SIDE;
        if map.len() != HEADER + pixels + n {
            return Err(bad(format!(
                "{} bytes, expected {} for {n} images",
                map.len(),
                HEADER + pixels + n
            )));
        }
        let labels = Tensor::from_slice(&map[HEADER + pixels..]).to_kind(Kind::Int64);
        // SAFETY: `map` holds `pixels` bytes at HEADER (checked above), contiguous u8 with the
        // strides given; the tensor is only read (batches are copied out by `index_select` /
        // `narrow` + `to_kind`, never written in place), it stays private to this struct, and
        // the mapping outlives it (the `shared` field is dropped after `images`).
        let images = unsafe {
            Tensor::from_blob(
                map.as_ptr().add(HEADER),
                &[n as i64, 1, SIDE as i64, SIDE as i64],
                &[(SIDE * SIDE) as i64, (SIDE * SIDE) as i64, SIDE as i64, 1],
                Kind::Uint8,
                Device::Cpu,
            )
        };
        Ok(TensorDataset {
            images,
            labels,
            len: n,
            shared: Some(map),
        })
    }

    /// Whether the images are the machine's shared copy rather than this process's own.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The device the data is on.
    pub fn device(&self) -> Device {
        self.images.device()
    }

    /// Normalised images and labels at `index` (an i64 tensor on the same device).
    pub fn gather(&self, index: &Tensor) -> (Tensor, Tensor) {
        (
            normalise(&self.images.index_select(0, index)),
            self.labels.index_select(0, index),
        )
    }

    /// Normalised images and labels `start..start + n`.
    pub fn batch(&self, start: usize, n: usize) -> (Tensor, Tensor) {
        let (s, n) = (start as i64, n as i64);
        (
            normalise(&self.images.narrow(0, s, n)),
            self.labels.narrow(0, s, n),
        )
    }
}

/// A failure reading or writing a shared split file.
#[derive(Debug, thiserror::Error)]
#[error("{action} the shared data file {}", path.display())]
pub struct SharedError {
    /// What was being done.
    pub action: &'static str,
    /// The file in shared memory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// Write `split` to `path`: header, pixels, labels (atomically, so a reader never sees a
/// prefix; the barrier already orders it before every read).
fn write_shared(path: &Path, split: &MnistSplit) -> Result<(), TrainError> {
    let img = &split.images;
    check_side(img.rows, img.cols)?;
    if split.labels.len() != img.count {
        return Err(TrainError::Shape(format!(
            "{} images but {} labels",
            img.count,
            split.labels.len()
        )));
    }
    write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(MAGIC)?;
        f.write_all(&(img.count as u64).to_le_bytes())?;
        f.write_all(&img.pixels)?;
        f.write_all(&split.labels)
    })
    .map_err(|e| {
        SharedError {
            action: e.action,
            path: e.path,
            source: e.source,
        }
        .into()
    })
}

/// Hand freed heap memory back to the kernel: decompressing the files leaves tens of MB of
/// free but resident heap behind in glibc's arena.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps; it has no
    // preconditions and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Load `splits` from `dir` for this rank.
///
/// With more than one rank, every rank takes part in two barriers on `comm` (in the same
/// order on all ranks, whatever their device): the machine's local rank 0 writes each split
/// into shared memory before the first, CPU ranks map it between them, and local rank 0
/// removes the files after the second. A CPU rank that finds no shared file (its local rank 0
/// is on another machine, or uses a GPU) loads its own copy. `note` receives a line when that
/// happens.
pub fn load_splits(
    dir: &Path,
    splits: &[Split],
    device: Device,
    identity: &WorkerIdentity,
    comm: &mut dyn Communicator,
    note: &mut dyn FnMut(String),
) -> Result<Vec<TensorDataset>, TrainError> {
    let own = |split: Split| -> Result<TensorDataset, TrainError> {
        let data = mnist_data::load_split(dir, split)?;
        let ds = TensorDataset::new(&data, device);
        drop(data);
        trim_heap();
        ds
    };
    let run_id = match &identity.run_id {
        Some(id) if comm.world_size() > 1 => id.clone(),
        _ => return splits.iter().map(|&s| own(s)).collect(),
    };
    let cpu = device == Device::Cpu;
    let writer = identity.local_rank == 0 && cpu;
    let leader = identity.rank.saturating_sub(identity.local_rank);
    let paths: Vec<PathBuf> = splits
        .iter()
        .map(|&s| Path::new(SHM_DIR).join(contract::shm_data_name(&run_id, leader, split_name(s))))
        .collect();
    // Remove what this rank wrote however it leaves (an error, a panic).
    let cleanup = RemoveOnDrop(if writer { paths.clone() } else { Vec::new() });
    if writer {
        for (&split, path) in splits.iter().zip(&paths) {
            let data = mnist_data::load_split(dir, split)?;
            write_shared(path, &data)?;
            drop(data);
            trim_heap();
        }
    }
    comm.barrier()?;
    let mut out = Vec::with_capacity(splits.len());
    for (&split, path) in splits.iter().zip(&paths) {
        if !cpu {
            out.push(own(split)?);
            continue;
        }
        match TensorDataset::map_shared(path) {
            Ok(ds) => out.push(ds),
            Err(e) if !writer && e.source.kind() == std::io::ErrorKind::NotFound => {
                note(format!(
                    "rank {}: no shared copy of the {} set from rank {leader} ({}); loading my own",
                    identity.rank,
                    split_name(split),
                    path.display()
                ));
                out.push(own(split)?);
            }
            Err(e) => return Err(TrainError::SharedData(e)),
        }
    }
    comm.barrier()?;
    drop(cleanup);
    Ok(out)
}

/// Removes files when dropped (missing ones are fine).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
