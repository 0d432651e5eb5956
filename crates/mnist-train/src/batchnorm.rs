//! Net's BatchNorm across ranks: the all-reduce that SyncBatchNorm's statistics go through,
//! and the broadcast of rank 0's running statistics that replaces it without `--sync-bn`
//! (DDP's `broadcast_buffers=True`).

use mnist_comm::{CommError, Communicator};
use mnist_models::Model;

/// Sum `v` over all ranks, in place, exactly in float64: every rank's vector is gathered and
/// added in rank order, so every rank gets bit-identical sums (and so identical running
/// statistics). The vectors are small (`2·C + 1` values), so a gather costs what an all-reduce
/// would.
pub fn sum_over_ranks(comm: &mut dyn Communicator, v: &mut [f64]) -> Result<(), CommError> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let all = comm.all_gather_bytes(&bytes)?;
    v.fill(0.0);
    for (r, part) in all.iter().enumerate() {
        if part.len() != bytes.len() {
            return Err(CommError::InvalidArgument {
                rank: comm.rank(),
                op: "all-gather of BatchNorm statistics".into(),
                detail: format!(
                    "rank {r} sent {} bytes, this rank {} (different models?)",
                    part.len(),
                    bytes.len()
                ),
            });
        }
        for (x, c) in v.iter_mut().zip(part.chunks_exact(8)) {
            *x += f64::from_le_bytes(c.try_into().expect("chunks of 8 bytes"));
        }
    }
    Ok(())
}

/// Give every rank rank 0's buffers (running statistics and counters), as DDP does at the
/// start of each forward pass with `broadcast_buffers=True`.
pub fn broadcast_buffers(model: &mut Model, comm: &mut dyn Communicator) -> Result<(), CommError> {
    if comm.world_size() == 1 || model.buffers().is_empty() {
        return Ok(());
    }
    let values = model.buffer_values();
    let mut bytes: Vec<u8> = values
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    comm.broadcast(&mut bytes, 0)?;
    let mut floats = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4 bytes")));
    let back: Vec<Vec<f32>> = values
        .iter()
        .map(|v| floats.by_ref().take(v.len()).collect())
        .collect();
    model
        .load_buffer_values(&back)
        .expect("the same model's buffers have the same sizes");
    Ok(())
}
