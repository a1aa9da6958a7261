//! The shard plan: which training and validation files each rank gets.
//!
//! # Contract
//! * Input: one split's files in scan order (sorted by class, then file name).
//! * Training: file `i` goes to rank `i mod N`, so every class is spread over the ranks
//!   round-robin (per rank and class the counts differ by at most one). Every rank then keeps
//!   exactly `L = floor(n / N)` files: the at most `N − 1` files at positions `≥ N·L` (the end of
//!   the last class) are left out of training and reported in [`ShardPlan::dropped_train`].
//!   Equal shard lengths give every rank the same number of steps per epoch, which the
//!   all-reduce needs (a rank with one step more would wait forever for its peers).
//! * Validation: file `i` goes to rank `i mod N`, nothing dropped and nothing duplicated, so
//!   summing per-rank counts covers every validation image exactly once.
//!
//! ```text
//! train (sorted): a0 a1 a2 a3 a4 | b0 b1 b2 b3 | c0 c1 c2      n = 12, N = 3, L = 4
//! rank 0:         a0       a3    |    b1       | c0            positions 0,3,6,9
//! rank 1:            a1       a4 |       b2    |    c1         positions 1,4,7,10
//! rank 2:               a2       | b0       b3 |       c2      positions 2,5,8,11
//! ```
//! Tests: `tests` at the bottom.

/// Positions (indices into the split's file list) per rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// Number of ranks.
    pub world_size: u32,
    /// Training positions of each rank; all of length [`ShardPlan::train_per_rank`].
    pub train: Vec<Vec<usize>>,
    /// Validation positions of each rank; together exactly `0..n_valid`.
    pub valid: Vec<Vec<usize>>,
    /// Training positions no rank trains on (at most `world_size - 1`).
    pub dropped_train: Vec<usize>,
}

impl ShardPlan {
    /// Training files per rank.
    pub fn train_per_rank(&self) -> usize {
        self.train.first().map_or(0, Vec::len)
    }
}

/// Plans shards of `n_train` training and `n_valid` validation files over `world_size` ranks.
/// `world_size` must be at least 1 (0 is treated as 1).
pub fn plan_shards(n_train: usize, n_valid: usize, world_size: u32) -> ShardPlan {
    let n = world_size.max(1) as usize;
    let per_rank = n_train / n;
    let kept = per_rank * n;
    let mut train = vec![Vec::with_capacity(per_rank); n];
    for i in 0..kept {
        train[i % n].push(i);
    }
    let mut valid = vec![Vec::with_capacity(n_valid / n + 1); n];
    for i in 0..n_valid {
        valid[i % n].push(i);
    }
    ShardPlan {
        world_size: n as u32,
        train,
        valid,
        dropped_train: (kept..n_train).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_docs() {
        let p = plan_shards(12, 5, 3);
        assert_eq!(
            p.train,
            vec![vec![0, 3, 6, 9], vec![1, 4, 7, 10], vec![2, 5, 8, 11]]
        );
        assert_eq!(p.valid, vec![vec![0, 3], vec![1, 4], vec![2]]);
        assert!(p.dropped_train.is_empty());
    }

    #[test]
    fn invariants_for_many_sizes() {
        for n in 1..=6u32 {
            for n_train in [0, 1, 5, 6, 7, 100, 1001] {
                let p = plan_shards(n_train, n_train / 2 + 3, n);
                let l = n_train / n as usize;
                // Equal training lengths: the same number of steps on every rank.
                assert!(
                    p.train.iter().all(|t| t.len() == l),
                    "n={n} n_train={n_train}"
                );
                assert_eq!(p.train_per_rank(), l);
                // Disjoint, and together with the dropped ones exactly all positions.
                let mut all: Vec<usize> = p
                    .train
                    .iter()
                    .flatten()
                    .copied()
                    .chain(p.dropped_train.iter().copied())
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..n_train).collect::<Vec<_>>());
                assert!(p.dropped_train.len() < n as usize);
                // Validation: every image exactly once.
                let mut v: Vec<usize> = p.valid.iter().flatten().copied().collect();
                v.sort_unstable();
                assert_eq!(v, (0..n_train / 2 + 3).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn stratified_by_class() {
        // 3 classes of 10, 7 and 13 files in scan order.
        let labels: Vec<u32> = [(0, 10), (1, 7), (2, 13)]
            .iter()
            .flat_map(|&(c, k)| std::iter::repeat_n(c, k))
            .collect();
        let p = plan_shards(labels.len(), 0, 4);
        for class in 0..3 {
            let counts: Vec<usize> = p
                .train
                .iter()
                .map(|t| t.iter().filter(|&&i| labels[i] == class).count())
                .collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "class {class}: {counts:?}");
        }
    }

    #[test]
    fn world_size_one_is_the_identity() {
        let p = plan_shards(10, 4, 1);
        assert_eq!(p.train, vec![(0..10).collect::<Vec<_>>()]);
        assert_eq!(p.valid, vec![(0..4).collect::<Vec<_>>()]);
    }
}
