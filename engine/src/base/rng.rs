//! The randomness seam: every random choice the engine makes (placement tie-breaks,
//! weighted sampling) comes from one seeded ChaCha stream, so a seed replays exactly.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The engine's only source of randomness.
pub struct EngineRng {
    inner: ChaCha8Rng,
}

impl EngineRng {
    /// A stream fully determined by `seed`.
    pub fn from_seed(seed: u64) -> Self {
        Self { inner: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// A uniformly random value in `0..bound`. `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        self.inner.random_range(0..bound)
    }

    /// A uniformly random value in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        self.inner.random::<f64>()
    }
}
