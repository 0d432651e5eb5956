//! Top-k sparsification with error feedback, exchanged by all-gather.
//!
//! Per bucket and step, on every rank:
//!
//! ```text
//!   acc      = grad + residual                 (error feedback)
//!   S        = indices of the k largest |acc|  (ties: lower index first)
//!   send     = [(i as u32 LE, acc[i] as f32 LE) for i in S, ascending i]   8·k bytes
//!   residual = acc with the entries in S set to 0   ⇒ sent + residual == acc, bit for bit
//!   gathered = all_gather_bytes(send)          (k pairs from each rank)
//!   grad     = (Σ over ranks, in rank order, of their sparse vectors) / world
//! ```
//!
//! Every rank sums the same pairs in the same order, so all end with identical buckets.

use crate::{GradCompressor, TensorLayout};
use mnist_comm::{CommError, Communicator};
use std::cmp::Ordering;
use std::collections::HashMap;

/// The number of values top-k sends from a bucket of `len`: `ceil(ratio · len)`, at least 1
/// and at most `len` (0 for an empty bucket).
pub fn topk_count(ratio: f64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    // `as` saturates: NaN → 0, huge → usize::MAX; the clamp handles both.
    let k = (ratio * len as f64).ceil() as usize;
    k.clamp(1, len)
}

/// Indices of the `k` values of largest magnitude, in ascending index order. Ties in
/// magnitude go to the lower index, so the choice is deterministic.
pub fn topk_select(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let by_rank = |&a: &u32, &b: &u32| -> Ordering {
        let (x, y) = (values[a as usize].abs(), values[b as usize].abs());
        y.total_cmp(&x).then(a.cmp(&b))
    };
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_rank);
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// Top-k sparsification with per-bucket error feedback (method `topk`).
#[derive(Debug, Clone)]
pub struct TopK {
    ratio: f64,
    residuals: HashMap<usize, Vec<f32>>,
}

impl TopK {
    /// Send `ceil(ratio · len)` values of each bucket per step.
    pub fn new(ratio: f64) -> Self {
        TopK {
            ratio,
            residuals: HashMap::new(),
        }
    }

    /// The error-feedback residual carried for `bucket` (None before its first step).
    pub fn residual(&self, bucket: usize) -> Option<&[f32]> {
        self.residuals.get(&bucket).map(Vec::as_slice)
    }
}

/// Decode one rank's (u32, f32) pairs and add them to `out`.
fn add_pairs(out: &mut [f32], bytes: &[u8], me: usize, peer: usize) -> Result<(), CommError> {
    let bad = |what: String| CommError::PeerFailed {
        rank: me,
        op: "topk all_gather_bytes".into(),
        peer,
        what,
    };
    if !bytes.len().is_multiple_of(8) {
        return Err(bad(format!(
            "sent {} bytes, not a multiple of 8",
            bytes.len()
        )));
    }
    for pair in bytes.chunks_exact(8) {
        let (i, v) = pair.split_at(4);
        let i = u32::from_le_bytes([i[0], i[1], i[2], i[3]]) as usize;
        let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        match out.get_mut(i) {
            Some(slot) => *slot += v,
            None => return Err(bad(format!("sent index {i} for a bucket of {}", out.len()))),
        }
    }
    Ok(())
}

impl GradCompressor for TopK {
    fn reduce_bucket(
        &mut self,
        bucket: usize,
        grad: &mut [f32],
        _layout: &[TensorLayout],
        comm: &mut dyn Communicator,
    ) -> Result<(), CommError> {
        let n = grad.len();
        if n == 0 {
            return Ok(());
        }
        if u32::try_from(n).is_err() {
            return Err(CommError::Mismatch {
                rank: comm.rank(),
                seq: 0,
                detail: format!("topk bucket {bucket} has {n} values, more than u32 indices"),
            });
        }
        let residual = self.residuals.entry(bucket).or_default();
        if residual.len() != n {
            *residual = vec![0.0; n]; // first step, or the bucket was rebuilt
        }
        for (r, &g) in residual.iter_mut().zip(grad.iter()) {
            *r += g; // residual now holds acc = grad + old residual
        }
        let chosen = topk_select(residual, topk_count(self.ratio, n));
        let mut send = Vec::with_capacity(chosen.len() * 8);
        for &i in &chosen {
            let v = &mut residual[i as usize];
            send.extend_from_slice(&i.to_le_bytes());
            send.extend_from_slice(&v.to_le_bytes());
            *v = 0.0;
        }
        let gathered = comm.all_gather_bytes(&send)?;
        let world = comm.world_size();
        if gathered.len() != world {
            return Err(CommError::Mismatch {
                rank: comm.rank(),
                seq: 0,
                detail: format!(
                    "topk all_gather returned {} parts for {world} ranks",
                    gathered.len()
                ),
            });
        }
        grad.fill(0.0);
        for (peer, bytes) in gathered.iter().enumerate() {
            add_pairs(grad, bytes, comm.rank(), peer)?;
        }
        let w = world as f32;
        for g in grad.iter_mut() {
            *g /= w;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "topk"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_comm::Solo;

    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn count_rounds_up_and_clamps() {
        assert_eq!(topk_count(0.01, 1000), 10);
        assert_eq!(topk_count(0.01, 1001), 11);
        assert_eq!(topk_count(1e-9, 5), 1);
        assert_eq!(topk_count(2.0, 5), 5);
        assert_eq!(topk_count(f64::NAN, 5), 1);
        assert_eq!(topk_count(0.5, 0), 0);
    }

    #[test]
    fn select_keeps_exactly_the_k_largest_magnitudes() {
        let v = values(7, 1000);
        for k in [1, 2, 10, 333, 999, 1000] {
            let got = topk_select(&v, k);
            let mut oracle: Vec<u32> = (0..v.len() as u32).collect();
            oracle.sort_by(|&a, &b| v[b as usize].abs().total_cmp(&v[a as usize].abs()));
            let mut want = oracle[..k].to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let v = [1.0, -3.0, 3.0, 2.0, -3.0, 0.5];
        assert_eq!(topk_select(&v, 2), vec![1, 2]);
        assert_eq!(topk_select(&v, 3), vec![1, 2, 4]);
        assert_eq!(topk_select(&[0.0; 4], 2), vec![0, 1]);
    }

    #[test]
    fn error_feedback_invariant_is_exact() {
        let n = 517;
        let mut c = TopK::new(0.05);
        for step in 0..6u64 {
            let g = values(100 + step, n);
            let old: Vec<f32> = c.residual(3).map_or(vec![0.0; n], <[f32]>::to_vec);
            let mut sent = g.clone();
            c.reduce_bucket(3, &mut sent, &[], &mut Solo).expect("solo");
            let new = c.residual(3).expect("residual after a step");
            let k = topk_count(0.05, n);
            assert_eq!(sent.iter().filter(|&&x| x != 0.0).count(), k, "step {step}");
            for i in 0..n {
                let acc = g[i] + old[i];
                assert_eq!(
                    (sent[i] + new[i]).to_bits(),
                    acc.to_bits(),
                    "step {step} index {i}"
                );
                assert!(
                    sent[i] == 0.0 || new[i] == 0.0,
                    "index {i} both sent and kept"
                );
            }
        }
    }

    #[test]
    fn ratio_one_is_exact_averaging() {
        let g = values(5, 100);
        let mut out = g.clone();
        TopK::new(1.0)
            .reduce_bucket(0, &mut out, &[], &mut Solo)
            .expect("solo");
        assert_eq!(out, g);
    }

    #[test]
    fn malformed_peer_payload_is_an_error() {
        let mut out = vec![0.0; 4];
        assert!(add_pairs(&mut out, &[0; 7], 0, 1).is_err());
        let mut bad = 9u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&1f32.to_le_bytes());
        let err = add_pairs(&mut out, &bad, 0, 1).expect_err("index 9 of 4");
        assert!(err.to_string().contains("index 9"), "{err}");
    }
}
