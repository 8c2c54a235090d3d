//! The oracle's checks of the invariants in DESIGN.md, against the running pool and the
//! simulated disks. Each returns `Err(detail)` naming what broke.

use std::collections::{BTreeMap, BTreeSet};

use dfs_engine::codec;
use dfs_engine::device::{BlockDevice, BlockKind, BlockName, ExtentId};
use dfs_engine::fragment;
use dfs_engine::meta::journal;
use dfs_engine::meta::state::EXTENT_BYTES_MAX;
use dfs_engine::report::Health;
use dfs_engine::{Ino, InodeKind, Pool};

use crate::model::View;
use crate::world::World;

/// The invariants, by the names runs report.
pub const OPERATIONS_MATCH_MODEL: &str = "operations-match-model";
pub const ACKNOWLEDGED_DATA_READABLE: &str = "acknowledged-data-readable";
pub const NO_HALF_VISIBLE_STATE: &str = "no-half-visible-state";
pub const METADATA_REPLICAS_AGREE: &str = "metadata-replicas-agree";
pub const EXTENTS_MEET_POLICY: &str = "extents-meet-policy";
pub const NO_LEAKED_FRAGMENTS: &str = "no-leaked-fragments";
pub const SPACE_ACCOUNTING: &str = "space-accounting";
pub const LOSS_REPORTED_EXACTLY: &str = "loss-reported-exactly";

/// Every invariant a run checks, in report order.
pub const ALL: [&str; 8] = [
    OPERATIONS_MATCH_MODEL,
    ACKNOWLEDGED_DATA_READABLE,
    NO_HALF_VISIBLE_STATE,
    METADATA_REPLICAS_AGREE,
    EXTENTS_MEET_POLICY,
    NO_LEAKED_FRAGMENTS,
    SPACE_ACCOUNTING,
    LOSS_REPORTED_EXACTLY,
];

/// The engine's namespace: every path with its bytes (`None` for directories), and the
/// files whose read failed with the error and the file's inode.
pub fn engine_view(pool: &mut Pool) -> (View, BTreeMap<String, (dfs_engine::Error, Ino)>) {
    let mut view = View::new();
    let mut failed = BTreeMap::new();
    let mut stack = vec![(Ino::ROOT, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = pool.readdir(dir) else { continue };
        for entry in entries {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&entry.name));
            match entry.kind {
                InodeKind::Directory => {
                    view.insert(path.clone(), None);
                    stack.push((entry.ino, path));
                }
                _ => match read_all(pool, entry.ino) {
                    Ok(bytes) => {
                        view.insert(path, Some(std::sync::Arc::new(bytes)));
                    }
                    Err(e) => {
                        view.insert(path.clone(), Some(Default::default()));
                        failed.insert(path, (e, entry.ino));
                    }
                },
            }
        }
    }
    (view, failed)
}

/// Reads a whole file through a handle. (Closing may fail to flush buffered writes of
/// other handles, e.g. with ENOSPC; that is the writer's error, not this read's.)
pub fn read_all(pool: &mut Pool, ino: Ino) -> dfs_engine::Result<Vec<u8>> {
    let size = pool.getattr(ino)?.size;
    let fh = pool.open_file(ino)?;
    let data = pool.read(fh, 0, size as usize);
    let _ = pool.release(fh);
    data
}

/// Whether file `ino`, whose data cannot be read, holds exactly `bytes` according to its
/// metadata: its size, and the BLAKE3 of every extent (holes read as zeros).
pub fn metadata_matches(pool: &Pool, ino: Ino, bytes: &[u8]) -> bool {
    let state = pool.state();
    if state.inodes.get(&ino).map(|i| i.size) != Some(bytes.len() as u64) {
        return false;
    }
    let map = state.file_extents.get(&ino);
    bytes.chunks(EXTENT_BYTES_MAX as usize).enumerate().all(|(index, chunk)| {
        match map.and_then(|m| m.get(&(index as u64))).and_then(|id| state.extents.get(id)) {
            None => chunk.iter().all(|b| *b == 0),
            Some(record) => {
                let len = (record.len as usize).min(chunk.len());
                blake3::hash(&chunk[..len]).as_bytes() == &record.hash
                    && record.len as usize <= chunk.len()
                    && chunk[len..].iter().all(|b| *b == 0)
            }
        }
    })
}

/// The extents whose data cannot be read, judged independently of the engine's read
/// path: a fragment counts only if its device returns a block that verifies as exactly
/// that fragment.
pub fn truly_lost(pool: &Pool) -> BTreeSet<ExtentId> {
    let state = pool.state();
    state
        .extents
        .values()
        .filter(|record| !record.is_inline())
        .filter(|record| {
            let shard_len = codec::shard_len(record.policy, record.len as usize);
            let intact = record
                .fragments
                .iter()
                .enumerate()
                .filter(|(index, disk)| {
                    let name = BlockName::Fragment { extent: record.id, index: *index as u8 };
                    pool.device(**disk)
                        .and_then(|d| d.read(name).ok())
                        .is_some_and(|block| fragment::verify(&block, record.id, *index as u8, shard_len).is_ok())
                })
                .count();
            intact < record.policy.needed()
        })
        .map(|r| r.id)
        .collect()
}

/// Files holding at least one of `lost`.
pub fn files_of(pool: &Pool, lost: &BTreeSet<ExtentId>) -> BTreeSet<String> {
    let paths = pool.paths();
    pool.state()
        .file_extents
        .iter()
        .filter(|(_, map)| map.values().any(|id| lost.contains(id)))
        .filter_map(|(ino, _)| paths.get(ino).cloned())
        .collect()
}

/// Invariant 3: every reachable journal replica recovers, on its own, to the pool's state.
pub fn replicas_agree(world: &World) -> Result<(), String> {
    let Some(pool) = world.pool.as_ref() else { return Err("no pool".into()) };
    let state = pool.state();
    for disk in state.journal_disks() {
        let Some(device) = pool.device(disk) else { continue };
        if world.sim_disk(disk).is_some_and(|sim| sim.is_down() || sim.used_bytes() != sim.inner().used_bytes()) {
            continue; // a failed or full disk cannot take the journal; the others must suffice
        }
        match journal::recover(&[device.as_ref()]) {
            Ok(Some(recovered)) if recovered.state == *state => {}
            Ok(Some(recovered)) => {
                return Err(format!("replica on {disk} recovers to a different state (seq {})", recovered.tip.seq))
            }
            Ok(None) => return Err(format!("replica on {disk} holds no metadata")),
            Err(e) => return Err(format!("replica on {disk}: {e}")),
        }
    }
    Ok(())
}

/// Invariant 4: the structural checks, including distinct disks per extent.
pub fn structure(pool: &Pool) -> Result<(), String> {
    pool.state().check()
}

/// Invariant 6: after recovery every stored fragment is referenced where it lies.
pub fn no_leaks(pool: &Pool) -> Result<(), String> {
    let state = pool.state();
    for disk in state.disks.keys() {
        let Some(device) = pool.device(*disk) else { continue };
        let Ok(names) = device.list(BlockKind::Fragment) else { continue };
        for name in names {
            let BlockName::Fragment { extent, index } = name else { continue };
            let referenced = state.extents.get(&extent).and_then(|r| r.fragments.get(usize::from(index))) == Some(disk);
            if !referenced {
                return Err(format!("{name} on {disk} is referenced by no extent"));
            }
        }
    }
    Ok(())
}

/// Invariant 7: the space the pool reports for each disk equals the sum of the blocks
/// the disk really holds, and its fragment count equals the fragments metadata places there.
pub fn space_accounting(world: &World) -> Result<(), String> {
    let Some(pool) = world.pool.as_ref() else { return Err("no pool".into()) };
    for (info, sim) in pool.disk_infos().iter().zip(&world.disks) {
        if sim.is_down() || sim.used_bytes() != sim.inner().used_bytes() {
            continue; // failed or filled on purpose: the disk reports what the fault says
        }
        if info.state != "active" && info.state != "draining" {
            continue; // failed or removed in the pool: never read again
        }
        let held: u64 = sim.inner().blocks().iter().map(|(_, size)| size).sum();
        if info.used_bytes != held {
            return Err(format!("{} reports {} bytes used but holds {held}", info.id, info.used_bytes));
        }
        let stored = sim.inner().blocks().iter().filter(|(n, _)| n.kind() == BlockKind::Fragment).count();
        if stored > info.fragments {
            return Err(format!("{} holds {stored} fragments but metadata places {} there", info.id, info.fragments));
        }
    }
    Ok(())
}

/// The engine's own loss report: extents it finds lost when verifying every fragment.
pub fn reported_lost(pool: &Pool) -> BTreeSet<String> {
    pool.list_extents(None, true).into_iter().filter(|e| e.health == Health::Lost).map(|e| e.extent).collect()
}

/// The file offset of an extent, for messages.
pub fn extent_offset(pool: &Pool, id: ExtentId) -> Option<u64> {
    pool.state()
        .file_extents
        .values()
        .find_map(|map| map.iter().find(|(_, e)| **e == id).map(|(index, _)| index * EXTENT_BYTES_MAX))
}

/// With `Expect::settled`: the pool finished its background work, and every extent is
/// stored under the policy its file — and, with tiering, its temperature — asks for.
pub fn settled(pool: &Pool) -> Result<(), String> {
    if pool.has_background_work() {
        let queue = pool.rebuild_queue().len();
        let transitions = pool.open_transitions();
        return Err(format!("background work remains: {queue} extent(s) to rebuild, transitions {transitions:?} open"));
    }
    let state = pool.state();
    for (ino, map) in &state.file_extents {
        for (index, id) in map {
            let wanted = pool.target_policy(dfs_engine::meta::state::ChunkSlot { ino: *ino, index: *index });
            if let Some(record) = state.extents.get(id) {
                if record.policy != wanted {
                    return Err(format!("extent {id} is {} but its file asks for {wanted}", record.policy));
                }
            }
        }
    }
    Ok(())
}
