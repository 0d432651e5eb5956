//! Moving weights between a [`Model`] and model files: `mnist_model.pt` (PyTorch state_dict),
//! PyTorch-saved state_dicts and `.safetensors`. Mismatches name the key and both shapes.
//! A state_dict holds parameters and buffers (Net's BatchNorm running statistics and int64
//! `num_batches_tracked`) in PyTorch's order ([`mnist_models::state_layout`]).

use crate::TrainError;
use mnist_checkpoint::{DType, NamedTensor};
use mnist_models::{EntryKind, Model, ModelKind};
use std::collections::HashMap;
use std::path::Path;

/// The model's `state_dict` (parameters and buffers) as named tensors, in PyTorch's order.
pub fn named_tensors(model: &Model) -> Vec<NamedTensor> {
    let mut params = model.values().into_iter();
    let mut buffers = model.buffer_values().into_iter();
    mnist_models::state_layout(model.kind())
        .into_iter()
        .map(|e| NamedTensor {
            name: e.name.to_string(),
            shape: e.shape.iter().map(|&d| d as usize).collect(),
            data: match e.kind {
                EntryKind::Parameter => params.next(),
                _ => buffers.next(),
            }
            .expect("the layout lists every parameter and buffer once"),
        })
        .collect()
}

/// The dtype PyTorch stores each entry of model `kind`'s `state_dict` in (float32, int64 for
/// `num_batches_tracked`), in [`named_tensors`]' order.
pub fn state_dtypes(kind: ModelKind) -> Vec<DType> {
    mnist_models::state_layout(kind)
        .iter()
        .map(|e| match e.kind {
            EntryKind::Counter => DType::I64,
            _ => DType::F32,
        })
        .collect()
}

/// Save `model`'s `state_dict` as PyTorch does (`torch.save` zip, buffers included).
pub fn save(model: &Model, file: &Path) -> Result<(), TrainError> {
    mnist_checkpoint::save_state_dict_with_dtypes(
        file,
        &named_tensors(model),
        &state_dtypes(model.kind()),
    )?;
    Ok(())
}

/// Check `tensors` against model `kind` and return their values in `state_dict` order
/// (parameters and buffers, as [`mnist_models::state_layout`] lists them).
pub fn match_state_dict(
    file: &Path,
    kind: ModelKind,
    tensors: Vec<NamedTensor>,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let err = |detail: String| TrainError::StateDict {
        file: file.to_path_buf(),
        detail,
    };
    let mut by_name: HashMap<String, NamedTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    // DDP-wrapped PyTorch models save keys with a "module." prefix; accept them.
    if by_name.keys().all(|k| k.starts_with("module.")) && !by_name.is_empty() {
        by_name = by_name
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect();
    }
    let shapes: HashMap<String, Vec<usize>> = by_name
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let hint = |kind| hint(&shapes, kind);
    let mut values = Vec::new();
    for e in mnist_models::state_layout(kind) {
        let name = e.name;
        let shape: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        let Some(t) = by_name.remove(name) else {
            return Err(err(format!(
                "missing key {name} (shape {shape:?}) for model {}; {}",
                kind.name(),
                hint(kind)
            )));
        };
        if t.shape != shape {
            return Err(err(format!(
                "key {name} has shape {:?} in the file but model {} expects {shape:?}; {}",
                t.shape,
                kind.name(),
                hint(kind)
            )));
        }
        values.push(t.data);
    }
    if let Some(extra) = by_name.keys().min() {
        return Err(err(format!(
            "unexpected key {extra} for model {}; {}",
            kind.name(),
            hint(kind)
        )));
    }
    Ok(values)
}

/// Which other model the file's keys and shapes (`shapes`, prefix removed) fit, if any.
fn hint(shapes: &HashMap<String, Vec<usize>>, kind: ModelKind) -> String {
    let fits = |other: ModelKind| {
        mnist_models::parameter_shapes(other).iter().all(|(n, s)| {
            shapes
                .get(*n)
                .is_some_and(|f| f.iter().map(|&d| d as i64).eq(s.iter().copied()))
        })
    };
    match ModelKind::ALL.iter().find(|&&o| o != kind && fits(o)) {
        Some(other) => format!(
            "the file looks like a {} model: try --model {}",
            other.name(),
            other.name()
        ),
        None => "is it a checkpoint of this project's LeNet, MLP or Net?".to_string(),
    }
}

/// Load the weights (and buffers) in `file` into `model`.
pub fn load_into(model: &mut Model, file: &Path) -> Result<(), TrainError> {
    let tensors = mnist_checkpoint::load_state_dict(file)?;
    let values = match_state_dict(file, model.kind(), tensors)?;
    let (mut params, mut buffers) = (Vec::new(), Vec::new());
    for (e, v) in mnist_models::state_layout(model.kind()).iter().zip(values) {
        match e.kind {
            EntryKind::Parameter => params.push(v),
            _ => buffers.push(v),
        }
    }
    let bad = |e: mnist_models::ModelError| TrainError::StateDict {
        file: file.to_path_buf(),
        detail: e.to_string(),
    };
    model.load_values(&params).map_err(bad)?;
    model.load_buffer_values(&buffers).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn wrong_model_names_the_key_and_suggests_the_other() {
        let lenet = Model::new(ModelKind::LeNet, Device::Cpu);
        let e = match_state_dict(Path::new("m.pt"), ModelKind::Mlp, named_tensors(&lenet))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.pt")
                && e.contains("fc1.weight")
                && e.contains("[500, 784]")
                && e.contains("--model LeNet"),
            "{e}"
        );
        let mlp = Model::new(ModelKind::Mlp, Device::Cpu);
        let e = match_state_dict(Path::new("m.pt"), ModelKind::LeNet, named_tensors(&mlp))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing key conv1.weight") && e.contains("--model MLP"),
            "{e}"
        );
    }

    #[test]
    fn net_state_dict_holds_buffers_in_pytorch_order() {
        let mut m = Model::new(ModelKind::Net, Device::Cpu);
        let names: Vec<_> = named_tensors(&m).iter().map(|t| t.name.clone()).collect();
        assert_eq!(
            names[..8],
            [
                "conv1.weight",
                "conv1.bias",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var",
                "bn1.num_batches_tracked",
                "conv2.weight"
            ]
        );
        assert_eq!(names.len(), 18);
        let dtypes = state_dtypes(ModelKind::Net);
        assert_eq!(dtypes[6], DType::I64);
        assert_eq!(dtypes.iter().filter(|&&d| d == DType::I64).count(), 2);
        // Buffers survive a save and a load.
        let mut t = named_tensors(&m);
        t[5].data[3] = 2.5; // bn1.running_var
        t[6].data[0] = 17.0; // bn1.num_batches_tracked
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("net.pt");
        mnist_checkpoint::save_state_dict_with_dtypes(&file, &t, &dtypes).unwrap();
        load_into(&mut m, &file).unwrap();
        assert_eq!(m.buffer_values()[1][3], 2.5);
        assert_eq!(m.buffers()[2].tensor.int64_value(&[]), 17);
        save(&m, &file).unwrap();
        assert_eq!(mnist_checkpoint::load_state_dict(&file).unwrap(), t);
        // A Net file for LeNet, and a LeNet file for Net, suggest the right model.
        let e = match_state_dict(&file, ModelKind::LeNet, t).unwrap_err();
        assert!(e.to_string().contains("--model Net"), "{e}");
        let lenet = named_tensors(&Model::new(ModelKind::LeNet, Device::Cpu));
        let e = match_state_dict(&file, ModelKind::Net, lenet).unwrap_err();
        assert!(e.to_string().contains("--model LeNet"), "{e}");
    }

    #[test]
    fn matching_dict_round_trips_and_module_prefix_is_accepted() {
        let m = Model::new(ModelKind::LeNet, Device::Cpu);
        let mut t = named_tensors(&m);
        for x in &mut t {
            x.name = format!("module.{}", x.name);
        }
        let v = match_state_dict(Path::new("m.pt"), ModelKind::LeNet, t).unwrap();
        assert_eq!(v, m.values());
    }
}
