//! [`DistributedSampler`]: which dataset indices each rank visits in an epoch, with PyTorch's
//! `torch.utils.data.DistributedSampler` semantics (`drop_last=False`).
//!
//! Every rank computes the same global order: a permutation of `0..len` seeded with
//! `seed + epoch` (or `0..len` without shuffling), padded to `total_size = num_samples * world`
//! by repeating it from the start. Rank `r` then takes `order[r], order[r + world], ...`, so
//! the shards are the same size, disjoint apart from the padding, and together cover the
//! dataset. The permutation is ours (ChaCha8), not bit-identical to PyTorch's.
//!
//! Elastic jobs (`--nnodes MIN:MAX`): when the world size changes inside an epoch, the first
//! `offset` entries of the epoch's permutation were trained already (the ranks consumed a
//! prefix of the interleaved order); [`DistributedSampler::indices_from`] shards only the rest
//! over the new world the same way, so no sample is repeated or skipped (apart from the usual
//! padding of the last `world - 1` places).

use crate::error::DataError;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Splits a dataset of `dataset_len` items among `world_size` ranks, one epoch at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributedSampler {
    dataset_len: usize,
    world_size: usize,
    rank: usize,
    shuffle: bool,
    seed: u64,
}

impl DistributedSampler {
    /// A sampler for `rank` of `world_size`.
    ///
    /// # Panics
    /// When `world_size == 0` or `rank >= world_size`; use [`DistributedSampler::try_new`] for
    /// values that were not validated already.
    pub fn new(
        dataset_len: usize,
        world_size: usize,
        rank: usize,
        shuffle: bool,
        seed: u64,
    ) -> Self {
        match Self::try_new(dataset_len, world_size, rank, shuffle, seed) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`DistributedSampler::new`], but returns an error for `world_size == 0` or
    /// `rank >= world_size`.
    pub fn try_new(
        dataset_len: usize,
        world_size: usize,
        rank: usize,
        shuffle: bool,
        seed: u64,
    ) -> Result<Self, DataError> {
        if world_size == 0 || rank >= world_size {
            return Err(DataError::Sampler {
                detail: format!(
                    "rank {rank} with world size {world_size}: need 0 <= rank < world size"
                ),
            });
        }
        Ok(DistributedSampler {
            dataset_len,
            world_size,
            rank,
            shuffle,
            seed,
        })
    }

    /// Indices per rank per epoch: `ceil(dataset_len / world_size)`.
    pub fn num_samples(&self) -> usize {
        self.dataset_len.div_ceil(self.world_size)
    }

    /// Length of the padded global order: `num_samples * world_size`.
    pub fn total_size(&self) -> usize {
        self.num_samples() * self.world_size
    }

    /// The rank this sampler serves.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The padded, shuffled order of the whole epoch, identical on every rank.
    pub fn global_order(&self, epoch: u64) -> Vec<usize> {
        self.order_from(epoch, 0)
    }

    /// Samples of the epoch left after the first `offset` places of its order.
    pub fn remaining(&self, offset: usize) -> usize {
        self.dataset_len.saturating_sub(offset)
    }

    /// Indices per rank for the rest of an epoch after `offset`: `ceil(remaining / world)`.
    pub fn num_samples_from(&self, offset: usize) -> usize {
        self.remaining(offset).div_ceil(self.world_size)
    }

    /// The epoch's order from place `offset` on, padded to a multiple of the world size by
    /// repeating its start; identical on every rank.
    pub fn order_from(&self, epoch: u64, offset: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset_len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch));
            order.shuffle(&mut rng);
        }
        let mut order = order.split_off(offset.min(self.dataset_len));
        let total = self.num_samples_from(offset) * self.world_size;
        if order.is_empty() {
            return order;
        }
        let mut i = 0;
        while order.len() < total {
            order.push(order[i]);
            i += 1;
        }
        order
    }

    /// This rank's indices for `epoch`: every `world_size`-th entry of the global order,
    /// starting at `rank`; always [`DistributedSampler::num_samples`] long.
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        self.indices_from(epoch, 0)
    }

    /// This rank's indices for the rest of `epoch` after place `offset` of its order: every
    /// `world_size`-th entry of [`DistributedSampler::order_from`], starting at `rank`.
    pub fn indices_from(&self, epoch: u64, offset: usize) -> Vec<usize> {
        self.order_from(epoch, offset)
            .into_iter()
            .skip(self.rank)
            .step_by(self.world_size)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three ranks train `k` batches of `b`, then two ranks take the rest: together every
    /// sample exactly once (sizes without padding), and offset 0 is the plain shard.
    #[test]
    fn the_rest_of_an_epoch_is_resharded_without_repeats_or_gaps() {
        let (len, b, k) = (600, 10, 7);
        let three: Vec<_> = (0..3)
            .map(|r| DistributedSampler::new(len, 3, r, true, 5))
            .collect();
        let mut seen = vec![0u32; len];
        for s in &three {
            assert_eq!(s.indices(2), s.indices_from(2, 0));
            for &i in &s.indices(2)[..k * b] {
                seen[i] += 1;
            }
        }
        let offset = k * b * 3;
        for r in 0..2 {
            let s = DistributedSampler::new(len, 2, r, true, 5);
            assert_eq!(s.num_samples_from(offset), (len - offset) / 2);
            for &i in &s.indices_from(2, offset) {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{seen:?}");
        // The consumed prefix is exactly the first `offset` places of the epoch's order.
        let order = three[0].global_order(2);
        let mut prefix = order[..offset].to_vec();
        prefix.sort_unstable();
        let mut trained: Vec<usize> = three
            .iter()
            .flat_map(|s| s.indices(2)[..k * b].to_vec())
            .collect();
        trained.sort_unstable();
        assert_eq!(prefix, trained);
    }
}
