//! The seeded generator for trial spacing and topologies, reproducible with `--seed`:
//! `rand`'s Xoshiro256++, the generator the protocol core and the simulator use, behind
//! the few helpers the scenarios need.

use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// A seeded generator.
#[derive(Clone, Debug)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// Uniform in `0..n` (`n` > 0; 0 is taken as 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n.max(1))
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.random()
    }

    /// A duration uniform in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// A duration uniform in `[lo, hi)` times `base`.
    pub fn fraction_of(&mut self, base: Duration, lo: f64, hi: f64) -> Duration {
        base.mul_f64(lo + (hi - lo) * self.unit())
    }

    /// `k` distinct indices from `0..n`, in random order (all of them if `k >= n`).
    pub fn distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in (1..all.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            all.swap(i, j);
        }
        all.truncate(k.min(n));
        all
    }
}

/// For each of `n` nodes, the earlier nodes it dials at start: node 1 dials node 0, node 2
/// dials 0 and 1, every later node dials 3 distinct earlier nodes chosen at random. The
/// Truffle scenarios and the raw-gossipsub baseline use the same function (same seed, same
/// graph).
pub fn topology(n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| rng.distinct(i, 3)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_dials_earlier_nodes_only() {
        let t = topology(40, 7);
        assert!(t[0].is_empty());
        assert_eq!(t[1], vec![0]);
        for (i, peers) in t.iter().enumerate().skip(3) {
            assert_eq!(peers.len(), 3);
            assert!(peers.iter().all(|&p| p < i));
        }
    }
}
