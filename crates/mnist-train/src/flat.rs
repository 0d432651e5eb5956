//! All parameters and all gradients in two flat tensors, like DDP's buckets with
//! `gradient_as_bucket_view=True`.
//!
//! Each parameter's data is re-pointed (`set_data`) at a slice of one flat parameter tensor,
//! and each parameter's gradient at a slice of one flat gradient tensor. Autograd then
//! accumulates gradients in place into the flat buffer, so reducing gradients, the optimizer
//! step and zeroing are each a few kernels on contiguous memory, with no packing copies.

use mnist_models::Model;
use tch::{Kind, Tensor};

/// Where one parameter lives in the flat buffers.
#[derive(Clone, Debug)]
pub struct Slot {
    /// PyTorch parameter name.
    pub name: &'static str,
    /// Its shape.
    pub shape: Vec<i64>,
    /// First element in the flat buffers.
    pub offset: usize,
    /// Number of elements.
    pub numel: usize,
}

/// Flat parameter and gradient storage for a model.
#[derive(Debug)]
pub struct FlatParams {
    /// Every parameter, concatenated in `state_dict` order.
    pub params: Tensor,
    /// Every gradient, same layout.
    pub grads: Tensor,
    slots: Vec<Slot>,
}

impl FlatParams {
    /// Move `model`'s parameters and gradients into flat buffers (values are kept).
    pub fn new(model: &mut Model) -> FlatParams {
        let mut slots = Vec::new();
        let mut offset = 0usize;
        for p in model.parameters() {
            let numel = p.tensor.numel();
            slots.push(Slot {
                name: p.name,
                shape: p.tensor.size(),
                offset,
                numel,
            });
            offset += numel;
        }
        let params = tch::no_grad(|| {
            Tensor::cat(
                &model
                    .parameters()
                    .iter()
                    .map(|p| p.tensor.detach().view([-1]))
                    .collect::<Vec<_>>(),
                0,
            )
        });
        let grads = point_at(model, &params, &slots);
        FlatParams {
            params,
            grads,
            slots,
        }
    }

    /// Point `replica` (a model of the same architecture) at these parameters: its parameter
    /// data become views of [`FlatParams::params`], so it always computes with the current
    /// values, and its gradients land in a flat buffer of its own, which is returned (zeroed).
    pub fn attach(&self, replica: &mut Model) -> Tensor {
        assert_eq!(
            replica.parameters().len(),
            self.slots.len(),
            "a replica has the same parameters"
        );
        point_at(replica, &self.params, &self.slots)
    }

    /// Where each parameter lives.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Set every gradient to zero (one kernel).
    pub fn zero_grads(&mut self) {
        let _ = self.grads.zero_();
    }

    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.slots.iter().map(|s| s.numel).sum()
    }

    /// A copy of the flat parameters on the host.
    pub fn params_to_vec(&self) -> Vec<f32> {
        tensor_to_vec(&self.params)
    }

    /// Overwrite the flat parameters from host values.
    pub fn params_from_slice(&mut self, values: &[f32]) {
        let src = Tensor::from_slice(values).to_device(self.params.device());
        tch::no_grad(|| {
            self.params.copy_(&src);
        });
    }
}

/// Re-point `model`'s parameter data at views of `params` and its gradients at views of a new
/// zeroed flat gradient buffer, which is returned.
fn point_at(model: &mut Model, params: &Tensor, slots: &[Slot]) -> Tensor {
    let total = slots.iter().map(|s| s.numel).sum::<usize>();
    let grads = Tensor::zeros([total as i64], (Kind::Float, params.device()));
    // Define every gradient once (a zero backward pass), then re-point data and grads.
    let probe: Tensor = model
        .parameters()
        .iter()
        .map(|p| p.tensor.sum(Kind::Float) * 0.0)
        .sum();
    probe.backward();
    for (p, s) in model.parameters().iter().zip(slots) {
        let mut data = p.tensor.shallow_clone();
        data.set_data(
            &params
                .narrow(0, s.offset as i64, s.numel as i64)
                .view(s.shape.as_slice()),
        );
        let mut g = p.tensor.grad();
        g.set_data(
            &grads
                .narrow(0, s.offset as i64, s.numel as i64)
                .view(s.shape.as_slice()),
        );
    }
    grads
}

/// Copy a tensor's values to a host `Vec<f32>`.
pub fn tensor_to_vec(t: &Tensor) -> Vec<f32> {
    let t = t
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_models::ModelKind;
    use tch::Device;

    #[test]
    fn gradients_land_in_the_flat_buffer() {
        tch::manual_seed(3);
        let mut m = Model::new(ModelKind::LeNet, Device::Cpu);
        let before = m.values();
        let mut flat = FlatParams::new(&mut m);
        assert_eq!(m.values(), before, "values kept");
        let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        for _ in 0..2 {
            flat.zero_grads();
            m.forward(&x).sum(Kind::Float).backward();
        }
        for (p, s) in m.parameters().iter().zip(flat.slots()) {
            let g = flat
                .grads
                .narrow(0, s.offset as i64, s.numel as i64)
                .view(s.shape.as_slice());
            assert!(
                g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{} has a gradient",
                s.name
            );
            assert!(g.equal(&p.tensor.grad()), "{}", s.name);
        }
        // Writing the flat parameters changes the model.
        tch::no_grad(|| {
            let _ = flat.params.fill_(0.5);
        });
        assert!(m.values().iter().all(|v| v.iter().all(|&x| x == 0.5)));
    }
}
