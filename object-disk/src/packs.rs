//! Packs: a store disk's fragments gathered into objects of about a megabyte, so that a
//! 1 MiB extent under `erasure:4+2` costs a quarter of a PUT per disk instead of one PUT
//! of 256 KiB (a store serves about as many requests a second of either size; see the
//! README's `object_sizes` figures). This module is the bookkeeping only — which record
//! of which name is where, which pack may go — and does no I/O; `ObjectDisk` sends the
//! requests.
//!
//! Contract:
//! - A pack is one object `pack/{epoch:016x}-{seq:016x}`, written once, create-only,
//!   and never changed: a header (`MAGIC`, `PACK_FORMAT`, the records, a BLAKE3 of the
//!   header) then the fragments' bytes. A record is a put (name, offset, length) or a
//!   tombstone (a name deleted). Packs apply in key order, tombstones of a pack before its
//!   puts; the last put of a name not followed by its tombstone is the name's block.
//! - The epoch is the writer's owner claim (`media::owner`), so a later owner's packs
//!   order after every pack of an earlier one: a fenced writer can neither replace nor
//!   delete what the later owner wrote.
//! - Puts and tombstones gather in the open pack, in memory, until it holds `PACK_BYTES`
//!   or the disk is synced (the `BlockDevice` crash model: an unsynced write may be lost).
//! - A pack is deleted only when each of its puts is dead — tombstoned, or replaced by a
//!   put in a pack that has landed — and none of its tombstones still hides a put in an
//!   older pack. So no crash brings back a deleted name or loses a replaced one's bytes.
//! - `used` is the bytes of every pack sealed plus the open pack's: a dead put keeps its
//!   room until its pack goes (`compaction` picks packs mostly dead).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dfs_engine::media::device::{BlockName, ExtentId};

/// The open pack is sealed and sent once it holds this many bytes.
pub(crate) const PACK_BYTES: u64 = 1 << 20;
/// The version of the pack object's layout, in its header.
pub(crate) const PACK_FORMAT: u16 = 1;
/// The namespace of pack objects under a disk's prefix.
pub(crate) const NAMESPACE: &str = "pack";
const MAGIC: &[u8; 8] = b"DFSPACK\0";
/// Magic, format, record count, header length, reserved.
pub(crate) const HEAD: usize = 24;
/// One record: kind, extent, index, offset, length (and two pad bytes).
const RECORD: usize = 20;
const SUM: usize = 32;
const PUT: u8 = 1;
const TOMB: u8 = 2;

/// A pack's place in the order packs apply in: its writer's owner epoch, then the
/// writer's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PackId {
    pub epoch: u64,
    pub seq: u64,
}

impl PackId {
    /// The object's name under `pack/`; names list in apply order.
    pub fn leaf(self) -> String {
        format!("{:016x}-{:016x}", self.epoch, self.seq)
    }

    pub fn parse(leaf: &str) -> Option<PackId> {
        let (epoch, seq) = leaf.split_once('-')?;
        if epoch.len() != 16 || seq.len() != 16 {
            return None;
        }
        Some(PackId { epoch: u64::from_str_radix(epoch, 16).ok()?, seq: u64::from_str_radix(seq, 16).ok()? })
    }
}

/// One record of a pack's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Put { name: BlockName, offset: u32, len: u32 },
    Tomb { name: BlockName },
}

/// The bytes of a pack holding `tombs`, then `puts`: header, then each put's data.
pub(crate) fn encode(tombs: &[BlockName], puts: &[(BlockName, &[u8])]) -> (Vec<u8>, Vec<Entry>) {
    let count = tombs.len() + puts.len();
    let header_len = HEAD + count * RECORD + SUM;
    let mut entries = Vec::with_capacity(count);
    entries.extend(tombs.iter().map(|&name| Entry::Tomb { name }));
    let mut offset = header_len;
    for (name, data) in puts {
        entries.push(Entry::Put { name: *name, offset: offset as u32, len: data.len() as u32 });
        offset += data.len();
    }
    let mut bytes = encode_header(&entries);
    debug_assert_eq!(bytes.len(), header_len);
    bytes.reserve(offset - header_len);
    for (_, data) in puts {
        bytes.extend_from_slice(data);
    }
    (bytes, entries)
}

/// The header of a pack holding `entries`, byte for byte as the pack begins.
pub(crate) fn encode_header(entries: &[Entry]) -> Vec<u8> {
    let header_len = HEAD + entries.len() * RECORD + SUM;
    let mut bytes = Vec::with_capacity(header_len);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&PACK_FORMAT.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(header_len as u32).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    for entry in entries {
        let (kind, name, offset, len) = match *entry {
            Entry::Put { name, offset, len } => (PUT, name, offset, len),
            Entry::Tomb { name } => (TOMB, name, 0, 0),
        };
        let BlockName::Fragment { extent, index } = name else { unreachable!("only fragments are packed") };
        bytes.push(kind);
        bytes.extend_from_slice(&extent.0.to_le_bytes());
        bytes.push(index);
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
    }
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    bytes
}

/// The header's length, from its first `HEAD` bytes; why not, for bytes that are no pack.
pub(crate) fn header_len(head: &[u8]) -> Result<usize, String> {
    if head.len() < HEAD || &head[..8] != MAGIC {
        return Err("not a pack (bad magic)".into());
    }
    let format = u16::from_le_bytes([head[8], head[9]]);
    if format != PACK_FORMAT {
        return Err(format!("a pack of format {format}, which this build (pack format {PACK_FORMAT}) does not read"));
    }
    let count = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
    let len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
    if len != HEAD + count * RECORD + SUM {
        return Err(format!("a pack header of {len} bytes cannot hold {count} records"));
    }
    Ok(len)
}

/// The records of a pack of `size` bytes from its whole header; why not, when the header
/// does not verify or names bytes the pack does not have.
pub(crate) fn decode(header: &[u8], size: u64) -> Result<Vec<Entry>, String> {
    let len = header_len(header)?;
    if header.len() < len {
        return Err(format!("a pack header of {len} bytes, {} read", header.len()));
    }
    let (body, sum) = header[..len].split_at(len - SUM);
    if blake3::hash(body).as_bytes() != sum {
        return Err("the pack header's checksum does not match (rot)".into());
    }
    let mut entries = Vec::new();
    for record in body[HEAD..].chunks_exact(RECORD) {
        let mut extent = [0u8; 8];
        extent.copy_from_slice(&record[1..9]);
        let name = BlockName::Fragment { extent: ExtentId(u64::from_le_bytes(extent)), index: record[9] };
        let offset = u32::from_le_bytes([record[10], record[11], record[12], record[13]]);
        let length = u32::from_le_bytes([record[14], record[15], record[16], record[17]]);
        entries.push(match record[0] {
            PUT if (offset as u64) >= len as u64 && offset as u64 + length as u64 <= size => {
                Entry::Put { name, offset, len: length }
            }
            PUT => return Err(format!("a record of {name} at {offset}+{length} outside the pack's {size} bytes")),
            TOMB => Entry::Tomb { name },
            other => return Err(format!("a record of unknown kind {other}")),
        });
    }
    Ok(entries)
}

/// A pack found at open: its name, size, time (seconds since the epoch) and records, or
/// why they could not be read.
pub(crate) type Listed = (PackId, u64, i64, Result<Vec<Entry>, String>);

/// Adds `id` to a sorted list of holders.
fn hold(holders: &mut Vec<PackId>, id: PackId) {
    if let Err(at) = holders.binary_search(&id) {
        holders.insert(at, id);
    }
}

/// Where a name's block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// In the open pack, not sent yet.
    Open,
    /// In a sealed pack (sent, or being sent).
    Packed { pack: PackId, offset: u32, len: u32 },
}

/// A put gathered in the open pack.
struct OpenPut {
    data: Vec<u8>,
    /// Sealed packs holding a put of the same name that this one replaces (or that a
    /// tombstone this put took the place of would have hidden): none may be deleted
    /// before this one has landed.
    replaces: Vec<PackId>,
}

/// A sealed pack as far as it matters here.
struct Pack {
    entries: Vec<Entry>,
    /// Object bytes.
    size: u64,
    /// Bytes of puts that are still their name's block.
    live_bytes: u64,
    live: u32,
    /// Puts of this pack replaced by puts in packs that have not landed yet.
    waiting: u32,
    /// Packs whose puts this pack's puts replace: each waits until this one lands.
    replaces: Vec<PackId>,
    landed: bool,
    /// Whether its records are known: a pack whose header could not be read is never
    /// deleted (what it holds is unknown, and may be read again another time).
    known: bool,
    /// The object's time, in seconds since the epoch.
    modified: i64,
}

/// The bookkeeping of one disk's packs. See the module header.
#[derive(Default)]
pub(crate) struct Packs {
    packs: BTreeMap<PackId, Pack>,
    /// The sealed packs with no live put: the only ones `deletable` looks at.
    empty: BTreeSet<PackId>,
    /// The bytes of every sealed pack, and those of landed packs that no live put holds
    /// (kept as they change: a write's capacity check and the compaction question must
    /// not walk every pack).
    sealed_bytes: u64,
    landed_dead: u64,
    /// Landed packs no index covers yet (`pack_index`).
    uncovered: BTreeSet<PackId>,
    /// Each index, by name, with the packs it covers that still exist; and each pack's
    /// index.
    indexes: BTreeMap<PackId, BTreeSet<PackId>>,
    index_of: HashMap<PackId, PackId>,
    /// Indexes whose packs have all gone: to be deleted.
    dead_indexes: Vec<PackId>,
    index: HashMap<BlockName, Loc>,
    /// For each name, the sealed packs holding a put of it, live or dead.
    /// Sorted; almost always one pack, so a vector, not a set (this map has an entry per
    /// fragment the disk holds).
    holders: HashMap<BlockName, Vec<PackId>>,
    open_puts: BTreeMap<BlockName, OpenPut>,
    /// Tombstones of the open pack, each with the sealed packs that wait for it to land.
    open_tombs: BTreeMap<BlockName, Vec<PackId>>,
    open_bytes: u64,
    epoch: u64,
    next_seq: u64,
}

impl Packs {
    /// The state the packs listed at open describe, applied in order: each with its size,
    /// time and records (an `Err`: its header could not be read — it keeps its room, and
    /// its puts are not served).
    /// `covered` names the index that covers a listed pack, and `indexes` every index
    /// found (one that covers no listed pack is dead).
    pub fn replay(listed: Vec<Listed>, epoch: u64, covered: HashMap<PackId, PackId>, indexes: Vec<PackId>) -> Packs {
        let mut packs = Packs { epoch, ..Packs::default() };
        for id in listed.iter().map(|(id, ..)| *id) {
            match covered.get(&id) {
                Some(&index) => {
                    packs.indexes.entry(index).or_default().insert(id);
                    packs.index_of.insert(id, index);
                }
                None => {
                    packs.uncovered.insert(id);
                }
            }
        }
        packs.dead_indexes = indexes.into_iter().filter(|i| !packs.indexes.contains_key(i)).collect();
        let mut listed = listed;
        listed.sort_by_key(|(id, ..)| *id);
        for (id, size, modified, entries) in listed {
            let known = entries.is_ok();
            if !known {
                // Unknown records: no index may say the pack holds none.
                packs.uncovered.remove(&id);
            }
            let entries = entries.unwrap_or_default();
            let mut pack = Pack {
                entries: Vec::new(),
                size,
                live_bytes: 0,
                live: 0,
                waiting: 0,
                replaces: Vec::new(),
                landed: true,
                known,
                modified,
            };
            for entry in &entries {
                if let Entry::Tomb { name } = *entry {
                    packs.kill(name);
                }
            }
            for entry in &entries {
                if let Entry::Put { name, offset, len } = *entry {
                    packs.kill(name);
                    packs.index.insert(name, Loc::Packed { pack: id, offset, len });
                    hold(packs.holders.entry(name).or_default(), id);
                    pack.live += 1;
                    pack.live_bytes += len as u64;
                }
            }
            pack.entries = entries;
            packs.packs.insert(id, pack);
            packs.empty.insert(id);
            if id.epoch == epoch {
                packs.next_seq = packs.next_seq.max(id.seq + 1);
            }
        }
        packs.sealed_bytes = packs.packs.values().map(|p| p.size).sum();
        packs.landed_dead = packs.packs.values().filter(|p| p.known).map(|p| p.size - p.live_bytes).sum();
        let live: Vec<PackId> = packs.packs.iter().filter(|(_, p)| p.live > 0).map(|(id, _)| *id).collect();
        for id in live {
            packs.empty.remove(&id);
        }
        packs.check();
        packs
    }

    /// Ends the life of `name`'s block in a sealed pack, if that is where it is.
    fn kill(&mut self, name: BlockName) -> Option<PackId> {
        let Some(Loc::Packed { pack, len, .. }) = self.index.get(&name).copied() else { return None };
        self.index.remove(&name);
        let Some(held) = self.packs.get_mut(&pack) else { unreachable!("an indexed pack is known") };
        assert!(held.live > 0 && held.live_bytes >= len as u64, "a live put counted in its pack");
        held.live -= 1;
        held.live_bytes -= len as u64;
        if held.landed {
            self.landed_dead += len as u64;
        }
        if held.live == 0 {
            self.empty.insert(pack);
        }
        Some(pack)
    }

    fn pack_mut(&mut self, id: PackId) -> &mut Pack {
        let Some(pack) = self.packs.get_mut(&id) else { unreachable!("pack {id:?} is known") };
        pack
    }

    /// From now on packs are named under `epoch` (this process's owner claim); its
    /// earlier packs, under a smaller one, keep their names.
    pub fn set_epoch(&mut self, epoch: u64) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.next_seq = 0;
        }
    }

    pub fn locate(&self, name: BlockName) -> Option<Loc> {
        self.index.get(&name).copied()
    }

    /// The data of `name` while it waits in the open pack.
    pub fn open_data(&self, name: BlockName) -> Option<&[u8]> {
        self.open_puts.get(&name).map(|put| put.data.as_slice())
    }

    /// Every name that has a block, in order.
    pub fn names(&self) -> Vec<BlockName> {
        let mut names: Vec<BlockName> = self.index.keys().copied().collect();
        names.sort();
        names
    }

    /// Makes `data` the block `name`, in the open pack. A tombstone of the name there
    /// gives way: the put hides what it would have.
    pub fn put(&mut self, name: BlockName, data: &[u8]) {
        if let Some(put) = self.open_puts.get_mut(&name) {
            self.open_bytes = self.open_bytes - put.data.len() as u64 + data.len() as u64;
            put.data = data.to_vec();
            return;
        }
        let mut replaces = self.open_tombs.remove(&name).unwrap_or_default();
        if let Some(pack) = self.kill(name) {
            self.pack_mut(pack).waiting += 1;
            replaces.push(pack);
        }
        self.open_bytes += data.len() as u64;
        self.open_puts.insert(name, OpenPut { data: data.to_vec(), replaces });
        self.index.insert(name, Loc::Open);
    }

    /// Deletes the block `name`: a tombstone in the open pack where a sealed pack holds a
    /// put of it. A sealed pack whose put it kills waits for the tombstone only while an
    /// older pack holds a put the tombstone must keep hidden; otherwise its deletion is
    /// the delete landing early.
    pub fn delete(&mut self, name: BlockName) {
        let mut releases = Vec::new();
        if let Some(put) = self.open_puts.remove(&name) {
            self.open_bytes -= put.data.len() as u64;
            self.index.remove(&name);
            releases = put.replaces;
        } else if let Some(pack) = self.kill(name) {
            if self.holders.get(&name).is_some_and(|h| h.first().is_some_and(|first| *first < pack)) {
                self.pack_mut(pack).waiting += 1;
                releases.push(pack);
            }
        }
        if self.holders.get(&name).is_some_and(|h| !h.is_empty()) {
            self.open_tombs.entry(name).or_default().extend(releases);
        } else {
            assert!(releases.is_empty(), "a pack waits only on a put or tombstone of a name it holds");
        }
    }

    /// Whether the open pack holds a tombstone.
    pub fn open_tombs(&self) -> bool {
        !self.open_tombs.is_empty()
    }

    /// Bytes of the open pack's puts.
    pub fn open_bytes(&self) -> u64 {
        self.open_bytes
    }

    /// Bytes of every pack, sealed and open.
    pub fn used(&self) -> u64 {
        self.sealed_bytes + self.open_bytes
    }

    /// Bytes of landed packs that no live put holds (packs of unknown records aside).
    pub fn dead_bytes(&self) -> u64 {
        self.landed_dead
    }

    /// Seals the open pack — its tombstones too with `with_tombs` (a sync), else only its
    /// puts (a full pack) — and returns its name and bytes, to be created; `None` when
    /// there is nothing to seal.
    pub fn seal(&mut self, with_tombs: bool) -> Option<(PackId, Vec<u8>)> {
        // A tombstone hides nothing once no sealed pack holds a put of its name.
        let holders = &self.holders;
        self.open_tombs.retain(|name, releases| {
            let needed = holders.get(name).is_some_and(|h| !h.is_empty());
            assert!(needed || releases.is_empty(), "a pack waits for a tombstone of a name it holds");
            needed
        });
        let tombs = if with_tombs { std::mem::take(&mut self.open_tombs) } else { BTreeMap::new() };
        if self.open_puts.is_empty() && tombs.is_empty() {
            return None;
        }
        let id = PackId { epoch: self.epoch, seq: self.next_seq };
        self.next_seq += 1;
        let puts = std::mem::take(&mut self.open_puts);
        let mut replaces: Vec<PackId> = puts.values().flat_map(|p| p.replaces.iter().copied()).collect();
        replaces.extend(tombs.values().flatten().copied());
        let tombs: Vec<BlockName> = tombs.into_keys().collect();
        let datas: Vec<(BlockName, &[u8])> = puts.iter().map(|(n, p)| (*n, p.data.as_slice())).collect();
        let (bytes, entries) = encode(&tombs, &datas);
        let mut pack = Pack {
            entries: entries.clone(),
            size: bytes.len() as u64,
            live_bytes: 0,
            live: 0,
            waiting: 0,
            replaces,
            landed: false,
            known: true,
            modified: 0,
        };
        for entry in entries {
            if let Entry::Put { name, offset, len } = entry {
                self.index.insert(name, Loc::Packed { pack: id, offset, len });
                hold(self.holders.entry(name).or_default(), id);
                pack.live += 1;
                pack.live_bytes += len as u64;
            }
        }
        self.open_bytes = 0;
        if pack.live == 0 {
            self.empty.insert(id);
        }
        self.sealed_bytes += pack.size;
        self.packs.insert(id, pack);
        self.check();
        Some((id, bytes))
    }

    /// Pack `id` was created on the store at `modified`: what it replaces may go.
    pub fn landed(&mut self, id: PackId, modified: i64) {
        let Some(pack) = self.packs.get_mut(&id) else { return };
        assert!(!pack.landed, "a pack lands once");
        pack.landed = true;
        self.landed_dead += pack.size - pack.live_bytes;
        self.uncovered.insert(id);
        pack.modified = modified;
        for replaced in std::mem::take(&mut pack.replaces) {
            if let Some(old) = self.packs.get_mut(&replaced) {
                assert!(old.waiting > 0, "a replaced put waits in its pack");
                old.waiting -= 1;
            }
        }
        self.check();
    }

    /// The packs the next index covers — the oldest `count` landed ones no index covers,
    /// each with its size and header — once that many have gathered.
    pub fn index_due(&self, count: usize) -> Option<Vec<(PackId, u64, Vec<u8>)>> {
        if self.uncovered.len() < count {
            return None;
        }
        let covered = self
            .uncovered
            .iter()
            .take(count)
            .filter_map(|id| self.packs.get(id).map(|p| (*id, p.size, encode_header(&p.entries))))
            .collect();
        Some(covered)
    }

    /// An index named `index` covering `packs` was written.
    pub fn indexed(&mut self, index: PackId, packs: &[PackId]) {
        for id in packs {
            if self.uncovered.remove(id) {
                self.indexes.entry(index).or_default().insert(*id);
                self.index_of.insert(*id, index);
            }
        }
    }

    /// Indexes whose packs have all gone, to delete.
    pub fn take_dead_indexes(&mut self) -> Vec<PackId> {
        std::mem::take(&mut self.dead_indexes)
    }

    /// Whether `id` is a pack of this disk that has landed.
    pub fn landed_pack(&self, id: PackId) -> bool {
        self.packs.get(&id).is_some_and(|p| p.landed)
    }

    pub fn modified(&self, id: PackId) -> Option<i64> {
        self.packs.get(&id).map(|p| p.modified)
    }

    /// Packs that may be deleted now (see the module header), oldest first.
    pub fn deletable(&self) -> Vec<PackId> {
        let mut gone: BTreeSet<PackId> = BTreeSet::new();
        loop {
            let before = gone.len();
            for &id in &self.empty {
                let Some(pack) = self.packs.get(&id) else { continue };
                if gone.contains(&id) || !pack.known || !pack.landed || pack.live > 0 || pack.waiting > 0 {
                    continue;
                }
                let hides_older = pack.entries.iter().any(|entry| match entry {
                    Entry::Tomb { name } => self
                        .holders
                        .get(name)
                        .is_some_and(|h| h.iter().take_while(|p| **p < id).any(|older| !gone.contains(older))),
                    Entry::Put { .. } => false,
                });
                if !hides_older {
                    gone.insert(id);
                }
            }
            if gone.len() == before {
                return gone.into_iter().collect();
            }
        }
    }

    /// Pack `id` was deleted from the store.
    pub fn forget(&mut self, id: PackId) {
        let Some(pack) = self.packs.remove(&id) else { return };
        assert!(pack.live == 0 && pack.waiting == 0, "only a dead pack is deleted");
        self.empty.remove(&id);
        self.sealed_bytes -= pack.size;
        if pack.landed {
            self.landed_dead -= pack.size;
        }
        self.uncovered.remove(&id);
        if let Some(index) = self.index_of.remove(&id) {
            if let Some(covers) = self.indexes.get_mut(&index) {
                covers.remove(&id);
                if covers.is_empty() {
                    self.indexes.remove(&index);
                    self.dead_indexes.push(index);
                }
            }
        }
        for entry in &pack.entries {
            if let Entry::Put { name, .. } = entry {
                if let Some(held) = self.holders.get_mut(name) {
                    held.retain(|p| *p != id);
                    if held.is_empty() {
                        self.holders.remove(name);
                    }
                }
            }
        }
        self.check();
    }

    /// Live puts of the landed packs at least half dead, emptiest first, up to about
    /// `budget` bytes: what compaction copies into the open pack so the packs can go.
    pub fn compaction(&self, budget: u64) -> Vec<(BlockName, PackId, u32, u32)> {
        let mut candidates: Vec<(&PackId, &Pack)> =
            self.packs.iter().filter(|(_, p)| p.landed && p.live > 0 && p.live_bytes * 2 <= p.size).collect();
        candidates.sort_by_key(|(id, p)| (p.live_bytes, **id));
        let mut moves = Vec::new();
        let mut taken = 0u64;
        for (&id, pack) in candidates {
            if taken > 0 && taken + pack.live_bytes > budget {
                break;
            }
            taken += pack.live_bytes;
            for entry in &pack.entries {
                if let Entry::Put { name, offset, len } = *entry {
                    if self.index.get(&name) == Some(&Loc::Packed { pack: id, offset, len }) {
                        moves.push((name, id, offset, len));
                    }
                }
            }
        }
        moves
    }

    /// The invariants: each indexed put is counted live in its pack, and the counts add up.
    fn check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut live: HashMap<PackId, (u32, u64)> = HashMap::new();
        for (name, loc) in &self.index {
            match *loc {
                Loc::Open => assert!(self.open_puts.contains_key(name), "{name} indexed open but not there"),
                Loc::Packed { pack, len, .. } => {
                    assert!(
                        self.holders.get(name).is_some_and(|h| h.binary_search(&pack).is_ok()),
                        "{name} held by its pack"
                    );
                    let counted = live.entry(pack).or_default();
                    counted.0 += 1;
                    counted.1 += len as u64;
                }
            }
        }
        for (id, pack) in &self.packs {
            assert_eq!(live.get(id).copied().unwrap_or_default(), (pack.live, pack.live_bytes), "pack {id:?}");
            assert_eq!(pack.live == 0, self.empty.contains(id), "pack {id:?} listed as empty when it is");
        }
        assert!(self.empty.iter().all(|id| self.packs.contains_key(id)));
        assert!(self.holders.values().all(|h| !h.is_empty() && h.windows(2).all(|w| w[0] < w[1])), "holders sorted");
        assert_eq!(self.sealed_bytes, self.packs.values().map(|p| p.size).sum::<u64>());
        let dead: u64 = self.packs.values().filter(|p| p.landed && p.known).map(|p| p.size - p.live_bytes).sum();
        assert_eq!(self.landed_dead, dead);
        assert_eq!(self.open_bytes, self.open_puts.values().map(|p| p.data.len() as u64).sum::<u64>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(extent: u64, index: u8) -> BlockName {
        BlockName::Fragment { extent: ExtentId(extent), index }
    }

    /// The names and bytes a reader of the sealed packs would find, replaying them.
    fn replayed(sealed: &BTreeMap<PackId, Vec<u8>>) -> BTreeMap<BlockName, Vec<u8>> {
        let listed = sealed
            .iter()
            .map(|(id, bytes)| {
                let len = header_len(bytes).unwrap();
                (*id, bytes.len() as u64, 0, decode(&bytes[..len], bytes.len() as u64))
            })
            .collect();
        let packs = Packs::replay(listed, 0, HashMap::new(), Vec::new());
        packs
            .names()
            .into_iter()
            .map(|name| match packs.locate(name) {
                Some(Loc::Packed { pack, offset, len }) => {
                    (name, sealed[&pack][offset as usize..(offset + len) as usize].to_vec())
                }
                other => panic!("{name} at {other:?} after a replay"),
            })
            .collect()
    }

    #[test]
    fn a_pack_round_trips_and_rot_in_its_header_is_found() {
        let (bytes, entries) = encode(&[frag(1, 0)], &[(frag(2, 1), b"two"), (frag(3, 5), b"three")]);
        let len = header_len(&bytes).unwrap();
        assert_eq!(decode(&bytes[..len], bytes.len() as u64).unwrap(), entries);
        assert_eq!(&bytes[len..], b"twothree");
        let mut rotten = bytes.clone();
        rotten[HEAD + 3] ^= 1;
        assert!(decode(&rotten[..len], bytes.len() as u64).unwrap_err().contains("checksum"));
        assert!(decode(&bytes[..len], 10).unwrap_err().contains("outside"), "a short object");
        let mut newer = bytes;
        newer[8] = 9;
        assert!(header_len(&newer).unwrap_err().contains("format 9"));
    }

    /// Random puts, deletes, seals, landings and deletions of packs; at every step, what
    /// a crash would leave (the sealed packs that landed, replayed) holds each name's
    /// newest landed bytes or, for a name whose newest change has not landed, something
    /// it held before — never a name deleted by a landed tombstone, never nothing where a
    /// landed put was replaced by one still in flight.
    #[test]
    fn no_crash_brings_back_a_deleted_name_or_loses_a_replaced_one() {
        use rand::{Rng, SeedableRng};
        for seed in 0..300u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut packs = Packs::default();
            // Everything sealed, and what has landed of it.
            let mut sealed: BTreeMap<PackId, Vec<u8>> = BTreeMap::new();
            let mut store: BTreeMap<PackId, Vec<u8>> = BTreeMap::new();
            // For each name, every value it held since the last landed change (the
            // first is what a landed replay must show at least).
            let mut model: BTreeMap<BlockName, Vec<Option<Vec<u8>>>> = BTreeMap::new();
            let mut unsent: Vec<PackId> = Vec::new();
            for step in 0..200 {
                let name = frag(rng.random_range(0..6), 0);
                match rng.random_range(0..10) {
                    0..=3 => {
                        let data = vec![step as u8; rng.random_range(1..50)];
                        packs.put(name, &data);
                        model.entry(name).or_insert_with(|| vec![None]).push(Some(data));
                    }
                    4 | 5 => {
                        packs.delete(name);
                        model.entry(name).or_insert_with(|| vec![None]).push(None);
                    }
                    6 => {
                        if let Some((id, bytes)) = packs.seal(rng.random_bool(0.5)) {
                            sealed.insert(id, bytes);
                            unsent.push(id);
                        }
                    }
                    7 | 8 if !unsent.is_empty() => {
                        let id = unsent.remove(rng.random_range(0..unsent.len()));
                        store.insert(id, sealed[&id].clone());
                        packs.landed(id, 0);
                    }
                    _ => {
                        for id in packs.deletable() {
                            store.remove(&id);
                            packs.forget(id);
                        }
                    }
                }
                // A crash now: what landed is what a new process finds.
                let found = replayed(&store);
                for (name, values) in &model {
                    let now = found.get(name).cloned();
                    assert!(values.contains(&now), "seed {seed} step {step}: {name} reads {now:?}, held {values:?}");
                }
                // Once everything is sent and landed, the model's newest value is all
                // that a replay may show; the history then starts again from it.
                if rng.random_range(0..8) == 0 {
                    if let Some((id, bytes)) = packs.seal(true) {
                        sealed.insert(id, bytes);
                        unsent.push(id);
                    }
                    for id in unsent.drain(..) {
                        store.insert(id, sealed[&id].clone());
                        packs.landed(id, 0);
                    }
                    for id in packs.deletable() {
                        store.remove(&id);
                        packs.forget(id);
                    }
                    let found = replayed(&store);
                    for (name, values) in model.iter_mut() {
                        let newest = values.last().cloned().flatten();
                        assert_eq!(found.get(name), newest.as_ref(), "seed {seed} step {step}: {name} after a sync");
                        *values = vec![newest];
                    }
                    let live: u64 = found.values().map(|d| d.len() as u64).sum();
                    assert!(packs.used() >= live);
                }
            }
        }
    }
}
