//! Uncompressed and 16-bit all-reduce (PyTorch's `allreduce_hook`, `fp16_compress_hook`,
//! `bf16_compress_hook`), also used by PowerSGD for its uncompressed tensors.

use crate::{GradCompressor, TensorLayout};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use mnist_comm::{CommError, Communicator, ReduceOp};

/// The number format values travel in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// 32-bit floats.
    F32,
    /// IEEE half precision (10-bit mantissa, range ±65504).
    F16,
    /// bfloat16 (7-bit mantissa, the range of f32).
    Bf16,
}

/// Replace `buf` by its average over ranks, sending it in `wire` format. For the 16-bit
/// formats, as PyTorch's compress hooks: divide by the world size, cast, all-reduce the sum
/// (accumulated in f32 by the backend), cast back.
pub fn average(buf: &mut [f32], wire: Wire, comm: &mut dyn Communicator) -> Result<(), CommError> {
    if buf.is_empty() {
        return Ok(());
    }
    match wire {
        Wire::F32 => comm.all_reduce_f32(buf, ReduceOp::Average),
        Wire::F16 => {
            let mut narrow = narrow_scaled(buf, f16::ZERO, comm.world_size());
            comm.all_reduce_f16(&mut narrow, ReduceOp::Sum)?;
            narrow.convert_to_f32_slice(buf);
            Ok(())
        }
        Wire::Bf16 => {
            let mut narrow = narrow_scaled(buf, bf16::ZERO, comm.world_size());
            comm.all_reduce_bf16(&mut narrow, ReduceOp::Sum)?;
            narrow.convert_to_f32_slice(buf);
            Ok(())
        }
    }
}

/// `buf / world` rounded (to nearest, ties to even) into a 16-bit format. The slice
/// conversions use the CPU's F16C instructions when present (about 10× faster than
/// converting value by value); results are the same either way.
fn narrow_scaled<H>(buf: &[f32], zero: H, world: usize) -> Vec<H>
where
    H: Copy,
    [H]: HalfFloatSliceExt,
{
    let w = world as f32;
    let scaled: Vec<f32> = buf.iter().map(|&x| x / w).collect();
    let mut narrow = vec![zero; buf.len()];
    narrow.convert_from_f32_slice(&scaled);
    narrow
}

/// Plain averaging all-reduce in f32, fp16 or bf16 (methods `none`, `fp16`, `bf16`).
#[derive(Debug, Clone)]
pub struct DenseAllReduce {
    wire: Wire,
}

impl DenseAllReduce {
    /// An all-reduce that sends values in `wire` format.
    pub fn new(wire: Wire) -> Self {
        DenseAllReduce { wire }
    }
}

impl GradCompressor for DenseAllReduce {
    fn reduce_bucket(
        &mut self,
        _bucket: usize,
        grad: &mut [f32],
        _layout: &[TensorLayout],
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError> {
        average(grad, self.wire, comm)
    }

    fn name(&self) -> &'static str {
        match self.wire {
            Wire::F32 => "none",
            Wire::F16 => "fp16",
            Wire::Bf16 => "bf16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_comm::Solo;

    /// Deterministic values spread over many binades (normal range for both formats).
    fn spread(n: usize) -> Vec<f32> {
        let mut s = 0x9E37_79B9_7F4A_7C15_u64;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mant = 1.0 + (s >> 40) as f32 / (1u64 << 24) as f32;
                let exp = (i % 30) as i32 - 14; // 2^-14 .. 2^15, all normal in fp16
                let sign = if s & 1 == 0 { 1.0 } else { -1.0 };
                sign * mant * 2f32.powi(exp)
            })
            .collect()
    }

    fn max_rel_err(wire: Wire, xs: &[f32]) -> f64 {
        let mut buf = xs.to_vec();
        average(&mut buf, wire, &mut Solo).expect("solo never fails");
        xs.iter()
            .zip(&buf)
            .map(|(&a, &b)| ((a as f64 - b as f64) / a as f64).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn fp16_round_trip_within_half_ulp() {
        let xs = spread(10_000);
        let e = max_rel_err(Wire::F16, &xs);
        assert!(e <= 2f64.powi(-11), "fp16 relative error {e}");
        assert!(e > 0.0, "fp16 must actually round");
    }

    #[test]
    fn bf16_round_trip_within_half_ulp() {
        let xs = spread(10_000);
        let e = max_rel_err(Wire::Bf16, &xs);
        assert!(e <= 2f64.powi(-8), "bf16 relative error {e}");
        assert!(
            e > 2f64.powi(-11),
            "bf16 must be coarser than fp16, got {e}"
        );
    }

    #[test]
    fn f32_is_exact_and_names_match() {
        let xs = spread(1000);
        assert_eq!(max_rel_err(Wire::F32, &xs), 0.0);
        assert_eq!(DenseAllReduce::new(Wire::F32).name(), "none");
        assert_eq!(DenseAllReduce::new(Wire::F16).name(), "fp16");
        assert_eq!(DenseAllReduce::new(Wire::Bf16).name(), "bf16");
    }
}
