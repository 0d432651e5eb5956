//! Element types a checkpoint may store, and their conversion from raw bytes to `f32`.

use std::fmt;

/// Element type of a stored tensor. All are converted to `f32` on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float (`torch.float32`, `FloatStorage`).
    F32,
    /// 64-bit IEEE float (`torch.float64`, `DoubleStorage`).
    F64,
    /// 16-bit IEEE float (`torch.float16`, `HalfStorage`).
    F16,
    /// bfloat16 (`torch.bfloat16`, `BFloat16Storage`).
    BF16,
    /// 64-bit signed integer (`torch.int64`, `LongStorage`).
    I64,
    /// 32-bit signed integer (`torch.int32`, `IntStorage`).
    I32,
    /// 16-bit signed integer (`torch.int16`, `ShortStorage`).
    I16,
    /// 8-bit signed integer (`torch.int8`, `CharStorage`).
    I8,
    /// 8-bit unsigned integer (`torch.uint8`, `ByteStorage`).
    U8,
    /// Boolean stored as one byte (`torch.bool`, `BoolStorage`).
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The dtype of a PyTorch legacy storage class name such as `FloatStorage`.
    pub fn from_torch_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// PyTorch's legacy storage class name for this dtype (inverse of
    /// [`DType::from_torch_storage`]).
    pub fn torch_storage(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    /// `v` as this dtype's little-endian bytes, for the dtypes checkpoints are written in
    /// (float32, float64, int64, int32; integers rounded); None for the others.
    pub(crate) fn write_le(self, v: f32) -> Option<Vec<u8>> {
        Some(match self {
            DType::F32 => v.to_le_bytes().to_vec(),
            DType::F64 => f64::from(v).to_le_bytes().to_vec(),
            DType::I64 => (v.round() as i64).to_le_bytes().to_vec(),
            DType::I32 => (v.round() as i32).to_le_bytes().to_vec(),
            _ => return None,
        })
    }

    /// Decodes element `index` of `bytes` (little-endian unless `big_endian`) as `f32`.
    /// The caller guarantees `(index + 1) * self.size() <= bytes.len()`.
    pub(crate) fn read_f32(self, bytes: &[u8], index: usize, big_endian: bool) -> f32 {
        let n = self.size();
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(&bytes[index * n..(index + 1) * n]);
        if big_endian {
            buf[..n].reverse();
        }
        let b2 = [buf[0], buf[1]];
        let b4 = [buf[0], buf[1], buf[2], buf[3]];
        match self {
            DType::F32 => f32::from_le_bytes(b4),
            DType::F64 => f64::from_le_bytes(buf) as f32,
            DType::F16 => half::f16::from_bits(u16::from_le_bytes(b2)).to_f32(),
            DType::BF16 => half::bf16::from_bits(u16::from_le_bytes(b2)).to_f32(),
            DType::I64 => i64::from_le_bytes(buf) as f32,
            DType::I32 => i32::from_le_bytes(b4) as f32,
            DType::I16 => i16::from_le_bytes(b2) as f32,
            DType::I8 => buf[0] as i8 as f32,
            DType::U8 => buf[0] as f32,
            DType::Bool => {
                if buf[0] != 0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}
