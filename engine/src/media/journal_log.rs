//! The journal log: a `DirDisk`'s journal records packed into preallocated log files.
//!
//! Why: a record in a file of its own costs, per replica, an inode, a rename, the file's
//! `fsync` (data *and* inode) and its folder's — two flushes of the disk cache and a
//! block-layer round each. A database's transaction waits for that two or three times.
//! Written into a file that is already allocated and zero-filled, a record is one
//! positioned write over blocks the filesystem already maps, and `fdatasync` then
//! flushes that data and nothing else: measured on this machine's ext4, three replicas
//! of a 9 KiB record take 420–450 µs this way against 1,270–1,450 µs as files.
//!
//! Layout: `<root>/journal-log/<id:016x>.log`. A file is created at its full size
//! (`LOG_BYTES_FIRST` for a disk's first, doubling up to `LOG_BYTES_MAX`) and filled
//! with zeros. The first 4 KiB block holds a magic, the format and a random 32-byte key
//! drawn when the file was made. Records sit at 512-byte-aligned offsets (a sector) after it: a
//! 64-byte header (magic, format, the record's sequence number, its length, a stamp that
//! orders rewrites of one sequence number, and a checksum keyed by the file's key over
//! all of it, the file's id and the offset) and the payload, a framed journal block that
//! carries its own BLAKE3. A deleted record's payload stays where it was, and a payload
//! may hold anything a user wrote (small files live inline in the journal); without the
//! key, no bytes inside one can pass for a header.
//!
//! Contract (the `BlockDevice` one, for `BlockName::Journal` blocks):
//! - `append` writes at the active file's tail and indexes the record: visible at once,
//!   durable after the next `sync` returns `Ok`. A record that does not fit the active
//!   file goes to a free one, or to a new one of the size its disk allows (`NoSpace` when
//!   none fits, nothing written).
//! - `used_bytes` is the live records' spans: what the journal holds, as a segment
//!   counts its live records. The files' slack (a free file, the unused end of one)
//!   is the log's own overhead, kept small by the disk's size limit on its files.
//! - `delete` takes the record out of the index at once, and off the disk at the next
//!   `sync`, which zeroes its header in place. Rewriting a sequence number deletes the
//!   old record the same way. A file whose records are all deleted is free: its head
//!   block gets a new key at once, which makes every header in it unreadable with one
//!   write (a checkpoint's trim deletes a few hundred records a disk: zeroing each
//!   header dirtied a page apiece), and it is reused from its start once a `sync` made
//!   the new key durable — or, past `LOG_FREE_MAX` free files, removed. The file
//!   records are appended to is never given a new key: another process that opened
//!   the log since this one's last record appends its first there, under the key it
//!   read (the fence's `probe` looks for it). So after a `sync` every valid header in a
//!   file is an indexed record.
//! - Crash model: any append since the last `sync` may be lost, land whole or be torn;
//!   a delete since the last `sync` may be undone. `open` rebuilds the index by reading
//!   every 512-byte slot's header; a header that fails its checksum (zeros, torn, rotten)
//!   costs that record and no other. Of two valid records of one sequence number (a
//!   rewrite a crash caught before its sync) the higher stamp wins.
//! - `sync` zeroes the headers of the records deleted since the last one, then
//!   `fdatasync`s every file written since, and the folder when a file was created or
//!   removed (and the root when the folder was created).
//! - The index is this process's. `probe` looks on the disk for a record another
//!   process wrote since this one opened the log (the journal's fence): where a writer
//!   that opened the log after this one's last record puts its first one — this log's
//!   tail, the start of a file this log holds free, or the start of the file this log
//!   would create next.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::base::clock::system_wall_nanos;
use crate::base::io::run_all;
use crate::media::device::DeviceError;
use crate::media::segments;

/// The folder under a disk's root that holds its journal log.
pub const LOG_DIR: &str = "journal-log";
/// The log format this build writes and reads.
pub const LOG_FORMAT: u16 = 1;
/// The size a disk's first log file asks for; each new one asks twice the last, up to
/// `LOG_BYTES_MAX`, and the disk may allow less (`DirDisk` allows 1/64 of its capacity,
/// at least `LOG_BYTES_MIN`). Small disks (and the many small pools of the tests) then
/// never spend megabytes on a journal that holds a few records.
pub const LOG_BYTES_FIRST: u64 = 256 << 10;
/// The smallest log file a disk is asked to allow.
pub const LOG_BYTES_MIN: u64 = 64 << 10;
/// The largest log file: a checkpoint interval of records (at most
/// `PoolOptions::checkpoint_every_bytes`, this by default, and one record more) fits in
/// about one.
pub const LOG_BYTES_MAX: u64 = 8 << 20;
/// Records longer than this are not logged: the caller keeps them as files of their
/// own (a checkpoint's worth of ops in one record is rare, and would crowd out the log).
pub const LOG_RECORD_MAX: u64 = 1 << 20;
/// Free files of full size kept for reuse; smaller free ones are removed.
pub const LOG_FREE_MAX: usize = 2;
/// The head block's length, and files' sizes are multiples of it.
const ALIGN: u64 = 4096;
/// Records start at multiples of this (a sector, so no header straddles two), and spans
/// are rounded up to it: a barrier's record of a few hundred bytes takes 512, not 4 KiB.
/// Records sharing a page rewrite the earlier ones' sectors with the same bytes.
const RECORD_ALIGN: u64 = 512;
/// Bytes of a record header; the payload follows it.
const RECORD_HEADER_LEN: u64 = 64;

const FILE_MAGIC: [u8; 8] = *b"DFSJLOG\0";
const RECORD_MAGIC: [u8; 4] = *b"DFSJ";

/// Bytes a record with `len` payload bytes occupies in its file.
fn span(len: u64) -> u64 {
    (RECORD_HEADER_LEN + len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Where one record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    file: u64,
    offset: u64,
    len: u32,
    stamp: u64,
}

struct LogFile {
    file: Arc<File>,
    /// The key of its record headers' checksums (see the module header).
    key: [u8; 32],
    /// The file's size, fixed at creation.
    bytes: u64,
    /// Where the next record goes (only the active file takes records).
    tail: u64,
    /// Indexed records in this file.
    records: u64,
}

#[derive(Default)]
struct State {
    index: BTreeMap<u64, Loc>,
    files: BTreeMap<u64, LogFile>,
    active: Option<u64>,
    next_stamp: u64,
    /// Sum of the indexed records' spans.
    used_bytes: u64,
    /// The id the next new file takes: above every file this process has seen.
    next_id: u64,
    /// Files written since the last sync.
    unsynced: BTreeSet<u64>,
    /// Files created or removed since the last sync (the folder needs an fsync).
    dir_dirty: bool,
    /// Per file, the offsets of deleted records whose headers the next sync zeroes.
    unzeroed: BTreeMap<u64, Vec<u64>>,
    /// Free files whose new key is not durable yet: reused only after the next sync,
    /// so no new record lands among old ones a crash could bring back.
    rekeyed: BTreeSet<u64>,
    /// The folder itself was created since the last sync (the root needs one).
    root_dirty: bool,
}

/// What one sync makes durable, taken from the state as it begins (appends go on
/// meanwhile and wait for the next).
struct Unsynced {
    files: Vec<(u64, Arc<File>)>,
    dir_dirty: bool,
    root_dirty: bool,
    /// Free files given a new key before the sync began: usable once it succeeded.
    rekeyed: BTreeSet<u64>,
}

/// The journal records of one disk, in log files. See the module header.
pub struct JournalLog {
    root: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
}

impl JournalLog {
    /// Opens the journal log of the disk at `root`, rebuilding the index from the record
    /// headers. A log file of a format this build does not know is refused by name.
    pub fn open(root: &Path) -> Result<JournalLog, DeviceError> {
        let dir = root.join(LOG_DIR);
        let mut state = State { next_stamp: 1, next_id: 1, ..State::default() };
        let mut found: Vec<(u64, Loc)> = Vec::new();
        for (id, path) in log_files(&dir)? {
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_error(&path, e))?;
            let bytes = file.metadata().map_err(|e| io_error(&path, e))?.len();
            let (key, tail) = match scan_file(&file, id, bytes, &path, &mut found)? {
                Some(scanned) => scanned,
                None => {
                    // Its head block is rotten or torn: no header of it can be verified,
                    // so it holds no record; it gets a new key and is free.
                    let key = write_head(&file).map_err(|e| io_error(&path, e))?;
                    state.unsynced.insert(id);
                    (key, ALIGN)
                }
            };
            state.next_id = state.next_id.max(id + 1);
            state.files.insert(id, LogFile { file: Arc::new(file), key, bytes, tail, records: 0 });
        }
        // Of two records of one sequence number, the later rewrite wins.
        found.sort_by_key(|(seq, loc)| (*seq, loc.stamp));
        for (seq, loc) in found {
            state.next_stamp = state.next_stamp.max(loc.stamp + 1);
            if let Some(old) = state.index.insert(seq, loc) {
                if let Some(file) = state.files.get_mut(&old.file) {
                    file.records -= 1;
                }
                state.used_bytes -= span(u64::from(old.len));
            }
            if let Some(file) = state.files.get_mut(&loc.file) {
                file.records += 1;
            }
            state.used_bytes += span(u64::from(loc.len));
        }
        // Records go on in the file written last; the others are full or free.
        state.active = state.index.values().max_by_key(|loc| loc.stamp).map(|loc| loc.file);
        let active = state.active;
        for (_, file) in state.files.iter_mut().filter(|(id, f)| Some(**id) != active && f.records == 0) {
            file.tail = ALIGN;
        }
        let log = JournalLog { root: root.to_path_buf(), dir, state: Mutex::new(state) };
        log.lock().check();
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below keeps the index and the counts consistent before it can
        // panic; recover the guard instead of poisoning every caller.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.log"))
    }

    /// Whether record `seq` is in the log.
    pub fn contains(&self, seq: u64) -> bool {
        self.lock().index.contains_key(&seq)
    }

    /// Sequence numbers of every record, ascending.
    pub fn list(&self) -> Vec<u64> {
        self.lock().index.keys().copied().collect()
    }

    /// The live records' spans (see the module header).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// Bytes the log's files take on the disk, slack included (for tests: what the disk
    /// counts is `used_bytes`).
    #[cfg(test)]
    pub(crate) fn file_bytes(&self) -> u64 {
        self.lock().files.values().map(|f| f.bytes).sum()
    }

    /// The payload of record `seq`, or `NotFound`.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, DeviceError> {
        let (file, loc) = {
            let state = self.lock();
            let loc = *state.index.get(&seq).ok_or(DeviceError::NotFound)?;
            (Arc::clone(&state.files[&loc.file].file), loc)
        };
        let mut payload = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut payload, loc.offset + RECORD_HEADER_LEN)
            .map_err(|e| io_error(&self.path(loc.file), e))?;
        Ok(payload)
    }

    /// Record `seq` as another process wrote it to this disk since this log was opened,
    /// if it did (see the module header); `None` otherwise. The journal asks before
    /// every write, so this costs a header read per place and one look for a file of
    /// the next id (a writer that opened the log after this one numbers its new files as
    /// this one would), never a directory listing.
    pub fn probe(&self, seq: u64) -> Option<Vec<u8>> {
        let mut places: Vec<(u64, Arc<File>, [u8; 32], u64)> = Vec::new();
        let next = {
            let state = self.lock();
            if state.index.contains_key(&seq) {
                return None;
            }
            for (id, file) in &state.files {
                if state.active == Some(*id) || file.records == 0 {
                    let at = if file.records == 0 { ALIGN } else { file.tail };
                    places.push((*id, Arc::clone(&file.file), file.key, at));
                }
            }
            state.next_id
        };
        if let Ok(file) = File::open(self.path(next)) {
            let mut head = [0u8; 48];
            if file.read_exact_at(&mut head, 0).is_ok() && head[..8] == FILE_MAGIC {
                let mut key = [0u8; 32];
                key.copy_from_slice(&head[16..48]);
                places.push((next, Arc::new(file), key, ALIGN));
            }
        }
        places.into_iter().find_map(|(id, file, key, offset)| {
            let mut header = [0u8; RECORD_HEADER_LEN as usize];
            file.read_exact_at(&mut header, offset).ok()?;
            let (found, loc) = decode_header(&key, &header, id, offset)?;
            if found != seq {
                return None;
            }
            let mut payload = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut payload, offset + RECORD_HEADER_LEN).ok()?;
            Some(payload)
        })
    }

    /// Writes `payload` as record `seq`, replacing any earlier one. When a new file is
    /// needed, `size_for(wanted, needed, used)` gives the size the disk allows for it
    /// (this log holding `used` bytes), at least `needed`, or `None` when it has no
    /// room: then `NoSpace`, nothing written. It runs under this log's lock. The caller
    /// keeps records over `LOG_RECORD_MAX` elsewhere.
    pub fn append(
        &self,
        seq: u64,
        payload: &[u8],
        size_for: impl Fn(u64, u64, u64) -> Option<u64>,
    ) -> Result<(), DeviceError> {
        assert!(payload.len() as u64 <= LOG_RECORD_MAX, "a record over the log's limit");
        let len = payload.len() as u32;
        let span = span(u64::from(len));
        let mut state = self.lock();
        let id = self.file_with_room(&mut state, span, size_for)?;
        let stamp = state.next_stamp.max(system_wall_nanos());
        state.next_stamp = stamp + 1;
        let file = state.files.get_mut(&id).ok_or(DeviceError::NotFound)?;
        let loc = Loc { file: id, offset: file.tail, len, stamp };
        // The write runs under the lock: a record is a few KiB into the page cache, and
        // the journal writes one record at a time anyway.
        let header = encode_header(&file.key, seq, &loc);
        if let Err(e) = segments::write_two_at(&file.file, &header, payload, loc.offset) {
            return Err(io_error(&self.path(id), e));
        }
        file.tail += span;
        file.records += 1;
        state.unsynced.insert(id);
        state.used_bytes += span;
        if let Some(old) = state.index.insert(seq, loc) {
            self.forget(&mut state, old)?;
        }
        state.check();
        Ok(())
    }

    /// Deletes record `seq`; `false` when there was none.
    pub fn delete(&self, seq: u64) -> Result<bool, DeviceError> {
        let mut state = self.lock();
        let Some(loc) = state.index.remove(&seq) else {
            return Ok(false);
        };
        let result = self.forget(&mut state, loc);
        state.check();
        result.map(|()| true)
    }

    /// Leaves the header of a record just taken out of the index for the next sync to
    /// zero, and frees its file once it holds no record.
    fn forget(&self, state: &mut State, loc: Loc) -> Result<(), DeviceError> {
        state.used_bytes -= span(u64::from(loc.len));
        let file = state.files.get_mut(&loc.file).ok_or(DeviceError::NotFound)?;
        file.records -= 1;
        state.unzeroed.entry(loc.file).or_default().push(loc.offset);
        state.unsynced.insert(loc.file);
        if state.files[&loc.file].records == 0 && state.active != Some(loc.file) {
            self.free(state, loc.file);
        }
        Ok(())
    }

    /// A file that holds no record: kept for reuse from its start if none is larger and
    /// fewer than `LOG_FREE_MAX` are kept, else removed.
    /// Kept, it gets a new key (see the module header); should that write fail, its old
    /// records' headers are zeroed at the next sync instead and it is not reused.
    fn free(&self, state: &mut State, id: u64) {
        debug_assert_eq!(state.files.get(&id).map(|f| f.records), Some(0), "freeing a file that holds records");
        let kept = state
            .files
            .iter()
            .filter(|(other, f)| **other != id && f.records == 0 && state.active != Some(**other))
            .count();
        let largest = state.files.values().map(|f| f.bytes).max().unwrap_or(0);
        if state.files[&id].bytes >= largest && kept < LOG_FREE_MAX {
            let Some(file) = state.files.get_mut(&id) else { return };
            match write_head(&file.file) {
                Ok(key) => {
                    file.key = key;
                    file.tail = ALIGN;
                    state.unzeroed.remove(&id);
                    state.rekeyed.insert(id);
                    state.unsynced.insert(id);
                }
                Err(error) => {
                    tracing::warn!(%error, file = %self.path(id).display(), "a free journal log file kept its key");
                    file.tail = file.bytes;
                }
            }
            return;
        }
        if fs::remove_file(self.path(id)).is_ok() {
            state.files.remove(&id);
            state.unsynced.remove(&id);
            state.unzeroed.remove(&id);
            state.rekeyed.remove(&id);
            state.dir_dirty = true;
        }
    }

    /// The file the next record of `span` bytes goes to: the active one while it has
    /// room, else a free one, else a new one.
    fn file_with_room(
        &self,
        state: &mut State,
        span: u64,
        size_for: impl Fn(u64, u64, u64) -> Option<u64>,
    ) -> Result<u64, DeviceError> {
        if let Some(id) = state.active {
            if state.files.get(&id).is_some_and(|f| f.tail + span <= f.bytes) {
                return Ok(id);
            }
        }
        let previous = state.active.take();
        if let Some(id) = previous {
            if state.files.get(&id).is_some_and(|f| f.records == 0) {
                self.free(state, id);
            }
        }
        let free = state
            .files
            .iter()
            .find(|(id, f)| f.records == 0 && f.tail + span <= f.bytes && !state.rekeyed.contains(id))
            .map(|(id, _)| *id);
        if let Some(id) = free {
            state.active = Some(id);
            return Ok(id);
        }
        let largest = state.files.values().map(|f| f.bytes).max().unwrap_or(0);
        let wanted = (largest * 2).clamp(LOG_BYTES_FIRST, LOG_BYTES_MAX);
        let needed = (span + ALIGN).div_ceil(ALIGN) * ALIGN;
        let bytes = size_for(wanted, needed, state.used_bytes).ok_or(DeviceError::NoSpace)?;
        assert!(bytes >= needed && bytes % ALIGN == 0, "a log file of {bytes} bytes cannot take {span}");
        let id = state.next_id;
        state.next_id += 1;
        let (file, key) = self.create(state, id, bytes)?;
        state.files.insert(id, LogFile { file: Arc::new(file), key, bytes, tail: ALIGN, records: 0 });
        state.active = Some(id);
        Ok(id)
    }

    /// Creates log file `id`, `bytes` long and zero-filled; returns it and its key.
    fn create(&self, state: &mut State, id: u64, bytes: u64) -> Result<(File, [u8; 32]), DeviceError> {
        if !self.dir.exists() {
            match fs::create_dir(&self.dir) {
                Ok(()) => state.root_dirty = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(&self.dir, e)),
            }
        }
        let path = self.path(id);
        let written = OpenOptions::new().read(true).write(true).create_new(true).open(&path).and_then(|file| {
            let key = write_head(&file)?;
            let zeros = vec![0u8; (1 << 20).min(bytes as usize)];
            let mut at = ALIGN;
            while at < bytes {
                let n = zeros.len().min((bytes - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok((file, key))
        });
        match written {
            Ok(made) => {
                state.dir_dirty = true;
                state.unsynced.insert(id);
                Ok(made)
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(io_error(&path, e))
            }
        }
    }

    /// Makes every earlier append and delete, and every file's creation or removal,
    /// durable.
    pub fn sync(&self) -> Result<(), DeviceError> {
        let unsynced = self.take_unsynced()?;
        let flushed = self.flush(&unsynced);
        self.settle(unsynced, flushed)
    }

    /// `sync`, its flush done by `flush`, which makes every earlier write to the
    /// filesystem durable (a `syncfs`): called once, after the deleted headers are zeroed
    /// and what is unsynced is taken — not at all when zeroing fails. On `Err`, what was
    /// unsynced stays so.
    pub(crate) fn sync_through(&self, flush: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<(), DeviceError> {
        let unsynced = self.take_unsynced()?;
        let flushed = flush();
        self.settle(unsynced, flushed)
    }

    /// Zeroes the headers of the records deleted since the last sync and takes what the
    /// next flush must make durable.
    fn take_unsynced(&self) -> Result<Unsynced, DeviceError> {
        let mut state = self.lock();
        self.zero_deleted(&mut state)?;
        let ids = std::mem::take(&mut state.unsynced);
        let files = ids.iter().filter_map(|id| state.files.get(id).map(|f| (*id, Arc::clone(&f.file)))).collect();
        Ok(Unsynced {
            files,
            dir_dirty: std::mem::take(&mut state.dir_dirty),
            root_dirty: std::mem::take(&mut state.root_dirty),
            rekeyed: std::mem::take(&mut state.rekeyed),
        })
    }

    /// `fdatasync`s each file of `unsynced` and `fsync`s the folders, all at once.
    fn flush(&self, unsynced: &Unsynced) -> Result<(), DeviceError> {
        let mut jobs: Vec<(Option<Arc<File>>, PathBuf)> =
            unsynced.files.iter().map(|(id, file)| (Some(Arc::clone(file)), self.path(*id))).collect();
        if unsynced.dir_dirty {
            jobs.push((None, self.dir.clone()));
        }
        if unsynced.root_dirty {
            jobs.push((None, self.root.clone()));
        }
        let failed = run_all(true, jobs, |(file, path)| match file {
            Some(file) => file.sync_data().err().map(|e| io_error(&path, e)),
            None => File::open(&path).and_then(|f| f.sync_all()).err().map(|e| io_error(&path, e)),
        })
        .into_iter()
        .flatten()
        .next();
        failed.map_or(Ok(()), Err)
    }

    /// After a flush of `unsynced`: on failure puts it back, to be flushed by the next
    /// sync (the files given new keys stay unusable until one succeeds).
    fn settle(&self, unsynced: Unsynced, flushed: Result<(), DeviceError>) -> Result<(), DeviceError> {
        if let Err(error) = flushed {
            let Unsynced { files, dir_dirty, root_dirty, rekeyed } = unsynced;
            let mut state = self.lock();
            state.unsynced.extend(files.iter().map(|(id, _)| *id));
            state.dir_dirty |= dir_dirty;
            state.root_dirty |= root_dirty;
            state.rekeyed.extend(rekeyed);
            return Err(error);
        }
        Ok(())
    }

    /// Zeroes the headers of records deleted since the last sync (their files still hold
    /// records, or could not take a new key). On failure the rest stay queued.
    fn zero_deleted(&self, state: &mut State) -> Result<(), DeviceError> {
        let zeros = [0u8; RECORD_HEADER_LEN as usize];
        while let Some((id, offsets)) = state.unzeroed.pop_first() {
            let Some(file) = state.files.get(&id) else { continue };
            for (done, offset) in offsets.iter().enumerate() {
                if let Err(e) = file.file.write_all_at(&zeros, *offset) {
                    state.unzeroed.insert(id, offsets[done..].to_vec());
                    return Err(io_error(&self.path(id), e));
                }
            }
        }
        Ok(())
    }

    /// Whether a `sync` has anything to do.
    pub fn dirty(&self) -> bool {
        let state = self.lock();
        !state.unsynced.is_empty() || state.dir_dirty || state.root_dirty
    }

    /// Removes every log file and the log's folder (the disk leaves the pool).
    pub fn wipe(&self) -> Result<(), DeviceError> {
        let mut state = self.lock();
        *state = State { next_stamp: state.next_stamp, next_id: state.next_id, ..State::default() };
        state.check();
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&self.dir, e)),
        }
    }
}

impl State {
    /// Asserts the index and the counts agree (debug builds: it walks the index).
    fn check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let used: u64 = self.index.values().map(|loc| span(u64::from(loc.len))).sum();
        assert_eq!(used, self.used_bytes, "journal log space accounting drifted");
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for loc in self.index.values() {
            let file = self.files.get(&loc.file);
            assert!(
                file.is_some_and(|f| loc.offset + span(u64::from(loc.len)) <= f.tail),
                "a record past its file's tail"
            );
            *counts.entry(loc.file).or_default() += 1;
        }
        for (id, file) in &self.files {
            assert_eq!(counts.get(id).copied().unwrap_or(0), file.records, "log file {id}'s record count drifted");
            assert!(file.tail >= ALIGN && file.tail <= file.bytes, "log file {id}'s tail is outside it");
        }
        if let Some(active) = self.active {
            assert!(self.files.contains_key(&active), "the active log file is gone");
        }
    }
}

/// Writes a file's head block with a fresh random key; returns the key.
fn write_head(file: &File) -> std::io::Result<[u8; 32]> {
    // The production side's randomness, as for a pool's id (`DirDisk` never runs in
    // the simulator): 244 random bits from two version-4 UUIDs.
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut head = vec![0u8; ALIGN as usize];
    head[..8].copy_from_slice(&FILE_MAGIC);
    head[8..10].copy_from_slice(&LOG_FORMAT.to_le_bytes());
    head[16..48].copy_from_slice(&key);
    file.write_all_at(&head, 0)?;
    Ok(key)
}

fn header_checksum(key: &[u8; 32], fields: &[u8], file: u64, offset: u64) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(&file.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.update(fields);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// `magic[4] | format u16 | 0u16 | seq u64 | len u32 | 0u32 | stamp u64 | checksum[16] |
/// 0[16]`, little-endian.
fn encode_header(key: &[u8; 32], seq: u64, loc: &Loc) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    header[0..4].copy_from_slice(&RECORD_MAGIC);
    header[4..6].copy_from_slice(&LOG_FORMAT.to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..20].copy_from_slice(&loc.len.to_le_bytes());
    header[24..32].copy_from_slice(&loc.stamp.to_le_bytes());
    let checksum = header_checksum(key, &header[..32], loc.file, loc.offset);
    header[32..48].copy_from_slice(&checksum);
    header
}

/// The record a header at (`file`, `offset`) describes, if it is one.
fn decode_header(key: &[u8; 32], header: &[u8], file: u64, offset: u64) -> Option<(u64, Loc)> {
    if header.len() < RECORD_HEADER_LEN as usize || header[0..4] != RECORD_MAGIC {
        return None;
    }
    if header[32..48] != header_checksum(key, &header[..32], file, offset) {
        return None;
    }
    if header[4..6] != LOG_FORMAT.to_le_bytes() {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let len = u32::from_le_bytes(header[16..20].try_into().unwrap_or([0; 4]));
    Some((word(8), Loc { file, offset, len, stamp: word(24) }))
}

/// Log files of the folder, by id. A missing folder holds none.
fn log_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DeviceError> {
    segments::numbered_files(dir, ".log")
}

/// Reads every record header of one log file of `bytes` bytes into `out` as (sequence
/// number, place). Returns the file's key and where appends may go on (past every valid
/// header's span), or `None` when its head block is not a log's (rotten, torn).
fn scan_file(
    file: &File,
    id: u64,
    bytes: u64,
    path: &Path,
    out: &mut Vec<(u64, Loc)>,
) -> Result<Option<([u8; 32], u64)>, DeviceError> {
    if bytes > LOG_BYTES_MAX.max(LOG_RECORD_MAX + 2 * ALIGN) {
        return Err(DeviceError::Unavailable(format!(
            "{}: {bytes} bytes, more than a journal log file ever has; not a file of this build's",
            path.display()
        )));
    }
    let mut whole = vec![0u8; bytes as usize];
    file.read_exact_at(&mut whole, 0).map_err(|e| io_error(path, e))?;
    if whole.len() < ALIGN as usize || whole[..8] != FILE_MAGIC {
        return Ok(None);
    }
    if whole[8..10] != LOG_FORMAT.to_le_bytes() {
        let format = u16::from_le_bytes([whole[8], whole[9]]);
        return Err(DeviceError::Unavailable(format!(
            "{} is journal log format {format}; this build reads format {LOG_FORMAT}: use a build that knows it",
            path.display()
        )));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&whole[16..48]);
    let mut tail = ALIGN;
    let mut offset = ALIGN;
    while offset + RECORD_HEADER_LEN <= bytes {
        let at = offset as usize;
        match decode_header(&key, &whole[at..at + RECORD_HEADER_LEN as usize], id, offset) {
            Some((seq, loc)) if offset + span(u64::from(loc.len)) <= bytes => {
                out.push((seq, loc));
                offset += span(u64::from(loc.len));
                tail = offset;
            }
            _ => offset += RECORD_ALIGN,
        }
    }
    Ok(Some((key, tail)))
}

fn io_error(path: &Path, e: std::io::Error) -> DeviceError {
    DeviceError::from_io(path, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seed: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed as usize * 31 + i * 7) as u8).collect()
    }

    fn room(wanted: u64, _: u64, _: u64) -> Option<u64> {
        Some(wanted)
    }

    fn files(root: &Path) -> Vec<PathBuf> {
        log_files(&root.join(LOG_DIR)).unwrap().into_iter().map(|(_, path)| path).collect()
    }

    /// A log at `dir` holding `records`, synced, and its first file.
    fn logged(dir: &Path, records: &[(u64, &[u8])]) -> (JournalLog, PathBuf) {
        let log = JournalLog::open(dir).unwrap();
        for (seq, payload) in records {
            log.append(*seq, payload, room).unwrap();
        }
        log.sync().unwrap();
        let path = files(dir)[0].clone();
        (log, path)
    }

    /// Writes `bytes` at `at` in the file at `path`, as a crash or rot would.
    fn scribble(path: &Path, at: u64, bytes: &[u8]) {
        OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn records_survive_reopen_and_deletes_are_durable_after_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let log = JournalLog::open(dir.path()).unwrap();
        for seq in 1..=40 {
            log.append(seq, &payload(seq, 9_000 + seq as usize), room).unwrap();
        }
        log.sync().unwrap();
        for seq in 1..=10 {
            assert!(log.delete(seq).unwrap());
        }
        assert!(!log.delete(1).unwrap(), "a second delete finds nothing");
        log.sync().unwrap();
        drop(log);
        let log = JournalLog::open(dir.path()).unwrap();
        assert_eq!(log.list(), (11..=40).collect::<Vec<u64>>());
        for seq in 11..=40 {
            assert_eq!(log.read(seq).unwrap(), payload(seq, 9_000 + seq as usize));
        }
        assert_eq!(log.read(3), Err(DeviceError::NotFound));
        // The first file was 256 KiB, the next twice that.
        let sizes: Vec<u64> = files(dir.path()).iter().map(|p| fs::metadata(p).unwrap().len()).collect();
        assert_eq!(sizes, vec![LOG_BYTES_FIRST, 2 * LOG_BYTES_FIRST]);
    }

    #[test]
    fn files_whose_records_all_died_are_reused_so_the_log_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = JournalLog::open(dir.path()).unwrap();
        let mut seq = 0;
        // Checkpoint intervals of 256 records of 16 KiB, each trimmed at its end.
        for _ in 0..12 {
            let first = seq + 1;
            for _ in 0..256 {
                seq += 1;
                log.append(seq, &payload(seq, 16 << 10), room).unwrap();
            }
            log.sync().unwrap();
            for old in first..=seq {
                log.delete(old).unwrap();
            }
            log.sync().unwrap();
        }
        let paths = files(dir.path());
        let bytes: u64 = paths.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        assert_eq!(bytes, log.file_bytes());
        assert_eq!(log.used_bytes(), 0, "no record is live");
        assert!(paths.len() <= LOG_FREE_MAX + 1, "{} files: free ones are not reused", paths.len());
        assert!(bytes <= (LOG_FREE_MAX as u64 + 1) * LOG_BYTES_MAX, "{bytes} bytes of log for one interval");
        assert!(log.list().is_empty());
        // Reused files hold their dead records' payloads; none comes back.
        drop(log);
        assert!(JournalLog::open(dir.path()).unwrap().list().is_empty());
    }

    /// Files of one size, so a free one is always kept for reuse.
    fn same_size(_: u64, _: u64, _: u64) -> Option<u64> {
        Some(LOG_BYTES_FIRST)
    }

    /// Records 1..=28 of 9,000 bytes fill the first file (256 KiB); the next ones go to
    /// the second, of the same size.
    fn two_files(dir: &Path, last: u64) -> JournalLog {
        let log = JournalLog::open(dir).unwrap();
        for seq in 1..=last {
            log.append(seq, &payload(seq, 9_000), same_size).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.lock().index[&28].file, 1);
        assert_eq!(log.lock().index[&29].file, 2);
        log
    }

    /// `two_files` with records 29 and 30, then every record of the first file deleted
    /// (not synced); returns the log, the first file and its bytes before the deletes.
    fn first_file_emptied(dir: &Path) -> (JournalLog, PathBuf, Vec<u8>) {
        let log = two_files(dir, 30);
        let first = files(dir)[0].clone();
        let before = fs::read(&first).unwrap();
        for seq in 1..=28 {
            log.delete(seq).unwrap();
        }
        (log, first, before)
    }

    #[test]
    fn a_file_whose_records_all_died_takes_a_new_key_and_is_reused_only_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (log, first, before) = first_file_emptied(dir.path());
        let after = fs::read(&first).unwrap();
        assert_ne!(after[16..48], before[16..48], "the head block took a new key");
        assert_eq!(after[4096..], before[4096..], "no header was zeroed one by one");
        // The second file full, the next record needs another: not the first yet.
        let mut seq = 30;
        while log.lock().index[&seq].file == 2 {
            seq += 1;
            log.append(seq, &payload(seq, 9_000), same_size).unwrap();
        }
        assert_eq!(log.lock().index[&seq].file, 3, "a file whose new key is not durable was reused");
        log.sync().unwrap();
        while log.lock().index[&seq].file == 3 {
            seq += 1;
            log.append(seq, &payload(seq, 9_000), same_size).unwrap();
        }
        assert_eq!(log.lock().index[&seq].file, 1, "a synced free file is reused from its start");
        assert_eq!(log.lock().index[&seq].offset, ALIGN);
        log.sync().unwrap();
        drop(log);
        let log = JournalLog::open(dir.path()).unwrap();
        assert_eq!(log.list(), (29..=seq).collect::<Vec<u64>>(), "no dead record came back");
        assert_eq!(log.read(seq).unwrap(), payload(seq, 9_000));
    }

    #[test]
    fn a_crash_before_the_new_key_is_durable_loses_nothing_live_whatever_the_head_became() {
        for fate in [Fate::Lost, Fate::Whole, Fate::Torn(700), Fate::Garbage(20, 0x5A)] {
            let dir = tempfile::tempdir().unwrap();
            let (log, first, durable) = first_file_emptied(dir.path());
            let current = fs::read(&first).unwrap();
            drop(log);
            let mut crashed = durable.clone();
            let head = ALIGN as usize;
            match &fate {
                Fate::Lost => {}
                Fate::Whole => crashed[..head].copy_from_slice(&current[..head]),
                Fate::Torn(n) => crashed[..*n].copy_from_slice(&current[..*n]),
                Fate::Garbage(n, byte) => {
                    crashed[..*n].copy_from_slice(&current[..*n]);
                    crashed[*n..head].iter_mut().for_each(|b| *b = *byte);
                }
            }
            fs::write(&first, &crashed).unwrap();
            let log = JournalLog::open(dir.path()).unwrap();
            for seq in 1..=28 {
                if log.contains(seq) {
                    assert_eq!(log.read(seq).unwrap(), payload(seq, 9_000), "{fate:?}: an undone delete reads exactly");
                }
            }
            for seq in 29..=30 {
                assert_eq!(log.read(seq).unwrap(), payload(seq, 9_000), "{fate:?}");
            }
            if matches!(fate, Fate::Lost) {
                assert_eq!(log.list().len(), 30, "the deletes were undone");
            } else {
                assert_eq!(log.list(), vec![29, 30], "{fate:?}: the old key is gone, so are its records");
            }
        }
    }

    #[test]
    fn a_header_inside_a_payload_is_never_taken_for_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = logged(dir.path(), &[(1, b"first")]);
        let mut genuine = [0u8; RECORD_HEADER_LEN as usize];
        File::open(&path).unwrap().read_exact_at(&mut genuine, ALIGN).unwrap();
        // A payload whose 4 KiB blocks start with a genuine header copied from elsewhere
        // and with headers forged without the file's key.
        let mut tricky = vec![0u8; 3 * ALIGN as usize];
        let at = |block: u64| (block * ALIGN - RECORD_HEADER_LEN) as usize;
        tricky[at(1)..at(1) + 64].copy_from_slice(&genuine);
        // Record 1 spans 512 bytes from 4 KiB, so record 2's payload starts at 4672 and
        // the forged header lies at 4672 + 2 * 4096 - 64 = 12800, where it claims to be.
        let forged = Loc { file: 1, offset: 12_800, len: 5, stamp: u64::MAX - 1 };
        tricky[at(2)..at(2) + 64].copy_from_slice(&encode_header(&[0u8; 32], 99, &forged));
        log.append(2, &tricky, room).unwrap();
        log.sync().unwrap();
        // Deleted, its payload stays in the file with its header zeroed.
        log.delete(2).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = JournalLog::open(dir.path()).unwrap();
        assert_eq!(log.list(), vec![1]);
        assert_eq!(log.read(1).unwrap(), b"first");
    }

    #[test]
    fn of_two_records_of_one_number_the_rewrite_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = logged(dir.path(), &[(5, b"old")]);
        let mut old_header = [0u8; RECORD_HEADER_LEN as usize];
        File::open(&path).unwrap().read_exact_at(&mut old_header, ALIGN).unwrap();
        log.append(5, b"new", room).unwrap();
        log.sync().unwrap();
        drop(log);
        // A crash that kept the rewrite but undid the zeroing of the old header.
        scribble(&path, ALIGN, &old_header);
        let log = JournalLog::open(dir.path()).unwrap();
        assert_eq!(log.list(), vec![5]);
        assert_eq!(log.read(5).unwrap(), b"new");
    }

    #[test]
    fn a_torn_unsynced_tail_costs_only_itself_and_appends_go_on_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = JournalLog::open(dir.path()).unwrap();
        for seq in 1..=10 {
            log.append(seq, &payload(seq, 5_000), room).unwrap();
        }
        log.sync().unwrap();
        log.append(11, &payload(11, 5_000), room).unwrap();
        log.append(12, &payload(12, 5_000), room).unwrap();
        drop(log);
        // Record 11 torn in its header, record 12 landed whole.
        let path = files(dir.path())[0].clone();
        let eleventh = ALIGN + 10 * span(5_000);
        scribble(&path, eleventh + 10, &[0xAB; 20]);
        let log = JournalLog::open(dir.path()).unwrap();
        let mut expected: Vec<u64> = (1..=10).collect();
        expected.push(12);
        assert_eq!(log.list(), expected);
        log.append(13, b"after", room).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = JournalLog::open(dir.path()).unwrap();
        for seq in (1..=10).chain([12]) {
            assert_eq!(log.read(seq).unwrap(), payload(seq, 5_000));
        }
        assert_eq!(log.read(13).unwrap(), b"after");
    }

    #[test]
    fn a_file_with_a_rotten_head_holds_no_record_and_is_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = logged(dir.path(), &[(1, b"one")]);
        drop(log);
        scribble(&path, 0, b"rotten!!");
        let log = JournalLog::open(dir.path()).unwrap();
        assert!(log.list().is_empty(), "no header verifies without the file's key");
        log.append(2, b"two", room).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = JournalLog::open(dir.path()).unwrap();
        assert_eq!(log.list(), vec![2]);
        assert_eq!(files(dir.path()).len(), 1);
    }

    #[test]
    fn a_log_of_an_unknown_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = logged(dir.path(), &[(1, b"one")]);
        drop(log);
        scribble(&path, 8, &9u16.to_le_bytes());
        let Err(DeviceError::Unavailable(message)) = JournalLog::open(dir.path()) else {
            panic!("a log of format 9 opened");
        };
        assert!(message.contains("journal log format 9") && message.contains("reads format 1"), "{message}");
    }

    #[test]
    fn a_record_another_process_wrote_since_this_one_opened_is_found_by_probe() {
        let dir = tempfile::tempdir().unwrap();
        let first = JournalLog::open(dir.path()).unwrap();
        // The other writer's first record goes to a file this one does not know...
        let second = JournalLog::open(dir.path()).unwrap();
        second.append(1, b"theirs", room).unwrap();
        second.sync().unwrap();
        assert_eq!(first.probe(1), Some(b"theirs".to_vec()));
        assert_eq!(first.probe(2), None);
        // ...or to this one's tail.
        let first = JournalLog::open(dir.path()).unwrap();
        let third = JournalLog::open(dir.path()).unwrap();
        third.append(2, b"theirs too", room).unwrap();
        third.sync().unwrap();
        assert_eq!(first.probe(2), Some(b"theirs too".to_vec()));
        assert_eq!(first.probe(3), None, "a record of another number is not this one");
        assert_eq!(first.probe(1), None, "an indexed record is not another process's");
    }

    #[test]
    fn no_room_for_a_new_file_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = JournalLog::open(dir.path()).unwrap();
        assert_eq!(log.append(1, b"one", |_, _, _| None), Err(DeviceError::NoSpace));
        assert!(log.list().is_empty());
        assert_eq!(log.used_bytes(), 0);
        assert!(files(dir.path()).is_empty());
    }
    #[derive(Clone, Debug)]
    enum Fate {
        Lost,
        Whole,
        Torn(usize),
        Garbage(usize, u8),
    }

    fn fate() -> impl proptest::strategy::Strategy<Value = Fate> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Fate::Lost),
            Just(Fate::Whole),
            (0usize..20_000).prop_map(Fate::Torn),
            (0usize..20_000, 1u8..=255).prop_map(|(at, byte)| Fate::Garbage(at, byte)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]
        /// The crash model of the module header: whatever happens to the writes since the
        /// last sync (appends, and the zeroed headers of deletes), every synced record
        /// that was not deleted reads back exactly, a delete that was synced stays, a lost
        /// append never appears, a whole one reads back exactly, and nothing else is listed.
        #[test]
        fn every_synced_record_survives_any_fate_of_the_unsynced_writes(
            synced in proptest::collection::vec((1usize..16_000, proptest::bool::ANY), 1..6),
            unsynced in proptest::collection::vec((1usize..16_000, fate()), 0..5),
            deletes in proptest::collection::vec(fate(), 0..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let log = JournalLog::open(dir.path()).unwrap();
            for (i, (len, _)) in synced.iter().enumerate() {
                log.append(i as u64 + 1, &payload(i as u64, *len), room).unwrap();
            }
            for (i, (_, deleted)) in synced.iter().enumerate() {
                if *deleted {
                    log.delete(i as u64 + 1).unwrap();
                }
            }
            log.sync().unwrap();
            let path = files(dir.path())[0].clone();
            let durable = fs::read(&path).unwrap();
            let live: Vec<usize> = (0..synced.len()).filter(|i| !synced[*i].1).collect();
            // Unsynced: deletes of live records, then appends; each write's range and fate.
            let mut writes: Vec<(u64, usize, Fate)> = Vec::new();
            let mut undeleted = Vec::new();
            for (k, fate) in deletes.iter().enumerate() {
                let Some(&i) = live.get(k) else { break };
                let loc = log.lock().index[&(i as u64 + 1)];
                log.delete(i as u64 + 1).unwrap();
                writes.push((loc.offset, RECORD_HEADER_LEN as usize, fate.clone()));
                undeleted.push(i);
            }
            let mut appended = Vec::new();
            for (j, (len, fate)) in unsynced.iter().enumerate() {
                let seq = 100 + j as u64;
                log.append(seq, &payload(seq, *len), room).unwrap();
                let loc = log.lock().index[&seq];
                writes.push((loc.offset, RECORD_HEADER_LEN as usize + len, fate.clone()));
                appended.push((seq, *len, fate.clone()));
            }
            let appended_to_file = log.lock().index.values().all(|loc| loc.file == 1);
            proptest::prop_assume!(appended_to_file);
            drop(log);
            // The crash: the durable image plus each unsynced write's fate.
            let current = fs::read(&path).unwrap();
            let mut crashed = durable.clone();
            for (offset, len, fate) in &writes {
                let (at, end) = (*offset as usize, *offset as usize + len);
                match fate {
                    Fate::Lost => {}
                    Fate::Whole => crashed[at..end].copy_from_slice(&current[at..end]),
                    Fate::Torn(n) => {
                        let cut = (at + n).min(end);
                        crashed[at..cut].copy_from_slice(&current[at..cut]);
                    }
                    Fate::Garbage(from, byte) => {
                        let cut = (at + from).min(end);
                        crashed[at..cut].copy_from_slice(&current[at..cut]);
                        crashed[cut..end].iter_mut().for_each(|b| *b = *byte);
                    }
                }
            }
            fs::write(&path, &crashed).unwrap();
            let log = JournalLog::open(dir.path()).unwrap();
            for (i, (len, deleted)) in synced.iter().enumerate() {
                let seq = i as u64 + 1;
                if *deleted {
                    proptest::prop_assert!(!log.contains(seq), "a synced delete of {} was undone", seq);
                } else if !undeleted.contains(&i) {
                    proptest::prop_assert_eq!(log.read(seq).unwrap(), payload(i as u64, *len));
                } else if log.contains(seq) {
                    // An unsynced delete may be undone: then the record is as it was.
                    proptest::prop_assert_eq!(log.read(seq).unwrap(), payload(i as u64, *len));
                }
            }
            for seq in log.list() {
                if seq <= synced.len() as u64 {
                    continue;
                }
                let Some((_, len, fate)) = appended.iter().find(|a| a.0 == seq) else {
                    proptest::prop_assert!(false, "listed a record never written: {}", seq);
                    continue;
                };
                proptest::prop_assert!(!matches!(fate, Fate::Lost), "a lost append came back: {}", seq);
                let read = log.read(seq).unwrap();
                proptest::prop_assert_eq!(read.len(), *len);
                if matches!(fate, Fate::Whole) {
                    proptest::prop_assert_eq!(read, payload(seq, *len));
                }
            }
            for (seq, len, fate) in &appended {
                if matches!(fate, Fate::Whole) {
                    proptest::prop_assert_eq!(log.read(*seq).unwrap(), payload(*seq, *len));
                }
            }
            // The log takes records again after the crash, and they survive a reopen.
            log.append(999, b"after", room).unwrap();
            log.sync().unwrap();
            drop(log);
            proptest::prop_assert_eq!(JournalLog::open(dir.path()).unwrap().read(999).unwrap(), b"after".to_vec());
        }
    }
}
