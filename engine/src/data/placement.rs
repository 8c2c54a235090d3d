//! Placement: chooses a distinct disk for every fragment of an extent.
//!
//! Invariant: no disk receives two fragments of one extent.
//! Disks are drawn without replacement, each with probability proportional to its free
//! space, so disks of different sizes fill in proportion. Does no I/O.

use crate::base::rng::EngineRng;
use crate::meta::state::DiskId;

/// A disk that may receive fragments, with the bytes it can still take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub disk: DiskId,
    pub free_bytes: u64,
}

/// Picks `width` distinct disks that each have room for `fragment_bytes`, weighted by
/// free space. Returns `Err(available)` — how many disks had room — when fewer than
/// `width` do.
pub fn place(
    rng: &mut EngineRng,
    width: usize,
    fragment_bytes: u64,
    candidates: &[Candidate],
) -> Result<Vec<DiskId>, usize> {
    assert!(width > 0);
    let mut pool: Vec<Candidate> = candidates.iter().copied().filter(|c| c.free_bytes >= fragment_bytes).collect();
    if pool.len() < width {
        return Err(pool.len());
    }
    let mut chosen = Vec::with_capacity(width);
    for _ in 0..width {
        let total: u64 = pool.iter().map(|c| c.free_bytes).sum();
        let index = if total == 0 {
            rng.below(pool.len() as u64) as usize
        } else {
            let mut point = rng.below(total);
            pool.iter()
                .position(|c| {
                    if point < c.free_bytes {
                        true
                    } else {
                        point -= c.free_bytes;
                        false
                    }
                })
                .unwrap_or(pool.len() - 1)
        };
        chosen.push(pool.swap_remove(index).disk);
    }
    assert_eq!(chosen.len(), width);
    debug_assert!(is_distinct(&chosen));
    Ok(chosen)
}

fn is_distinct(disks: &[DiskId]) -> bool {
    let mut sorted = disks.to_vec();
    sorted.sort();
    sorted.windows(2).all(|w| w[0] != w[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidates(free: &[u64]) -> Vec<Candidate> {
        free.iter().enumerate().map(|(i, &free_bytes)| Candidate { disk: DiskId(i as u32), free_bytes }).collect()
    }

    #[test]
    fn refuses_a_policy_wider_than_the_disks_with_room() {
        let mut rng = EngineRng::from_seed(1);
        assert_eq!(place(&mut rng, 6, 10, &candidates(&[100; 5])), Err(5));
        assert_eq!(place(&mut rng, 2, 10, &candidates(&[100, 5, 9])), Err(1));
    }

    #[test]
    fn larger_disks_receive_proportionally_more() {
        let mut rng = EngineRng::from_seed(7);
        let disks = candidates(&[1000, 3000]);
        let mut counts = [0u32; 2];
        for _ in 0..20_000 {
            let pick = place(&mut rng, 1, 1, &disks).unwrap();
            counts[pick[0].0 as usize] += 1;
        }
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "big disk share {share}");
    }

    proptest! {
        #[test]
        fn choices_are_distinct_and_have_room(
            free in proptest::collection::vec(0u64..1000, 1..12),
            width in 1usize..8,
            need in 0u64..500,
            seed: u64,
        ) {
            let mut rng = EngineRng::from_seed(seed);
            let disks = candidates(&free);
            if let Ok(chosen) = place(&mut rng, width, need, &disks) {
                prop_assert!(is_distinct(&chosen));
                prop_assert_eq!(chosen.len(), width);
                for d in chosen {
                    prop_assert!(free[d.0 as usize] >= need);
                }
            } else {
                prop_assert!(free.iter().filter(|&&f| f >= need).count() < width);
            }
        }
    }
}
