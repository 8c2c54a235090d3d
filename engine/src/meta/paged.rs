//! The state's large tables in the paged store (metadata format 8 on): how a table's key
//! and value become a store entry, a checkpoint's changes (`changes`) or the whole state
//! (`entries`), the head that carries the rest (`Head`), and a state read back (`load`).
//!
//! Keys are a table's tag, then its key in big-endian bytes, so a table is one contiguous
//! key range and its entries come out in the map's order. Values are postcard. The head
//! is the state with its paged tables empty, and the journal tip it stands at, then the
//! metadata format (`Head::format`): it is the store root's payload, so a root names one
//! state, whole, and says how to read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::media::device::ExtentId;
use crate::meta::ids::{ChunkSlot, Ino};
use crate::meta::state::MetaState;
use crate::meta::store::{Devices, Entry, Store, StoreError};
use crate::meta::tracked::Tracked;

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

/// Each paged table's tag: the first byte of its keys. Never reused for another table.
const INODES: u8 = 1;
const DIRS: u8 = 2;
const FILE_EXTENTS: u8 = 3;
const EXTENTS: u8 = 4;
const TEMPERATURE: u8 = 5;
const SCRUBBED: u8 = 6;
const XATTRS: u8 = 7;
const LAYERS: u8 = 8;

/// Calls `$body` once per paged table with `$tag` (its key prefix) and `$field`.
macro_rules! each_table {
    ($state:expr, |$tag:ident, $field:ident| $body:block) => {
        each_table!(@ $state, $tag, $field, $body, INODES inodes, DIRS dirs, FILE_EXTENTS file_extents,
            EXTENTS extents, TEMPERATURE temperature, SCRUBBED scrubbed, XATTRS xattrs, LAYERS layers)
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

fn changes_of<K: TableKey, V: Serialize>(tag: u8, table: &mut Tracked<K, V>, out: &mut Vec<Entry>) {
    for key in table.take_dirty() {
        out.push((key_of(tag, &key), table.get(&key).map(value_of)));
    }
}

fn entries_of<K: TableKey, V: Serialize>(tag: u8, table: &Tracked<K, V>) -> impl Iterator<Item = Entry> + '_ {
    table.iter().map(move |(key, value)| (key_of(tag, key), Some(value_of(value))))
}

/// The entries the tables changed since the last call (a deletion as `None`), in key
/// order; the tables are clean after.
pub fn changes(state: &mut MetaState) -> Vec<Entry> {
    let mut out = Vec::new();
    each_table!(state, |tag, table| { changes_of(tag, table, &mut out) });
    debug_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    out
}

/// Every entry of the tables, in key order, encoded as it is taken. The tables stay as
/// marked: `mark_clean` once the entries are durable.
pub fn entries(state: &MetaState) -> impl Iterator<Item = Entry> + '_ {
    entries_of(INODES, &state.inodes)
        .chain(entries_of(DIRS, &state.dirs))
        .chain(entries_of(FILE_EXTENTS, &state.file_extents))
        .chain(entries_of(EXTENTS, &state.extents))
        .chain(entries_of(TEMPERATURE, &state.temperature))
        .chain(entries_of(SCRUBBED, &state.scrubbed))
        .chain(entries_of(XATTRS, &state.xattrs))
        .chain(entries_of(LAYERS, &state.layers))
}

/// Forgets every table's changes: the whole state is durable as it is.
pub fn mark_clean(state: &mut MetaState) {
    each_table!(state, |_tag, table| {
        table.take_dirty();
    });
}

/// The head of `state` at the tip `(seq, tip_hash)`, encoded: the state without its
/// paged tables (taken out for the encoding and put back).
pub fn encode_head(seq: u64, tip_hash: [u8; 32], state: &mut MetaState) -> Vec<u8> {
    let mut tables = MetaState::new(state.pool_id, state.default_policy, crate::base::clock::WallTime::default());
    swap_tables(state, &mut tables);
    let head = HeadRef { seq, tip_hash, state };
    let mut encoded = value_of(&head);
    encoded.push(crate::media::frame::METADATA_FORMAT);
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
    head.format = match after {
        [] => FIRST_STORE_FORMAT,
        [format] if *format > crate::media::frame::METADATA_FORMAT => {
            return Err(LoadError::NewerFormat { found: *format, supported: crate::media::frame::METADATA_FORMAT })
        }
        [format] if *format > FIRST_STORE_FORMAT => *format,
        _ => return Err(LoadError::Head(format!("{} bytes after the head, not its format", after.len()))),
    };
    let mut failure = None;
    let mut tables = Tables::default();
    store.scan_cold(devices, &mut |key, value| match tables.add(key, value) {
        Ok(()) => true,
        Err(why) => {
            failure = Some(LoadError::Entry { key: hex(key), why });
            false
        }
    })?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    tables.into_state(&mut head.state);
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
    file_extents: Vec<(Ino, BTreeMap<u64, ExtentId>)>,
    extents: Vec<(ExtentId, crate::meta::state::ExtentRecord)>,
    temperature: Vec<(ChunkSlot, crate::temperature::tracker::Temperature)>,
    scrubbed: Vec<(ExtentId, i64)>,
    xattrs: Vec<(Ino, Xattrs)>,
    layers: Vec<(ChunkSlot, Vec<crate::meta::state::Layer>)>,
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
    fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let (tag, rest) = key.split_first().ok_or("empty key")?;
        match *tag {
            INODES => add_to(&mut self.inodes, rest, value),
            DIRS => add_to(&mut self.dirs, rest, value),
            FILE_EXTENTS => add_to(&mut self.file_extents, rest, value),
            EXTENTS => add_to(&mut self.extents, rest, value),
            TEMPERATURE => add_to(&mut self.temperature, rest, value),
            SCRUBBED => add_to(&mut self.scrubbed, rest, value),
            XATTRS => add_to(&mut self.xattrs, rest, value),
            LAYERS => add_to(&mut self.layers, rest, value),
            other => Err(format!("no table has tag {other}")),
        }
    }

    fn into_state(self, state: &mut MetaState) {
        state.inodes = table_of(self.inodes);
        state.dirs = table_of(self.dirs);
        state.file_extents = table_of(self.file_extents);
        state.extents = table_of(self.extents);
        state.temperature = table_of(self.temperature);
        state.scrubbed = table_of(self.scrubbed);
        state.xattrs = table_of(self.xattrs);
        state.layers = table_of(self.layers);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
