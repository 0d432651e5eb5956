//! Pickle (protocol 2) encoder for a `torch.save` `data.pkl`: an `OrderedDict` of tensors
//! (float32 or another [`DType`]) whose storages are persistent ids, using only opcodes that PyTorch's
//! `weights_only` unpickler accepts.

/// Opcodes we emit (names as in Python's `pickletools`).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const SETITEMS: u8 = b'u';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const STOP: u8 = b'.';
}

use crate::DType;

/// One tensor as `data.pkl` describes it: contiguous storage `key` of `shape` and `dtype`.
pub(crate) struct TensorEntry<'a> {
    /// State-dict key.
    pub name: &'a str,
    /// Storage record name under `data/`.
    pub key: String,
    /// Tensor dimensions.
    pub shape: &'a [usize],
    /// Element type of the storage.
    pub dtype: DType,
}

/// Byte sink with one method per pickle construct.
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(op::GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        self.op(op::BINUNICODE);
        // A state-dict key longer than 4 GiB cannot occur; saturate rather than panic.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Non-negative integer in the shortest encoding Python's pickler would choose.
    fn int(&mut self, v: u64) {
        if v < 0x100 {
            self.op(op::BININT1);
            self.out.push(v as u8);
        } else if v < 0x1_0000 {
            self.op(op::BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.op(op::BININT);
            self.out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, minimal length, sign bit clear.
            let mut bytes: Vec<u8> = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            if bytes.last().is_some_and(|&b| b >= 0x80) {
                bytes.push(0);
            }
            self.op(op::LONG1);
            self.out.push(bytes.len() as u8);
            self.out.extend_from_slice(&bytes);
        }
    }

    fn int_tuple(&mut self, values: &[usize]) {
        match values.len() {
            0 => self.op(op::EMPTY_TUPLE),
            n => {
                if n > 3 {
                    self.op(op::MARK);
                }
                for &v in values {
                    self.int(v as u64);
                }
                self.op(match n {
                    1 => op::TUPLE1,
                    2 => op::TUPLE2,
                    3 => op::TUPLE3,
                    _ => op::TUPLE,
                });
            }
        }
    }

    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`.
    fn tensor(&mut self, key: &str, shape: &[usize], dtype: DType) {
        let numel: usize = shape.iter().product();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(op::MARK);
        // Persistent id ('storage', torch.FloatStorage, key, 'cpu', numel).
        self.op(op::MARK);
        self.str("storage");
        self.global("torch", dtype.torch_storage());
        self.str(key);
        self.str("cpu");
        self.int(numel as u64);
        self.op(op::TUPLE);
        self.op(op::BINPERSID);
        self.int(0); // storage offset
        self.int_tuple(shape);
        self.int_tuple(&contiguous_strides(shape));
        self.op(op::NEWFALSE); // requires_grad
        self.empty_ordered_dict(); // backward hooks
        self.op(op::TUPLE);
        self.op(op::REDUCE);
    }
}

/// Row-major strides (in elements) of a contiguous tensor of `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1]);
    }
    strides
}

/// Encodes `data.pkl` for `entries`, in order.
pub(crate) fn encode_state_dict(entries: &[TensorEntry<'_>]) -> Vec<u8> {
    let mut p = Pickler { out: Vec::new() };
    p.op(op::PROTO);
    p.out.push(2);
    p.empty_ordered_dict();
    p.op(op::MARK);
    for e in entries {
        p.str(e.name);
        p.tensor(&e.key, e.shape, e.dtype);
    }
    p.op(op::SETITEMS);
    p.op(op::STOP);
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[6, 1, 5, 5]), vec![25, 25, 5, 1]);
        assert_eq!(contiguous_strides(&[10]), vec![1]);
        assert!(contiguous_strides(&[]).is_empty());
    }

    #[test]
    fn ints_use_shortest_encoding() {
        let enc = |v| {
            let mut p = Pickler { out: Vec::new() };
            p.int(v);
            p.out
        };
        assert_eq!(enc(5), vec![op::BININT1, 5]);
        assert_eq!(enc(300), vec![op::BININT2, 0x2c, 0x01]);
        assert_eq!(enc(70_000), vec![op::BININT, 0x70, 0x11, 0x01, 0x00]);
        // 2^31 needs a fifth byte so the sign bit stays clear.
        assert_eq!(enc(1 << 31), vec![op::LONG1, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(enc(1 << 32), vec![op::LONG1, 5, 0, 0, 0, 0, 1]);
    }
}
