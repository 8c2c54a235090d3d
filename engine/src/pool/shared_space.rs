//! Disks that draw on one free space: directories on one filesystem each see all of its
//! free bytes as their own room, so six such disks would count them six times — a pool
//! that `df` shows several times larger than its filesystem, and writes taken that no
//! disk can store. `share_free_space` counts that free space once.
//!
//! Contract: a disk that shares nothing keeps its capacity; within a group of disks
//! drawing on one free space, the rooms (capacity less use) add up to at most what is
//! free there, split in proportion to the room each would have alone; no capacity is
//! ever raised, nor lowered below what the disk holds.

use std::collections::BTreeMap;

use crate::media::device::SharedFree;
use crate::meta::state::DiskId;

/// One disk as its device sees itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskSpace {
    pub(crate) id: DiskId,
    /// Bytes it may hold, by its own account (its share of nothing).
    pub(crate) capacity: u64,
    pub(crate) used: u64,
    pub(crate) shared: Option<SharedFree>,
}

/// Each disk's capacity with free space that several disks draw on counted once (see
/// the module header).
pub(crate) fn share_free_space(disks: &[DiskSpace]) -> BTreeMap<DiskId, u64> {
    let mut capacities: BTreeMap<DiskId, u64> = disks.iter().map(|d| (d.id, d.capacity)).collect();
    // Each source's free bytes (the least any of its disks measured: each takes only its
    // own writes off between measurements) and the disks drawing on it.
    let mut groups: BTreeMap<u64, (u64, Vec<&DiskSpace>)> = BTreeMap::new();
    for disk in disks {
        if let Some(shared) = disk.shared {
            let group = groups.entry(shared.source).or_insert((u64::MAX, Vec::new()));
            group.0 = group.0.min(shared.free);
            group.1.push(disk);
        }
    }
    for (free, members) in groups.into_values() {
        let room = |d: &DiskSpace| u128::from(d.capacity.saturating_sub(d.used));
        let alone: u128 = members.iter().map(|d| room(d)).sum();
        if alone <= u128::from(free) {
            continue;
        }
        for disk in &members {
            // Less than `room(disk)`, as `free < alone`: fits in a u64.
            let share = u64::try_from(room(disk) * u128::from(free) / alone).unwrap_or(u64::MAX);
            capacities.insert(disk.id, disk.used.max(disk.capacity.min(disk.used.saturating_add(share))));
        }
        debug_assert!(
            members.iter().map(|d| u128::from(capacities[&d.id].saturating_sub(d.used))).sum::<u128>()
                <= u128::from(free),
            "a shared free space is counted once"
        );
    }
    debug_assert!(disks.iter().all(|d| capacities[&d.id] <= d.capacity.max(d.used)), "no capacity raised");
    capacities
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn disk(id: u32, capacity: u64, used: u64, source: Option<u64>, free: u64) -> DiskSpace {
        DiskSpace { id: DiskId(id), capacity, used, shared: source.map(|source| SharedFree { source, free }) }
    }

    #[test]
    fn disks_on_one_filesystem_share_its_free_space() {
        // Three directories on a filesystem with 9 GiB free, each holding 1 GiB: each
        // sees 10 GiB, together they can take 9 GiB more, not 27.
        let disks: Vec<_> = (1..=3).map(|id| disk(id, 10 * GIB, GIB, Some(7), 9 * GIB)).collect();
        let capacities = share_free_space(&disks);
        for id in 1..=3 {
            assert_eq!(capacities[&DiskId(id)], GIB + 3 * GIB);
        }
    }

    #[test]
    fn disks_of_their_own_keep_their_capacity() {
        let disks = vec![
            disk(1, 10 * GIB, GIB, Some(1), 9 * GIB),
            disk(2, 4 * GIB, 0, Some(2), 4 * GIB),
            disk(3, GIB, 0, None, 0),
        ];
        let capacities = share_free_space(&disks);
        assert_eq!(capacities[&DiskId(1)], 10 * GIB);
        assert_eq!(capacities[&DiskId(2)], 4 * GIB);
        assert_eq!(capacities[&DiskId(3)], GIB);
    }

    #[test]
    fn declared_capacities_that_fit_the_free_space_are_kept() {
        // Two disks of 2 GiB declared on a filesystem with 100 GiB free: room enough.
        let disks: Vec<_> = (1..=2).map(|id| disk(id, 2 * GIB, 0, Some(7), 100 * GIB)).collect();
        let capacities = share_free_space(&disks);
        assert_eq!(capacities[&DiskId(1)], 2 * GIB);
        assert_eq!(capacities[&DiskId(2)], 2 * GIB);
    }

    #[test]
    fn the_free_space_is_split_by_the_room_each_would_have() {
        // 6 GiB free; a disk declared at 2 GiB (room 2) and one with the whole filesystem
        // (room 6): 1.5 and 4.5.
        let disks = vec![disk(1, 2 * GIB, 0, Some(7), 6 * GIB), disk(2, 6 * GIB, 0, Some(7), 6 * GIB)];
        let capacities = share_free_space(&disks);
        assert_eq!(capacities[&DiskId(1)], 3 * GIB / 2);
        assert_eq!(capacities[&DiskId(2)], 9 * GIB / 2);
    }

    #[test]
    fn the_least_measured_free_space_counts_and_use_is_never_cut() {
        // The disks measured 4, 2 and 3 GiB free (each takes only its own writes off
        // between measurements): 2 GiB are shared; a full disk keeps what it holds.
        let disks = vec![
            disk(1, 5 * GIB, GIB, Some(7), 4 * GIB),
            disk(2, 3 * GIB, GIB, Some(7), 2 * GIB),
            disk(3, GIB, GIB, Some(7), 3 * GIB),
        ];
        let capacities = share_free_space(&disks);
        let room: u64 = disks.iter().map(|d| capacities[&d.id] - d.used).sum();
        assert!(room <= 2 * GIB, "{room}");
        assert!(room >= 2 * GIB - 2, "{room}");
        assert_eq!(capacities[&DiskId(3)], GIB);
    }

    #[test]
    fn a_full_filesystem_leaves_no_room() {
        let disks: Vec<_> = (1..=4).map(|id| disk(id, 3 * GIB, GIB, Some(9), 0)).collect();
        let capacities = share_free_space(&disks);
        assert!(disks.iter().all(|d| capacities[&d.id] == d.used));
    }
}
