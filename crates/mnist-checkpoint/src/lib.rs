//! Pure-Rust reading and writing of PyTorch `state_dict` checkpoints (the `torch.save` zip
//! format, loadable by `torch.load(path)` with `weights_only=True`) and of `.safetensors` files.
//!
//! Why not tch: `VarStore::save` writes libtorch's C++ archive, which Python's `torch.load`
//! does not read as a `state_dict`, and `Tensor::loadz_multi` fails on the `OrderedDict` that
//! Python's `torch.save(model.state_dict())` produces. This crate writes and parses the format
//! directly: a zip archive of `data.pkl` (a pickle of an `OrderedDict` of tensors whose storages
//! are persistent ids) plus one raw little-endian record per storage under `data/`.
//!
//! All writes are atomic ([`atomic_write`]): a temp file in the target folder, fsync, rename.

mod atomic;
mod dtype;
mod error;
mod pickle_read;
mod pickle_torch;
mod pickle_write;
mod safetensors_io;
mod strided;
mod torch_zip;

use std::path::Path;

pub use atomic::atomic_write;
pub use dtype::DType;
pub use error::CheckpointError;

/// One named tensor of a state dict: `data` holds `shape.iter().product()` values in row-major
/// (C-contiguous) order, always as `f32` (other dtypes are converted on load).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Parameter or buffer name, e.g. `conv1.weight`.
    pub name: String,
    /// Dimensions; empty for a 0-dim (scalar) tensor.
    pub shape: Vec<usize>,
    /// Row-major values; its length equals the product of `shape`.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// Builds a tensor from its parts (no check; savers check `shape` against `data.len()`).
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            shape,
            data,
        }
    }

    /// Number of elements the shape describes (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What kind of file a checkpoint is, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// The `torch.save` zip format (what [`save_state_dict`] writes).
    TorchZip,
    /// A `.safetensors` file.
    Safetensors,
}

/// Saves `tensors` as a PyTorch `state_dict` (`torch.save` zip format, float32 storages) that
/// `torch.load(path)` opens with `weights_only=True` and `load_state_dict(strict=True)`
/// accepts. Order is kept. The write is atomic: on error an existing file is untouched.
///
/// Errors: duplicate names, `shape` not matching `data.len()`, or I/O failure.
pub fn save_state_dict(path: &Path, tensors: &[NamedTensor]) -> Result<(), CheckpointError> {
    save_state_dict_with_dtypes(path, tensors, &vec![DType::F32; tensors.len()])
}

/// Like [`save_state_dict`], with tensor `i` stored as `dtypes[i]`: float32, float64, int64
/// or int32 (integers from rounded values), e.g. int64 for BatchNorm's
/// `num_batches_tracked` as PyTorch stores it.
///
/// Errors: as [`save_state_dict`], a dtype list of another length, or another dtype.
pub fn save_state_dict_with_dtypes(
    path: &Path,
    tensors: &[NamedTensor],
    dtypes: &[DType],
) -> Result<(), CheckpointError> {
    validate_tensors(path, tensors)?;
    for (i, t) in tensors.iter().enumerate() {
        let invalid = |message: String| CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            message,
        };
        match dtypes.get(i) {
            None => {
                return Err(invalid(format!(
                    "no dtype given ({} dtypes for {} tensors)",
                    dtypes.len(),
                    tensors.len()
                )))
            }
            Some(d) if d.write_le(0.0).is_none() => {
                return Err(invalid(format!(
                    "cannot write dtype {d} (float32, float64, int64 or int32 expected)"
                )))
            }
            Some(_) => {}
        }
    }
    let archive_name = torch_zip::archive_name(path);
    atomic_write(path, |file| {
        torch_zip::write_archive(file, &archive_name, tensors, dtypes)
    })
}

/// Loads a state dict from a PyTorch zip checkpoint (ours or Python's `torch.save`, pickle
/// protocol 2 or 4) or a `.safetensors` file, detected by content. Values of float16,
/// bfloat16, float64 and integer/bool tensors are converted to `f32`; strided views, storage
/// offsets and storages shared between tensors are resolved. Order is the file's order.
pub fn load_state_dict(path: &Path) -> Result<Vec<NamedTensor>, CheckpointError> {
    Ok(load_state_dict_with_dtypes(path)?
        .into_iter()
        .map(|(t, _)| t)
        .collect())
}

/// Like [`load_state_dict`], but also reports each tensor's dtype as stored in the file.
pub fn load_state_dict_with_dtypes(
    path: &Path,
) -> Result<Vec<(NamedTensor, DType)>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        action: "reading",
        source,
    })?;
    match detect_format(path, &bytes)? {
        CheckpointFormat::TorchZip => torch_zip::read_archive(path, bytes),
        CheckpointFormat::Safetensors => safetensors_io::read(path, &bytes),
    }
}

/// Saves `tensors` as a float32 `.safetensors` file, atomically. Note: the safetensors
/// serializer stores tensors sorted by name, so loading returns them in name order.
pub fn save_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<(), CheckpointError> {
    validate_tensors(path, tensors)?;
    let bytes = safetensors_io::serialize(path, tensors)?;
    atomic_write(path, |file| std::io::Write::write_all(file, &bytes))
}

/// Detects the format of checkpoint bytes read from `path` (used only in error messages).
///
/// Zip archives start with `PK\x03\x04` (or `PK\x05\x06` when empty); safetensors files start
/// with a little-endian `u64` header length followed by a JSON object.
pub fn detect_format(path: &Path, bytes: &[u8]) -> Result<CheckpointFormat, CheckpointError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(CheckpointFormat::TorchZip);
    }
    if safetensors_io::looks_like_safetensors(bytes) {
        return Ok(CheckpointFormat::Safetensors);
    }
    if bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5 {
        return Err(CheckpointError::Malformed {
            path: path.to_path_buf(),
            message: "this is a bare pickle (legacy torch.save with \
                      _use_new_zipfile_serialization=False), which is not supported; \
                      re-save it with torch.save defaults"
                .to_string(),
        });
    }
    Err(CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
    })
}

/// Checks names are unique and non-empty and each shape matches its data length.
fn validate_tensors(path: &Path, tensors: &[NamedTensor]) -> Result<(), CheckpointError> {
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        let invalid = |message: String| CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            message,
        };
        if t.name.is_empty() {
            return Err(invalid("the name is empty".to_string()));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(invalid("the name appears more than once".to_string()));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid(format!("shape {:?} overflows usize", t.shape)))?;
        if numel != t.data.len() {
            return Err(invalid(format!(
                "shape {:?} needs {numel} values but data has {}",
                t.shape,
                t.data.len()
            )));
        }
    }
    Ok(())
}
