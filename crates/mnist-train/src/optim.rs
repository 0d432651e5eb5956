//! SGD with momentum and weight decay, with PyTorch's semantics, on one flat parameter
//! tensor (see [`crate::flat`]), so a step is a handful of kernels whatever the model.
//!
//! PyTorch (`torch.optim.SGD`, dampening 0, no Nesterov):
//! `d = g + wd·p`; `buf = d` on the first step, else `buf = m·buf + d`; `p -= lr·buf`.

use tch::Tensor;

/// SGD state: hyper-parameters and the momentum buffer.
#[derive(Debug)]
pub struct Sgd {
    momentum: f64,
    weight_decay: f64,
    buf: Option<Tensor>,
}

impl Sgd {
    /// A fresh optimizer (no momentum buffer yet).
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            weight_decay,
            buf: None,
        }
    }

    /// One update of `params` from `grads` at learning rate `lr`. `grads` is used as scratch.
    pub fn step(&mut self, params: &mut Tensor, grads: &mut Tensor, lr: f64) {
        tch::no_grad(|| {
            if self.weight_decay != 0.0 {
                let _ = grads.g_add_(&(&*params * self.weight_decay));
            }
            let update = if self.momentum != 0.0 {
                match &mut self.buf {
                    Some(buf) => {
                        let _ = buf.g_mul_scalar_(self.momentum).g_add_(grads);
                    }
                    None => self.buf = Some(grads.copy()),
                }
                self.buf.as_ref().expect("set above")
            } else {
                &*grads
            };
            let _ = params.g_sub_(&(update * lr));
        });
    }

    /// The momentum buffer (None before the first step or without momentum).
    pub fn momentum_buffer(&self) -> Option<&Tensor> {
        self.buf.as_ref()
    }

    /// Restore a momentum buffer saved by [`Sgd::momentum_buffer`].
    pub fn set_momentum_buffer(&mut self, buf: Option<Tensor>) {
        self.buf = buf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Reference values from `scripts/ref/sgd_steps.py` (torch.optim.SGD, lr 0.1, m 0.9,
    /// wd 0.01, params [1, -2, 3], grads [0.5, 0.25, -1] then [0.1, -0.2, 0.3]).
    #[test]
    fn matches_torch_sgd() {
        let mut p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]);
        let mut opt = Sgd::new(0.9, 0.01);
        for g in [[0.5f32, 0.25, -1.0], [0.1, -0.2, 0.3]] {
            let mut g = Tensor::from_slice(&g);
            opt.step(&mut p, &mut g, 0.1);
        }
        let want = Tensor::from_slice(&[0.892_151_f32, -2.021_677, 3.151_203]);
        let diff = (&p - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{p:?}");
        assert_eq!(p.kind(), Kind::Float);
        assert_eq!(p.device(), Device::Cpu);
    }
}
