//! The oracle's checks of the invariants in DESIGN.md, against the running pool and the
//! simulated disks. Each returns `Err(detail)` naming what broke.

use std::collections::{BTreeMap, BTreeSet};

use dfs_engine::media::codec;
use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName, ExtentId};
use dfs_engine::media::fragment;
use dfs_engine::meta::journal;
use dfs_engine::meta::state::EXTENT_BYTES_MAX;
use dfs_engine::meta::store::StoreConfig;
use dfs_engine::reports::report::Health;
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
pub const SCRUB_FINDS_AND_REPAIRS: &str = "scrub-finds-and-repairs";
pub const WRITES_MEET_QUORUM: &str = "writes-meet-quorum";
pub const OWED_REPAIRED_ON_RETURN: &str = "owed-repaired-on-return";
pub const ONE_WRITER: &str = "one-writer-survives";

/// Every invariant a run checks, in report order.
pub const ALL: [&str; 12] = [
    OPERATIONS_MATCH_MODEL,
    ACKNOWLEDGED_DATA_READABLE,
    NO_HALF_VISIBLE_STATE,
    METADATA_REPLICAS_AGREE,
    EXTENTS_MEET_POLICY,
    NO_LEAKED_FRAGMENTS,
    SPACE_ACCOUNTING,
    LOSS_REPORTED_EXACTLY,
    SCRUB_FINDS_AND_REPAIRS,
    WRITES_MEET_QUORUM,
    OWED_REPAIRED_ON_RETURN,
    ONE_WRITER,
];

/// Invariant 6a: every extent created since `first_new` (an extent id) had at least its
/// write quorum of fragments written: fragments named on disks that could take no write
/// before the operation (`unwritable`: offline, failed, draining) were never written.
pub fn new_extents_meet_quorum(pool: &Pool, first_new: u64, unwritable: &[dfs_engine::DiskId]) -> Result<(), String> {
    let state = pool.state();
    for (id, record) in state.extents.range(ExtentId(first_new)..).filter(|(_, r)| !r.is_inline()) {
        let written = record.fragments.iter().filter(|d| !unwritable.contains(d)).count();
        let quorum = state.availability.write_quorum(record.policy);
        if written < quorum {
            return Err(format!(
                "extent {} under {} was written with {written} fragments, below its write quorum of {quorum} ({:?}, \
                 unwritable {unwritable:?})",
                id, record.policy, record.fragments
            ));
        }
    }
    Ok(())
}

/// Invariant 6b: a write refused as below the write quorum was: some policy in use
/// (the default, or a file's own) has a write quorum above the disks that take writes
/// and have room (a full disk takes no journal record, and so no small file's data).
pub fn below_quorum(world: &World) -> Result<(), String> {
    let Some(pool) = world.pool.as_ref() else { return Err("no pool".into()) };
    let state = pool.state();
    let has_room = |disk: dfs_engine::DiskId| {
        world.sim_disk(disk).is_none_or(|sim| {
            sim.used_bytes() == sim.inner().used_bytes() && sim.used_bytes() + (1 << 20) <= sim.capacity_bytes()
        })
    };
    let writable = state.disks.keys().filter(|d| state.disk_writable(**d) && has_room(**d)).count();
    let policies = std::iter::once(state.default_policy).chain(state.inodes.values().filter_map(|i| i.policy));
    let widest = policies.map(|p| state.availability.write_quorum(p)).max().unwrap_or(1);
    if writable < widest {
        return Ok(());
    }
    Err(format!(
        "{writable} disks take writes and have room, enough for every policy's write quorum (at most {widest})"
    ))
}

/// Invariant 6c: once the background work is done, no disk that is online is owed
/// anything: what was written while it was away has been repaired.
pub fn owed_repaired(pool: &Pool) -> Result<(), String> {
    let state = pool.state();
    match state.owed.iter().find(|(disk, _)| state.disk_online(**disk)) {
        Some((disk, owed)) => Err(format!(
            "disk {disk} is back but still owed {} extent(s) after the background work finished (first: {:?})",
            owed.len(),
            owed.iter().next()
        )),
        None => Ok(()),
    }
}

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
        let slot = dfs_engine::meta::state::ChunkSlot { ino, index: index as u64 };
        let whole = |id: &ExtentId| pool.extent_record(*id).ok().flatten();
        if let Some((layer, _)) = state.slot_layers(slot).last() {
            let Some(record) = whole(&layer.extent) else { return false };
            // Older layers and the extent under them are partly hidden: the newest
            // layer's bytes and the chunk's length are what the metadata pins down.
            let len = state.slot_len(slot).unwrap_or(0) as usize;
            let mut newest = Vec::new();
            for (offset, range) in &layer.ranges {
                match chunk.get(*offset as usize..(*offset + *range) as usize) {
                    Some(bytes) => newest.extend_from_slice(bytes),
                    None => return false,
                }
            }
            return blake3::hash(&newest).as_bytes() == &record.hash
                && len <= chunk.len()
                && chunk[len..].iter().all(|b| *b == 0);
        }
        let Some(id) = map.and_then(|m| m.get(&(index as u64))) else { return chunk.iter().all(|b| *b == 0) };
        match whole(id) {
            // A record the store cannot give back pins nothing down.
            None => false,
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
/// that fragment, and its disk is not offline (reads go around an offline disk until it
/// rejoins, so what only it holds is unreadable — not lost — until then).
pub fn truly_lost(pool: &Pool) -> BTreeSet<ExtentId> {
    let state = pool.state();
    state
        .extents
        .iter()
        .filter(|(_, record)| !record.is_inline())
        .filter(|(id, record)| {
            let shard_len = codec::shard_len(record.policy, record.len as usize);
            let intact = record
                .fragments
                .iter()
                .enumerate()
                .filter(|(index, disk)| {
                    let name = BlockName::Fragment { extent: *id, index: *index as u8 };
                    !state.disk_awaited(**disk)
                        && pool
                            .device(**disk)
                            .and_then(|d| d.read(name).ok())
                            .is_some_and(|block| fragment::verify(&block, *id, *index as u8, shard_len).is_ok())
                })
                .count();
            intact < record.policy.needed()
        })
        .map(|(id, _)| id)
        .collect()
}

/// Files holding at least one of `lost`.
pub fn files_of(pool: &Pool, lost: &BTreeSet<ExtentId>) -> BTreeSet<String> {
    let paths = pool.paths();
    let state = pool.state();
    state
        .file_extents
        .keys()
        .filter(|ino| state.file_extent_ids(**ino).iter().any(|(_, id)| lost.contains(id)))
        .filter_map(|ino| paths.get(ino).cloned())
        .collect()
}

/// Invariant 3: every reachable journal replica recovers, on its own, to the pool's state.
pub fn replicas_agree(world: &World) -> Result<(), String> {
    let Some(pool) = world.pool.as_ref() else { return Err("no pool".into()) };
    // Compared as read back whole, whatever root each side's store stands on.
    let state = &pool.state_whole().map_err(|e| format!("the pool's temperatures: {e}"))?;
    for disk in pool.journal_disks() {
        let Some(device) = pool.device(disk) else { continue };
        if world.sim_disk(disk).is_some_and(|sim| sim.is_down() || sim.used_bytes() != sim.inner().used_bytes()) {
            continue; // a failed or full disk cannot take the journal; the others must suffice
        }
        if world.away_last_recovery.iter().any(|d| *d as u32 + 1 == disk.0) {
            continue; // away while recovery re-replicated; the next recovery rewrites it
        }
        // A store page the simulator rotted (or made unreadable) on this replica alone is
        // read through another replica and rewritten from it when a read or the scrub
        // meets it (`Store::check`; the scrub's check below): not a divergence. The
        // replica is judged as written.
        let recovered = match world.sim_disk(disk) {
            Some(sim) => recover_whole(&AsWritten { device: device.as_ref(), sim }),
            None => recover_whole(device.as_ref()),
        };
        match recovered {
            Ok(Some(recovered)) if recovered.state == *state => {}
            Ok(Some(recovered)) => {
                return Err(format!(
                    "replica on {disk} recovers to a different state (seq {}; differs in {})",
                    recovered.tip.seq,
                    differences(&recovered.state, state).join(", ")
                ))
            }
            Ok(None) => return Err(format!("replica on {disk} holds no metadata")),
            Err(e) => return Err(format!("replica on {disk}: {e}")),
        }
    }
    Ok(())
}

/// A replica's device with its store pages read as they were written: the bit rot and
/// latent errors the simulator injected into them left out.
struct AsWritten<'a> {
    device: &'a dyn BlockDevice,
    sim: &'a crate::world::SimDisk,
}

impl BlockDevice for AsWritten<'_> {
    fn read(&self, name: BlockName) -> Result<Vec<u8>, dfs_engine::media::device::DeviceError> {
        if matches!(name, BlockName::StorePage { .. }) && self.sim.is_faulted(name) && !self.sim.is_down() {
            return self.sim.inner().read(name);
        }
        self.device.read(name)
    }
    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), dfs_engine::media::device::DeviceError> {
        self.device.write(name, data)
    }
    fn create(
        &self,
        name: BlockName,
        data: &[u8],
    ) -> Result<dfs_engine::media::device::Created, dfs_engine::media::device::DeviceError> {
        self.device.create(name, data)
    }
    fn shared(&self) -> bool {
        self.device.shared()
    }
    fn delete(&self, name: BlockName) -> Result<(), dfs_engine::media::device::DeviceError> {
        self.device.delete(name)
    }
    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, dfs_engine::media::device::DeviceError> {
        self.device.list(kind)
    }
    fn sync(&self) -> Result<(), dfs_engine::media::device::DeviceError> {
        self.device.sync()
    }
    fn capacity_bytes(&self) -> u64 {
        self.device.capacity_bytes()
    }
    fn used_bytes(&self) -> u64 {
        self.device.used_bytes()
    }
    fn describe(&self) -> String {
        self.device.describe()
    }
    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, dfs_engine::media::device::DeviceError> {
        self.device.modified_secs(name)
    }
}

/// Invariant 5 for metadata: after a scrub with repair, every copy of every block the
/// store's root names verifies on every journal disk that is up and holds the root.
pub fn metadata_scrubbed(world: &World, report: &dfs_engine::services::scrub::ScrubReport) -> Result<(), String> {
    let Some(pool) = world.pool.as_ref() else { return Err("no pool".into()) };
    let Some(reported) = report.metadata.as_ref() else {
        return Err("a scrub of the whole pool did not check the metadata".into());
    };
    if !reported.lost.is_empty() {
        return Ok(()); // beyond repair: reported, and refused at the next open
    }
    let after = pool.check_metadata(false);
    let up = |disk: dfs_engine::DiskId| world.sim_disk(disk).is_none_or(|sim| !sim.is_down());
    match after.findings.iter().find(|f| up(f.disk)) {
        Some(left) => Err(format!(
            "after a scrub with repair, the metadata copy {} on {} still does not verify ({}); the scrub reported {} \
             bad copies",
            left.block,
            left.disk,
            left.problem,
            reported.findings.len()
        )),
        None => Ok(()),
    }
}

/// What `device` alone recovers to, read whole (temperatures, inline data) from its own store.
fn recover_whole(device: &dyn BlockDevice) -> Result<Option<journal::Recovered>, String> {
    let devices = [device];
    let config = StoreConfig { parallel: false, ..Default::default() };
    let Some(mut recovered) = journal::recover(&devices, &config).map_err(|e| e.to_string())? else { return Ok(None) };
    let source = recovered.store.as_ref().map(|store| (store, &devices[..]));
    dfs_engine::meta::paged::read_whole(&mut recovered.state, source)
        .map_err(|e| format!("what its store holds: {e}"))?;
    Ok(Some(recovered))
}

/// The parts in which two states differ, by name.
fn differences(a: &dfs_engine::meta::state::MetaState, b: &dfs_engine::meta::state::MetaState) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut differ = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    differ("inodes", a.inodes == b.inodes);
    differ("dirs", a.dirs == b.dirs);
    differ("file_extents", a.file_extents == b.file_extents);
    differ("extents", a.extents == b.extents);
    differ("temperature", a.temperature == b.temperature);
    differ("scrubbed", a.scrubbed == b.scrubbed);
    differ("xattrs", a.xattrs == b.xattrs);
    differ("layers", a.layers == b.layers);
    differ("disks", a.disks == b.disks);
    differ("offline", a.offline == b.offline);
    differ("owed", a.owed == b.owed);
    if out.is_empty() {
        out.push("the rest of the state");
    }
    out
}

/// Invariant 4: the structural checks, including distinct disks per extent.
pub fn structure(pool: &Pool) -> Result<(), String> {
    pool.state().check()
}

/// Every stored fragment that no record places where it lies, with its age in seconds
/// when its disk knows: judged from the devices and the state, not the engine's GC.
pub fn unreferenced(world: &World, now_secs: i64) -> Vec<(dfs_engine::DiskId, BlockName, Option<u64>)> {
    let Some(pool) = world.pool.as_ref() else { return Vec::new() };
    let state = pool.state();
    let mut out = Vec::new();
    // An offline disk keeps what was freed while it was away until it rejoins.
    for disk in state.disks.keys().filter(|d| !state.disk_awaited(**d)) {
        let Some(device) = pool.device(*disk) else { continue };
        let Some(names) = collectable(world, *disk, device.as_ref()) else { continue };
        for name in names {
            let BlockName::Fragment { extent, index } = name else { continue };
            if state.extents.get(&extent).and_then(|r| r.fragments.get(usize::from(index))) != Some(disk) {
                let age = device.modified_secs(name).ok().flatten().map(|t| now_secs.saturating_sub(t).max(0) as u64);
                out.push((*disk, name, age));
            }
        }
    }
    out
}

/// The fragments on `disk` an orphan collector must have seen: those the disk holds,
/// but for any a lagging listing left out (see `no_leaks_except`). `None` when the pool
/// cannot reach the disk (failed, vanished): nothing there is collected.
fn collectable(world: &World, disk: dfs_engine::DiskId, device: &dyn BlockDevice) -> Option<Vec<BlockName>> {
    if device.modified_secs(BlockName::Label).is_err() {
        return None;
    }
    match world.sim_disk(disk) {
        Some(sim) => {
            let held = sim.inner().blocks().into_iter().map(|(n, _)| n);
            Some(held.filter(|n| n.kind() == BlockKind::Fragment && !sim.inner().passed_over(*n)).collect())
        }
        None => device.list(BlockKind::Fragment).ok(),
    }
}

/// `no_leaks`, skipping `away`: disks that were away while the pool recovered keep their
/// orphans until the orphan GC collects them, and offline disks keep theirs until they
/// rejoin.
///
/// What a disk holds is judged by what a lister can see: on a store whose listing lags
/// (`Setup::listing_lag`), a fragment some listing left out may have been passed over
/// by the orphan collector (a later open or `cleanup-orphans` collects it), and one a
/// listing still shows after its delete is gone.
pub fn no_leaks_except(world: &World, away: &[dfs_engine::DiskId]) -> Result<(), String> {
    let Some(pool) = world.pool.as_ref() else { return Err("no pool".into()) };
    let state = pool.state();
    for disk in state.disks.keys().filter(|d| !away.contains(d) && !state.disk_awaited(**d)) {
        let Some(device) = pool.device(*disk) else { continue };
        let Some(names) = collectable(world, *disk, device.as_ref()) else { continue };
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
        // Fragments a lagging listing left out may be left for a later orphan collection
        // (see `no_leaks_except`).
        let stored = sim
            .inner()
            .blocks()
            .iter()
            .filter(|(n, _)| n.kind() == BlockKind::Fragment && !sim.inner().passed_over(*n))
            .count();
        let away = world
            .away_last_recovery
            .iter()
            .any(|d| world.disks.get(*d).is_some_and(|w| std::ptr::eq(w.as_ref(), sim.as_ref())));
        if stored > info.fragments && !away {
            return Err(format!("{} holds {stored} fragments but metadata places {} there", info.id, info.fragments));
        }
    }
    Ok(())
}

/// The engine's own loss report: extents it finds lost when verifying every fragment.
pub fn reported_lost(pool: &Pool) -> BTreeSet<String> {
    pool.list_extents(None, true).into_iter().filter(|e| e.health == Health::Lost).map(|e| e.stored_as).collect()
}

/// The file offset of an extent, for messages.
pub fn extent_offset(pool: &Pool, id: ExtentId) -> Option<u64> {
    let state = pool.state();
    state.extent_slots().get(&id).map(|slot| slot.index * EXTENT_BYTES_MAX)
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

/// A fragment as the oracle names it: (extent, index, disk).
pub type FragmentAt = (ExtentId, u8, dfs_engine::DiskId);

/// Every referenced fragment that does not verify when read through its device, judged
/// without the engine's read or scrub path; and the extents with fewer intact fragments
/// than their policy needs.
pub fn bad_fragments(pool: &Pool) -> (BTreeSet<FragmentAt>, BTreeSet<ExtentId>) {
    let state = pool.state();
    let mut bad = BTreeSet::new();
    let mut lost = BTreeSet::new();
    for (id, record) in state.extents.iter().filter(|(_, r)| !r.is_inline()) {
        let shard_len = codec::shard_len(record.policy, record.len as usize);
        let mut intact = 0;
        for (index, disk) in record.fragments.iter().enumerate() {
            let name = BlockName::Fragment { extent: id, index: index as u8 };
            if state.disk_awaited(*disk) {
                continue; // offline and waited for: neither checked nor repaired until back
            }
            let in_service = state.disk_readable(*disk);
            let good = in_service
                && pool
                    .device(*disk)
                    .and_then(|d| d.read(name).ok())
                    .is_some_and(|block| fragment::verify(&block, id, index as u8, shard_len).is_ok());
            if good {
                intact += 1;
            } else {
                bad.insert((id, index as u8, *disk));
            }
        }
        if intact < record.policy.needed() {
            lost.insert(id);
        }
    }
    (bad, lost)
}

/// Invariant 5: the scrub found every bad fragment (`before`, judged before it ran) and
/// invented none, reported exactly the extents beyond tolerance (`lost`), and — with
/// repair — left every other extent with all its fragments intact. `faults_during`: a
/// misdirected write may strike while the scrub runs (its own repair writes included),
/// so damage it did then may be found, or left, beyond `before`; and a barrier the scrub
/// runs may rewrite a bad fragment before the scrub reaches it.
pub fn scrub_report(
    pool: &Pool,
    report: &dfs_engine::services::scrub::ScrubReport,
    before: &BTreeSet<FragmentAt>,
    lost: &BTreeSet<ExtentId>,
    repair: bool,
    space_pressure: bool,
    faults_during: bool,
) -> Result<(), String> {
    let found: BTreeSet<FragmentAt> = report.findings.iter().map(|f| (f.raw.extent, f.raw.index, f.raw.disk)).collect();
    // The scrub's own barriers may rewrite a bad fragment before it gets there (an
    // extent written while a disk was away is written again elsewhere): one it did not
    // find must be intact now.
    let (bad_now, _) = bad_fragments(pool);
    if let Some(missed) = before.difference(&found).find(|at| bad_now.contains(at)) {
        return Err(format!("scrub missed bad fragment {missed:?} ({} found of {})", found.len(), before.len()));
    }
    if let Some(invented) = found.difference(before).next().filter(|_| !faults_during) {
        return Err(format!("scrub reported fragment {invented:?}, which verifies"));
    }
    // Reports name extents by their chunk.
    let names = pool.state().extent_slots();
    let name = |id: &ExtentId| names.get(id).map_or_else(|| id.to_string(), ToString::to_string);
    let reported: BTreeSet<String> = report.unrecoverable.iter().map(|u| u.extent.clone()).collect();
    let truly: BTreeSet<String> = lost.iter().map(name).collect();
    if reported != truly && !(faults_during && truly.is_subset(&reported)) {
        return Err(format!("scrub reported {reported:?} unrecoverable; beyond tolerance are {truly:?}"));
    }
    if !report.repair_failed.is_empty() && !space_pressure && !faults_during {
        return Err(format!("repair failed with room to spare: {:?}", report.repair_failed));
    }
    if repair {
        let (still_bad, _) = bad_fragments(pool);
        let mut failed: BTreeSet<&str> = report.repair_failed.iter().map(|f| f.extent.as_str()).collect();
        if faults_during {
            // A fault during the scrub may have pushed an extent past its tolerance.
            failed.extend(report.unrecoverable.iter().map(|u| u.extent.as_str()));
        }
        let unrepaired: Vec<_> = still_bad
            .iter()
            .filter(|(id, _, _)| !lost.contains(id) && !failed.contains(name(id).as_str()))
            .filter(|fragment| !faults_during || before.contains(fragment))
            .collect();
        if let Some(first) = unrepaired.first() {
            let states: Vec<String> = pool.state().disks.values().map(|d| format!("{}={}", d.id, d.state)).collect();
            return Err(format!(
                "{} bad fragment(s) of in-tolerance extents left after repair, first {first:?} (disks {})",
                unrepaired.len(),
                states.join(" ")
            ));
        }
    }
    Ok(())
}
