//! [`DistributedSampler`]: which dataset indices each rank visits in an epoch, with PyTorch's
//! `torch.utils.data.DistributedSampler` semantics (`drop_last=False`).
//!
//! Every rank computes the same global order: a permutation of `0..len` seeded with
//! `seed + epoch` (or `0..len` without shuffling), padded to `total_size = num_samples * world`
//! by repeating it from the start. Rank `r` then takes `order[r], order[r + world], ...`, so
//! the shards are the same size, disjoint apart from the padding, and together cover the
//! dataset. The permutation is ours (ChaCha8), not bit-identical to PyTorch's.

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
        let mut order: Vec<usize> = (0..self.dataset_len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch));
            order.shuffle(&mut rng);
        }
        let total = self.total_size();
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
        self.global_order(epoch)
            .into_iter()
            .skip(self.rank)
            .step_by(self.world_size)
            .collect()
    }
}
