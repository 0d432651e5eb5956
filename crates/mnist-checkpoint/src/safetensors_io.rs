//! `.safetensors` reading (any float/int dtype, converted to `f32`) and float32 writing,
//! through the `safetensors` crate.

use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{CheckpointError, DType, NamedTensor};

/// Largest header the safetensors format allows (100 MB), used for content sniffing.
const MAX_HEADER: u64 = 100_000_000;

/// Whether `bytes` start like a safetensors file: a `u64` header length that fits the file,
/// followed by a JSON object.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8) else {
        return false;
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len);
    let n = u64::from_le_bytes(n);
    (2..=MAX_HEADER).contains(&n) && n <= (bytes.len() as u64 - 8) && bytes.get(8) == Some(&b'{')
}

/// Maps a safetensors dtype to ours.
fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file, in data-offset order.
pub(crate) fn read(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<(NamedTensor, DType)>, CheckpointError> {
    let st = SafeTensors::deserialize(bytes).map_err(|source| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    // `tensors()` has no stable order; sort by where the data lies (the writing order).
    let mut views: Vec<(String, TensorView<'_>)> = st.tensors();
    let base = bytes.as_ptr() as usize;
    views.sort_by_key(|(name, v)| {
        (
            (v.data().as_ptr() as usize).saturating_sub(base),
            name.clone(),
        )
    });
    let mut out = Vec::with_capacity(views.len());
    for (name, view) in views {
        let dtype = dtype_of(view.dtype()).ok_or_else(|| CheckpointError::Malformed {
            path: path.to_path_buf(),
            message: format!("tensor '{name}' has unsupported dtype {:?}", view.dtype()),
        })?;
        let data = view.data();
        // The crate has checked that data.len() == numel * dtype size.
        let numel = data.len() / dtype.size();
        let values = (0..numel).map(|i| dtype.read_f32(data, i, false)).collect();
        out.push((NamedTensor::new(name, view.shape().to_vec(), values), dtype));
    }
    Ok(out)
}

/// Serializes already-validated tensors as float32 safetensors bytes.
pub(crate) fn serialize(path: &Path, tensors: &[NamedTensor]) -> Result<Vec<u8>, CheckpointError> {
    let raw: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, bytes) in tensors.iter().zip(&raw) {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes).map_err(|source| {
            CheckpointError::Safetensors {
                path: path.to_path_buf(),
                source,
            }
        })?;
        views.push((t.name.as_str(), view));
    }
    safetensors::tensor::serialize(views, &None).map_err(|source| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}
