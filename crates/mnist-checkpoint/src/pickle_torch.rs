//! The torch objects inside a `data.pkl`: storage persistent ids and the callables a state
//! dict uses (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`). Nothing is executed; other calls become opaque objects.

use std::rc::Rc;

use crate::pickle_read::Value;
use crate::DType;

/// A storage persistent id: `('storage', torch.<Type>Storage, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// Record name under `data/`.
    pub key: String,
    /// Element type from the storage class.
    pub dtype: DType,
    /// Number of elements in the storage.
    pub numel: usize,
}

/// A tensor view onto a storage (the arguments of `_rebuild_tensor_v2`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    /// The storage viewed.
    pub storage: StorageRef,
    /// Offset of element 0, in elements.
    pub offset: usize,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// Interprets a persistent id; only torch storages are understood.
pub(crate) fn persistent_load(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(items, _) = pid else {
        return Ok(Value::Persistent);
    };
    match items.first().map(|v| &**v) {
        Some(Value::Str(s)) if s == "storage" => {}
        _ => return Ok(Value::Persistent),
    }
    if items.len() != 5 {
        return Err(format!(
            "storage persistent id has {} fields, expected 5",
            items.len()
        ));
    }
    let dtype = match &*items[1] {
        Value::Global(m, n) if m == "torch" => DType::from_torch_storage(n)
            .ok_or_else(|| format!("unsupported storage type torch.{n}"))?,
        other => {
            return Err(format!(
                "storage type is {}, not a torch.*Storage",
                other.kind()
            ))
        }
    };
    let key = match &*items[2] {
        Value::Str(s) => s.clone(),
        other => return Err(format!("storage key is {}, not a str", other.kind())),
    };
    let numel = as_usize(&items[4], "storage size")?;
    Ok(Value::Storage(StorageRef { key, dtype, numel }))
}

/// Interprets `func(*args)` for the callables a state dict uses.
pub(crate) fn reduce(func: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(module, name) = func else {
        return Ok(Value::Object(format!("call of {}", func.kind())));
    };
    let args: &[Rc<Value>] = match args {
        Value::Tuple(a, _) => a,
        _ => return Ok(Value::Object(format!("{module}.{name}(...)"))),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Vec::new(), 1)),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            rebuild_tensor(args)
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match args.first().map(|v| &**v) {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err(format!("{module}.{name} without a tensor argument")),
        },
        _ => Ok(Value::Object(format!("{module}.{name}(...)"))),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(args: &[Rc<Value>]) -> Result<Value, String> {
    if args.len() < 4 {
        return Err(format!(
            "_rebuild_tensor_v2 got {} arguments, expected at least 4",
            args.len()
        ));
    }
    let storage = match &*args[0] {
        Value::Storage(s) => s.clone(),
        other => return Err(format!("tensor storage is {}", other.kind())),
    };
    let offset = as_usize(&args[1], "storage offset")?;
    let shape = as_usize_tuple(&args[2], "size")?;
    let stride = as_usize_tuple(&args[3], "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "tensor size {shape:?} and stride {stride:?} have different lengths"
        ));
    }
    Ok(Value::Tensor(TensorRef {
        storage,
        offset,
        shape,
        stride,
    }))
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} {i} is negative")),
        other => Err(format!("{what} is {}, not an int", other.kind())),
    }
}

fn as_usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items, _) => items.iter().map(|i| as_usize(i, what)).collect(),
        other => Err(format!("tensor {what} is {}, not a tuple", other.kind())),
    }
}
