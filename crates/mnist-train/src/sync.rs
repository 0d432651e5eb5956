//! Collectives on tensors and gradient averaging across ranks. A tensor on a GPU goes through
//! the communicator's device collectives (NCCL) when it has them, else through host memory.
//! The flat gradient is cut into buckets of at most `--bucket-cap-mb` (whole parameters each,
//! like DDP), and each bucket goes through the chosen compressor, which all-reduces it through
//! the communicator; `none`, `fp16` and `bf16` on NCCL stay on the device in one collective.

use crate::flat::{tensor_to_vec, Slot};
use crate::host::{as_bytes_mut, with_host_slice};
use mnist_comm::{CommError, Communicator, DeviceBuffer, DeviceDType, ReduceOp};
use mnist_common::CompressionKind;
use mnist_compress::{CompressionParams, GradCompressor, TensorLayout};
use tch::{Kind, Tensor};
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

/// Whether `kind` runs as one device collective on NCCL (no all-gathers, no host staging).
pub fn on_device(kind: CompressionKind) -> bool {
    matches!(
        kind,
        CompressionKind::None | CompressionKind::Fp16 | CompressionKind::Bf16
    )
}

/// `t` as a device buffer, for a contiguous CUDA tensor of a type the backends carry.
fn device_buffer(t: &Tensor, rank: usize, op: &str) -> Result<DeviceBuffer, CommError> {
    let dtype = match t.kind() {
        Kind::Float => DeviceDType::F32,
        Kind::Half => DeviceDType::F16,
        Kind::BFloat16 => DeviceDType::BF16,
        k => {
            return Err(CommError::InvalidArgument {
                rank,
                op: op.into(),
                detail: format!("tensors of type {k:?} cannot be reduced on the device"),
            })
        }
    };
    if !t.is_contiguous() {
        return Err(CommError::InvalidArgument {
            rank,
            op: op.into(),
            detail: "the tensor is not contiguous".into(),
        });
    }
    Ok(DeviceBuffer {
        ptr: t.data_ptr() as u64,
        count: t.numel(),
        dtype,
    })
}

/// Write `v` back into `t` (same number of elements).
fn write_back(t: &mut Tensor, v: &[f32]) {
    let src = Tensor::from_slice(v)
        .view(t.size().as_slice())
        .to_device(t.device())
        .to_kind(t.kind());
    tch::no_grad(|| {
        t.copy_(&src);
    });
}

/// All-reduce the f32 tensor `t` in place over the ranks of `comm`: on the GPU when `t` is a
/// CUDA tensor and `comm` has device collectives, else through a host copy (meant for small
/// tensors: metrics, batch statistics).
pub fn all_reduce_tensor(
    comm: &mut dyn Communicator,
    t: &mut Tensor,
    op: ReduceOp,
) -> Result<(), CommError> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let rank = comm.rank();
    if t.device().is_cuda() {
        if let Some(dev) = comm.device() {
            let buf = device_buffer(t, rank, "all_reduce")?;
            // SAFETY: `buf` describes `t`'s contiguous device storage (checked by
            // `device_buffer`), which `t` (borrowed mutably) keeps alive until the call
            // returns; collectives are ordered after the kernels that wrote it (same stream).
            return unsafe { dev.all_reduce_device(buf, op) };
        }
    }
    let mut v = tensor_to_vec(t);
    comm.all_reduce_f32(&mut v, op)?;
    write_back(t, &v);
    Ok(())
}

/// Copy rank `root`'s values of the f32 tensor `t` into every rank's `t`.
pub fn broadcast_tensor(
    comm: &mut dyn Communicator,
    t: &mut Tensor,
    root: usize,
) -> Result<(), CommError> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let rank = comm.rank();
    if t.device().is_cuda() {
        if let Some(dev) = comm.device() {
            let buf = device_buffer(t, rank, "broadcast")?;
            // SAFETY: as in `all_reduce_tensor`.
            return unsafe { dev.broadcast_device(buf, root) };
        }
    }
    let mut v = tensor_to_vec(t);
    comm.broadcast(as_bytes_mut(&mut v), root)?;
    write_back(t, &v);
    Ok(())
}

/// Averages gradients across ranks, bucket by bucket, through the configured compressor.
pub struct GradReducer {
    buckets: Vec<Bucket>,
    kind: CompressionKind,
    compressor: Box<dyn GradCompressor>,
    staging: Vec<f32>,
}

impl GradReducer {
    /// A reducer for parameters laid out as `slots`, compressing as `params` says.
    pub fn new(slots: &[Slot], cap_bytes: usize, params: &CompressionParams) -> Self {
        GradReducer {
            buckets: make_buckets(slots, cap_bytes),
            kind: params.kind,
            compressor: mnist_compress::build(params),
            staging: Vec::new(),
        }
    }

    /// The buckets.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// The compression method's command-line name.
    pub fn method(&self) -> &'static str {
        self.compressor.name()
    }

    /// Whether `comm` reduces this method's gradients on the device (NCCL) for gradients on
    /// `device`, rather than through host memory.
    pub fn runs_on_device(&self, comm: &mut dyn Communicator, device: tch::Device) -> bool {
        device.is_cuda() && on_device(self.kind) && comm.device().is_some()
    }

    /// Replace `grads` (the flat f32 gradient) by its average over ranks.
    ///
    /// # Safety
    /// On the CPU the buckets are reduced in place through a slice of `grads`' storage (no
    /// copy), which the model's parameter gradients and any batch-split replicas share. The
    /// caller guarantees that no other thread reads or writes that storage during the call.
    pub unsafe fn reduce(
        &mut self,
        grads: &mut Tensor,
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError> {
        if self.runs_on_device(comm, grads.device()) {
            return reduce_on_device(grads, self.kind, comm);
        }
        let buckets = &self.buckets;
        let compressor = &mut self.compressor;
        // SAFETY: forwarded to our caller (this function's contract).
        unsafe {
            with_host_slice(grads, &mut self.staging, |g| {
                for (i, b) in buckets.iter().enumerate() {
                    compressor.reduce_bucket(
                        i,
                        &mut g[b.start..b.start + b.len],
                        &b.layout,
                        comm,
                    )?;
                }
                compressor.end_step();
                Ok(())
            })
        }
    }
}

/// `none`: one in-place average of the f32 gradient on the device. `fp16`/`bf16`: divide by
/// the world size, cast on the device, sum in the narrow type, cast back.
fn reduce_on_device(
    grads: &mut Tensor,
    kind: CompressionKind,
    comm: &mut dyn Communicator,
) -> Result<(), CommError> {
    let narrow = match kind {
        CompressionKind::Fp16 => Kind::Half,
        CompressionKind::Bf16 => Kind::BFloat16,
        _ => return all_reduce_tensor(comm, grads, ReduceOp::Average),
    };
    let world = comm.world_size() as f64;
    let mut part = (&*grads / world).to_kind(narrow).contiguous();
    all_reduce_tensor(comm, &mut part, ReduceOp::Sum)?;
    tch::no_grad(|| {
        grads.copy_(&part);
    });
    Ok(())
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
