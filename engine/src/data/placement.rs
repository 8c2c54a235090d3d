//! Placement: chooses a distinct disk for every fragment of an extent.
//!
//! Invariant: no disk receives two fragments of one extent.
//! Disks are drawn without replacement, each with probability proportional to its free
//! space, so disks of different sizes fill in proportion; `stripe_order` then decides
//! which of them takes which fragment, by the chunk's place in its file (a disk keeps
//! its role for runs of chunks, so a sequential read finds a disk's data shards side by
//! side). Does no I/O.

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

/// Consecutive chunks of a file placed in one turn of `stripe_order`.
///
/// Why two: concurrent flushes append to a disk two chunks at a time, so a turn of two
/// keeps a run's shards side by side; longer turns (8, 16, 32 were measured) made the
/// read no faster with batches of four (`data::fetch`), and a short turn has every
/// disk serve part of any stretch of a file.
pub const STRIPE_RUN: u64 = 2;

/// Orders `chosen` — the distinct disks of one extent, index = fragment index — by the
/// chunk's place in its file: the disks are taken in the order of `all` (every disk of
/// the pool, sorted), starting at the one whose turn it is, the turn moving on by one
/// disk every `STRIPE_RUN` chunks. A disk's fragment index then falls by one per turn,
/// so it holds data shards (the low indices) of `needed × STRIPE_RUN` consecutive
/// chunks, then redundancy, and over a file every disk takes every role. A sequential
/// read of a run of chunks finds a disk's data shards side by side (appends keep file
/// order) and reads them as one request (`BlockDevice::read_into`). The set of disks is
/// unchanged; so is every other invariant of placement.
pub fn stripe_order(chosen: &mut [DiskId], all: &[DiskId], chunk: u64) {
    debug_assert!(all.windows(2).all(|w| w[0] < w[1]), "all disks, sorted");
    if all.is_empty() {
        return;
    }
    let turn = ((chunk / STRIPE_RUN) % all.len() as u64) as usize;
    let rank = |disk: &DiskId| {
        let at = all.binary_search(disk).unwrap_or_else(|at| at);
        (at + all.len() - turn) % all.len()
    };
    chosen.sort_by_key(rank);
    debug_assert!(is_distinct(chosen));
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

    #[test]
    fn a_disk_keeps_its_role_for_a_run_of_chunks_and_takes_every_role_over_a_file() {
        let all: Vec<DiskId> = (0..6).map(DiskId).collect();
        let mut roles: Vec<Vec<usize>> = vec![Vec::new(); 6];
        for chunk in 0..48 {
            let mut chosen = vec![DiskId(4), DiskId(0), DiskId(5), DiskId(2), DiskId(1), DiskId(3)];
            stripe_order(&mut chosen, &all, chunk);
            let mut sorted = chosen.clone();
            sorted.sort();
            assert_eq!(sorted, all, "the same disks");
            for (index, disk) in chosen.iter().enumerate() {
                roles[disk.0 as usize].push(index);
            }
        }
        for (disk, indices) in roles.iter().enumerate() {
            // Under erasure:4+2 a disk holds data shards (indices 0..4) of eight
            // consecutive chunks, then parity of four.
            let data: Vec<bool> = indices.iter().map(|index| *index < 4).collect();
            let switches = data.windows(2).filter(|w| w[0] != w[1]).count();
            assert!(switches <= 8, "disk {disk} changes role {switches} times in 48 chunks");
            let mut taken = indices.clone();
            taken.sort();
            taken.dedup();
            assert_eq!(taken, (0..6).collect::<Vec<_>>(), "disk {disk} takes every index");
            assert!(indices.chunks(STRIPE_RUN as usize).all(|turn| turn.iter().all(|i| *i == turn[0])));
        }
    }

    #[test]
    fn with_more_disks_than_fragments_the_chosen_ones_are_ordered_from_the_turn() {
        let all: Vec<DiskId> = (0..8).map(DiskId).collect();
        let mut chosen = vec![DiskId(7), DiskId(1), DiskId(3)];
        // Turn 2 (chunks 4 and 5): disks from 2 on, wrapping.
        stripe_order(&mut chosen, &all, 4);
        assert_eq!(chosen, vec![DiskId(3), DiskId(7), DiskId(1)]);
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
