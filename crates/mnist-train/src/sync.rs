//! Gradient averaging across ranks: the flat gradient is cut into buckets of at most
//! `--bucket-cap-mb` (whole parameters each, like DDP), and each bucket goes through the
//! chosen compressor, which all-reduces it through the communicator.

use crate::flat::Slot;
use crate::host::with_host_slice;
use mnist_comm::{CommError, Communicator};
use mnist_compress::{GradCompressor, TensorLayout};
use tch::Tensor;

/// One bucket: a contiguous range of the flat gradient holding whole parameters.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// First element in the flat gradient.
    pub start: usize,
    /// Number of elements.
    pub len: usize,
    /// The parameters inside, offsets relative to `start`.
    pub layout: Vec<TensorLayout>,
}

/// Split parameters into buckets of at most `cap_bytes` (a parameter larger than the cap
/// gets a bucket of its own).
pub fn make_buckets(slots: &[Slot], cap_bytes: usize) -> Vec<Bucket> {
    let cap = (cap_bytes / 4).max(1);
    let mut out: Vec<Bucket> = Vec::new();
    for s in slots {
        let fits = out.last().is_some_and(|b| b.len + s.numel <= cap);
        if !fits {
            out.push(Bucket {
                start: s.offset,
                len: 0,
                layout: Vec::new(),
            });
        }
        let b = out.last_mut().expect("pushed above");
        b.layout.push(TensorLayout {
            offset: s.offset - b.start,
            shape: s.shape.iter().map(|&d| d as usize).collect(),
        });
        b.len += s.numel;
    }
    out
}

/// Averages gradients across ranks, bucket by bucket.
pub struct GradReducer {
    buckets: Vec<Bucket>,
    compressor: Box<dyn GradCompressor>,
    staging: Vec<f32>,
}

impl GradReducer {
    /// A reducer for parameters laid out as `slots`.
    pub fn new(slots: &[Slot], cap_bytes: usize, compressor: Box<dyn GradCompressor>) -> Self {
        GradReducer {
            buckets: make_buckets(slots, cap_bytes),
            compressor,
            staging: Vec::new(),
        }
    }

    /// The buckets.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Replace `grads` (the flat gradient) by its average over ranks.
    pub fn reduce(
        &mut self,
        grads: &mut Tensor,
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError> {
        let buckets = &self.buckets;
        let compressor = &mut self.compressor;
        with_host_slice(grads, &mut self.staging, |g| {
            for (i, b) in buckets.iter().enumerate() {
                compressor.reduce_bucket(i, &mut g[b.start..b.start + b.len], &b.layout, comm)?;
            }
            compressor.end_step();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(offset: usize, numel: usize) -> Slot {
        Slot {
            name: "x",
            shape: vec![numel as i64],
            offset,
            numel,
        }
    }

    #[test]
    fn buckets_hold_whole_parameters_under_the_cap() {
        let slots = [slot(0, 10), slot(10, 20), slot(30, 5), slot(35, 100)];
        let b = make_buckets(&slots, 30 * 4);
        let lens: Vec<_> = b.iter().map(|b| (b.start, b.len)).collect();
        assert_eq!(lens, vec![(0, 30), (30, 5), (35, 100)]);
        assert_eq!(b[0].layout[1].offset, 10);
    }
}
