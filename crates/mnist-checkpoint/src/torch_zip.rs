//! The `torch.save` zip container: writing it the way PyTorch 2.11 does (STORED entries under
//! `<archive>/`, data records aligned to 64 bytes) and reading state dicts out of it.
//!
//! Records written, in torch's order: `data.pkl`, `.format_version` (`1`),
//! `.storage_alignment` (`64`), `byteorder` (`little`), `data/<key>` (one raw little-endian
//! storage per tensor, float32 unless another dtype is asked for), `version` (`3\n`), `.data/serialization_id`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::pickle_read::{self, TensorRef, Value};
use crate::pickle_write::{encode_state_dict, TensorEntry};
use crate::{strided, CheckpointError, DType, NamedTensor};

/// Alignment torch uses for storage records (`.storage_alignment`).
const ALIGNMENT: u16 = 64;

/// The archive's top-level folder: the file stem, as torch names it, limited to safe chars.
pub(crate) fn archive_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        format!("archive{clean}")
    } else {
        clean
    }
}

/// Writes the whole archive for `tensors` (already validated, `dtypes[i]` one that
/// [`DType::write_le`] supports) into `file`.
pub(crate) fn write_archive(
    file: &mut File,
    archive: &str,
    tensors: &[NamedTensor],
    dtypes: &[DType],
) -> io::Result<()> {
    let entries: Vec<TensorEntry<'_>> = tensors
        .iter()
        .zip(dtypes)
        .enumerate()
        .map(|(i, (t, &dtype))| TensorEntry {
            name: &t.name,
            key: i.to_string(),
            shape: &t.shape,
            dtype,
        })
        .collect();
    let pickle = encode_state_dict(&entries);
    let mut zip = ZipWriter::new(file);
    let mut record = |name: &str, data: &[u8]| -> io::Result<()> {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(ALIGNMENT)
            .large_file(data.len() as u64 >= u32::MAX as u64);
        zip.start_file(format!("{archive}/{name}"), options)
            .map_err(io::Error::other)?;
        zip.write_all(data)
    };
    record("data.pkl", &pickle)?;
    record(".format_version", b"1")?;
    record(".storage_alignment", ALIGNMENT.to_string().as_bytes())?;
    record("byteorder", b"little")?;
    let mut hash = Fnv::default();
    for (entry, t) in entries.iter().zip(tensors) {
        let bytes: Vec<u8> = t
            .data
            .iter()
            .flat_map(|&v| entry.dtype.write_le(v).unwrap_or_default())
            .collect();
        hash.update(&bytes);
        record(&format!("data/{}", entry.key), &bytes)?;
    }
    record("version", b"3\n")?;
    // torch writes a 40-digit id; ours is derived from the content so output is reproducible.
    hash.update(&pickle);
    let (a, b) = (hash.0, hash.0.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15);
    let id = format!("{:020}{:020}", a % 10u64.pow(19), b % 10u64.pow(19));
    record(".data/serialization_id", id.as_bytes())?;
    zip.finish().map_err(io::Error::other)?;
    Ok(())
}

/// 64-bit FNV-1a, for the serialization id.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Reads a state dict from the bytes of a torch zip archive at `path`.
pub(crate) fn read_archive(
    path: &Path,
    bytes: Vec<u8>,
) -> Result<Vec<(NamedTensor, DType)>, CheckpointError> {
    let malformed = |message: String| CheckpointError::Malformed {
        path: path.to_path_buf(),
        message,
    };
    let zip_err = |source| CheckpointError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    // Records live under one top-level folder (`<name>/data.pkl`); find it via data.pkl.
    let prefix = zip
        .file_names()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .find(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        .map(str::to_owned)
        .ok_or_else(|| CheckpointError::MissingRecord {
            path: path.to_path_buf(),
            record: "<archive>/data.pkl".to_string(),
        })?;
    let mut read_record = |name: &str| -> Result<Option<Vec<u8>>, CheckpointError> {
        let full = format!("{prefix}{name}");
        let mut f = match zip.by_name(&full) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(zip_err(e)),
        };
        let mut buf = Vec::with_capacity(f.size().min(1 << 30) as usize);
        f.read_to_end(&mut buf)
            .map_err(|source| CheckpointError::Io {
                path: path.join(&full),
                action: "reading zip record",
                source,
            })?;
        Ok(Some(buf))
    };
    let big_endian = match read_record("byteorder")?.as_deref() {
        None | Some(b"little") => false,
        Some(b"big") => true,
        Some(other) => {
            return Err(malformed(format!(
                "unknown byteorder record {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let pickle = read_record("data.pkl")?.unwrap_or_default();
    let root = pickle_read::decode(&pickle).map_err(|e| malformed(format!("data.pkl: {e}")))?;
    let Value::Dict(items, _) = &*root else {
        return Err(malformed(format!(
            "data.pkl holds {}, not a dict of tensors (a state_dict)",
            root.kind()
        )));
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out: Vec<(NamedTensor, DType)> = Vec::with_capacity(items.len());
    for (key, value) in items {
        let Value::Str(name) = &**key else {
            return Err(malformed(format!(
                "state dict key is {}, not a str",
                key.kind()
            )));
        };
        let Value::Tensor(t) = &**value else {
            return Err(malformed(format!(
                "entry '{name}' is {}, not a tensor; expected a dict of tensors (a state_dict)",
                value.kind()
            )));
        };
        if out.iter().any(|(o, _)| &o.name == name) {
            return Err(malformed(format!("entry '{name}' appears twice")));
        }
        let data =
            tensor_values(t, &mut storages, &mut read_record, big_endian).map_err(|e| match e {
                Fail::Error(e) => e,
                Fail::Msg(m) => malformed(format!("tensor '{name}': {m}")),
            })?;
        let tensor = NamedTensor::new(name.clone(), t.shape.clone(), data);
        out.push((tensor, t.storage.dtype));
    }
    Ok(out)
}

/// Why a tensor could not be materialized.
enum Fail {
    Error(CheckpointError),
    Msg(String),
}

/// Loads (once) the storage record of `t` and gathers its values.
fn tensor_values(
    t: &TensorRef,
    storages: &mut HashMap<String, Vec<u8>>,
    read_record: &mut impl FnMut(&str) -> Result<Option<Vec<u8>>, CheckpointError>,
    big_endian: bool,
) -> Result<Vec<f32>, Fail> {
    let key = &t.storage.key;
    if !storages.contains_key(key) {
        let record = format!("data/{key}");
        let bytes = read_record(&record)
            .map_err(Fail::Error)?
            .ok_or_else(|| Fail::Msg(format!("storage record '{record}' is missing")))?;
        storages.insert(key.clone(), bytes);
    }
    let bytes = storages.get(key).map(Vec::as_slice).unwrap_or_default();
    strided::gather(t, bytes, big_endian).map_err(Fail::Msg)
}

#[cfg(test)]
mod tests {
    use super::archive_name;
    use std::path::Path;

    #[test]
    fn archive_name_is_the_safe_file_stem() {
        assert_eq!(archive_name(Path::new("/a/mnist_model.pt")), "mnist_model");
        assert_eq!(archive_name(Path::new("x y.pth")), "x_y");
        assert_eq!(archive_name(Path::new("/a/.pt")), "archive.pt");
        assert_eq!(archive_name(Path::new("/")), "archive");
    }
}
