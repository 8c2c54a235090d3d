//! The paged metadata store: an ordered map of byte keys to byte values kept as immutable,
//! checksummed pages on every replica device, read through a bounded page cache, so that
//! metadata costs memory for what is used and commits cost what changed (issue 17).
//!
//! Shape: a log-structured merge tree of whole blocks. Changes since the last commit are
//! held in memory (`pending`). A commit writes them as one new *run* — pages of entries in
//! key order, a deletion kept as an entry without value — then the run's *index* (each
//! page's id, first key and hash), then a *root* naming every live run, oldest first, and
//! carrying the caller's payload. Runs never change; `merge` folds the newest runs into
//! one when a run is no bigger than `merge_ratio` times the runs after it, so a store of
//! n entries holds about log₂ n runs and an entry is rewritten about as often. Pages are
//! cut at `page_bytes`, or at `bulk_page_bytes` in a run of 64 pages' worth or more. No
//! block is ever written in place, so the store sits on any `BlockDevice`, an object
//! store's included.
//!
//! Contract:
//! - Every replica gets the same blocks under the same names. A commit writes its pages
//!   and index on every replica and syncs them all before it writes the root, and syncs
//!   the root before it returns: a root that is durable anywhere names only blocks that
//!   are durable everywhere it was written. A replica that fails a write or a sync drops
//!   out of the commit (it keeps its older root) and is reported in `Committed::failed`;
//!   the commit fails only when no replica is left. Later commits go to the replicas that
//!   hold the current root; `write_whole` starts a new generation on any set of replicas.
//! - A block is only taken for the one its namer means: roots name indexes, indexes name
//!   pages, each with its hash. A copy that does not verify is passed over for another
//!   replica's, and rewritten from it; when no replica holds a good copy the read fails
//!   with `StoreError::Lost` naming the block — never a wrong answer. A read stops at
//!   the first good copy, so rot on a later replica waits for `check` (the scrub's), which
//!   reads every copy of every live block.
//! - `open` takes the newest root that verifies on any replica, and changes nothing but a
//!   rotten copy it meets (rewritten from a good one, as every read does). If a run it
//!   names cannot be read on any replica, the store is refused by name, never opened
//!   older. `tidy` then brings replicas behind it up to it and removes the blocks
//!   no live root names (a crashed commit's, a merge's inputs).
//! - Page ids are never reused: a new page's id is above every id a root ever named and
//!   every page any replica holds.
//! - Memory: the runs' indexes (about 50 bytes a page) and the pending changes; decoded
//!   pages only within `cache_bytes`.

mod page;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::media::device::{held_past, BlockDevice, BlockKind, BlockName, DeviceError};
use crate::media::frame::FrameError;
pub use page::{Entry, Key};
use page::{Page, PageCutter, PageRef, RawPage, Root, RunIndex, RunRef};

/// The replicas a store is written to and read from, in order of preference.
pub type Devices<'a> = [&'a dyn BlockDevice];

/// How a store pages and caches.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The size a page's block is cut at (the last page of a run may be smaller).
    pub page_bytes: usize,
    /// The page size of a run of at least 64 pages' worth (written whole, merged, or a
    /// commit of that much):
    /// a large run in fewer, larger blocks (each block is a file on a directory disk, and
    /// creating tens of thousands of them costs more than writing their bytes).
    pub bulk_page_bytes: usize,
    /// The most bytes of decoded pages kept in memory.
    pub cache_bytes: u64,
    /// A run is merged with the runs after it once it is at most this many times their size.
    pub merge_ratio: u64,
    /// Whether a whole read walks key ranges at once on the I/O threads
    /// (`base::io::run_all`); the simulator walks them one after another.
    pub parallel: bool,
    /// A deliberate defect (tests only): write a root before its pages are synced.
    #[cfg(feature = "sabotage")]
    pub sabotage_root_before_pages: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            page_bytes: 64 << 10,
            bulk_page_bytes: 1 << 20,
            cache_bytes: 256 << 20,
            merge_ratio: 1,
            parallel: true,
            #[cfg(feature = "sabotage")]
            sabotage_root_before_pages: false,
        }
    }
}

/// Whether a scan keeps the pages it reads in the cache: a lookup's neighbourhood, yes; a
/// whole read of the store (an open), no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanCache {
    Keep,
    Skip,
}

/// What a walk hands each entry it lends: key, value (`None`: a deletion); `false` stops it.
type LentVisitor<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<bool, StoreError> + 'a;

/// The most runs a store holds after a merge, whatever their sizes.
const MAX_RUNS: usize = 24;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no paged metadata store on any of the {0} replica(s)")]
    Missing(usize),
    #[error("a paged metadata store already exists on {0}")]
    Exists(String),
    #[error("{what} is unreadable on every replica ({reasons}): refusing to go on without it")]
    Lost { what: String, reasons: String },
    #[error("{device}: {error}")]
    Device { device: String, error: DeviceError },
    #[error("no replica took the store commit: {0}")]
    NoReplica(String),
}

/// A replica that dropped out of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFailure {
    /// Its position in the replicas the commit was handed.
    pub replica: usize,
    pub device: String,
    pub error: DeviceError,
}

/// What a commit, merge or whole write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub stats: CommitStats,
    /// Replicas that do not hold the new root.
    pub failed: Vec<ReplicaFailure>,
}

/// The replicas a commit still writes to.
struct Targets<'a, 'b> {
    devices: &'a Devices<'b>,
    alive: Vec<bool>,
    failed: Vec<ReplicaFailure>,
    stats: CommitStats,
}

impl<'a, 'b> Targets<'a, 'b> {
    fn new(devices: &'a Devices<'b>) -> Self {
        Targets { devices, alive: vec![true; devices.len()], failed: Vec::new(), stats: CommitStats::default() }
    }

    fn each(&mut self, op: impl Fn(&dyn BlockDevice) -> Result<(), DeviceError>) -> Result<(), StoreError> {
        for (i, device) in self.devices.iter().enumerate() {
            if self.alive[i] {
                if let Err(error) = op(*device) {
                    self.drop_out(i, error);
                }
            }
        }
        if self.alive.iter().any(|a| *a) {
            return Ok(());
        }
        Err(self.none_left())
    }

    fn drop_out(&mut self, replica: usize, error: DeviceError) {
        let device = self.devices[replica].describe();
        tracing::warn!(replica = %device, %error, "store replica dropped out of a commit");
        self.alive[replica] = false;
        self.failed.push(ReplicaFailure { replica, device, error });
    }

    fn none_left(&self) -> StoreError {
        let all: Vec<String> = self.failed.iter().map(|f| format!("{}: {}", f.device, f.error)).collect();
        StoreError::NoReplica(all.join("; "))
    }

    fn write(&mut self, name: BlockName, block: &[u8]) -> Result<(), StoreError> {
        self.each(|device| device.write(name, block))?;
        let alive = self.alive.iter().filter(|a| **a).count() as u64;
        self.stats.blocks += alive;
        self.stats.bytes += block.len() as u64 * alive;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.each(|device| device.sync())
    }

    /// The replicas still in the commit.
    fn living(&self) -> impl Iterator<Item = &dyn BlockDevice> + '_ {
        self.devices.iter().zip(&self.alive).filter(|(_, a)| **a).map(|(d, _)| *d)
    }

    fn done(self) -> Committed {
        Committed { stats: self.stats, failed: self.failed }
    }
}

/// What a commit or merge wrote, over all replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub blocks: u64,
    pub bytes: u64,
}

/// One copy of a store block that did not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCopy {
    /// Its position in the replicas the check was handed.
    pub replica: usize,
    pub name: BlockName,
    pub why: String,
    /// Whether a good copy was written over it.
    pub rewritten: bool,
}

/// What `Store::check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCheck {
    /// Copies read and verified, over all replicas.
    pub copies: u64,
    /// Copies that did not verify or could not be read.
    pub bad: Vec<BadCopy>,
    /// Blocks no replica holds a good copy of.
    pub lost: Vec<BlockName>,
}

/// A run as the store holds it: how the root names it, and its index.
struct Run {
    named: RunRef,
    index: RunIndex,
}

#[derive(Clone)]
struct PageWeight;

impl Weighter<u64, Arc<RawPage>> for PageWeight {
    fn weight(&self, _: &u64, page: &Arc<RawPage>) -> u64 {
        page.bytes().max(1)
    }
}

/// A deterministic hasher, so the simulator's runs evict the same pages every time.
type PageCache = Cache<u64, Arc<RawPage>, PageWeight, BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

/// Reads pages from the cache or the replicas.
struct Pages {
    cache: PageCache,
}

impl Pages {
    fn new(cache_bytes: u64) -> Pages {
        let items = (cache_bytes / (16 << 10)).clamp(16, 1 << 20) as usize;
        Pages { cache: Cache::with(items, cache_bytes, PageWeight, Default::default(), Default::default()) }
    }

    /// The page `named` names; kept in the cache when `keep`.
    fn get(&self, devices: &Devices, named: &PageRef, keep: bool) -> Result<Arc<RawPage>, StoreError> {
        if let Some(page) = self.cache.get(&named.id) {
            return Ok(page);
        }
        let page = read_verified(devices, BlockName::StorePage { id: named.id }, |block| {
            page::decode_page(block, &named.hash)
        })?;
        let page = Arc::new(page);
        if keep {
            self.cache.insert(named.id, page.clone());
        }
        Ok(page)
    }
}

/// The store. Owns no device: every call that reads or writes is handed the replicas.
pub struct Store {
    config: StoreConfig,
    root: Root,
    /// The runs `root` names, in its order.
    runs: Vec<Arc<Run>>,
    pending: BTreeMap<Key, Option<Vec<u8>>>,
    pages: Pages,
    next_page: u64,
    /// At `open`: the replicas (positions in the list it was handed) whose newest root
    /// that verifies is the one opened.
    holders: BTreeSet<usize>,
}

impl Store {
    /// Creates an empty store holding `payload` on every replica. Refuses replicas that
    /// hold any block of a store already.
    pub fn create(devices: &Devices, config: StoreConfig, payload: Vec<u8>) -> Result<Store, StoreError> {
        assert!(!devices.is_empty());
        for device in devices {
            for kind in [BlockKind::StoreRoot, BlockKind::StorePage] {
                if !device.list(kind).map_err(|error| device_error(*device, error))?.is_empty() {
                    return Err(StoreError::Exists(device.describe()));
                }
            }
        }
        let (store, _) = Store::write_whole(devices, config, None, std::iter::empty(), payload)?;
        Ok(store)
    }

    /// Writes `entries` (ascending keys; deletions are dropped) as the store's only run,
    /// in a generation above every root the replicas or `prior` hold, on every replica;
    /// once that is durable, every older root and page on them is deleted. How a store is
    /// first written, and written again whole on a new set of replicas.
    pub fn write_whole(
        devices: &Devices,
        config: StoreConfig,
        prior: Option<&Store>,
        entries: impl IntoIterator<Item = Entry>,
        payload: Vec<u8>,
    ) -> Result<(Store, Committed), StoreError> {
        assert!(!devices.is_empty());
        let (mut gen, mut next_page) = prior.as_ref().map_or((0, 0), |p| (p.root.gen, p.next_page));
        // A replica that cannot be listed might hold a newer root than this write's: it
        // drops out before anything is written.
        let mut targets = Targets::new(devices);
        for (i, device) in devices.iter().enumerate() {
            let listed = device.list(BlockKind::StoreRoot).and_then(|r| Ok((r, device.list(BlockKind::StorePage)?)));
            match listed {
                Ok((roots, pages)) => {
                    // What the listing does not show yet counts too (`held_past`).
                    if let Some(BlockName::StoreRoot { gen: newest }) = roots.last() {
                        gen = gen.max(*newest);
                    }
                    gen = gen.max(latest_noted(*device));
                    gen += held_past(*device, gen, |gen| BlockName::StoreRoot { gen }).len() as u64;
                    if let Some(BlockName::StorePage { id }) = pages.last() {
                        next_page = next_page.max(id + 1);
                    }
                    next_page +=
                        held_past(*device, next_page.saturating_sub(1), |id| BlockName::StorePage { id }).len() as u64;
                }
                Err(error) => targets.drop_out(i, error),
            }
        }
        if !targets.alive.iter().any(|a| *a) {
            return Err(targets.none_left());
        }
        let mut writer = RunWriter::new(config.bulk_page_bytes.max(config.page_bytes), next_page);
        let written =
            entries.into_iter().filter(|(_, value)| value.is_some()).try_for_each(|e| writer.push(&mut targets, e));
        let run = written.and_then(|()| writer.finish(&mut targets))?;
        let pages = Pages::new(config.cache_bytes);
        let mut store = Store {
            config,
            root: Root { gen, next_page: writer.next_page, runs: Vec::new(), payload: Vec::new() },
            runs: Vec::new(),
            pending: BTreeMap::new(),
            pages,
            next_page: writer.next_page,
            holders: BTreeSet::new(),
        };
        let root = Root { gen: gen + 1, next_page: writer.next_page, runs: Vec::new(), payload };
        store.publish(&mut targets, root, run.into_iter().collect())?;
        let live: BTreeSet<u64> = store.live_blocks().into_keys().collect();
        for device in targets.living() {
            remove_dead(device, &live, store.root.gen);
        }
        Ok((store, targets.done()))
    }

    /// Opens the store the replicas hold (see the module header for which root, and what
    /// is repaired and removed on the way).
    pub fn open(devices: &Devices, config: StoreConfig) -> Result<Store, StoreError> {
        assert!(!devices.is_empty());
        let (root, holders) = newest_root(devices)?;
        let mut runs = Vec::with_capacity(root.runs.len());
        for named in &root.runs {
            let index = read_verified(devices, BlockName::StorePage { id: named.index }, |block| {
                page::decode_index(block, &named.hash)
            })
            .map_err(|e| match e {
                StoreError::Lost { what, reasons } => {
                    StoreError::Lost { what: format!("{what} (a run of store root {})", root.gen), reasons }
                }
                other => other,
            })?;
            runs.push(Arc::new(Run { named: named.clone(), index }));
        }
        let mut next_page = root.next_page;
        for device in devices {
            if let Ok(names) = device.list(BlockKind::StorePage) {
                if let Some(BlockName::StorePage { id }) = names.last() {
                    next_page = next_page.max(id + 1);
                }
            }
        }
        let pages = Pages::new(config.cache_bytes);
        Ok(Store { config, root, runs, pending: BTreeMap::new(), pages, next_page, holders })
    }

    /// The replicas (positions in the list `open` was handed) whose newest root was the
    /// one opened; empty for a store not opened.
    pub fn holders(&self) -> &BTreeSet<usize> {
        &self.holders
    }

    /// The value of `key`: the pending change, else the newest run's entry.
    pub fn get(&self, devices: &Devices, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(change) = self.pending.get(key) {
            return Ok(change.clone());
        }
        for run in self.runs.iter().rev() {
            if !run.index.covers(key) {
                continue;
            }
            let page = self.pages.get(devices, &run.index.pages[run.index.page_for(key)], true)?;
            if let Some(i) = page.find(key) {
                return Ok(page.value(i).map(<[u8]>::to_vec));
            }
        }
        Ok(None)
    }

    /// Sets `key` to `value` as of the next commit (reads see it at once).
    pub fn put(&mut self, key: Key, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    /// Removes `key` as of the next commit (reads miss it at once).
    pub fn delete(&mut self, key: Key) {
        self.pending.insert(key, None);
    }

    /// Visits every key in `from..to` (to the end when `to` is `None`) in order with its
    /// value, until `visit` returns `false`; the pages read stay in the cache or not.
    pub fn scan(
        &self,
        devices: &Devices,
        from: &[u8],
        to: Option<&[u8]>,
        cache: ScanCache,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let keep = cache == ScanCache::Keep;
        self.walk_pages(devices, &self.runs, true, keep, from, to, &mut |key, value| match value {
            Some(value) => Ok(visit(key, value)),
            None => Ok(true),
        })
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Makes the pending changes durable as one new run, with `payload` in the new root,
    /// on every replica that holds the current root (see the module header for one that
    /// fails). On an error the changes stay pending.
    pub fn commit(&mut self, devices: &Devices, payload: Vec<u8>) -> Result<Committed, StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let committed = self.commit_run(devices, pending.iter(), payload);
        if committed.is_err() {
            self.pending = pending;
        }
        committed
    }

    /// `commit` of the pending changes and then `changes` (ascending keys, each once).
    /// With nothing pending — a checkpoint's usual case — the changes go straight into the
    /// run, never through the pending map; on an error they join the pending changes.
    pub fn commit_changes(
        &mut self,
        devices: &Devices,
        changes: Vec<Entry>,
        payload: Vec<u8>,
    ) -> Result<Committed, StoreError> {
        debug_assert!(changes.windows(2).all(|w| w[0].0 < w[1].0));
        if !self.pending.is_empty() {
            self.pending.extend(changes);
            return self.commit(devices, payload);
        }
        let committed = self.commit_run(devices, changes.iter().map(|(k, v)| (k, v)), payload);
        if committed.is_err() {
            self.pending.extend(changes);
        }
        committed
    }

    /// Writes `changes` (ascending keys) as one new run and publishes a root naming it.
    fn commit_run<'e>(
        &mut self,
        devices: &Devices,
        changes: impl Iterator<Item = (&'e Key, &'e Option<Vec<u8>>)> + Clone,
        payload: Vec<u8>,
    ) -> Result<Committed, StoreError> {
        let mut targets = Targets::new(devices);
        let mut runs = self.runs.clone();
        // With no older run, a deletion shadows nothing.
        let keep_deletions = !self.runs.is_empty();
        let bytes: usize = changes.clone().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
        let mut writer = RunWriter::new(self.page_bytes_for(bytes as u64), self.next_page);
        let written = changes
            .filter(|(_, value)| value.is_some() || keep_deletions)
            .try_for_each(|(key, value)| writer.push(&mut targets, (key.clone(), value.clone())));
        let written = written.and_then(|()| writer.finish(&mut targets));
        // Ids are spent even when the commit fails: its blocks may be on some replica.
        self.next_page = writer.next_page;
        runs.extend(written?);
        let root = Root { gen: self.root.gen + 1, next_page: self.next_page, runs: Vec::new(), payload };
        self.publish(&mut targets, root, runs)?;
        Ok(targets.done())
    }

    /// Whether `merge` has runs to fold now.
    pub fn wants_merge(&self) -> bool {
        self.merge_from().is_some()
    }

    /// Folds the newest runs into one (see `merge_ratio`), in a commit of its own that
    /// keeps the root's payload; the folded runs' blocks are deleted once it is durable.
    pub fn merge(&mut self, devices: &Devices) -> Result<Committed, StoreError> {
        let mut targets = Targets::new(devices);
        let Some(from) = self.merge_from() else {
            return Ok(targets.done());
        };
        let inputs = self.runs[from..].to_vec();
        // Folded into the oldest run, a deletion has nothing left to shadow.
        let keep_deletions = from > 0;
        let input_bytes: u64 = inputs.iter().map(|run| run.named.bytes).sum();
        let mut writer = RunWriter::new(self.page_bytes_for(input_bytes), self.next_page);
        let walked = self.walk(devices, &inputs, false, &[], None, &mut |entry| {
            if entry.1.is_some() || keep_deletions {
                writer.push(&mut targets, entry)?;
            }
            Ok(true)
        });
        let written = walked.and_then(|()| writer.finish(&mut targets));
        self.next_page = writer.next_page;
        let written = written?;
        let mut runs = self.runs[..from].to_vec();
        runs.extend(written);
        let root = Root {
            gen: self.root.gen + 1,
            next_page: self.next_page,
            runs: Vec::new(),
            payload: self.root.payload.clone(),
        };
        self.publish(&mut targets, root, runs)?;
        for run in inputs {
            for id in run.index.pages.iter().map(|p| p.id).chain([run.named.index]) {
                self.pages.cache.remove(&id);
                delete_all(targets.living(), BlockName::StorePage { id });
            }
        }
        Ok(targets.done())
    }

    /// The payload of the last commit.
    pub fn payload(&self) -> &[u8] {
        &self.root.payload
    }

    /// The generation of the last commit's root.
    pub fn generation(&self) -> u64 {
        self.root.gen
    }

    /// How many runs the store holds.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Blocks the root names: every run's pages and index, on each replica.
    pub fn blocks(&self) -> u64 {
        self.runs.iter().map(|run| run.index.pages.len() as u64 + 1).sum()
    }

    /// Changes not committed yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of decoded pages in the cache.
    pub fn cached_bytes(&self) -> u64 {
        self.pages.cache.weight()
    }

    /// Writes `root`, naming `runs`, on every replica and syncs it; the previous root is
    /// then deleted (a crash that keeps it leaves an older root, which `open` passes over).
    fn publish(&mut self, targets: &mut Targets, mut root: Root, runs: Vec<Arc<Run>>) -> Result<(), StoreError> {
        root.runs = runs.iter().map(|run| run.named.clone()).collect();
        // Pages and indexes are durable everywhere before a root names them.
        #[cfg(feature = "sabotage")]
        let sabotaged = self.config.sabotage_root_before_pages;
        #[cfg(not(feature = "sabotage"))]
        let sabotaged = false;
        if !sabotaged {
            targets.sync()?;
        }
        targets.write(BlockName::StoreRoot { gen: root.gen }, &page::encode_root(&root))?;
        targets.sync()?;
        let old = std::mem::replace(&mut self.root, root);
        self.runs = runs;
        note_latest(targets.living(), self.root.gen);
        if old.gen > 0 {
            delete_all(targets.living(), BlockName::StoreRoot { gen: old.gen });
        }
        Ok(())
    }

    /// Every block the root names, by id: its hash, and whether it is a run's index.
    fn live_blocks(&self) -> BTreeMap<u64, ([u8; 32], bool)> {
        let mut live = BTreeMap::new();
        for run in &self.runs {
            live.insert(run.named.index, (run.named.hash, true));
            live.extend(run.index.pages.iter().map(|p| (p.id, (p.hash, false))));
        }
        live
    }

    /// The page size of a run of about `bytes`: bulk pages from 64 pages' worth on.
    fn page_bytes_for(&self, bytes: u64) -> usize {
        if bytes >= 64 * self.config.page_bytes as u64 {
            self.config.bulk_page_bytes.max(self.config.page_bytes)
        } else {
            self.config.page_bytes
        }
    }

    /// The first run of the newest ones `merge` would fold, if it would fold any.
    fn merge_from(&self) -> Option<usize> {
        let runs = &self.runs;
        let n = runs.len();
        if n < 2 {
            return None;
        }
        let mut from = n - 1;
        let mut newer = runs[n - 1].named.bytes;
        while from > 0 && (from >= MAX_RUNS || runs[from - 1].named.bytes <= self.config.merge_ratio * newer) {
            from -= 1;
            newer += runs[from].named.bytes;
        }
        (from < n - 1).then_some(from)
    }

    /// Visits the entries of `runs` (and the pending changes, when `with_pending`) in key
    /// order from `from` to `to`, each key once with its newest entry, deletions included.
    fn walk(
        &self,
        devices: &Devices,
        runs: &[Arc<Run>],
        with_pending: bool,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(Entry) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.walk_pages(devices, runs, with_pending, with_pending, from, to, &mut |key, value| {
            visit((key.to_vec(), value.map(<[u8]>::to_vec)))
        })
    }

    /// `walk`, lending each entry rather than copying it, and keeping the pages it reads
    /// in the cache or not (`keep`): a whole read of ten million entries allocates none.
    #[allow(clippy::too_many_arguments)]
    fn walk_pages(
        &self,
        devices: &Devices,
        runs: &[Arc<Run>],
        with_pending: bool,
        keep: bool,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut LentVisitor<'_>,
    ) -> Result<(), StoreError> {
        let mut pending = self.pending.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded));
        let mut pending_head = if with_pending { pending.next() } else { None };
        // Newest first, so that the first head holding the least key is the newest entry.
        let mut cursors = Vec::with_capacity(runs.len());
        for run in runs.iter().rev() {
            cursors.push(RunCursor::new(&self.pages, devices, run.clone(), from, keep)?);
        }
        let mut least = Vec::new();
        loop {
            // The newest entry of the least key: pending changes win a tie, then the
            // newest run (only a strictly smaller key displaces the one found).
            let mut newest: Option<(&[u8], Option<&[u8]>)> =
                pending_head.map(|(key, value)| (key.as_slice(), value.as_deref()));
            for cursor in &cursors {
                if let Some((key, value)) = cursor.head() {
                    if newest.is_none_or(|(l, _)| key < l) {
                        newest = Some((key, value));
                    }
                }
            }
            let Some((key, value)) = newest else { return Ok(()) };
            if to.is_some_and(|to| key >= to) {
                return Ok(());
            }
            let go_on = visit(key, value)?;
            least.clear();
            least.extend_from_slice(key);
            if !go_on {
                return Ok(());
            }
            if pending_head.is_some_and(|(k, _)| *k == least) {
                pending_head = pending.next();
            }
            for cursor in &mut cursors {
                if cursor.head().is_some_and(|(k, _)| k == least.as_slice()) {
                    cursor.advance(&self.pages, devices)?;
                }
            }
        }
    }

    /// Reads every block the current root names — each run's index and pages, then the
    /// root itself — on every replica in `devices` and verifies each copy against its
    /// namer; with `repair`, a copy that does not verify, or is missing, is rewritten from
    /// a good one (pages and indexes synced before the root). Reads through no cache: the
    /// point is the copies on the devices, not what memory holds. A block no replica holds
    /// good is reported in `StoreCheck::lost`: the store would be refused at the next open.
    ///
    /// In steps, so a caller can let go of what it holds between them: this call checks at
    /// most `max_blocks` live blocks with ids from `from` on, and returns where the next
    /// step starts, or `None` once the root, last, is checked. Ids only grow, so blocks a
    /// commit adds between steps are checked by a later step and ones it drops are not.
    pub fn check(&self, devices: &Devices, repair: bool, from: u64, max_blocks: usize) -> (StoreCheck, Option<u64>) {
        assert!(max_blocks > 0);
        let mut check = StoreCheck::default();
        let root_block = page::encode_root(&self.root);
        let root_name = BlockName::StoreRoot { gen: self.root.gen };
        let mut touched = vec![false; devices.len()];
        let live = self.live_blocks();
        let mut blocks = live.range(from..);
        for (id, (hash, is_index)) in blocks.by_ref().take(max_blocks) {
            let verify = |block: &[u8]| verify_live(block, hash, *is_index).map_err(|e| e.to_string());
            check_block(devices, BlockName::StorePage { id: *id }, &verify, repair, &mut check, &mut touched);
        }
        // Pages first, durable, then the root that names them: the store's own order.
        sync_touched(devices, &mut touched);
        if let Some((next, _)) = blocks.next() {
            return (check, Some(*next));
        }
        let verify_root = |block: &[u8]| {
            if block == root_block.as_slice() {
                Ok(())
            } else {
                page::decode_root(block)
                    .map_err(|e| e.to_string())
                    .and_then(|_| Err("another root of this generation".into()))
            }
        };
        check_block(devices, root_name, &verify_root, repair, &mut check, &mut touched);
        sync_touched(devices, &mut touched);
        (check, None)
    }

    /// Brings every replica to the current root: copies what a replica lacks of it from
    /// another, and removes roots and pages the root does not name. `open` leaves this to
    /// its caller, who knows which replicas should hold the store. Returns the replicas
    /// that could not be brought up (the others hold the root).
    pub fn tidy(&self, devices: &Devices) -> Vec<ReplicaFailure> {
        let live = self.live_blocks();
        let live_ids: BTreeSet<u64> = live.keys().copied().collect();
        let root_block = page::encode_root(&self.root);
        let root_name = BlockName::StoreRoot { gen: self.root.gen };
        let mut failed = Vec::new();
        for (replica, device) in devices.iter().enumerate() {
            let brought = (|| -> Result<(), StoreError> {
                let held: BTreeSet<BlockName> = device
                    .list(BlockKind::StorePage)
                    .map_err(|error| device_error(*device, error))?
                    .into_iter()
                    .collect();
                if !device.read(root_name).is_ok_and(|block| block == root_block) {
                    // Its own roots go first, durably: should it hold one of another
                    // history numbered above this one, a crash while it is brought up
                    // must not leave that root for recovery to prefer.
                    remove_dead(*device, &live_ids, self.root.gen);
                    device.delete(root_name).map_err(|error| device_error(*device, error))?;
                    device.sync().map_err(|error| device_error(*device, error))?;
                    // A replica behind may hold pages of another history under the same
                    // ids: each live page it holds is checked, and copied if it is not
                    // the one the root means.
                    let mut copied = 0u64;
                    for (&id, &(hash, is_index)) in &live {
                        let name = BlockName::StorePage { id };
                        let verify = |block: &[u8]| verify_live(block, &hash, is_index);
                        if held.contains(&name) && device.read(name).is_ok_and(|block| verify(&block).is_ok()) {
                            continue;
                        }
                        let block = read_verified(devices, name, |block| verify(block).map(|()| block.to_vec()))?;
                        device.write(name, &block).map_err(|error| device_error(*device, error))?;
                        copied += 1;
                    }
                    device.sync().map_err(|error| device_error(*device, error))?;
                    device.write(root_name, &root_block).map_err(|error| device_error(*device, error))?;
                    note_latest(std::iter::once(*device), self.root.gen);
                    tracing::info!(replica = %device.describe(), copied, gen = self.root.gen, "store replica brought up to the root");
                }
                remove_dead(*device, &live_ids, self.root.gen);
                device.sync().map_err(|error| device_error(*device, error))
            })();
            if let Err(error) = brought {
                let error = match error {
                    StoreError::Device { error, .. } => error,
                    other => DeviceError::Io(other.to_string()),
                };
                failed.push(ReplicaFailure { replica, device: device.describe(), error });
            }
        }
        failed
    }
}

/// Walks one run from a key on, a page at a time.
struct RunCursor {
    run: Arc<Run>,
    page_ix: usize,
    page: Option<Arc<RawPage>>,
    pos: usize,
    keep: bool,
}

impl RunCursor {
    fn new(pages: &Pages, devices: &Devices, run: Arc<Run>, from: &[u8], keep: bool) -> Result<RunCursor, StoreError> {
        let page_ix = run.index.page_for(from);
        let page = pages.get(devices, &run.index.pages[page_ix], keep)?;
        let pos = page.seek(from);
        let mut cursor = RunCursor { run, page_ix, page: Some(page), pos, keep };
        cursor.settle(pages, devices)?;
        Ok(cursor)
    }

    /// The entry the cursor stands on: its key, and its value or `None` for a deletion.
    fn head(&self) -> Option<(&[u8], Option<&[u8]>)> {
        let page = self.page.as_ref()?;
        (self.pos < page.len()).then(|| (page.key(self.pos), page.value(self.pos)))
    }

    fn advance(&mut self, pages: &Pages, devices: &Devices) -> Result<(), StoreError> {
        self.pos += 1;
        self.settle(pages, devices)
    }

    /// Moves past the end of a page to the next one, or to the end of the run.
    fn settle(&mut self, pages: &Pages, devices: &Devices) -> Result<(), StoreError> {
        while let Some(page) = &self.page {
            if self.pos < page.len() {
                return Ok(());
            }
            self.page_ix += 1;
            self.pos = 0;
            self.page = match self.run.index.pages.get(self.page_ix) {
                Some(named) => Some(pages.get(devices, named, self.keep)?),
                None => None,
            };
        }
        Ok(())
    }
}

/// Writes a run's pages as entries arrive, then its index.
struct RunWriter {
    cutter: PageCutter,
    pages: Vec<PageRef>,
    entries: u64,
    last: Option<Key>,
    next_page: u64,
}

impl RunWriter {
    fn new(page_bytes: usize, next_page: u64) -> RunWriter {
        RunWriter { cutter: PageCutter::new(page_bytes), pages: Vec::new(), entries: 0, last: None, next_page }
    }

    fn push(&mut self, targets: &mut Targets, entry: Entry) -> Result<(), StoreError> {
        self.entries += 1;
        self.last = Some(entry.0.clone());
        if let Some(page) = self.cutter.push(entry) {
            self.write_page(targets, page)?;
        }
        Ok(())
    }

    fn write_page(&mut self, targets: &mut Targets, page: Page) -> Result<(), StoreError> {
        let (block, hash) = page::encode_page(&page);
        let id = self.take_id();
        targets.write(BlockName::StorePage { id }, &block)?;
        let first = page.entries.into_iter().next().map(|(k, _)| k).unwrap_or_default();
        self.pages.push(PageRef { id, first, hash, bytes: block.len() as u32 });
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        self.next_page += 1;
        self.next_page - 1
    }

    /// Writes the last page and the index; the run, or none when it had no entries.
    fn finish(&mut self, targets: &mut Targets) -> Result<Option<Arc<Run>>, StoreError> {
        if let Some(page) = std::mem::replace(&mut self.cutter, PageCutter::new(1)).finish() {
            self.write_page(targets, page)?;
        }
        let Some(last) = self.last.take() else {
            return Ok(None);
        };
        let index = RunIndex { pages: std::mem::take(&mut self.pages), last, entries: self.entries };
        let (block, hash) = page::encode_index(&index);
        let id = self.take_id();
        targets.write(BlockName::StorePage { id }, &block)?;
        let named = RunRef { index: id, hash, bytes: index.bytes(), entries: index.entries };
        Ok(Some(Arc::new(Run { named, index })))
    }
}

/// On a shared device, the generation last published there: `StoreRoot { gen: 0 }`, a
/// name no root takes (generations start at 1). A store's listing may lag its writes while
/// a read by name is exact, so the search for the newest root starts from it and asks for
/// each root above by name; roots are published in order, so there is no gap above it.
/// Only a hint: one that does not decode is passed over.
const LATEST: BlockName = BlockName::StoreRoot { gen: 0 };

fn encode_latest(gen: u64) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&gen.to_le_bytes());
    block[8..].copy_from_slice(&(!gen).to_le_bytes());
    block
}

fn decode_latest(block: &[u8]) -> Option<u64> {
    let gen = u64::from_le_bytes(block.get(..8)?.try_into().ok()?);
    let check = u64::from_le_bytes(block.get(8..16)?.try_into().ok()?);
    (block.len() == 16 && check == !gen).then_some(gen)
}

/// Where the search for roots on `device` starts probing by name: the latest generation
/// it noted (`LATEST`), on a shared device; 0 otherwise.
fn latest_noted(device: &dyn BlockDevice) -> u64 {
    if !device.shared() {
        return 0;
    }
    device.read(LATEST).ok().and_then(|block| decode_latest(&block)).unwrap_or(0)
}

/// Notes on each shared device of `devices` that root `gen` is published there.
fn note_latest<'a>(devices: impl Iterator<Item = &'a dyn BlockDevice>, gen: u64) {
    for device in devices.filter(|d| d.shared()) {
        if let Err(error) = device.write(LATEST, &encode_latest(gen)) {
            tracing::warn!(replica = %device.describe(), %error, gen, "could not note the latest store root");
        }
    }
}

/// Whether `device` holds any block of a store's roots, including ones its listing does
/// not show yet.
pub fn holds_store(device: &dyn BlockDevice) -> bool {
    device.list(BlockKind::StoreRoot).is_ok_and(|roots| !roots.is_empty())
        || latest_noted(device) > 0
        || !held_past(device, 0, |gen| BlockName::StoreRoot { gen }).is_empty()
}

/// Listings a search for the newest root makes before it gives up on a lagging one.
const ROOT_LISTINGS: usize = 8;

/// The newest root that verifies on any replica, and the replicas whose newest root
/// that verifies it is.
///
/// On a shared device (an object store) a listing may lag: roots past the newest listed
/// are asked for by name (`held_past`), and a listed root that is gone (`NotFound`) was
/// deleted, which the store does only once a newer root is durable. So while the newest
/// gone root is above the newest found, the listing is behind, and the search lists
/// again; it never settles for an older root, whose journal may have been trimmed.
fn newest_root(devices: &Devices) -> Result<(Root, BTreeSet<usize>), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (newest, reasons, gone) = list_roots(devices);
        let best = newest.iter().flatten().map(|root| root.gen).max();
        match gone {
            Some(gone) if best.is_none_or(|best| best < gone) => {
                if attempt < ROOT_LISTINGS {
                    continue;
                }
                return Err(StoreError::Lost {
                    what: "the newest store root".into(),
                    reasons: format!(
                        "the store lists root {gone} but holds it no more, and shows no newer one yet: its listing \
                         lags behind its writes; open the pool again in a moment"
                    ),
                });
            }
            _ => return pick_newest(devices, newest, reasons),
        }
    }
}

/// One listing of every replica's roots: each replica's newest root that verifies, the
/// reasons others did not, and the newest root a shared replica listed but no longer holds.
fn list_roots(devices: &Devices) -> (Vec<Option<Root>>, Vec<String>, Option<u64>) {
    let mut newest: Vec<Option<Root>> = vec![None; devices.len()];
    let mut reasons = Vec::new();
    let mut gone: Option<u64> = None;
    for (slot, device) in devices.iter().enumerate() {
        let mut names = match device.list(BlockKind::StoreRoot) {
            Ok(names) => names,
            Err(error) => {
                reasons.push(format!("{}: {error}", device.describe()));
                continue;
            }
        };
        names.retain(|name| *name != LATEST);
        let listed =
            names.iter().filter_map(|n| if let BlockName::StoreRoot { gen } = n { Some(*gen) } else { None }).max();
        let noted = latest_noted(*device);
        if noted > 0 {
            names.push(BlockName::StoreRoot { gen: noted });
        }
        let from = listed.unwrap_or(0).max(noted);
        names.extend(held_past(*device, from, |gen| BlockName::StoreRoot { gen }));
        names.sort();
        names.dedup();
        for name in names.into_iter().rev() {
            let block = match device.read(name) {
                Err(DeviceError::NotFound) if device.shared() => {
                    if let BlockName::StoreRoot { gen } = name {
                        gone = gone.max(Some(gen));
                    }
                    continue;
                }
                block => block,
            };
            let decoded =
                block.map_err(|e| e.to_string()).and_then(|block| page::decode_root(&block).map_err(|e| e.to_string()));
            match decoded {
                Ok(root) => {
                    newest[slot] = Some(root);
                    break;
                }
                Err(e) => reasons.push(format!("{} {name}: {e}", device.describe())),
            }
        }
    }
    (newest, reasons, gone)
}

/// The newest of the replicas' newest roots, and the replicas holding it.
fn pick_newest(
    devices: &Devices,
    newest: Vec<Option<Root>>,
    reasons: Vec<String>,
) -> Result<(Root, BTreeSet<usize>), StoreError> {
    // Among roots of one generation but other content (another history's), the first
    // replica's wins: the others are not holders, and `tidy` rewrites them.
    let mut best: Option<Root> = None;
    for root in newest.iter().flatten() {
        if best.as_ref().is_none_or(|b| root.gen > b.gen) {
            best = Some(root.clone());
        }
    }
    match best {
        Some(root) => {
            let holders = (0..devices.len()).filter(|i| newest[*i].as_ref() == Some(&root)).collect();
            Ok((root, holders))
        }
        None if reasons.is_empty() => Err(StoreError::Missing(devices.len())),
        None => Err(StoreError::Lost { what: "every store root".into(), reasons: reasons.join("; ") }),
    }
}

/// Reads `name` from the first replica whose copy `decode` accepts; a replica whose copy
/// it refused gets the good copy written back.
fn read_verified<T>(
    devices: &Devices,
    name: BlockName,
    decode: impl Fn(&[u8]) -> Result<T, FrameError>,
) -> Result<T, StoreError> {
    let mut reasons = Vec::new();
    let mut bad = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let block = match device.read(name) {
            Ok(block) => block,
            Err(error) => {
                reasons.push(format!("{}: {error}", device.describe()));
                continue;
            }
        };
        match decode(&block) {
            Ok(value) => {
                for j in bad {
                    let other: &dyn BlockDevice = devices[j];
                    match other.write(name, &block) {
                        Ok(()) => {
                            tracing::warn!(replica = %other.describe(), %name, "rotten store block rewritten from another replica")
                        }
                        Err(error) => {
                            tracing::warn!(replica = %other.describe(), %name, %error, "rotten store block could not be rewritten")
                        }
                    }
                }
                return Ok(value);
            }
            Err(error) => {
                reasons.push(format!("{}: {error}", device.describe()));
                bad.push(i);
            }
        }
    }
    Err(StoreError::Lost { what: format!("store block {name}"), reasons: reasons.join("; ") })
}

/// Whether `block` is the live block the root names with `hash`: a run's index when
/// `is_index`, else a page.
fn verify_live(block: &[u8], hash: &[u8; 32], is_index: bool) -> Result<(), FrameError> {
    if is_index {
        page::decode_index(block, hash).map(|_| ())
    } else {
        page::decode_page(block, hash).map(|_| ())
    }
}

/// Syncs the replicas a check rewrote blocks on, and clears the marks.
fn sync_touched(devices: &Devices, touched: &mut [bool]) {
    for (device, touched) in devices.iter().zip(touched.iter_mut()) {
        if std::mem::take(touched) {
            if let Err(error) = device.sync() {
                tracing::warn!(replica = %device.describe(), %error, "could not sync rewritten metadata blocks");
            }
        }
    }
}

/// `Store::check` of one block: verifies its copy on every replica; with `repair`, writes
/// a good copy over each bad one (unsynced: the caller syncs the replicas in `touched`).
fn check_block(
    devices: &Devices,
    name: BlockName,
    verify: &dyn Fn(&[u8]) -> Result<(), String>,
    repair: bool,
    check: &mut StoreCheck,
    touched: &mut [bool],
) {
    let mut good: Option<Vec<u8>> = None;
    let mut bad = Vec::new();
    for (replica, device) in devices.iter().enumerate() {
        check.copies += 1;
        let verdict = device.read(name).map_err(|e| e.to_string()).and_then(|block| {
            verify(&block)?;
            Ok(block)
        });
        match verdict {
            Ok(block) => good = good.or(Some(block)),
            Err(why) => bad.push((replica, why)),
        }
    }
    let Some(block) = good else {
        check.lost.push(name);
        check.bad.extend(bad.into_iter().map(|(replica, why)| BadCopy { replica, name, why, rewritten: false }));
        return;
    };
    for (replica, why) in bad {
        let device = devices[replica];
        tracing::warn!(replica = %device.describe(), %name, %why, "metadata store copy does not verify");
        let mut rewritten = false;
        if repair {
            match device.write(name, &block) {
                Ok(()) => {
                    touched[replica] = true;
                    rewritten = true;
                }
                Err(error) => tracing::warn!(replica = %device.describe(), %name, %error, "could not rewrite it"),
            }
        }
        check.bad.push(BadCopy { replica, name, why, rewritten });
    }
}

/// Deletes a block no root names any more; a replica that fails keeps it as garbage
/// for the next `open`.
fn delete_all<'a>(devices: impl Iterator<Item = &'a dyn BlockDevice>, name: BlockName) {
    for device in devices {
        if let Err(error) = device.delete(name) {
            tracing::warn!(replica = %device.describe(), %name, %error, "could not delete a dead store block");
        }
    }
}

/// Deletes from `device` every root but `gen` and every page not in `live`; a block that
/// cannot be deleted stays as garbage for a later `tidy`.
fn remove_dead(device: &dyn BlockDevice, live: &BTreeSet<u64>, gen: u64) {
    let dead_pages = device.list(BlockKind::StorePage).into_iter().flatten().filter(|name| match name {
        BlockName::StorePage { id } => !live.contains(id),
        _ => false,
    });
    let old_roots = device
        .list(BlockKind::StoreRoot)
        .into_iter()
        .flatten()
        .filter(|name| *name != BlockName::StoreRoot { gen } && *name != LATEST);
    for name in dead_pages.chain(old_roots).collect::<Vec<_>>() {
        if let Err(error) = device.delete(name) {
            tracing::warn!(replica = %device.describe(), %name, %error, "could not delete a dead store block");
        }
    }
}

fn device_error(device: &dyn BlockDevice, error: DeviceError) -> StoreError {
    StoreError::Device { device: device.describe(), error }
}
