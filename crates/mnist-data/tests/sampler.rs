//! DistributedSampler: shards, padding, epochs and seeds; the unshuffled order against
//! PyTorch's own sampler when `MNIST_PYTHON` is set.

use mnist_data::DistributedSampler;
use std::collections::BTreeSet;

fn shards(len: usize, world: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    (0..world)
        .map(|r| DistributedSampler::new(len, world, r, shuffle, seed).indices(epoch))
        .collect()
}

#[test]
fn shards_are_disjoint_and_cover_everything() {
    for shuffle in [false, true] {
        for world in [1, 2, 3] {
            for len in [1, 2, 10, 11] {
                let s = DistributedSampler::new(len, world, 0, shuffle, 7);
                let n = len.div_ceil(world);
                assert_eq!(s.num_samples(), n);
                assert_eq!(s.total_size(), n * world);
                let parts = shards(len, world, shuffle, 7, 3);
                let all: Vec<usize> = parts.iter().flatten().copied().collect();
                assert!(parts.iter().all(|p| p.len() == n));
                assert_eq!(all.len(), n * world);
                let distinct: BTreeSet<usize> = all.iter().copied().collect();
                assert_eq!(distinct, (0..len).collect(), "len {len} world {world}");
                // Only the padding repeats: exactly total - len duplicates.
                assert_eq!(all.len() - distinct.len(), n * world - len);
            }
        }
    }
}

#[test]
fn padding_repeats_from_the_start_cyclically() {
    // len 1, world 3: the single index is repeated.
    assert_eq!(
        DistributedSampler::new(1, 3, 2, true, 0).global_order(0),
        vec![0, 0, 0]
    );
    let s = DistributedSampler::new(10, 4, 0, false, 0);
    assert_eq!(s.global_order(0), vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    assert_eq!(s.indices(0), vec![0, 4, 8]);
    assert_eq!(
        DistributedSampler::new(10, 4, 3, false, 0).indices(0),
        vec![3, 7, 1]
    );
    let order = DistributedSampler::new(11, 3, 0, true, 5).global_order(2);
    assert_eq!(order[11], order[0]);
    assert!(DistributedSampler::new(0, 2, 1, true, 0)
        .indices(0)
        .is_empty());
}

#[test]
fn every_rank_sees_the_same_order_and_strides_it() {
    let world = 3;
    let orders: Vec<Vec<usize>> = (0..world)
        .map(|r| DistributedSampler::new(101, world, r, true, 42).global_order(5))
        .collect();
    assert!(orders.iter().all(|o| *o == orders[0]));
    for r in 0..world {
        let mine = DistributedSampler::new(101, world, r, true, 42).indices(5);
        let expected: Vec<usize> = orders[0].iter().skip(r).step_by(world).copied().collect();
        assert_eq!(mine, expected);
    }
}

#[test]
fn epochs_differ_seeds_are_deterministic() {
    let s = DistributedSampler::new(1000, 2, 1, true, 1);
    assert_eq!(
        s.indices(0),
        DistributedSampler::new(1000, 2, 1, true, 1).indices(0)
    );
    assert_ne!(s.indices(0), s.indices(1));
    assert_ne!(
        s.global_order(0),
        DistributedSampler::new(1000, 2, 1, true, 2).global_order(0)
    );
    // seed + epoch: seed 1 epoch 1 is seed 2 epoch 0, as in PyTorch.
    assert_eq!(
        s.global_order(1),
        DistributedSampler::new(1000, 2, 1, true, 2).global_order(0)
    );
    // Without shuffling the order is fixed.
    let plain = DistributedSampler::new(1000, 2, 1, false, 1);
    assert_eq!(plain.indices(0), plain.indices(9));
}

#[test]
fn world_one_is_a_permutation() {
    let s = DistributedSampler::new(500, 1, 0, true, 3);
    let mut idx = s.indices(0);
    assert_ne!(
        idx,
        (0..500).collect::<Vec<_>>(),
        "shuffle should move something"
    );
    idx.sort_unstable();
    assert_eq!(idx, (0..500).collect::<Vec<_>>());
}

#[test]
fn bad_rank_or_world_is_an_error() {
    let msg = DistributedSampler::try_new(10, 2, 2, true, 0)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rank 2") && msg.contains("world size 2"),
        "{msg}"
    );
    assert!(DistributedSampler::try_new(10, 0, 0, true, 0).is_err());
}

/// Unshuffled shards compared with `torch.utils.data.DistributedSampler` (shuffle=False),
/// whose padding and striding we copy exactly.
#[test]
fn unshuffled_matches_pytorch() {
    let Some(python) = mnist_testkit::python("unshuffled_matches_pytorch") else {
        return;
    };
    let cases = [(10usize, 3usize), (7, 4), (2, 5), (12, 4)];
    let script = format!(
        "from torch.utils.data import DistributedSampler as D\n\
         for n, w in {cases:?}:\n\
         \x20   for r in range(w):\n\
         \x20       print(n, w, r, ','.join(map(str, D(range(n), num_replicas=w, rank=r, shuffle=False))))\n"
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (n, w, r): (usize, usize, usize) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        let theirs: Vec<usize> = f[3].split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(
            DistributedSampler::new(n, w, r, false, 0).indices(0),
            theirs,
            "n {n} w {w} r {r}"
        );
        checked += 1;
    }
    assert_eq!(checked, cases.iter().map(|c| c.1).sum::<usize>());
}
