//! A small pickle virtual machine (protocols 2-4) that decodes `torch.save`'s `data.pkl` into
//! plain values without executing anything: globals stay names, and the few callables a
//! state dict uses are interpreted by `pickle_torch`.
//! Every read is bounds-checked; malformed input yields an error, never a panic.

use std::collections::HashMap;
use std::rc::Rc;

use crate::pickle_torch::{persistent_load, reduce};
pub(crate) use crate::pickle_torch::{StorageRef, TensorRef};

/// A decoded pickle value. Containers hold `Rc`s so memo lookups are cheap.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for `i64` (kept only as its byte length).
    BigInt(usize),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Items and nesting depth (kept to refuse pathological nesting).
    Tuple(Vec<Rc<Value>>, usize),
    /// Items and nesting depth.
    List(Vec<Rc<Value>>, usize),
    /// Entries in insertion order (duplicates kept) and nesting depth.
    Dict(Vec<(Rc<Value>, Rc<Value>)>, usize),
    /// A `module.name` reference, never resolved.
    Global(String, String),
    /// A call or object construction we do not interpret.
    Object(String),
    /// A persistent id that is not a storage we understand.
    Persistent,
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    /// Short description for error messages.
    pub(crate) fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(n) => format!("{n}-byte int"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("str {s:?}"),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(v, _) => format!("tuple of {}", v.len()),
            Value::List(v, _) => format!("list of {}", v.len()),
            Value::Dict(v, _) => format!("dict of {}", v.len()),
            Value::Global(m, n) => format!("global {m}.{n}"),
            Value::Object(desc) => format!("object {desc}"),
            Value::Persistent => "unknown persistent id".into(),
            Value::Storage(s) => format!("storage '{}'", s.key),
            Value::Tensor(_) => "tensor".into(),
        }
    }
}

/// Deepest container nesting accepted; deeper input could overflow the stack on drop.
const MAX_DEPTH: usize = 256;

impl Value {
    /// Nesting depth: 0 for scalars, 1 + deepest item for containers.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
}

/// Depth of a container holding `items`, or an error when it exceeds [`MAX_DEPTH`].
fn depth_of<'v>(items: impl IntoIterator<Item = &'v Rc<Value>>) -> Result<usize, String> {
    let d = 1 + items.into_iter().map(|v| v.depth()).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(format!("containers nested deeper than {MAX_DEPTH}"));
    }
    Ok(d)
}

/// Bounds-checked cursor over the pickle bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!(
                "truncated: needs {n} more bytes at byte {} of {}",
                self.pos,
                self.bytes.len()
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn len_u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.arr()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.arr()?)).map_err(|e| e.to_string())
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: a text line has no newline")?;
        let s = String::from_utf8(rest[..nl].to_vec()).map_err(|_| "a text line is not UTF-8")?;
        self.pos += nl + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
}

/// Machine state: the stack, the stack of saved stacks for MARK, and the memo.
struct Vm {
    stack: Vec<Rc<Value>>,
    marks: Vec<Vec<Rc<Value>>>,
    memo: HashMap<u64, Rc<Value>>,
}

impl Vm {
    fn pop(&mut self) -> Result<Rc<Value>, String> {
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Rc<Value>>, String> {
        let saved = self.marks.pop().ok_or("no MARK on the stack")?;
        Ok(std::mem::replace(&mut self.stack, saved))
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        let top = self.stack.last_mut().ok_or("stack underflow")?;
        Ok(Rc::make_mut(top))
    }
    fn tuple(&mut self, n: usize) -> Result<(), String> {
        let at = self.stack.len().checked_sub(n).ok_or("stack underflow")?;
        let items = self.stack.split_off(at);
        let d = depth_of(&items)?;
        self.stack.push(Rc::new(Value::Tuple(items, d)));
        Ok(())
    }
    fn get(&mut self, idx: u64) -> Result<(), String> {
        let v = self
            .memo
            .get(&idx)
            .ok_or(format!("memo key {idx} not set"))?;
        self.stack.push(Rc::clone(v));
        Ok(())
    }
    fn put(&mut self, idx: u64) -> Result<(), String> {
        let v = self.stack.last().ok_or("stack underflow")?;
        self.memo.insert(idx, Rc::clone(v));
        Ok(())
    }
    fn set_items(&mut self, items: Vec<Rc<Value>>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err(format!("SETITEMS with an odd item count {}", items.len()));
        }
        let new_depth = depth_of(&items)?;
        match self.top()? {
            Value::Dict(d, depth) => {
                *depth = (*depth).max(new_depth);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(format!("SETITEM on {}", other.kind())),
        }
    }
    fn append(&mut self, items: Vec<Rc<Value>>) -> Result<(), String> {
        let new_depth = depth_of(&items)?;
        match self.top()? {
            Value::List(l, depth) => {
                *depth = (*depth).max(new_depth);
                l.extend(items);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(format!("APPEND on {}", other.kind())),
        }
    }
}

/// Decodes a pickle, returning the value STOP leaves. Errors name the byte offset.
pub(crate) fn decode(bytes: &[u8]) -> Result<Rc<Value>, String> {
    let mut r = Reader { bytes, pos: 0 };
    let mut vm = Vm {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = r.pos;
        let opcode = r
            .u8()
            .map_err(|e| format!("pickle ended without STOP ({e})"))?;
        match step(&mut r, &mut vm, opcode) {
            Ok(true) => return vm.pop().map_err(|e| format!("pickle byte {at}: STOP: {e}")),
            Ok(false) => {}
            Err(e) => return Err(format!("pickle byte {at}, opcode 0x{opcode:02x}: {e}")),
        }
    }
}

/// Runs one opcode; returns `true` on STOP.
fn step(r: &mut Reader<'_>, vm: &mut Vm, opcode: u8) -> Result<bool, String> {
    let push = |vm: &mut Vm, v: Value| vm.stack.push(Rc::new(v));
    match opcode {
        0x80 => {
            let proto = r.u8()?;
            if proto > 5 {
                return Err(format!("unsupported pickle protocol {proto}"));
            }
        }
        0x95 => {
            r.arr::<8>()?; // FRAME: length hint only
        }
        b'.' => return Ok(true),
        b'(' => vm.marks.push(std::mem::take(&mut vm.stack)),
        b'0' => {
            vm.pop()?;
        }
        b'1' => {
            vm.pop_mark()?;
        }
        b'2' => {
            let top = vm.stack.last().ok_or("stack underflow")?;
            vm.stack.push(Rc::clone(top));
        }
        b'N' => push(vm, Value::None),
        0x88 => push(vm, Value::Bool(true)),
        0x89 => push(vm, Value::Bool(false)),
        b'K' => push(vm, Value::Int(r.u8()? as i64)),
        b'M' => push(vm, Value::Int(u16::from_le_bytes(r.arr()?) as i64)),
        b'J' => push(vm, Value::Int(i32::from_le_bytes(r.arr()?) as i64)),
        0x8a | 0x8b => {
            let n = if opcode == 0x8a {
                r.u8()? as usize
            } else {
                r.len_u32()?
            };
            let b = r.take(n)?;
            push(vm, decode_long(b));
        }
        b'G' => push(vm, Value::Float(f64::from_be_bytes(r.arr()?))),
        b'X' => {
            let n = r.len_u32()?;
            push(vm, Value::Str(r.utf8(n)?));
        }
        0x8c => {
            let n = r.u8()? as usize;
            push(vm, Value::Str(r.utf8(n)?));
        }
        0x8d => {
            let n = r.len_u64()?;
            push(vm, Value::Str(r.utf8(n)?));
        }
        b'U' | b'C' => {
            let n = r.u8()? as usize;
            push(vm, Value::Bytes(r.take(n)?.to_vec()));
        }
        b'T' | b'B' => {
            let n = r.len_u32()?;
            push(vm, Value::Bytes(r.take(n)?.to_vec()));
        }
        0x8e | 0x96 => {
            let n = r.len_u64()?;
            push(vm, Value::Bytes(r.take(n)?.to_vec()));
        }
        b')' => push(vm, Value::Tuple(Vec::new(), 1)),
        0x85 => vm.tuple(1)?,
        0x86 => vm.tuple(2)?,
        0x87 => vm.tuple(3)?,
        b't' => {
            let items = vm.pop_mark()?;
            let d = depth_of(&items)?;
            push(vm, Value::Tuple(items, d));
        }
        b']' | 0x8f => push(vm, Value::List(Vec::new(), 1)),
        b'l' | 0x91 => {
            let items = vm.pop_mark()?;
            let d = depth_of(&items)?;
            push(vm, Value::List(items, d));
        }
        b'}' => push(vm, Value::Dict(Vec::new(), 1)),
        b'd' => {
            let items = vm.pop_mark()?;
            push(vm, Value::Dict(Vec::new(), 1));
            vm.set_items(items)?;
        }
        b'a' => {
            let v = vm.pop()?;
            vm.append(vec![v])?;
        }
        b'e' | 0x90 => {
            let items = vm.pop_mark()?;
            vm.append(items)?;
        }
        b's' => {
            let v = vm.pop()?;
            let k = vm.pop()?;
            vm.set_items(vec![k, v])?;
        }
        b'u' => {
            let items = vm.pop_mark()?;
            vm.set_items(items)?;
        }
        b'h' => vm.get(r.u8()? as u64)?,
        b'j' => vm.get(r.len_u32()? as u64)?,
        b'g' => {
            let line = r.line()?;
            vm.get(
                line.trim()
                    .parse()
                    .map_err(|_| format!("bad GET {line:?}"))?,
            )?;
        }
        b'q' => vm.put(r.u8()? as u64)?,
        b'r' => vm.put(r.len_u32()? as u64)?,
        b'p' => {
            let line = r.line()?;
            vm.put(
                line.trim()
                    .parse()
                    .map_err(|_| format!("bad PUT {line:?}"))?,
            )?;
        }
        0x94 => {
            let idx = vm.memo.len() as u64;
            vm.put(idx)?;
        }
        b'c' => {
            let module = r.line()?;
            let name = r.line()?;
            push(vm, Value::Global(module, name));
        }
        0x93 => {
            let name = vm.pop()?;
            let module = vm.pop()?;
            match (&*module, &*name) {
                (Value::Str(m), Value::Str(n)) => push(vm, Value::Global(m.clone(), n.clone())),
                _ => return Err("STACK_GLOBAL needs two strings".into()),
            }
        }
        b'Q' => {
            let pid = vm.pop()?;
            push(vm, persistent_load(&pid)?);
        }
        b'R' => {
            let args = vm.pop()?;
            let func = vm.pop()?;
            push(vm, reduce(&func, &args)?);
        }
        0x81 => {
            vm.pop()?;
            let cls = vm.pop()?;
            push(vm, Value::Object(cls.kind()));
        }
        0x92 => {
            vm.pop()?;
            vm.pop()?;
            let cls = vm.pop()?;
            push(vm, Value::Object(cls.kind()));
        }
        b'b' => {
            // BUILD sets state (e.g. the state dict's `_metadata`); nothing we need.
            vm.pop()?;
            vm.stack.last().ok_or("BUILD on an empty stack")?;
        }
        other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
    }
    Ok(false)
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn decode_long(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(b.len());
    }
    let fill = if b.last().is_some_and(|&x| x >= 0x80) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 8];
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle_write::{encode_state_dict, TensorEntry};
    use crate::DType;

    #[test]
    fn decodes_what_the_writer_encodes() {
        let entries = [
            TensorEntry {
                name: "a",
                key: "0".into(),
                shape: &[2, 3],
                dtype: DType::F32,
            },
            TensorEntry {
                name: "b",
                key: "1".into(),
                shape: &[],
                dtype: DType::F32,
            },
        ];
        let v = decode(&encode_state_dict(&entries)).unwrap();
        let Value::Dict(items, _) = &*v else {
            panic!("{}", v.kind())
        };
        assert_eq!(items.len(), 2);
        let Value::Tensor(t) = &*items[0].1 else {
            panic!()
        };
        assert_eq!(
            (t.shape.clone(), t.stride.clone(), t.offset),
            (vec![2, 3], vec![3, 1], 0)
        );
        assert_eq!(
            (t.storage.key.as_str(), t.storage.numel, t.storage.dtype),
            ("0", 6, DType::F32)
        );
        let Value::Tensor(s) = &*items[1].1 else {
            panic!()
        };
        assert!(s.shape.is_empty() && s.storage.numel == 1);
    }

    #[test]
    fn protocol_4_opcodes() {
        // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, EMPTY_DICT, BINGET, SETITEM.
        let mut p = vec![0x80, 4, 0x95];
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(b"\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94");
        p.extend_from_slice(b"\x8c\x01kh\x01s.");
        let v = decode(&p).unwrap();
        let Value::Dict(items, _) = &*v else {
            panic!("{}", v.kind())
        };
        assert!(
            matches!((&*items[0].0, &*items[0].1), (Value::Str(k), Value::Str(v)) if k == "k" && v == "OrderedDict")
        );
    }

    #[test]
    fn long_ints_are_twos_complement() {
        assert!(matches!(decode_long(&[0xff]), Value::Int(-1)));
        assert!(matches!(decode_long(&[0x00, 0x80]), Value::Int(-32768)));
        assert!(matches!(
            decode_long(&[0x00, 0x00, 0x00, 0x80, 0x00]),
            Value::Int(2147483648)
        ));
        assert!(matches!(decode_long(&[]), Value::Int(0)));
        assert!(matches!(decode_long(&[1; 9]), Value::BigInt(9)));
    }
}
