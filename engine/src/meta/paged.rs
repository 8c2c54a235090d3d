//! The state's large tables in the paged store (metadata format 8 on): how a table's key
//! and value become a store entry, a checkpoint's changes (`changes`) or the whole state
//! (`entries`), the head that carries the rest (`Head`), and a state read back (`load`).
//!
//! Keys are a table's tag, then its key in big-endian bytes, so a table is one contiguous
//! key range and its entries come out in the map's order. Values are postcard. The head
//! is the state with its paged tables empty, and the journal tip it stands at, then the
//! metadata format (`Head::format`): it is the store root's payload, so a root names one
//! state, whole, and says how to read it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::media::device::ExtentId;
use crate::meta::extents::{ExtentCore, Extents};
use crate::meta::ids::{ChunkSlot, Ino};
use crate::meta::nested::Nested;
use crate::meta::state::{ExtentRecord, MetaState};
use crate::meta::store::{Devices, Entry, Store, StoreError};
use crate::meta::temperatures::Temperatures;
use crate::meta::tracked::Tracked;
use crate::temperature::hmm::HISTORY_MAX;
use crate::temperature::tracker::Temperature;
use crate::temperature::Class;

/// A key of a paged table, as bytes that sort as the key does.
pub trait TableKey: Sized + Ord + Clone {
    fn put(&self, out: &mut Vec<u8>);
    fn take(bytes: &[u8]) -> Option<Self>;
}

impl TableKey for Ino {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_be_bytes());
    }
    fn take(bytes: &[u8]) -> Option<Self> {
        Some(Ino(u64::from_be_bytes(bytes.try_into().ok()?)))
    }
}

impl TableKey for ExtentId {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_be_bytes());
    }
    fn take(bytes: &[u8]) -> Option<Self> {
        Some(ExtentId(u64::from_be_bytes(bytes.try_into().ok()?)))
    }
}

impl TableKey for ChunkSlot {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ino.0.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
    }
    fn take(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 {
            return None;
        }
        let (ino, index) = bytes.split_at(8);
        Some(ChunkSlot {
            ino: Ino(u64::from_be_bytes(ino.try_into().ok()?)),
            index: u64::from_be_bytes(index.try_into().ok()?),
        })
    }
}

/// The journal tip a head stands at: record `seq` applied, the next one chains to `hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub tip_hash: [u8; 32],
    /// The state without its paged tables.
    pub state: MetaState,
    /// The metadata format the head and the tables were written in: one byte after the
    /// head's encoding from format 9 on, none in format 8 (the first in the store).
    #[serde(skip)]
    pub format: u8,
}

/// The format of a store head without a format byte.
const FIRST_STORE_FORMAT: u8 = 8;

/// The oldest format whose store holds the tables as this build writes them: a store of
/// an older one is rewritten whole at its first checkpoint. (Format 10 changed only the
/// journal's records, and 11 only where store disks keep fragments.)
pub const STORE_ENCODING_SINCE: u8 = 9;

/// Each paged table's tag: the first byte of its keys. Never reused for another table.
const INODES: u8 = 1;
const DIRS: u8 = 2;
const FILE_EXTENTS: u8 = 3;
const EXTENTS: u8 = 4;
const TEMPERATURE: u8 = 5;
const SCRUBBED: u8 = 6;
const XATTRS: u8 = 7;
const LAYERS: u8 = 8;

/// Calls `$body` once per paged table with `$tag` (its key prefix) and `$field`, but
/// `extents` and `temperature` (an `Extents` and a `Temperatures`, not `Tracked`s).
macro_rules! each_table {
    ($state:expr, |$tag:ident, $field:ident| $body:block) => {
        each_table!(@ $state, $tag, $field, $body, INODES inodes, DIRS dirs, FILE_EXTENTS file_extents,
            SCRUBBED scrubbed, XATTRS xattrs, LAYERS layers)
    };
    (@ $state:expr, $tag:ident, $field:ident, $body:block, $($t:ident $f:ident),*) => {{
        $({
            let ($tag, $field) = ($t, &mut $state.$f);
            $body
        })*
    }};
}

fn key_of<K: TableKey>(tag: u8, key: &K) -> Vec<u8> {
    let mut out = vec![tag];
    key.put(&mut out);
    out
}

fn value_of<V: Serialize>(value: &V) -> Vec<u8> {
    // postcard fails only on writer errors or unsupported types; a Vec writer and the
    // state's plain data have neither.
    postcard::to_allocvec(value).unwrap_or_else(|e| panic!("postcard cannot encode engine metadata: {e}"))
}

fn changes_of<K: TableKey, V>(
    tag: u8,
    table: &mut Tracked<K, V>,
    encode: impl Fn(&V) -> Vec<u8>,
    out: &mut Vec<Entry>,
) {
    for key in table.take_dirty() {
        out.push((key_of(tag, &key), table.get(&key).map(&encode)));
    }
}

fn entries_of<'a, K: TableKey, V>(
    tag: u8,
    table: &'a Tracked<K, V>,
    encode: impl Fn(&V) -> Vec<u8> + 'a,
) -> impl Iterator<Item = Entry> + 'a {
    table.iter().map(move |(key, value)| (key_of(tag, key), Some(encode(value))))
}

/// A temperature's value: the temperature, then the repeating passes it stands at
/// (format 9; none in format 8, whose values were written at every pass).
fn temperature_value(temperature: &Temperature, passes: u64) -> Vec<u8> {
    value_of(&(temperature, passes))
}

/// A file's chunk map is stored in segments of `1 << SEGMENT_BITS` chunks (1 GiB of
/// file), one store entry each: a write rewrites its segment, not a file of a million
/// chunks, and a file of a few chunks is still one entry.
const SEGMENT_BITS: u32 = 10;

/// `ino`'s key in a table, then `rest`.
fn ino_key(tag: u8, ino: Ino, rest: &[u8]) -> Vec<u8> {
    let mut key = key_of(tag, &ino);
    key.extend_from_slice(rest);
    key
}

/// A key's inode (its first 8 bytes) and what follows.
fn split_ino(key: &[u8]) -> Result<(Ino, &[u8]), String> {
    if key.len() < 8 {
        return Err("key of the wrong length".into());
    }
    let (ino, rest) = key.split_at(8);
    Ok((Ino::take(ino).ok_or("key of the wrong length")?, rest))
}

/// A map of maps by name — directories, extended attributes — as store entries (format
/// 9): one per outer key and name, after a marker (the outer key, no name, an empty
/// value) when `marked` — an empty directory exists too, where an inode without
/// attributes has none.
fn named_entries<'a, V: Serialize>(
    tag: u8,
    maps: &'a Nested<Ino, Vec<u8>, V>,
    marked: bool,
) -> impl Iterator<Item = Entry> + 'a {
    maps.iter().flat_map(move |(ino, named)| {
        let marker = marked.then(|| (ino_key(tag, *ino, &[]), Some(Vec::new())));
        marker
            .into_iter()
            .chain(named.iter().map(move |(name, value)| (ino_key(tag, *ino, name), Some(value_of(value)))))
    })
}

/// `named_entries` of what changed since the last call (a deletion as `None`).
fn named_changes<V: Serialize>(tag: u8, maps: &mut Nested<Ino, Vec<u8>, V>, marked: bool, out: &mut Vec<Entry>) {
    for (ino, name) in maps.take_dirty() {
        let named = maps.get(&ino);
        match name {
            None if marked => out.push((ino_key(tag, ino, &[]), named.map(|_| Vec::new()))),
            None => {}
            Some(name) => out.push((ino_key(tag, ino, &name), named.and_then(|n| n.get(&name)).map(value_of))),
        }
    }
}

fn segment_key(ino: Ino, segment: u64) -> Vec<u8> {
    ino_key(FILE_EXTENTS, ino, &segment.to_be_bytes())
}

/// The chunks of segment `segment` of a file's map, encoded; `None` when it has none.
fn segment_value(chunks: Option<&BTreeMap<u64, ExtentId>>, segment: u64) -> Option<Vec<u8>> {
    let first = segment << SEGMENT_BITS;
    let part: BTreeMap<u64, ExtentId> =
        chunks?.range(first..=first | ((1 << SEGMENT_BITS) - 1)).map(|(k, v)| (*k, *v)).collect();
    (!part.is_empty()).then(|| value_of(&part))
}

/// Files' chunk maps as store entries (format 9), a segment each.
fn chunk_entries(files: &Nested<Ino, u64, ExtentId>) -> impl Iterator<Item = Entry> + '_ {
    files.iter().flat_map(|(ino, chunks)| {
        let segments: BTreeSet<u64> = chunks.keys().map(|index| index >> SEGMENT_BITS).collect();
        segments.into_iter().map(move |segment| (segment_key(*ino, segment), segment_value(Some(chunks), segment)))
    })
}

fn chunk_changes(files: &mut Nested<Ino, u64, ExtentId>, out: &mut Vec<Entry>) {
    let segments: BTreeSet<(Ino, u64)> =
        files.take_dirty().into_iter().filter_map(|(ino, index)| Some((ino, index? >> SEGMENT_BITS))).collect();
    for (ino, segment) in segments {
        out.push((segment_key(ino, segment), segment_value(files.get(&ino), segment)));
    }
}

/// The entries the tables changed since the last call (a deletion as `None`), in key
/// order; the tables are clean after, but for the temperatures, held until `mark_clean`
/// (once the commit is durable). A temperature that only repeated is not changed:
/// its value reads back with the repeats (`load`).
pub fn changes(state: &mut MetaState) -> Vec<Entry> {
    let passes = state.repeating_passes;
    let mut out = Vec::new();
    changes_of(INODES, &mut state.inodes, value_of, &mut out);
    named_changes(DIRS, &mut state.dirs, true, &mut out);
    chunk_changes(&mut state.file_extents, &mut out);
    // Held until the commit is durable (`mark_clean`): memory is their only copy.
    for id in state.extents.dirty_keys() {
        let record = state.extents.held(id).flatten();
        debug_assert_eq!(record.is_some(), state.extents.contains_key(id), "{id} changed but not held whole");
        out.push((key_of(EXTENTS, id), record.map(value_of)));
    }
    // Held until the commit is durable (`mark_clean`): memory is their only copy.
    for (slot, temperature) in state.temperature.held_all() {
        out.push((key_of(TEMPERATURE, slot), temperature.as_ref().map(|t| temperature_value(t, passes))));
    }
    changes_of(SCRUBBED, &mut state.scrubbed, value_of, &mut out);
    named_changes(XATTRS, &mut state.xattrs, false, &mut out);
    changes_of(LAYERS, &mut state.layers, value_of, &mut out);
    debug_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    out
}

/// Every entry of the tables, in key order, encoded as it is taken; `stored` is what
/// `stored_temperatures` read of the temperatures the state does not hold,
/// `stored_extents` what `stored_extents` read of the extent records. The tables
/// stay as marked: `mark_clean` once the entries are durable.
pub fn entries(
    state: &MetaState,
    stored: Vec<StoredEntry>,
    stored_extents: Vec<StoredEntry>,
) -> impl Iterator<Item = Entry> + '_ {
    let passes = state.repeating_passes;
    // The stored values pass through as they are: each names the pass count it was
    // written at, so its repeats since are implied as before.
    let temperatures = state
        .temperature
        .held_all()
        .map(move |(slot, t)| (key_of(TEMPERATURE, slot), t.as_ref().map(|t| temperature_value(t, passes))));
    // Over a root, every record memory holds is a change, and a change not held a removal.
    let extents: Box<dyn Iterator<Item = Entry> + '_> = if state.extents.is_based() {
        Box::new(
            state.extents.dirty_keys().map(|id| (key_of(EXTENTS, id), state.extents.held(id).flatten().map(value_of))),
        )
    } else {
        Box::new(state.extents.held_all().map(|(id, record)| (key_of(EXTENTS, id), Some(value_of(record)))))
    };
    entries_of(INODES, &state.inodes, value_of)
        .chain(named_entries(DIRS, &state.dirs, true))
        .chain(chunk_entries(&state.file_extents))
        .chain(held_over_stored(extents, stored_extents))
        .chain(held_over_stored(temperatures, stored))
        .chain(entries_of(SCRUBBED, &state.scrubbed, value_of))
        .chain(named_entries(XATTRS, &state.xattrs, false))
        .chain(entries_of(LAYERS, &state.layers, value_of))
}

/// One table's entries in key order: those memory holds (`held`, in key order; `None`:
/// removed) over those the store holds (`stored`, in key order). A held key's entry
/// replaces the stored one; a removed key is left out.
fn held_over_stored<'a>(
    held: impl Iterator<Item = Entry> + 'a,
    stored: Vec<StoredEntry>,
) -> impl Iterator<Item = Entry> + 'a {
    let mut held = held.peekable();
    let mut stored = stored.into_iter().peekable();
    std::iter::from_fn(move || loop {
        let take_held = match (held.peek(), stored.peek()) {
            (None, None) => return None,
            (Some((held, _)), Some((stored, _))) => held <= stored,
            (held, _) => held.is_some(),
        };
        if !take_held {
            let (key, value) = stored.next()?;
            return Some((key, Some(value)));
        }
        let (key, value) = held.next()?;
        if stored.peek().is_some_and(|(stored, _)| *stored == key) {
            stored.next();
        }
        if value.is_some() {
            return Some((key, value));
        }
    })
}

/// Forgets every table's changes: the whole state is durable as it is.
pub fn mark_clean(state: &mut MetaState) {
    each_table!(state, |_tag, table| {
        table.take_dirty();
    });
    state.extents.mark_clean();
    state.temperature.take_changes();
}

/// The head of `state` at the tip `(seq, tip_hash)`, encoded: the state without its
/// paged tables (taken out for the encoding and put back).
pub fn encode_head(seq: u64, tip_hash: [u8; 32], state: &mut MetaState) -> Vec<u8> {
    let mut tables = MetaState::new(state.pool_id, state.default_policy, crate::base::clock::WallTime::default());
    swap_tables(state, &mut tables);
    let head = HeadRef { seq, tip_hash, state };
    let mut encoded = value_of(&head);
    encoded.push(crate::media::frame::METADATA_FORMAT);
    encoded.extend(value_of(&state.repeating_passes));
    swap_tables(state, &mut tables);
    encoded
}

/// `Head`, borrowing its state: encoded exactly as `Head` is.
#[derive(Serialize)]
struct HeadRef<'a> {
    seq: u64,
    tip_hash: [u8; 32],
    state: &'a MetaState,
}

impl MetaState {
    /// A state whose paged tables are all empty (and clean), to swap them out with.
    fn empty_tables() -> MetaState {
        let mut state =
            MetaState::new(uuid::Uuid::nil(), crate::base::policy::Policy::Replicate { copies: 1 }, Default::default());
        state.inodes = Tracked::default();
        state.dirs = Nested::default();
        state
    }
}

fn swap_tables(a: &mut MetaState, b: &mut MetaState) {
    std::mem::swap(&mut a.inodes, &mut b.inodes);
    std::mem::swap(&mut a.dirs, &mut b.dirs);
    std::mem::swap(&mut a.file_extents, &mut b.file_extents);
    std::mem::swap(&mut a.extents, &mut b.extents);
    std::mem::swap(&mut a.temperature, &mut b.temperature);
    std::mem::swap(&mut a.scrubbed, &mut b.scrubbed);
    std::mem::swap(&mut a.xattrs, &mut b.xattrs);
    std::mem::swap(&mut a.layers, &mut b.layers);
}

/// Why a store did not read back as a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store's head does not decode: {0}")]
    Head(String),
    #[error("the store's head is metadata format {found}, but this build reads formats up to {supported}: it was written by a newer DynamicFS; open it with that version")]
    NewerFormat { found: u8, supported: u8 },
    #[error("store entry {key} does not decode: {why}")]
    Entry { key: String, why: String },
}

/// The head and state the store holds, its tables clean (as stored). The state's unstored
/// indexes are not built here (`MetaState::rebuild_indexes`).
pub fn load(store: &Store, devices: &Devices) -> Result<Head, LoadError> {
    let (mut head, after): (Head, &[u8]) =
        postcard::take_from_bytes(store.payload()).map_err(|e| LoadError::Head(e.to_string()))?;
    let (format, passes) = match after {
        [] => (FIRST_STORE_FORMAT, None),
        [format, ..] if *format > crate::media::frame::METADATA_FORMAT => {
            return Err(LoadError::NewerFormat { found: *format, supported: crate::media::frame::METADATA_FORMAT })
        }
        [format, passes @ ..] if *format > FIRST_STORE_FORMAT => {
            let passes = decode_all::<u64>(passes).map_err(|why| LoadError::Head(format!("its pass count: {why}")))?;
            (*format, Some(passes))
        }
        _ => return Err(LoadError::Head(format!("{} bytes after the head, not its format", after.len()))),
    };
    head.format = format;
    head.state.repeating_passes = passes.unwrap_or(0);
    // The two large tables and the rest, each read and built on its own (at once, on
    // two cores, outside the simulator): the same tables whichever finishes first.
    let parts: [(&[u8], Option<&[u8]>); 3] =
        [(&[], Some(&[EXTENTS])), (&[EXTENTS], Some(&[TEMPERATURE])), (&[TEMPERATURE], None)];
    let read = |(from, to): (&[u8], Option<&[u8]>)| -> Result<Tables, LoadError> {
        let mut failure = None;
        let holds_temperatures = to.is_none_or(|to| to > [TEMPERATURE].as_slice()) && from <= [TEMPERATURE].as_slice();
        let mut tables = Tables { passes, holds_temperatures, ..Tables::default() };
        store.scan(devices, from, to, crate::meta::store::ScanCache::Skip, &mut |key, value| match tables
            .add(key, value)
        {
            Ok(()) => true,
            Err(why) => {
                failure = Some(LoadError::Entry { key: hex(key), why });
                false
            }
        })?;
        failure.map_or(Ok(tables), Err)
    };
    let mut built = Vec::with_capacity(parts.len());
    for tables in
        crate::base::io::run_all(store.config().parallel, parts.to_vec(), |part| read(part).map(Tables::built))
    {
        built.push(tables?);
    }
    // The head's state holds its tables as `encode_head` left them (a new state's root).
    swap_tables(&mut head.state, &mut MetaState::empty_tables());
    for tables in built {
        tables.into_state(&mut head.state);
    }
    Ok(head)
}

/// An inode's extended attributes, name → value.
type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// The tables as they are read: each table's entries in key order (the store's), made
/// maps only once all are read. A map built from sorted entries packs its nodes full,
/// where one grown by inserting in ascending order leaves each node about half empty:
/// the tables then take about 40% less memory for as long as the pool is open.
#[derive(Default)]
struct Tables {
    inodes: Vec<(Ino, crate::meta::state::Inode)>,
    dirs: Vec<(Ino, BTreeMap<Vec<u8>, Ino>)>,
    /// The directory whose entries are being read (format 9: one store entry a name).
    open_dir: Group<Vec<u8>, Ino>,
    file_extents: Vec<(Ino, BTreeMap<u64, ExtentId>)>,
    /// The file whose chunks are being read (format 9: one store entry a segment).
    open_file: Group<u64, ExtentId>,
    /// Each extent's core: its whole record stays in the store (`read_extent`).
    extents: Vec<(ExtentId, ExtentCore)>,
    /// Format 8: every temperature, decoded (its values name no pass count, so the
    /// first checkpoint rewrites them all).
    temperature: Vec<(ChunkSlot, Temperature)>,
    /// Format 9 on: only each chunk's class; the temperatures stay in the store.
    classes: Vec<(ChunkSlot, Class)>,
    scrubbed: Vec<(ExtentId, i64)>,
    xattrs: Vec<(Ino, Xattrs)>,
    /// The inode whose attributes are being read (format 9: one store entry a name).
    open_xattrs: Group<Vec<u8>, Vec<u8>>,
    layers: Vec<(ChunkSlot, Vec<crate::meta::state::Layer>)>,
    /// The head's count of repeating passes (`None`: format 8, which has none).
    passes: Option<u64>,
    /// Whether these are read from the part of the keys that holds the temperatures.
    holds_temperatures: bool,
}

fn add_to<K: TableKey, V: for<'de> Deserialize<'de>>(
    entries: &mut Vec<(K, V)>,
    key: &[u8],
    value: &[u8],
) -> Result<(), String> {
    let key = K::take(key).ok_or("key of the wrong length")?;
    if entries.last().is_some_and(|(last, _)| *last >= key) {
        return Err("key out of order".into());
    }
    let value = postcard::from_bytes(value).map_err(|e| e.to_string())?;
    entries.push((key, value));
    Ok(())
}

/// A clean table of `entries` (ascending keys): its nodes packed full.
fn table_of<K: Ord + Clone, V>(entries: Vec<(K, V)>) -> Tracked<K, V> {
    debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    Tracked::clean(entries.into_iter().collect())
}

impl Tables {
    /// Whether a directory, a chunk map or an inode's attributes is one value (format 8,
    /// the only one without a pass count).
    fn whole_values(&self) -> bool {
        self.passes.is_none()
    }

    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let (tag, rest) = key.split_first().ok_or("empty key")?;
        match *tag {
            INODES => add_to(&mut self.inodes, rest, value),
            DIRS if self.whole_values() => add_to(&mut self.dirs, rest, value),
            DIRS => self.add_dir_entry(rest, value),
            FILE_EXTENTS if self.whole_values() => add_to(&mut self.file_extents, rest, value),
            FILE_EXTENTS => self.add_chunks(rest, value),
            EXTENTS => self.add_extent(rest, value),
            TEMPERATURE => self.add_temperature(rest, value),
            SCRUBBED => add_to(&mut self.scrubbed, rest, value),
            XATTRS if self.whole_values() => add_to(&mut self.xattrs, rest, value),
            XATTRS => self.add_xattr(rest, value),
            LAYERS => add_to(&mut self.layers, rest, value),
            other => Err(format!("no table has tag {other}")),
        }
    }

    /// A temperature, with the repeats of every pass since it was written: a pass
    /// repeats the last observation of each chunk it does not list without marking it
    /// (`MetaState::repeating_passes`). Past `HISTORY_MAX` repeats the window holds only
    /// that observation, so no more are made.
    fn add_temperature(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let key = ChunkSlot::take(key).ok_or("key of the wrong length")?;
        let last = self.temperature.last().map(|(last, _)| last).or(self.classes.last().map(|(last, _)| last));
        if last.is_some_and(|last| *last >= key) {
            return Err("key out of order".into());
        }
        let temperature = decode_temperature(value, self.passes)?;
        if self.passes.is_none() {
            self.temperature.push((key, temperature));
        } else if let Some(class) = temperature.classified() {
            self.classes.push((key, class));
        }
        Ok(())
    }

    /// An extent's record, of which memory keeps the core.
    fn add_extent(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let id = ExtentId::take(key).ok_or("key of the wrong length")?;
        if self.extents.last().is_some_and(|(last, _)| *last >= id) {
            return Err("key out of order".into());
        }
        let record: ExtentRecord = decode_all(value)?;
        if record.id != id || (record.is_inline() && record.inline.is_none()) {
            return Err(format!("the record of extent {} or an inline one without its data", record.id));
        }
        self.extents.push((id, record.core()));
        Ok(())
    }

    /// A directory's marker (no name) or one of its entries (format 9).
    fn add_dir_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let (ino, name) = split_ino(key)?;
        let opened = self.open_dir.is_open(ino);
        if name.is_empty() {
            if !value.is_empty() || opened {
                return Err("a directory marker with a value, or twice".into());
            }
            self.open_dir.entries(ino, &mut self.dirs)?;
            return Ok(());
        }
        if !opened {
            return Err("an entry of a directory that has no marker".into());
        }
        let entries = self.open_dir.entries(ino, &mut self.dirs)?;
        if entries.last().is_some_and(|(last, _)| last.as_slice() >= name) {
            return Err("key out of order".into());
        }
        entries.push((name.to_vec(), decode_all(value)?));
        Ok(())
    }

    /// One segment of a file's chunk map (format 9).
    fn add_chunks(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let (ino, segment) = split_ino(key)?;
        let segment = u64::from_be_bytes(segment.try_into().map_err(|_| "key of the wrong length")?);
        let chunks: BTreeMap<u64, ExtentId> = decode_all(value)?;
        if chunks.is_empty() || chunks.keys().any(|index| index >> SEGMENT_BITS != segment) {
            return Err(format!("segment {segment} holds chunks of other segments, or none"));
        }
        let open = self.open_file.entries(ino, &mut self.file_extents)?;
        if open.last().is_some_and(|(last, _)| last >> SEGMENT_BITS >= segment) {
            return Err("key out of order".into());
        }
        open.extend(chunks);
        Ok(())
    }

    /// One extended attribute of an inode (format 9).
    fn add_xattr(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let (ino, name) = split_ino(key)?;
        let open = self.open_xattrs.entries(ino, &mut self.xattrs)?;
        if name.is_empty() || open.last().is_some_and(|(last, _)| last.as_slice() >= name) {
            return Err("key out of order, or an attribute with no name".into());
        }
        open.push((name.to_vec(), decode_all(value)?));
        Ok(())
    }

    /// The tables read, as maps.
    fn built(mut self) -> Built {
        self.open_dir.close(&mut self.dirs);
        self.open_file.close(&mut self.file_extents);
        self.open_xattrs.close(&mut self.xattrs);
        Built {
            inodes: table_of(self.inodes),
            dirs: Nested::clean(self.dirs.into_iter().collect()),
            file_extents: Nested::clean(self.file_extents.into_iter().collect()),
            extents: Extents::based(self.extents),
            temperature: match self.passes {
                None => Temperatures::whole(self.temperature.into_iter().collect()),
                Some(_) => Temperatures::based(self.classes),
            },
            scrubbed: table_of(self.scrubbed),
            xattrs: Nested::clean(self.xattrs.into_iter().collect()),
            layers: table_of(self.layers),
            holds_temperatures: self.holds_temperatures,
        }
    }
}

/// The inner map being read of a table stored one entry per inner key (format 9): its
/// inode and its entries so far, built into a map (packed) when the next inode comes.
struct Group<K2, V> {
    open: Option<(Ino, Vec<(K2, V)>)>,
}

impl<K2, V> Default for Group<K2, V> {
    fn default() -> Self {
        Group { open: None }
    }
}

impl<K2: Ord, V> Group<K2, V> {
    fn is_open(&self, ino: Ino) -> bool {
        self.open.as_ref().is_some_and(|(open, _)| *open == ino)
    }

    /// The entries read so far of `ino`'s map, opened when `ino` comes first (the map
    /// before it closed into `done`, whose inodes must stay ascending).
    fn entries(&mut self, ino: Ino, done: &mut Vec<(Ino, BTreeMap<K2, V>)>) -> Result<&mut Vec<(K2, V)>, String> {
        if !self.is_open(ino) {
            self.close(done);
            if done.last().is_some_and(|(last, _)| *last >= ino) {
                return Err("key out of order".into());
            }
        }
        Ok(&mut self.open.get_or_insert_with(|| (ino, Vec::new())).1)
    }

    fn close(&mut self, done: &mut Vec<(Ino, BTreeMap<K2, V>)>) {
        if let Some((ino, entries)) = self.open.take() {
            done.push((ino, entries.into_iter().collect()));
        }
    }
}

/// Tables read from one part of the store's keys: the others are empty.
struct Built {
    inodes: Tracked<Ino, crate::meta::state::Inode>,
    dirs: Nested<Ino, Vec<u8>, Ino>,
    file_extents: Nested<Ino, u64, ExtentId>,
    extents: Extents,
    temperature: Temperatures,
    scrubbed: Tracked<ExtentId, i64>,
    xattrs: Nested<Ino, Vec<u8>, Vec<u8>>,
    layers: Tracked<ChunkSlot, Vec<crate::meta::state::Layer>>,
    /// Whether this part holds the temperature range (a table of no temperature is
    /// `based` all the same, when the store holds the table).
    holds_temperatures: bool,
}

impl Built {
    /// Puts into `state` the tables this part holds; each table lies in one part.
    fn into_state(self, state: &mut MetaState) {
        fn put<T: std::ops::Deref<Target = BTreeMap<K, V>>, K, V>(table: T, into: &mut T) {
            if !table.is_empty() {
                assert!(into.is_empty(), "a table read from two parts of the store");
                *into = table;
            }
        }
        put(self.inodes, &mut state.inodes);
        put(self.dirs, &mut state.dirs);
        put(self.file_extents, &mut state.file_extents);
        if !self.extents.is_empty() {
            assert!(state.extents.is_empty(), "a table read from two parts of the store");
            state.extents = self.extents;
        }
        if self.holds_temperatures {
            state.temperature = self.temperature;
        }
        put(self.scrubbed, &mut state.scrubbed);
        put(self.xattrs, &mut state.xattrs);
        put(self.layers, &mut state.layers);
    }
}

/// A stored temperature, with the repeats of every pass since it was written: a pass
/// repeats the last observation of each chunk it does not list without marking it
/// (`MetaState::repeating_passes`), so the value names the count it was written at
/// (`passes`: the head's count; `None` in format 8, whose values name none). Past
/// `HISTORY_MAX` repeats the window holds only that observation, so no more are made.
fn decode_temperature(value: &[u8], passes: Option<u64>) -> Result<Temperature, String> {
    let (mut temperature, after): (Temperature, &[u8]) = postcard::take_from_bytes(value).map_err(|e| e.to_string())?;
    match passes {
        Some(passes) => {
            let written_at = decode_all::<u64>(after)?;
            let since = passes.checked_sub(written_at).ok_or("written at a pass the head has not reached")?;
            for _ in 0..since.min(HISTORY_MAX as u64) {
                temperature.repeat();
            }
        }
        None if !after.is_empty() => return Err("a pass count in a format-8 store".into()),
        None => {}
    }
    Ok(temperature)
}

/// A store entry as the store holds it: key and value, encoded.
pub type StoredEntry = (Vec<u8>, Vec<u8>);

/// Where a paged table's entries are read from: the store whose root the state stands
/// on, and its replicas. `None` for a state held whole (never stored).
pub type Source<'a, 'b> = Option<(&'a Store, &'a Devices<'b>)>;

/// The store a `based` table reads from, or why there is none.
fn source_of<'a, 'b>(source: Source<'a, 'b>) -> Result<(&'a Store, &'a Devices<'b>), LoadError> {
    source.ok_or_else(|| LoadError::Head("a paged table read without its store".into()))
}

/// `slot`'s temperature: the one memory holds, else the store's (with the repeats since
/// it was written).
pub fn read_temperature(state: &MetaState, source: Source, slot: ChunkSlot) -> Result<Option<Temperature>, LoadError> {
    if let Some(held) = state.temperature.held(&slot) {
        return Ok(held.cloned());
    }
    let (store, devices) = source_of(source)?;
    let key = key_of(TEMPERATURE, &slot);
    let Some(value) = store.get(devices, &key)? else { return Ok(None) };
    let temperature = decode_temperature(&value, Some(state.repeating_passes))
        .map_err(|why| LoadError::Entry { key: hex(&key), why })?;
    Ok(Some(temperature))
}

/// Reads into memory the temperatures of `wanted` — what a transaction changes and memory
/// does not hold (`MetaState::temperatures_wanted`) — so that it can be applied.
pub fn prefetch(state: &mut MetaState, source: Source, wanted: Vec<ChunkSlot>) -> Result<(), LoadError> {
    for slot in wanted {
        let temperature = read_temperature(state, source, slot)?;
        state.temperature.fetched(slot, temperature);
    }
    Ok(())
}

/// Visits every chunk's temperature in slot order, those memory holds in place of the
/// store's, until `visit` returns `false`. The pages read are not kept in the cache.
pub fn each_temperature(
    state: &MetaState,
    source: Source,
    visit: &mut dyn FnMut(ChunkSlot, &Temperature) -> bool,
) -> Result<(), LoadError> {
    let mut held = state.temperature.held_all().peekable();
    let mut more = true;
    if state.temperature.is_based() {
        let (store, devices) = source_of(source)?;
        let passes = Some(state.repeating_passes);
        let mut visit_stored = |key: &[u8], value: &[u8]| -> Result<bool, String> {
            let slot = ChunkSlot::take(&key[1..]).ok_or("key of the wrong length")?;
            while let Some((at, temperature)) = held.next_if(|(at, _)| **at < slot) {
                if let Some(temperature) = temperature {
                    if !visit(*at, temperature) {
                        return Ok(false);
                    }
                }
            }
            if let Some((_, temperature)) = held.next_if(|(at, _)| **at == slot) {
                return Ok(temperature.as_ref().is_none_or(|t| visit(slot, t)));
            }
            Ok(visit(slot, &decode_temperature(value, passes)?))
        };
        more = walk_table(store, devices, TEMPERATURE, &mut visit_stored)?;
    }
    if more {
        for (slot, temperature) in held {
            if let Some(temperature) = temperature {
                if !visit(*slot, temperature) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Every chunk's temperature, read whole: for reports over a few chunks' worth, and for
/// comparing two states over different roots.
pub fn temperatures(state: &MetaState, source: Source) -> Result<BTreeMap<ChunkSlot, Temperature>, LoadError> {
    let mut all = BTreeMap::new();
    each_temperature(state, source, &mut |slot, temperature| {
        all.insert(slot, temperature.clone());
        true
    })?;
    Ok(all)
}

/// The stored temperatures, as the store holds them (key, value), for a whole write of
/// the state beside those memory holds (`entries`); none for a state held whole.
pub fn stored_temperatures(state: &MetaState, source: Source) -> Result<Vec<StoredEntry>, LoadError> {
    if !state.temperature.is_based() {
        return Ok(Vec::new());
    }
    stored_entries(source, TEMPERATURE)
}

/// Table `tag`'s entries as the store holds them (key, value).
fn stored_entries(source: Source, tag: u8) -> Result<Vec<StoredEntry>, LoadError> {
    let (store, devices) = source_of(source)?;
    let mut out = Vec::new();
    walk_table(store, devices, tag, &mut |key, value| {
        out.push((key.to_vec(), value.to_vec()));
        Ok(true)
    })?;
    Ok(out)
}

/// What a walk of a table calls with each stored entry (key, value): whether to go on,
/// or why the entry cannot be taken.
type EntryVisit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, String> + 'a;

/// Visits table `tag`'s stored entries in key order, without keeping their pages in the
/// cache (a walk of a whole table would push out what reads keep there), until `visit`
/// returns `false`; returns whether it went to the end. An entry `visit` cannot take
/// fails the walk, naming its key.
fn walk_table(store: &Store, devices: &Devices, tag: u8, visit: &mut EntryVisit<'_>) -> Result<bool, LoadError> {
    let (mut more, mut failure) = (true, None);
    store.scan(
        devices,
        &[tag],
        Some(&[tag + 1]),
        crate::meta::store::ScanCache::Skip,
        &mut |key, value| match visit(key, value) {
            Ok(go_on) => {
                more = go_on;
                go_on
            }
            Err(why) => {
                failure = Some(LoadError::Entry { key: hex(key), why });
                false
            }
        },
    )?;
    failure.map_or(Ok(more), Err)
}

/// Extent `id`'s whole record (an inline extent's with its data): the one memory holds,
/// else the store's; `None` when there is no such extent.
pub fn read_extent(state: &MetaState, source: Source, id: ExtentId) -> Result<Option<ExtentRecord>, LoadError> {
    if let Some(held) = state.extents.held(&id) {
        return Ok(held.cloned());
    }
    let (store, devices) = source_of(source)?;
    let key = key_of(EXTENTS, &id);
    let value = store
        .get(devices, &key)?
        .ok_or_else(|| LoadError::Entry { key: hex(&key), why: "an extent the store does not hold".into() })?;
    let record: ExtentRecord = decode_all(&value).map_err(|why| LoadError::Entry { key: hex(&key), why })?;
    if state.extents.get(&id) != Some(&record.core()) || (record.is_inline() && record.inline.is_none()) {
        let why = "a record that is not the one memory holds the core of".into();
        return Err(LoadError::Entry { key: hex(&key), why });
    }
    Ok(Some(record))
}

/// Visits every extent's whole record in id order — those memory holds in place of the
/// store's — until `visit` returns `false`. The pages read are not kept in the cache.
pub fn each_extent(
    state: &MetaState,
    source: Source,
    visit: &mut dyn FnMut(&ExtentRecord) -> bool,
) -> Result<(), LoadError> {
    let mut held = state.extents.held_all().peekable();
    let mut more = true;
    if state.extents.is_based() {
        let (store, devices) = source_of(source)?;
        let mut visit_stored = |key: &[u8], value: &[u8]| -> Result<bool, String> {
            let id = ExtentId::take(&key[1..]).ok_or("key of the wrong length")?;
            while let Some((_, record)) = held.next_if(|(at, _)| **at < id) {
                if !visit(record) {
                    return Ok(false);
                }
            }
            if let Some((_, record)) = held.next_if(|(at, _)| **at == id) {
                return Ok(visit(record));
            }
            if state.extents.held(&id).is_some() {
                return Ok(true); // removed since the root
            }
            let record: ExtentRecord = decode_all(value)?;
            if state.extents.get(&id) != Some(&record.core()) {
                return Err("a record that is not the one memory holds the core of".into());
            }
            Ok(visit(&record))
        };
        more = walk_table(store, devices, EXTENTS, &mut visit_stored)?;
    }
    if more {
        for (_, record) in held {
            if !visit(record) {
                break;
            }
        }
    }
    Ok(())
}

/// The stored extent records, as the store holds them (key, value), for a whole write of
/// the state beside those memory holds (`entries`); none for a table held whole.
pub fn stored_extents(state: &MetaState, source: Source) -> Result<Vec<StoredEntry>, LoadError> {
    if !state.extents.is_based() {
        return Ok(Vec::new());
    }
    stored_entries(source, EXTENTS)
}

/// `state` with everything the store holds for it read into memory — every temperature
/// and every extent's whole record: a state that encodes whole, and compares with one
/// over another root.
pub fn read_whole(state: &mut MetaState, source: Source) -> Result<(), LoadError> {
    if state.extents.is_based() {
        let mut records = BTreeMap::new();
        each_extent(state, source, &mut |record| {
            records.insert(record.id, record.clone());
            true
        })?;
        if records.len() != state.extents.len() {
            return Err(LoadError::Head("the store holds fewer extent records than memory holds cores".into()));
        }
        state.extents = Extents::whole(records);
    }
    state.temperature = Temperatures::whole(temperatures(state, source)?);
    Ok(())
}

/// `bytes` decoded as one `T`, with nothing after it.
fn decode_all<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes too many", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
