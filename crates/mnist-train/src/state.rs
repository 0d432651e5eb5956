//! Moving weights between a [`Model`] and model files: `mnist_model.pt` (PyTorch state_dict),
//! PyTorch-saved state_dicts and `.safetensors`. Mismatches name the key and both shapes.

use crate::TrainError;
use mnist_checkpoint::NamedTensor;
use mnist_models::{Model, ModelKind};
use std::path::Path;

/// The model's weights as named tensors, in `state_dict` order.
pub fn named_tensors(model: &Model) -> Vec<NamedTensor> {
    model
        .parameters()
        .iter()
        .zip(model.values())
        .map(|(p, data)| NamedTensor {
            name: p.name.to_string(),
            shape: p.tensor.size().iter().map(|&d| d as usize).collect(),
            data,
        })
        .collect()
}

/// Check `tensors` against model `kind` and return their values in `state_dict` order.
pub fn match_state_dict(
    file: &Path,
    kind: ModelKind,
    tensors: Vec<NamedTensor>,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let err = |detail: String| TrainError::StateDict {
        file: file.to_path_buf(),
        detail,
    };
    let mut by_name: std::collections::HashMap<String, NamedTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    // DDP-wrapped PyTorch models save keys with a "module." prefix; accept them.
    if by_name.keys().all(|k| k.starts_with("module.")) && !by_name.is_empty() {
        by_name = by_name
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect();
    }
    let expected = mnist_models::parameter_shapes(kind);
    let mut values = Vec::new();
    for (name, shape) in &expected {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let Some(t) = by_name.remove(*name) else {
            return Err(err(format!(
                "missing key {name} (shape {shape:?}) for model {}; {}",
                kind.name(),
                hint(&by_name, kind)
            )));
        };
        if t.shape != shape {
            return Err(err(format!(
                "key {name} has shape {:?} in the file but model {} expects {shape:?}; {}",
                t.shape,
                kind.name(),
                hint(&by_name, kind)
            )));
        }
        values.push(t.data);
    }
    if let Some(extra) = by_name.keys().min() {
        return Err(err(format!(
            "unexpected key {extra} for model {}; {}",
            kind.name(),
            hint(&by_name, kind)
        )));
    }
    Ok(values)
}

fn hint(rest: &std::collections::HashMap<String, NamedTensor>, kind: ModelKind) -> String {
    let other = match kind {
        ModelKind::LeNet => ModelKind::Mlp,
        ModelKind::Mlp => ModelKind::LeNet,
    };
    let looks_other = rest.contains_key("conv1.weight") == (other == ModelKind::LeNet)
        && mnist_models::parameter_shapes(other)
            .iter()
            .any(|(n, _)| rest.contains_key(*n));
    if looks_other {
        format!(
            "the file looks like a {} model: try --model {}",
            other.name(),
            other.name()
        )
    } else {
        "is it a checkpoint of this project's LeNet or MLP?".to_string()
    }
}

/// Load the weights in `file` into `model`.
pub fn load_into(model: &mut Model, file: &Path) -> Result<(), TrainError> {
    let tensors = mnist_checkpoint::load_state_dict(file)?;
    let values = match_state_dict(file, model.kind(), tensors)?;
    model
        .load_values(&values)
        .map_err(|e| TrainError::StateDict {
            file: file.to_path_buf(),
            detail: e.to_string(),
        })
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
