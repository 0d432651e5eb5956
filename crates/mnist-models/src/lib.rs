//! The reference's two networks, LeNet and MLP, and the DDP example's `Net` (BatchNorm and
//! dropout), on tch with PyTorch's parameter names (`conv1.weight`, `bn1.running_mean`, …) and
//! PyTorch's default initialisation.
//!
//! Parameters are created in a [`tch::nn::VarStore`] and listed in `state_dict` order by
//! [`Model::parameters`]; Net's BatchNorm buffers (running statistics, `num_batches_tracked`)
//! are not trained and live apart in [`Model::buffers`]; [`state_layout`] interleaves both in
//! PyTorch's `state_dict` order. [`Model::forward_reference`] is written with functional ops so
//! the graph is exactly the reference's; [`Model::forward`] computes the same function (for
//! LeNet on the CPU with the cheaper kernels of [`lenet_cpu`]) and is the evaluation-mode
//! forward pass (Net: running statistics, no dropout). Net's training step, with batch
//! statistics that may be summed over ranks, is [`net::train_step`].

pub mod batchnorm;
pub mod lenet_cpu;
pub mod net;

use tch::{nn, Device, Kind, Tensor};

pub use mnist_common::ModelKind;

/// The parameters of network `kind` in PyTorch's `state_dict` order, with their shapes.
pub fn parameter_shapes(kind: ModelKind) -> Vec<(&'static str, Vec<i64>)> {
    match kind {
        ModelKind::LeNet => vec![
            ("conv1.weight", vec![6, 1, 5, 5]),
            ("conv1.bias", vec![6]),
            ("conv2.weight", vec![16, 6, 5, 5]),
            ("conv2.bias", vec![16]),
            ("fc1.weight", vec![120, 256]),
            ("fc1.bias", vec![120]),
            ("fc2.weight", vec![84, 120]),
            ("fc2.bias", vec![84]),
            ("fc3.weight", vec![10, 84]),
            ("fc3.bias", vec![10]),
        ],
        ModelKind::Mlp => vec![
            ("fc1.weight", vec![500, 784]),
            ("fc1.bias", vec![500]),
            ("fc2.weight", vec![250, 500]),
            ("fc2.bias", vec![250]),
            ("fc3.weight", vec![10, 250]),
            ("fc3.bias", vec![10]),
        ],
        ModelKind::Net => state_layout(kind)
            .into_iter()
            .filter(|e| e.kind == EntryKind::Parameter)
            .map(|e| (e.name, e.shape))
            .collect(),
    }
}

/// What a `state_dict` entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A trained parameter (float32, has a gradient).
    Parameter,
    /// A BatchNorm running statistic (float32 buffer).
    RunningStat,
    /// BatchNorm's `num_batches_tracked` (int64 scalar buffer).
    Counter,
}

/// One `state_dict` entry: PyTorch name, shape and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    /// PyTorch name, e.g. `bn1.running_var`.
    pub name: &'static str,
    /// Shape (empty for a scalar).
    pub shape: Vec<i64>,
    /// Parameter or buffer.
    pub kind: EntryKind,
}

/// Every `state_dict` entry of network `kind` (parameters and buffers) in PyTorch's order: a
/// module's parameters, then its buffers, module by module in registration order. For Net the
/// modules are registered as the example does: conv1, bn1, conv2, bn2, (dropouts), fc1, fc2.
pub fn state_layout(kind: ModelKind) -> Vec<StateEntry> {
    let param = |name, shape: &[i64]| StateEntry {
        name,
        shape: shape.to_vec(),
        kind: EntryKind::Parameter,
    };
    if kind != ModelKind::Net {
        return parameter_shapes(kind)
            .into_iter()
            .map(|(n, s)| param(n, &s))
            .collect();
    }
    let stat = |name, c: i64| StateEntry {
        name,
        shape: vec![c],
        kind: EntryKind::RunningStat,
    };
    let counter = |name| StateEntry {
        name,
        shape: vec![],
        kind: EntryKind::Counter,
    };
    vec![
        param("conv1.weight", &[32, 1, 3, 3]),
        param("conv1.bias", &[32]),
        param("bn1.weight", &[32]),
        param("bn1.bias", &[32]),
        stat("bn1.running_mean", 32),
        stat("bn1.running_var", 32),
        counter("bn1.num_batches_tracked"),
        param("conv2.weight", &[64, 32, 3, 3]),
        param("conv2.bias", &[64]),
        param("bn2.weight", &[64]),
        param("bn2.bias", &[64]),
        stat("bn2.running_mean", 64),
        stat("bn2.running_var", 64),
        counter("bn2.num_batches_tracked"),
        param("fc1.weight", &[128, 9216]),
        param("fc1.bias", &[128]),
        param("fc2.weight", &[10, 128]),
        param("fc2.bias", &[10]),
    ]
}

/// One named parameter of a model.
#[derive(Debug)]
pub struct Parameter {
    /// PyTorch name, e.g. `conv1.weight`.
    pub name: &'static str,
    /// The leaf variable (requires grad).
    pub tensor: Tensor,
}

/// One named buffer of a model (not trained): a BatchNorm running statistic (float32) or
/// `num_batches_tracked` (int64).
#[derive(Debug)]
pub struct Buffer {
    /// PyTorch name, e.g. `bn1.running_mean`.
    pub name: &'static str,
    /// Running statistic or counter.
    pub kind: EntryKind,
    /// The values (no gradient).
    pub tensor: Tensor,
}

/// A network with its parameters and buffers.
pub struct Model {
    kind: ModelKind,
    /// Holds the variables; kept so they stay alive and trainable.
    pub vs: nn::VarStore,
    params: Vec<Parameter>,
    buffers: Vec<Buffer>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("kind", &self.kind).finish()
    }
}

impl Model {
    /// Create the network on `device` with PyTorch's default initialisation: for conv and
    /// linear layers, weight and bias ~ U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a=√5).
    /// Call `tch::manual_seed` first for reproducible values.
    pub fn new(kind: ModelKind, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        for e in state_layout(kind) {
            let (layer, leaf) = e
                .name
                .split_once('.')
                .expect("state_dict names are layer.leaf");
            match e.kind {
                EntryKind::Parameter => {
                    let init = if layer.starts_with("bn") {
                        // BatchNorm: weight 1, bias 0.
                        nn::Init::Const(if leaf == "weight" { 1.0 } else { 0.0 })
                    } else {
                        let bound = 1.0 / (fan_in(kind, layer) as f64).sqrt();
                        nn::Init::Uniform {
                            lo: -bound,
                            up: bound,
                        }
                    };
                    let t = (&root / layer).var(leaf, &e.shape, init);
                    params.push(Parameter {
                        name: e.name,
                        tensor: t,
                    });
                }
                EntryKind::RunningStat => {
                    let t = if leaf == "running_var" {
                        Tensor::ones(e.shape.as_slice(), (Kind::Float, device))
                    } else {
                        Tensor::zeros(e.shape.as_slice(), (Kind::Float, device))
                    };
                    buffers.push(Buffer {
                        name: e.name,
                        kind: e.kind,
                        tensor: t,
                    });
                }
                EntryKind::Counter => buffers.push(Buffer {
                    name: e.name,
                    kind: e.kind,
                    tensor: Tensor::zeros([], (Kind::Int64, device)),
                }),
            }
        }
        Model {
            kind,
            vs,
            params,
            buffers,
        }
    }

    /// Buffers in `state_dict` order (empty for LeNet and MLP).
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// The buffers' values as `f32`, flattened, in `state_dict` order (counters converted).
    pub fn buffer_values(&self) -> Vec<Vec<f32>> {
        self.buffers.iter().map(|b| host_f32(&b.tensor)).collect()
    }

    /// Copy `values` (in `state_dict` order, flattened, counters as whole numbers) into the
    /// buffers.
    pub fn load_buffer_values(&mut self, values: &[Vec<f32>]) -> Result<(), ModelError> {
        if values.len() != self.buffers.len() {
            return Err(ModelError::Count {
                expected: self.buffers.len(),
                found: values.len(),
            });
        }
        for (b, v) in self.buffers.iter_mut().zip(values) {
            if v.len() != b.tensor.numel() {
                return Err(ModelError::Size {
                    name: b.name,
                    expected: b.tensor.size(),
                    found: v.len(),
                });
            }
            let src = Tensor::from_slice(v)
                .view(b.tensor.size().as_slice())
                .to_kind(b.tensor.kind())
                .to_device(b.tensor.device());
            tch::no_grad(|| b.tensor.copy_(&src));
        }
        Ok(())
    }

    /// Which network this is.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Parameters in `state_dict` order.
    pub fn parameters(&self) -> &[Parameter] {
        &self.params
    }

    /// Number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.tensor.numel()).sum()
    }

    fn p(&self, i: usize) -> &Tensor {
        &self.params[i].tensor
    }

    fn buf(&self, i: usize) -> &Tensor {
        &self.buffers[i].tensor
    }

    /// Logits `[N, 10]` for normalised images `[N, 1, 28, 28]` (Net: log-probabilities, as the
    /// example's `forward` ends in `log_softmax`; evaluation mode).
    ///
    /// For LeNet on the CPU (inputs that need no gradient) this is [`lenet_cpu::forward`]: the
    /// same values and gradients as [`Model::forward_reference`] up to float rounding, about
    /// twice as fast.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.kind == ModelKind::LeNet && lenet_cpu::applies(x) {
            let p: [&Tensor; 10] = std::array::from_fn(|i| self.p(i));
            return lenet_cpu::forward(x, &p);
        }
        self.forward_reference(x)
    }

    /// Logits computed with the reference's own ops (`conv2d`, `max_pool2d`, `linear`), on any
    /// device.
    pub fn forward_reference(&self, x: &Tensor) -> Tensor {
        match self.kind {
            ModelKind::LeNet => {
                let x = x
                    .conv2d(self.p(0), Some(self.p(1)), [1, 1], [0, 0], [1, 1], 1)
                    .max_pool2d_default(2)
                    .relu();
                let x = x
                    .conv2d(self.p(2), Some(self.p(3)), [1, 1], [0, 0], [1, 1], 1)
                    .max_pool2d_default(2)
                    .relu();
                let x = x.view([-1, 256]);
                let x = x.linear(self.p(4), Some(self.p(5))).relu();
                let x = x.linear(self.p(6), Some(self.p(7))).relu();
                x.linear(self.p(8), Some(self.p(9)))
            }
            ModelKind::Mlp => {
                let x = x.view([-1, 784]);
                let x = x.linear(self.p(0), Some(self.p(1))).relu();
                let x = x.linear(self.p(2), Some(self.p(3))).relu();
                x.linear(self.p(4), Some(self.p(5)))
            }
            ModelKind::Net => {
                // Evaluation mode: running statistics, dropout off.
                let bn = |x: Tensor, w: usize, stats: usize| {
                    x.batch_norm(
                        Some(self.p(w)),
                        Some(self.p(w + 1)),
                        Some(self.buf(stats)),
                        Some(self.buf(stats + 1)),
                        false,
                        batchnorm::MOMENTUM,
                        batchnorm::EPS,
                        false,
                    )
                };
                let x = x.conv2d(self.p(0), Some(self.p(1)), [1, 1], [0, 0], [1, 1], 1);
                let x = bn(x, 2, 0).relu();
                let x = x.conv2d(self.p(4), Some(self.p(5)), [1, 1], [0, 0], [1, 1], 1);
                let x = net::relu_max_pool(&bn(x, 6, 3)).flatten(1, -1);
                let x = x.linear(self.p(8), Some(self.p(9))).relu();
                x.linear(self.p(10), Some(self.p(11)))
                    .log_softmax(-1, Kind::Float)
            }
        }
    }

    /// Copy `values` (in `state_dict` order, each flattened) into the parameters.
    pub fn load_values(&mut self, values: &[Vec<f32>]) -> Result<(), ModelError> {
        if values.len() != self.params.len() {
            return Err(ModelError::Count {
                expected: self.params.len(),
                found: values.len(),
            });
        }
        tch::no_grad(|| {
            for (p, v) in self.params.iter_mut().zip(values) {
                if v.len() != p.tensor.numel() {
                    return Err(ModelError::Size {
                        name: p.name,
                        expected: p.tensor.size(),
                        found: v.len(),
                    });
                }
                let src = Tensor::from_slice(v)
                    .view(p.tensor.size().as_slice())
                    .to_device(p.tensor.device());
                p.tensor.copy_(&src);
            }
            Ok(())
        })
    }

    /// The parameters' values, flattened, in `state_dict` order.
    pub fn values(&self) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| host_f32(&p.tensor)).collect()
    }
}

/// A tensor's values as host `f32`, flattened.
fn host_f32(t: &Tensor) -> Vec<f32> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

fn fan_in(kind: ModelKind, layer: &str) -> usize {
    match (kind, layer) {
        (ModelKind::LeNet, "conv1") => 25,
        (ModelKind::LeNet, "conv2") => 6 * 25,
        (ModelKind::LeNet, "fc1") => 256,
        (ModelKind::LeNet, "fc2") => 120,
        (ModelKind::LeNet, "fc3") => 84,
        (ModelKind::Mlp, "fc1") => 784,
        (ModelKind::Mlp, "fc2") => 500,
        (ModelKind::Mlp, "fc3") => 250,
        (ModelKind::Net, "conv1") => 9,
        (ModelKind::Net, "conv2") => 32 * 9,
        (ModelKind::Net, "fc1") => 9216,
        (ModelKind::Net, "fc2") => 128,
        _ => unreachable!("unknown layer {layer}"),
    }
}

/// Values that do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Wrong number of tensors.
    #[error("expected {expected} parameter tensors, found {found}")]
    Count {
        /// Parameters in the model.
        expected: usize,
        /// Tensors given.
        found: usize,
    },
    /// A tensor of the wrong size.
    #[error("parameter {name}: expected shape {expected:?}, found {found} values")]
    Size {
        /// Parameter name.
        name: &'static str,
        /// The model's shape.
        expected: Vec<i64>,
        /// Values given.
        found: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names_match_pytorch() {
        tch::manual_seed(0);
        let m = Model::new(ModelKind::LeNet, Device::Cpu);
        let names: Vec<_> = m.parameters().iter().map(|p| p.name).collect();
        assert_eq!(names[0], "conv1.weight");
        assert_eq!(m.numel(), 44426);
        let out = m.forward(&Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu)));
        assert_eq!(out.size(), vec![3, 10]);
        let mlp = Model::new(ModelKind::Mlp, Device::Cpu);
        assert_eq!(mlp.numel(), 784 * 500 + 500 + 500 * 250 + 250 + 2510);
        assert_eq!(
            mlp.forward(&Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)))
                .size(),
            vec![2, 10]
        );
    }

    #[test]
    fn init_bounds_are_pytorch_defaults() {
        tch::manual_seed(1);
        let m = Model::new(ModelKind::LeNet, Device::Cpu);
        let w = &m.parameters()[4].tensor; // fc1.weight, fan_in 256 → bound 1/16
        let max = w.abs().max().double_value(&[]);
        assert!(max <= 1.0 / 16.0 && max > 0.9 / 16.0, "max |w| = {max}");
        let mean = w.mean(Kind::Float).double_value(&[]);
        assert!(mean.abs() < 0.002, "mean {mean}");
    }

    /// The CPU fast path and the reference ops agree on logits and on every gradient, on
    /// MNIST-like inputs (a constant background, so pooling windows hold ties).
    #[test]
    fn lenet_cpu_forward_matches_reference_ops() {
        tch::manual_seed(7);
        let m = Model::new(ModelKind::LeNet, Device::Cpu);
        // More than one chunk of the fast path (128 images).
        let x = Tensor::randn([150, 1, 28, 28], (Kind::Float, Device::Cpu));
        let _ = x.narrow(2, 0, 6).fill_(-0.4242);
        let y = Tensor::randint(10, [150], (Kind::Int64, Device::Cpu));
        assert!(lenet_cpu::applies(&x));
        assert!(!lenet_cpu::applies(&x.narrow(0, 0, 0)));
        assert!(!lenet_cpu::applies(&x.detach().set_requires_grad(true)));
        let grads = |logits: Tensor| {
            for p in m.parameters() {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            logits.cross_entropy_for_logits(&y).backward();
            m.parameters()
                .iter()
                .map(|p| p.tensor.grad().copy())
                .collect::<Vec<_>>()
        };
        let fast = m.forward(&x);
        let reference = m.forward_reference(&x);
        let diff = (&fast - &reference).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "logits differ by {diff}");
        let gf = grads(fast);
        let gr = grads(reference);
        for ((p, a), b) in m.parameters().iter().zip(&gf).zip(&gr) {
            let scale = b.abs().max().double_value(&[]).max(1e-6);
            let rel = (a - b).abs().max().double_value(&[]) / scale;
            assert!(
                rel < 1e-4,
                "{}: gradients differ by {rel} (relative)",
                p.name
            );
        }
    }

    #[test]
    fn values_round_trip() {
        let mut m = Model::new(ModelKind::Mlp, Device::Cpu);
        let mut v = m.values();
        v[1][0] = 42.0;
        m.load_values(&v).unwrap();
        assert_eq!(m.values()[1][0], 42.0);
        v.pop();
        assert!(m.load_values(&v).is_err());
    }
}
