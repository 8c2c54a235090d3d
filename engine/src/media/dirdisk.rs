//! `DirDisk`: the production `BlockDevice`, a directory on a mounted filesystem.
//!
//! Layout: fragments live in append-only segment files under `<root>/segments/` (see
//! `segments`), journal records up to `journal_log::LOG_RECORD_MAX` in preallocated log
//! files under `<root>/journal-log/` (see `journal_log`); every other block — the label,
//! checkpoints, longer records, and the records of a pool from before the log — is
//! `<root>/<namespace>/<leaf>` (see `BlockName`). One record is never kept both ways:
//! writing it one way deletes it the other, and should a crash leave both (an older
//! build wrote a file after this one's unfinished upgrade), the file wins at `open`.
//! Fragments of a pool made before segments (format 1 of the disk layout: one file per
//! fragment under `<root>/fragment/`) are still read, listed and deleted where they are,
//! and `pack_legacy_fragments` moves them into segments (`dfs upgrade`). A new file block is
//! written in place (a crash may tear it, as the `BlockDevice` contract allows); a block
//! that replaces another, and the label, go to `<namespace>/.tmp-<leaf>` and are renamed
//! into place. `sync` fsyncs every file written since the last sync, then every
//! directory touched (and the root, when it gained a namespace directory) — or, past a
//! few files, syncs the whole filesystem at once. Capacity is the one in the disk label,
//! or the free space of the underlying filesystem when the label gives none, and never more than
//! that filesystem can still take; a write that would exceed it fails with `NoSpace` and
//! leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::base::io::run_all;
use crate::media::device::{
    write_each, BlockCheck, BlockDevice, BlockKind, BlockName, DeviceError, PartsBlock, SharedFree,
};
use crate::media::journal_log::{self, JournalLog, LOG_RECORD_MAX};
use crate::media::label::DiskLabel;
use crate::media::landing::Landing;
use crate::media::read_buffer::ReadBuffer;
use crate::media::segments::{self, Segments};

const TMP_PREFIX: &str = ".tmp-";

/// Spare record files an older build kept as `journal/.spare-<n>`: removed at open.
const SPARE_PREFIX: &str = ".spare-";

/// A disk backed by a directory.
pub struct DirDisk {
    root: PathBuf,
    /// The root directory's (device, inode) when opened: a directory moved away and
    /// replaced by another at the same path (an unmounted disk's empty mountpoint, a
    /// recreated directory) is not this disk, and is never written.
    root_identity: (u64, u64),
    /// The root, open since the disk was: `syncfs` through it reports every writeback
    /// error of the filesystem since then (a descriptor opened for the call would report
    /// only those after it — not one that background writeback of this disk's files met
    /// before).
    root_handle: File,
    capacity_bytes: Option<u64>,
    /// File blocks: the label, journal records, checkpoints and legacy fragment files.
    state: Mutex<DirState>,
    /// Fragments. Never locked while `state` is held, nor the other way round.
    segments: Segments,
    /// Journal records. Its lock may be held while `state` or the segments' is taken
    /// (its room check), never the other way round.
    journal: JournalLog,
    /// The filesystem's free space as last measured (see `free_bytes`). Taken last: no
    /// other lock is taken while it is held.
    free_sample: Mutex<Option<FreeSample>>,
}

/// One measurement of the free space under a disk's root, and what it has served since.
#[derive(Clone, Copy)]
struct FreeSample {
    /// Free bytes of the filesystem then.
    free: u64,
    /// The disk's own used bytes then.
    used: u64,
    /// Answers given from this sample since.
    uses: u32,
}

/// Answers one measurement of the filesystem's free space gives before it is taken
/// again: every write request checks every disk's room, and a `statvfs` per disk per
/// request was a sixth of a small file's system calls.
const FREE_SAMPLE_USES: u32 = 256;

/// Below this much free space (as estimated) every answer measures again: near full,
/// the room check must see what other writers of the filesystem took.
const FREE_SAMPLE_ROOM_MIN: u64 = 1 << 30;

#[derive(Default)]
struct DirState {
    sizes: BTreeMap<BlockName, u64>,
    used_bytes: u64,
    unsynced_files: BTreeSet<BlockName>,
    unsynced_dirs: BTreeSet<BlockKind>,
    /// A namespace directory was created since the last sync: the root's entry for it
    /// must be synced too.
    created_dirs: bool,
}

impl DirDisk {
    /// Opens the directory `root` (which must exist) as a disk. Its capacity comes from
    /// its label when it has one. Leftover temporary files of an interrupted write are
    /// removed.
    pub fn open(root: &Path) -> Result<DirDisk, DeviceError> {
        let meta = fs::metadata(root).map_err(|e| io_error(root, e))?;
        if !meta.is_dir() {
            return Err(DeviceError::Unavailable(format!("{} is not a directory", root.display())));
        }
        let mut state = DirState::default();
        for kind in BlockKind::ALL {
            let dir = root.join(kind.namespace());
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&dir, e))?;
                let file_name = entry.file_name();
                let Some(leaf) = file_name.to_str() else {
                    continue;
                };
                if leaf.starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                if kind == BlockKind::Journal && leaf.starts_with(SPARE_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                if let Some(name) = BlockName::parse(kind, leaf) {
                    let size = entry.metadata().map_err(|e| io_error(&entry.path(), e))?.len();
                    state.used_bytes += size;
                    state.sizes.insert(name, size);
                }
            }
        }
        let root_identity = (meta.dev(), meta.ino());
        let root_handle = File::open(root).map_err(|e| io_error(root, e))?;
        let segments = Segments::open(root)?;
        let journal = JournalLog::open(root)?;
        for name in state.sizes.keys() {
            if let BlockName::Journal { seq } = name {
                journal.delete(*seq)?;
            }
        }
        let mut disk = DirDisk {
            root: root.to_path_buf(),
            root_identity,
            root_handle,
            capacity_bytes: None,
            state: Mutex::new(state),
            segments,
            journal,
            free_sample: Mutex::new(None),
        };
        if let Ok(label) = DiskLabel::read(&disk) {
            disk.capacity_bytes = label.capacity_bytes;
        }
        Ok(disk)
    }

    /// Sets the capacity this disk enforces (used when a disk is first labelled).
    pub fn set_capacity(&mut self, capacity_bytes: Option<u64>) {
        self.capacity_bytes = capacity_bytes;
    }

    /// The directory this disk lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of a file block (or of a legacy fragment).
    fn path(&self, name: BlockName) -> PathBuf {
        self.root.join(name.kind().namespace()).join(name.leaf())
    }

    fn lock(&self) -> MutexGuard<'_, DirState> {
        // A panic while holding this lock leaves only size bookkeeping behind, which stays
        // consistent per operation; recover the guard instead of poisoning every caller.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails unless the root directory is still the one this disk was opened on.
    fn check_identity(&self) -> Result<(), DeviceError> {
        match fs::metadata(&self.root) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.root_identity => Ok(()),
            Ok(_) => Err(DeviceError::Unavailable(format!(
                "{} is no longer the directory this disk was opened on (replaced or remounted)",
                self.root.display()
            ))),
            Err(e) => Err(DeviceError::Unavailable(format!("{}: {e}", self.root.display()))),
        }
    }

    /// Free bytes of the filesystem under the root, the disk using `used` bytes now;
    /// `None` when it cannot be examined. Measured (`statvfs`) once every
    /// `FREE_SAMPLE_USES` answers, and every time while less than
    /// `FREE_SAMPLE_ROOM_MIN` is free; in between, what this disk has written since the
    /// last measurement is taken off it (and what it has freed put back), so the room
    /// check never sees this disk's own writes late.
    fn free_bytes(&self, used: u64) -> Option<u64> {
        let mut sample = self.free_sample.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = sample.as_mut() {
            let estimate = last.free.saturating_add(last.used).saturating_sub(used);
            if last.uses < FREE_SAMPLE_USES && estimate >= FREE_SAMPLE_ROOM_MIN {
                last.uses += 1;
                return Some(estimate);
            }
        }
        let free = statvfs_free_bytes(&self.root);
        *sample = free.map(|free| FreeSample { free, used, uses: 0 });
        free
    }
}

fn io_error(path: &Path, e: std::io::Error) -> DeviceError {
    DeviceError::from_io(path, e)
}

/// Where one fragment lies in a disk directory: a range of a segment file, or (a pool
/// made before segments) a whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFragment {
    /// The block.
    pub name: BlockName,
    /// The file holding it.
    pub path: PathBuf,
    /// Where its bytes start in that file.
    pub offset: u64,
    /// How many bytes it has.
    pub len: u64,
}

impl StoredFragment {
    /// Its bytes, as they are on the disk now.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; usize::try_from(self.len).map_err(|_| ErrorKind::InvalidInput)?];
        File::open(&self.path)?.read_exact_at(&mut bytes, self.offset)?;
        Ok(bytes)
    }

    /// Overwrites its bytes from `at` on, in place (never past its end): how a tool or a
    /// test damages one fragment on purpose.
    pub fn overwrite(&self, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if at.saturating_add(bytes.len() as u64) > self.len {
            return Err(std::io::Error::new(ErrorKind::InvalidInput, "past the fragment's end"));
        }
        fs::OpenOptions::new().write(true).open(&self.path)?.write_all_at(bytes, self.offset + at)
    }

    /// Flips the low bit of its byte `at`.
    pub fn flip_byte(&self, at: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut byte = [0u8];
        File::open(&self.path)?.read_exact_at(&mut byte, self.offset + at)?;
        self.overwrite(at, &[byte[0] ^ 1])
    }
}

/// Every fragment stored in the disk directory `root`, by name, read without opening the
/// disk: for tools and tests that examine (or damage) a disk from outside.
pub fn stored_fragments(root: &Path) -> Result<Vec<StoredFragment>, DeviceError> {
    let mut out: BTreeMap<BlockName, StoredFragment> = BTreeMap::new();
    let legacy = root.join(BlockKind::Fragment.namespace());
    if let Ok(entries) = fs::read_dir(&legacy) {
        for entry in entries.flatten() {
            let path = entry.path();
            let leaf = entry.file_name();
            let Some(name) = leaf.to_str().and_then(|l| BlockName::parse(BlockKind::Fragment, l)) else {
                continue;
            };
            let len = entry.metadata().map_err(|e| io_error(&path, e))?.len();
            out.insert(name, StoredFragment { name, path, offset: 0, len });
        }
    }
    for record in segments::scan(root)? {
        let stored =
            StoredFragment { name: record.name, path: record.path, offset: record.payload_offset, len: record.len };
        out.insert(record.name, stored);
    }
    Ok(out.into_values().collect())
}

/// Unsynced files beyond which `sync` flushes the whole filesystem at once.
const SYNCFS_AFTER_FILES: usize = 16;

/// Flushes the filesystem `handle` is on: every earlier write to it is durable on `Ok`,
/// and a writeback error it met since `handle` was opened fails it.
#[allow(unsafe_code)]
fn syncfs(handle: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; syncfs reads nothing
    // from user memory.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes an unprivileged writer may still store on the filesystem holding `path`.
pub fn filesystem_free_bytes(path: &Path) -> Option<u64> {
    statvfs_free_bytes(path)
}

#[allow(unsafe_code)]
fn statvfs_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` points to writable
    // memory of the right type for the duration of the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Some(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

impl DirDisk {
    /// Fails with `NoSpace` unless a block of `new_len` bytes may replace one of
    /// `old_len` (a shrinking or same-size replacement always may).
    fn check_room(&self, old_len: u64, new_len: u64) -> Result<(), DeviceError> {
        let used = self.used_bytes();
        let available = used + self.free_bytes(used).unwrap_or(0);
        let capacity = self.capacity_bytes.map_or(available, |c| c.min(available));
        if used - old_len.min(used) + new_len > capacity && new_len > old_len {
            return Err(DeviceError::NoSpace);
        }
        Ok(())
    }

    /// The size of a new journal log file: `wanted`, but at most 1/64 of the disk's
    /// capacity (or of the free space under it, when its label gives none) and at least
    /// `journal_log::LOG_BYTES_MIN`, never less than `needed`; `None` when it does not
    /// fit, the log holding `log` bytes (called under the log's lock: see `check_room`
    /// for the rule).
    fn log_file_bytes(&self, wanted: u64, needed: u64, log: u64) -> Option<u64> {
        let files = self.lock().used_bytes;
        let used = files + self.segments.used_bytes() + log;
        let free = self.free_bytes(used).unwrap_or(0);
        let limit = self.capacity_bytes.unwrap_or(used + free) / 64 / 4096 * 4096;
        let bytes = wanted.min(limit.max(journal_log::LOG_BYTES_MIN)).max(needed);
        let capacity = self.capacity_bytes.map_or(used + free, |c| c.min(used + free));
        (used + bytes <= capacity).then_some(bytes)
    }

    /// Moves every fragment still in a file of its own (a pool made before segments)
    /// into the segments: copies them, makes the copies durable, then deletes the files.
    /// Crash-safe and resumable: until a file is deleted its copy is only a second valid
    /// record of the same block. `progress(done, total)` is called as it goes. Returns how
    /// many fragments moved.
    fn pack_legacy_fragments(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, DeviceError> {
        let legacy: Vec<BlockName> =
            self.lock().sizes.keys().filter(|n| n.kind() == BlockKind::Fragment).copied().collect();
        let total = legacy.len() as u64;
        let mut done = 0;
        for batch in legacy.chunks(256) {
            for name in batch {
                let path = self.path(*name);
                let block = fs::read(&path).map_err(|e| io_error(&path, e))?;
                self.segments.append(*name, &block)?;
            }
            self.segments.sync()?;
            for name in batch {
                self.delete_file(*name)?;
                done += 1;
            }
            self.sync_files()?;
            progress(done, total);
        }
        if total > 0 {
            let dir = self.root.join(BlockKind::Fragment.namespace());
            if fs::remove_dir(&dir).is_ok() {
                File::open(&self.root).and_then(|f| f.sync_all()).map_err(|e| io_error(&self.root, e))?;
            }
        }
        Ok(total)
    }

    /// Removes every DynamicFS block and folder from the directory (its disk left the pool).
    pub fn wipe(&self) -> Result<(), DeviceError> {
        self.segments.wipe()?;
        for kind in BlockKind::ALL.into_iter().rev() {
            for name in self.list(kind)? {
                self.delete_file(name)?;
            }
        }
        self.journal.wipe()?;
        self.sync_files()
    }

    fn write_file(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        let mut state = self.lock();
        let old = state.sizes.get(&name).copied().unwrap_or(0);
        // Never write into a directory that is not this disk, and never create the disk's
        // directory: a vanished disk is unavailable, not a new empty one on `/`.
        self.check_identity()?;
        let dir = self.root.join(name.kind().namespace());
        if !state.unsynced_dirs.contains(&name.kind()) && !dir.exists() {
            match fs::create_dir(&dir) {
                Ok(()) => state.created_dirs = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(&dir, e)),
            }
        }
        let final_path = dir.join(name.leaf());
        if state.sizes.contains_key(&name) || name == BlockName::Label {
            // Replacing a block, or the label that identifies the disk: the old one (or
            // none) stays until the new one is complete.
            let tmp_path = dir.join(format!("{TMP_PREFIX}{}", name.leaf()));
            let result = File::create(&tmp_path)
                .and_then(|mut file| file.write_all(data))
                .and_then(|()| fs::rename(&tmp_path, &final_path));
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp_path);
                return Err(io_error(&tmp_path, e));
            }
        } else {
            // A new name: a crash may tear it, as the contract allows, and every block
            // carries its own checksum.
            let result = File::create(&final_path).and_then(|mut file| file.write_all(data));
            if let Err(e) = result {
                let _ = fs::remove_file(&final_path);
                return Err(io_error(&final_path, e));
            }
        }
        state.sizes.insert(name, data.len() as u64);
        state.used_bytes = state.used_bytes - old + data.len() as u64;
        state.unsynced_files.insert(name);
        state.unsynced_dirs.insert(name.kind());
        Ok(())
    }

    /// Appends each fragment of `records` (a name and the parts it is the concatenation
    /// of) to a segment, all in one write (`Segments::append_batch`), once the room for
    /// all of them is checked. A fragment that still had a file of its own (layout 1)
    /// loses it once its record is written.
    fn append_fragments(&self, records: &[(BlockName, &[&[u8]])]) -> Result<(), DeviceError> {
        let legacy: Vec<u64> = {
            let state = self.lock();
            records.iter().map(|(name, _)| state.sizes.get(name).copied().unwrap_or(0)).collect()
        };
        let old: u64 = records
            .iter()
            .zip(&legacy)
            .map(|((name, _), legacy)| self.segments.span_of(*name).unwrap_or(0) + legacy)
            .sum();
        let new: u64 =
            records.iter().map(|(_, parts)| segments::span(parts.iter().map(|part| part.len() as u64).sum())).sum();
        self.check_room(old, new)?;
        self.check_identity()?;
        self.segments.append_batch(records)?;
        for ((name, _), legacy) in records.iter().zip(legacy) {
            if legacy > 0 {
                // The record supersedes the file; a crash before the next sync may bring
                // the file back, which reads the same block.
                self.delete_file(*name)?;
            }
        }
        Ok(())
    }

    /// Deletes the file of `name`, if it has one.
    fn delete_file(&self, name: BlockName) -> Result<(), DeviceError> {
        let mut state = self.lock();
        if !state.sizes.contains_key(&name) && matches!(name.kind(), BlockKind::Fragment | BlockKind::Journal) {
            return Ok(());
        }
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                state.unsynced_dirs.insert(name.kind());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
        if let Some(size) = state.sizes.remove(&name) {
            state.used_bytes -= size;
        }
        state.unsynced_files.remove(&name);
        Ok(())
    }

    /// Whether file blocks wait for a sync.
    fn files_dirty(&self) -> bool {
        let state = self.lock();
        !state.unsynced_files.is_empty() || !state.unsynced_dirs.is_empty() || state.created_dirs
    }

    /// Makes the file blocks' writes and deletes durable.
    fn sync_files(&self) -> Result<(), DeviceError> {
        let unsynced = {
            let mut state = self.lock();
            if state.unsynced_files.len() > SYNCFS_AFTER_FILES {
                // One syncfs flushes every file and directory of the filesystem: far
                // cheaper than hundreds of fsyncs, each of which commits its journal.
                let unsynced = take_unsynced_files(&mut state);
                drop(state);
                let flushed = self.flush_filesystem();
                return self.settle_files(unsynced, flushed);
            }
            take_unsynced_files(&mut state)
        };
        if unsynced.files.is_empty() && unsynced.dirs.is_empty() && !unsynced.root {
            return Ok(());
        }
        // Every fsync of one sync runs at once, outside the lock (writes go on meanwhile
        // and wait for the next sync): the filesystem commits them together, so a sync
        // costs one journal commit of the filesystem instead of one per file and folder.
        let mut paths: Vec<(PathBuf, bool)> = unsynced.files.iter().map(|name| (self.path(*name), false)).collect();
        paths.extend(unsynced.dirs.iter().map(|kind| (self.root.join(kind.namespace()), true)));
        if unsynced.root {
            paths.push((self.root.clone(), true));
        }
        let failed: Vec<DeviceError> = run_all(true, paths, |(path, is_dir)| {
            match File::open(&path).and_then(|file| file.sync_all()) {
                Ok(()) => None,
                // A file deleted since it was written needs no sync.
                Err(e) if e.kind() == ErrorKind::NotFound && !is_dir => None,
                Err(e) => Some(io_error(&path, e)),
            }
        })
        .into_iter()
        .flatten()
        .collect();
        let flushed = failed.into_iter().next().map_or(Ok(()), Err);
        self.settle_files(unsynced, flushed)
    }

    /// After a flush of the file blocks' `unsynced`: on failure puts it back, to be
    /// flushed by the next sync.
    fn settle_files(&self, unsynced: UnsyncedFiles, flushed: Result<(), DeviceError>) -> Result<(), DeviceError> {
        if flushed.is_err() {
            let mut state = self.lock();
            state.unsynced_files.extend(unsynced.files);
            state.unsynced_dirs.extend(unsynced.dirs);
            state.created_dirs |= unsynced.root;
        }
        flushed
    }

    /// `syncfs` of the filesystem holding the disk: every earlier write to it, this
    /// disk's or another's, is durable once it returns `Ok`.
    fn flush_filesystem(&self) -> Result<(), DeviceError> {
        syncfs(&self.root_handle).map_err(|e| io_error(&self.root, e))
    }
}

/// What one sync of a disk's file blocks makes durable, taken as it begins.
struct UnsyncedFiles {
    files: BTreeSet<BlockName>,
    dirs: BTreeSet<BlockKind>,
    /// Folders were created under the root since the last sync.
    root: bool,
}

/// Takes what the next flush of `state`'s file blocks must make durable.
fn take_unsynced_files(state: &mut DirState) -> UnsyncedFiles {
    UnsyncedFiles {
        files: std::mem::take(&mut state.unsynced_files),
        dirs: std::mem::take(&mut state.unsynced_dirs),
        root: std::mem::take(&mut state.created_dirs),
    }
}

impl BlockDevice for DirDisk {
    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        if let Some(secs) = self.segments.written_secs(name) {
            return Ok(Some(secs));
        }
        if matches!(name, BlockName::Journal { seq } if self.journal.contains(seq)) {
            return Ok(None);
        }
        let path = self.path(name);
        let metadata = fs::metadata(&path).map_err(|e| io_error(&path, e))?;
        Ok(metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok()))
    }

    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        if let BlockName::Journal { seq } = name {
            match self.journal.read(seq) {
                Err(DeviceError::NotFound) => {
                    // The journal's fence asks for the next record at every barrier: one
                    // another process may have written since this disk was opened.
                    if let Some(record) = self.journal.probe(seq) {
                        return Ok(record);
                    }
                }
                other => return other,
            }
        }
        if name.kind() == BlockKind::Fragment {
            match self.segments.read(name) {
                // A fragment in a file of its own (layout 1), if the disk holds one: a
                // missing fragment costs no look at the filesystem.
                Err(DeviceError::NotFound) if self.lock().sizes.contains_key(&name) => {}
                other => return other,
            }
        }
        let path = self.path(name);
        fs::read(&path).map_err(|e| io_error(&path, e))
    }

    fn read_with(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        if name.kind() == BlockKind::Fragment {
            match self.segments.read_with(name, visit) {
                Err(DeviceError::NotFound) if self.lock().sizes.contains_key(&name) => {}
                other => return other,
            }
        }
        visit(&self.read(name)?);
        Ok(())
    }

    fn read_appending(
        &self,
        name: BlockName,
        skip: usize,
        out: &mut Landing,
        check: BlockCheck<'_>,
    ) -> Result<bool, DeviceError> {
        if name.kind() == BlockKind::Fragment {
            match self.segments.read_appending(name, skip, out, check) {
                Err(DeviceError::NotFound) if self.lock().sizes.contains_key(&name) => {}
                other => return other,
            }
        }
        Ok(out.append_checked(&self.read(name)?, skip, check))
    }

    fn read_into(&self, names: &[BlockName], out: &mut ReadBuffer) -> Vec<Option<std::ops::Range<usize>>> {
        let mut ranges = self.segments.read_into(names, out);
        // A fragment file of an older layout, which the segments do not hold (a record
        // they failed to read they already tried again through the page cache).
        let files: Vec<bool> = {
            let state = self.lock();
            names.iter().zip(&ranges).map(|(name, range)| range.is_none() && state.sizes.contains_key(name)).collect()
        };
        for ((name, range), file) in names.iter().zip(&mut ranges).zip(files) {
            if file {
                if let Ok(block) = self.read(*name) {
                    *range = Some(out.push(&block));
                }
            }
        }
        ranges
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        if let BlockName::Journal { seq } = name {
            if data.len() as u64 <= LOG_RECORD_MAX {
                self.check_identity()?;
                if self.lock().sizes.contains_key(&name) {
                    // A file of the same record (a crash's leftover): gone once this one
                    // is durable, so the two never meet at `open`.
                    self.delete_file(name)?;
                }
                return self.journal.append(seq, data, |wanted, needed, log| self.log_file_bytes(wanted, needed, log));
            }
            self.journal.delete(seq)?;
        }
        if name.kind() != BlockKind::Fragment {
            let old = self.lock().sizes.get(&name).copied().unwrap_or(0);
            self.check_room(old, data.len() as u64)?;
            return self.write_file(name, data);
        }
        self.append_fragments(&[(name, &[data])])
    }

    fn write_parts(&self, name: BlockName, head: &[u8], body: &[u8]) -> Result<(), DeviceError> {
        if name.kind() != BlockKind::Fragment {
            return self.write(name, &[head, body].concat());
        }
        self.append_fragments(&[(name, &[head, body])])
    }

    fn write_parts_batch(&self, blocks: &[PartsBlock<'_>]) -> (usize, Result<(), DeviceError>) {
        if blocks.len() < 2 || blocks.iter().any(|(name, _, _)| name.kind() != BlockKind::Fragment) {
            return write_each(self, blocks);
        }
        let parts: Vec<[&[u8]; 2]> = blocks.iter().map(|(_, head, body)| [*head, *body]).collect();
        let records: Vec<(BlockName, &[&[u8]])> =
            blocks.iter().zip(&parts).map(|((name, _, _), parts)| (*name, &parts[..])).collect();
        match self.append_fragments(&records) {
            Ok(()) => (blocks.len(), Ok(())),
            Err(error) => (0, Err(error)),
        }
    }

    fn delete_many(&self, names: &[BlockName]) -> Vec<(BlockName, DeviceError)> {
        let fragments: Vec<BlockName> = names.iter().filter(|n| n.kind() == BlockKind::Fragment).copied().collect();
        let mut failed = Vec::new();
        if let (Err(e), Some(first)) = (self.segments.delete_many(&fragments), fragments.first()) {
            failed.push((*first, e));
        }
        for name in names {
            let deleted = if name.kind() == BlockKind::Fragment { self.delete_file(*name) } else { self.delete(*name) };
            if let Err(e) = deleted {
                failed.push((*name, e));
            }
        }
        failed
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        match name {
            BlockName::Fragment { .. } => {
                self.segments.delete(name)?;
            }
            BlockName::Journal { seq } => {
                self.journal.delete(seq)?;
            }
            _ => {}
        }
        self.delete_file(name)
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        let mut names: Vec<BlockName> = self.lock().sizes.keys().filter(|n| n.kind() == kind).copied().collect();
        match kind {
            BlockKind::Fragment => names.extend(self.segments.list()),
            BlockKind::Journal => names.extend(self.journal.list().into_iter().map(|seq| BlockName::Journal { seq })),
            _ => {}
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn sync(&self) -> Result<(), DeviceError> {
        // The segments, the journal log and the file blocks sync at once: one barrier's
        // fragment appends and its journal record share the filesystem's commit. Only
        // the parts with something to sync run: a barrier that wrote only its record
        // costs one `fdatasync` on the calling thread, no hand-off.
        #[derive(Clone, Copy)]
        enum Part {
            Segments,
            Journal,
            Files,
        }
        let mut parts = Vec::with_capacity(3);
        if self.segments.dirty() {
            parts.push(Part::Segments);
        }
        if self.journal.dirty() {
            parts.push(Part::Journal);
        }
        if self.files_dirty() {
            parts.push(Part::Files);
        }
        let results = run_all(true, parts, |part| match part {
            Part::Segments => self.segments.sync(),
            Part::Journal => self.journal.sync(),
            Part::Files => self.sync_files(),
        });
        results.into_iter().collect()
    }

    /// The declared capacity — or less, when the filesystem underneath has filled up
    /// first: a disk is full when either is exhausted, never a stream of ENOSPC behind
    /// a capacity that cannot be had.
    /// 0 (unknown, as for an unreachable disk) when the directory cannot be examined.
    fn capacity_bytes(&self) -> u64 {
        let used = self.used_bytes();
        let Some(free) = self.free_bytes(used) else {
            return 0;
        };
        let available = used + free;
        match self.capacity_bytes {
            Some(c) => c.min(available),
            None => available,
        }
    }

    fn used_bytes(&self) -> u64 {
        // One lock at a time (a guard in the sum would live to its end): the journal
        // log's lock may be held while `state` is taken, never the other way round.
        let files = self.lock().used_bytes;
        files + self.segments.used_bytes() + self.journal.used_bytes()
    }

    /// The filesystem under the root: directories on one filesystem draw on its free
    /// space together.
    fn filesystem(&self) -> Option<u64> {
        Some(self.root_identity.0)
    }

    fn sync_through(&self, flush: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<(), DeviceError> {
        // Each part takes what it has unsynced, innermost last; the one flush covers all.
        self.segments.sync_through(&mut || {
            self.journal.sync_through(&mut || {
                let unsynced = take_unsynced_files(&mut self.lock());
                let flushed = flush();
                self.settle_files(unsynced, flushed)
            })
        })
    }

    fn flush_filesystem(&self) -> Result<(), DeviceError> {
        DirDisk::flush_filesystem(self)
    }

    fn shared_free(&self) -> Option<SharedFree> {
        let free = self.free_bytes(self.used_bytes())?;
        Some(SharedFree { source: self.root_identity.0, free })
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// Fragments still in files of their own (see `pack_legacy_fragments`).
    fn legacy_blocks(&self) -> u64 {
        self.lock().sizes.keys().filter(|n| n.kind() == BlockKind::Fragment).count() as u64
    }

    fn upgrade_layout(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, DeviceError> {
        self.pack_legacy_fragments(progress)
    }

    fn wants_compaction(&self) -> bool {
        self.segments.wants_compaction()
    }

    fn compact(&self, budget_bytes: u64) -> Result<u64, DeviceError> {
        self.check_identity()?;
        self.segments.compact(budget_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_survive_reopen_and_deletes_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        let name = BlockName::Checkpoint { seq: 5 };
        disk.write(name, b"hello").unwrap();
        disk.sync().unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        assert_eq!(disk.read(name).unwrap(), b"hello");
        assert_eq!(disk.used_bytes(), 5);
        assert_eq!(disk.list(BlockKind::Checkpoint).unwrap(), vec![name]);
        disk.delete(name).unwrap();
        disk.delete(name).unwrap();
        assert_eq!(disk.read(name), Err(DeviceError::NotFound));
        assert_eq!(disk.used_bytes(), 0);
    }

    #[test]
    fn a_full_disk_refuses_the_write_and_keeps_the_old_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DirDisk::open(dir.path()).unwrap();
        disk.set_capacity(Some(10));
        let name = BlockName::Checkpoint { seq: 1 };
        disk.write(name, b"12345678").unwrap();
        assert_eq!(disk.write(BlockName::Checkpoint { seq: 2 }, b"abc"), Err(DeviceError::NoSpace));
        assert_eq!(disk.write(name, b"12345678901"), Err(DeviceError::NoSpace));
        assert_eq!(disk.read(name).unwrap(), b"12345678");
        assert_eq!(disk.list(BlockKind::Checkpoint).unwrap(), vec![name]);
        assert_eq!(disk.used_bytes(), 8);
    }

    #[test]
    fn a_batch_of_fragments_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DirDisk::open(dir.path()).unwrap();
        let fragment =
            |extent: u64, index: u8| BlockName::Fragment { extent: crate::media::device::ExtentId(extent), index };
        let body = vec![7u8; 70_000];
        let blocks: Vec<PartsBlock<'_>> = (0..3).map(|i| (fragment(1, i), &b"head"[..], &body[..])).collect();
        assert_eq!(disk.write_parts_batch(&blocks), (3, Ok(())));
        for i in 0..3 {
            assert_eq!(disk.read(fragment(1, i)).unwrap(), [&b"head"[..], &body[..]].concat());
        }
        let used = disk.used_bytes();
        assert_eq!(used, 3 * segments::span(70_004));
        // Room for one more record, not for a batch of two: neither is written.
        disk.set_capacity(Some(used + segments::span(70_004)));
        let more: Vec<PartsBlock<'_>> = (0..2).map(|i| (fragment(2, i), &b"head"[..], &body[..])).collect();
        assert_eq!(disk.write_parts_batch(&more), (0, Err(DeviceError::NoSpace)));
        assert_eq!(disk.read(fragment(2, 0)), Err(DeviceError::NotFound));
        assert_eq!(disk.used_bytes(), used);
        disk.sync().unwrap();
        drop(disk);
        let disk = DirDisk::open(dir.path()).unwrap();
        assert_eq!(disk.list(BlockKind::Fragment).unwrap(), (0..3).map(|i| fragment(1, i)).collect::<Vec<_>>());
    }

    #[test]
    fn free_space_is_measured_again_after_its_uses_and_counts_the_disks_own_writes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        let used = disk.used_bytes();
        let free = disk.free_bytes(used).unwrap();
        let name = BlockName::Fragment { extent: crate::media::device::ExtentId(1), index: 0 };
        disk.write(name, &vec![1u8; 100_000]).unwrap();
        let grown = disk.used_bytes();
        assert_eq!(grown - used, segments::span(100_000));
        let estimate = disk.free_bytes(grown).unwrap();
        let sample = disk.free_sample.lock().unwrap().unwrap();
        if free - (grown - used) >= FREE_SAMPLE_ROOM_MIN {
            assert_eq!(estimate, free - (grown - used), "the disk's own write is taken off the sample");
            assert_eq!(sample.uses, 2, "the write's room check and this answer both came from the sample");
        } else {
            assert_eq!(sample.uses, 0, "near full, every answer measures again");
        }
        for _ in 0..FREE_SAMPLE_USES {
            disk.free_bytes(grown).unwrap();
        }
        assert!(disk.free_sample.lock().unwrap().unwrap().uses < FREE_SAMPLE_USES, "measured again");
    }

    #[test]
    fn stray_temporary_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("journal")).unwrap();
        fs::write(dir.path().join("journal/.tmp-00000000000000000001"), b"torn").unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        assert!(disk.list(BlockKind::Journal).unwrap().is_empty());
        assert!(!dir.path().join("journal/.tmp-00000000000000000001").exists());
    }

    #[test]
    fn small_journal_records_go_to_the_log_long_ones_to_files_and_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let journal_files = |root: &Path| fs::read_dir(root.join("journal")).map_or(0, |d| d.count());
        let disk = DirDisk::open(dir.path()).unwrap();
        let (small, long) = (BlockName::Journal { seq: 1 }, BlockName::Journal { seq: 2 });
        disk.write(small, b"small").unwrap();
        disk.write(long, &vec![7u8; LOG_RECORD_MAX as usize + 1]).unwrap();
        disk.sync().unwrap();
        assert_eq!(journal_files(dir.path()), 1, "only the long record is a file");
        assert!(dir.path().join("journal-log").exists());
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![small, long]);

        // Rewritten the other way round, each record moves and leaves no copy behind.
        disk.write(small, &vec![8u8; LOG_RECORD_MAX as usize + 1]).unwrap();
        disk.write(long, b"now short").unwrap();
        disk.sync().unwrap();
        drop(disk);
        let disk = DirDisk::open(dir.path()).unwrap();
        assert_eq!(disk.read(small).unwrap(), vec![8u8; LOG_RECORD_MAX as usize + 1]);
        assert_eq!(disk.read(long).unwrap(), b"now short");
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![small, long]);
        assert_eq!(journal_files(dir.path()), 1);

        // Should both exist (an older build wrote the file after this one logged the
        // record), the file wins.
        fs::write(dir.path().join("journal").join(long.leaf()), b"from a file").unwrap();
        drop(disk);
        let disk = DirDisk::open(dir.path()).unwrap();
        assert_eq!(disk.read(long).unwrap(), b"from a file");
        disk.delete(long).unwrap();
        disk.delete(small).unwrap();
        disk.sync().unwrap();
        drop(disk);
        let disk = DirDisk::open(dir.path()).unwrap();
        assert!(disk.list(BlockKind::Journal).unwrap().is_empty(), "deletes are durable after a sync");
        // A disk that leaves the pool keeps nothing of the log.
        disk.write(small, b"again").unwrap();
        disk.wipe().unwrap();
        assert!(!dir.path().join("journal-log").exists());
        assert!(DirDisk::open(dir.path()).unwrap().list(BlockKind::Journal).unwrap().is_empty());
    }

    #[test]
    fn read_into_serves_segment_records_and_fragment_files_of_the_older_layout_alike() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = BlockName::Fragment { extent: crate::media::device::ExtentId(7), index: 0 };
        fs::create_dir(dir.path().join(BlockKind::Fragment.namespace())).unwrap();
        fs::write(dir.path().join(BlockKind::Fragment.namespace()).join(legacy.leaf()), b"a file").unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        let packed = BlockName::Fragment { extent: crate::media::device::ExtentId(8), index: 0 };
        disk.write(packed, b"a record").unwrap();
        let missing = BlockName::Fragment { extent: crate::media::device::ExtentId(9), index: 0 };
        let mut out = ReadBuffer::new();
        let ranges = disk.read_into(&[legacy, missing, packed], &mut out);
        let read: Vec<Option<&[u8]>> = ranges.into_iter().map(|r| r.map(|r| &out.as_slice()[r])).collect();
        assert_eq!(read, vec![Some(&b"a file"[..]), None, Some(&b"a record"[..])]);
    }

    #[test]
    fn spare_record_files_of_an_older_build_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("journal")).unwrap();
        let spare = dir.path().join("journal").join(format!("{SPARE_PREFIX}3"));
        fs::write(&spare, b"an old record").unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        assert!(!spare.exists());
        assert!(disk.list(BlockKind::Journal).unwrap().is_empty());
        assert_eq!(disk.used_bytes(), 0);
    }

    #[test]
    fn the_journal_log_counts_against_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DirDisk::open(dir.path()).unwrap();
        disk.set_capacity(Some(60 << 10));
        let name = BlockName::Journal { seq: 1 };
        assert_eq!(disk.write(name, b"record"), Err(DeviceError::NoSpace), "a log file would not fit");
        assert!(disk.list(BlockKind::Journal).unwrap().is_empty());
        // A 4 MiB disk allows log files of 64 KiB (1/64 of it); the record takes a sector.
        disk.set_capacity(Some(4 << 20));
        disk.write(name, b"record").unwrap();
        assert_eq!(disk.used_bytes(), 512);
        assert_eq!(disk.journal.file_bytes(), journal_log::LOG_BYTES_MIN);
    }

    /// Whether any part of `disk` has writes a sync still owes.
    fn owes_a_sync(disk: &DirDisk) -> bool {
        disk.segments.dirty() || disk.journal.dirty() || disk.files_dirty()
    }

    #[test]
    fn disks_in_one_filesystem_are_synced_through_one_flush_and_a_failed_one_leaves_their_writes_owed() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().join("a"), dir.path().join("b")];
        let disks: Vec<DirDisk> = roots
            .iter()
            .map(|root| {
                fs::create_dir(root).unwrap();
                DirDisk::open(root).unwrap()
            })
            .collect();
        assert!(disks[0].filesystem().is_some());
        assert_eq!(disks[0].filesystem(), disks[1].filesystem());
        let fragment = BlockName::Fragment { extent: crate::media::device::ExtentId(3), index: 0 };
        let write = |disk: &DirDisk| {
            disk.write(BlockName::Journal { seq: 1 }, b"record").unwrap();
            disk.write(fragment, &[5u8; 5000]).unwrap();
            disk.write(BlockName::Checkpoint { seq: 1 }, b"checkpoint").unwrap();
        };
        disks.iter().for_each(write);
        assert!(disks.iter().all(owes_a_sync));

        // A flush that fails settles nothing: every part still owes its sync.
        let failed = disks[0].sync_through(&mut || Err(DeviceError::Io("flush failed".into())));
        assert_eq!(failed, Err(DeviceError::Io("flush failed".into())));
        assert!(owes_a_sync(&disks[0]));

        let results = crate::media::group_sync::sync_grouped(
            false,
            disks.iter().collect(),
            |disk| *disk as &dyn BlockDevice,
            |_| Ok::<_, DeviceError>(crate::media::group_sync::Then::Sync),
            |_, error| error,
        );
        assert_eq!(results, [Ok(()), Ok(())]);
        assert!(!disks.iter().any(owes_a_sync), "one syncfs settled every part of both disks");
        drop(disks);
        for root in &roots {
            let disk = DirDisk::open(root).unwrap();
            assert_eq!(disk.read(BlockName::Journal { seq: 1 }).unwrap(), b"record");
            assert_eq!(disk.read(fragment).unwrap(), vec![5u8; 5000]);
            assert_eq!(disk.read(BlockName::Checkpoint { seq: 1 }).unwrap(), b"checkpoint");
        }
    }
}
