//! A disk on an S3-compatible object store: `ObjectDisk`, a `BlockDevice` that keeps
//! its blocks as objects under a prefix of a bucket (`s3://bucket/prefix`), so a pool's
//! disks can live on a store that outlives the machine.
//!
//! Contract (the trait's):
//! - metadata blocks (label, journal records, store pages and roots, claims, the config
//!   copy) are one object each, `{prefix}/{namespace}/{leaf}` (the same namespaces and
//!   leaves as a directory disk's files), written whole by one PUT: visible and durable
//!   once the call returns (S3's read-after-write consistency), never torn;
//! - fragments are gathered into packs (`packs`: objects of about 1 MiB under `pack/`,
//!   each written once, create-only), because the store serves requests, not bytes, at
//!   a fixed rate: a fragment write is visible at once and durable after the next
//!   `sync`, which sends the open pack and waits for every pack in flight (the seam's
//!   crash model: an unsynced write may be lost, never torn). Packs are read by ranged
//!   GETs. Fragments a build before packs wrote as objects of their own
//!   (`fragment/{leaf}`) are read, listed and deleted where they lie, and
//!   `upgrade_layout` moves them into packs;
//! - a read returns the block's bytes; the engine verifies them as from any disk;
//! - capacity is what the caller grants (an object store has none of its own to ask):
//!   a write past it fails with `NoSpace` and writes nothing;
//! - errors say which: an unreachable endpoint or a missing bucket is `Unavailable`
//!   (the disk is away, not failing), rejected credentials are `Unavailable` with the
//!   reason, anything else on one call is `Io`. Credentials come from the environment
//!   (`Access::from_env`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_ENDPOINT_URL`, ...) and are never written to the pool or logged: `describe`
//!   names the bucket and prefix only.
//!
//! Calls block the calling thread (the engine's disk seam is synchronous) on a small
//! runtime shared by every object disk of the process; packs are sent on it in the
//! background, at most `PACKS_IN_FLIGHT` per disk.

mod location;
mod pack_index;
mod pack_reads;
mod packs;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dfs_engine::media::device::{
    BlockDevice, BlockKind, BlockName, Created, DeviceError, ObjectDiskOpen, ObjectStores,
};
use dfs_engine::media::label::DiskLabel;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};

pub use location::{Location, LocationError};
pub use pack_index::INDEX_PACKS;
use pack_reads::{PackReads, Plan};
use packs::{Loc, PackId, Packs, PACK_BYTES};

/// How long one request may take before the disk counts as away for it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take: an endpoint that does not answer is away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Retries of a request that failed in a way worth retrying (a dropped connection, a
/// 5xx), and the time they may take together: enough to ride out a store's restart of
/// one node, short enough that a dead endpoint is reported within seconds.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Packs one disk may have in flight before a fragment write waits for one to land.
const PACKS_IN_FLIGHT: usize = 4;
/// Pack headers read at once when a disk opens.
const HEADERS_AT_ONCE: usize = 16;
/// Bytes of a pack read first for its header: a full pack of 256 KiB fragments needs
/// less than 200 of them.
const HEADER_GUESS: u64 = 4096;

/// How to reach an object store: its endpoint and credentials. Taken from the
/// environment (`Access::from_env`), held only in memory, never written or logged
/// (`Debug` leaves the secrets out).
#[derive(Clone, Default)]
pub struct Access {
    /// A self-hosted store's URL (`AWS_ENDPOINT_URL`); `None`: AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`); `us-east-1` when unset.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: Option<String>,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl Access {
    /// The endpoint and credentials the environment gives, by the names the AWS tools
    /// use. Without `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, the keys come from
    /// a profile of the shared credentials file, as the AWS tools read it: the profile
    /// `AWS_PROFILE` names (else `default`) of `AWS_SHARED_CREDENTIALS_FILE` (else
    /// `~/.aws/credentials`).
    pub fn from_env() -> Access {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut access = Access {
            endpoint: var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            key_id: var("AWS_ACCESS_KEY_ID"),
            secret: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        };
        if access.key_id.is_none() || access.secret.is_none() {
            let file = var("AWS_SHARED_CREDENTIALS_FILE")
                .map(std::path::PathBuf::from)
                .or_else(|| var("HOME").map(|home| std::path::Path::new(&home).join(".aws/credentials")));
            let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
            if let Some(text) = file.and_then(|file| std::fs::read_to_string(file).ok()) {
                let keys = profile_keys(&text, &profile);
                access.key_id = keys.get("aws_access_key_id").cloned();
                access.secret = keys.get("aws_secret_access_key").cloned();
                access.session_token = access.session_token.or_else(|| keys.get("aws_session_token").cloned());
            }
        }
        access
    }
}

/// The `key = value` lines of section `[profile]` of a credentials file (INI).
fn profile_keys(text: &str, profile: &str) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == profile;
        } else if let Some((key, value)) = line.split_once('=').filter(|_| inside) {
            keys.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    keys
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("key_id", &self.key_id.as_ref().map(|_| "<set>"))
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The object stores this process reaches, as a pool directory opens disks on them
/// (`ObjectStores`): every disk with the endpoint and credentials read from the
/// environment once (`Access::from_env`).
#[derive(Debug)]
pub struct EnvStores {
    access: Access,
}

impl EnvStores {
    /// Reads the endpoint and credentials from the environment.
    pub fn from_env() -> EnvStores {
        EnvStores { access: Access::from_env() }
    }
}

impl ObjectStores for EnvStores {
    fn canonical(&self, location: &str) -> Result<String, String> {
        location.parse::<Location>().map(|l| l.to_string()).map_err(|e| e.0)
    }

    fn open(&self, location: &str, how: ObjectDiskOpen) -> Result<Arc<dyn BlockDevice>, DeviceError> {
        let location: Location = location.parse().map_err(|e: LocationError| DeviceError::Unavailable(e.0))?;
        match how {
            ObjectDiskOpen::Existing => {
                // The capacity is the label's; a disk without one is no pool's, and is
                // refused by the caller, which reads the label itself.
                let mut disk = ObjectDisk::open(&location, 0, &self.access)?;
                if let Ok(label) = DiskLabel::read(&disk) {
                    disk.capacity_bytes = label.capacity_bytes.unwrap_or(0);
                }
                Ok(Arc::new(disk))
            }
            ObjectDiskOpen::New { capacity_bytes } => {
                let disk = ObjectDisk::open(&location, capacity_bytes, &self.access)?;
                disk.check_create_only()?;
                Ok(Arc::new(disk))
            }
        }
    }
}

/// A `BlockDevice` on an S3-compatible object store. See the module header.
pub struct ObjectDisk {
    store: Arc<dyn ObjectStore>,
    location: Location,
    capacity_bytes: u64,
    /// Every object's size but packs', from a listing at open and kept by each write and
    /// delete: `used_bytes` and the capacity check, without a request.
    tally: Mutex<Tally>,
    /// The packs. Lock order: `packs`, then `tally`.
    packs: Arc<PackShared>,
    /// Whole packs for sequential readers; its lock is never held with the others.
    reads: Arc<PackReads>,
}

/// The packs of one disk and the packs in flight, shared with the tasks that send them.
struct PackShared {
    state: Mutex<PackState>,
    /// Signalled whenever a pack lands or fails.
    landed: Condvar,
}

impl PackState {
    /// Pack `id`'s create returned: it is durable on the store.
    fn land(&mut self, id: PackId) {
        self.unsent.remove(&id);
        self.packs.landed(id, now_secs());
    }
}

#[derive(Default)]
struct PackState {
    packs: Packs,
    /// Sealed packs whose create has not returned `Ok` yet: reads are served from here.
    unsent: BTreeMap<PackId, bytes::Bytes>,
    /// Creates running in the background.
    running: usize,
    /// Packs whose create failed, with why: `sync` tries them again.
    failed: BTreeMap<PackId, String>,
    /// Fragments kept as objects of their own (a build before packs) that a pack now
    /// replaces: deleted once the pack has landed.
    doomed: BTreeSet<BlockName>,
    /// This process's owner epoch, once it claimed the pool on this disk: before a pack
    /// is deleted, the claim of the next epoch is looked for (a fenced writer deletes
    /// nothing).
    claimed: Option<u64>,
}

/// What a disk holds and what writes in flight will add. Invariant: `used` is the sum
/// of `sizes`; a write reserves its size before its request and settles after, so
/// writes racing for the last room cannot together overshoot the capacity.
#[derive(Default)]
struct Tally {
    sizes: BTreeMap<BlockName, u64>,
    used: u64,
    reserved: u64,
}

impl Tally {
    /// Reserves room for `size` bytes in place of `name`; `NoSpace` when they do not fit.
    /// `packed` is what the disk's packs hold besides.
    fn reserve(&mut self, name: BlockName, size: u64, capacity: u64, packed: u64) -> Result<(), DeviceError> {
        let replaced = self.sizes.get(&name).copied().unwrap_or(0);
        let after = (self.used - replaced).saturating_add(self.reserved).saturating_add(size).saturating_add(packed);
        if after > capacity {
            return Err(DeviceError::NoSpace);
        }
        self.reserved += size;
        Ok(())
    }

    /// Ends a reservation of `size` for `name`: the block now holds `size` bytes if the
    /// write `landed`, else as before.
    fn settle(&mut self, name: BlockName, size: u64, landed: bool) {
        assert!(self.reserved >= size, "settling more than was reserved");
        self.reserved -= size;
        if landed {
            self.remove(name);
            self.sizes.insert(name, size);
            self.used += size;
        }
    }

    fn remove(&mut self, name: BlockName) {
        if let Some(size) = self.sizes.remove(&name) {
            self.used -= size;
        }
        debug_assert_eq!(self.used, self.sizes.values().sum::<u64>());
    }
}

impl ObjectDisk {
    /// Opens the disk at `location` with `capacity_bytes` of room, reaching the store
    /// with `access`, and lists what it holds. Fails — changing nothing — when the
    /// endpoint is unreachable, the credentials are rejected or the bucket is missing,
    /// each named.
    pub fn open(location: &Location, capacity_bytes: u64, access: &Access) -> Result<ObjectDisk, DeviceError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(access.region.as_deref().unwrap_or("us-east-1"))
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(CONNECT_TIMEOUT),
            );
        if let (Some(key_id), Some(secret)) = (&access.key_id, &access.secret) {
            builder = builder.with_access_key_id(key_id).with_secret_access_key(secret);
        }
        if let Some(token) = &access.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &access.endpoint {
            // A self-hosted store: path-style addressing, and plain HTTP only when the
            // endpoint says so.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| {
            DeviceError::Unavailable(format!("{location}: the object store client could not be set up: {e}"))
        })?;
        ObjectDisk::on_store(Arc::new(store), location, capacity_bytes)
    }

    /// The disk at `location` of `store` (any `object_store` implementation: the S3
    /// client `open` builds, or an in-memory store in tests), listing what it holds and
    /// reading its packs' headers.
    pub fn on_store(
        store: Arc<dyn ObjectStore>,
        location: &Location,
        capacity_bytes: u64,
    ) -> Result<ObjectDisk, DeviceError> {
        let disk = ObjectDisk {
            store,
            location: location.clone(),
            capacity_bytes,
            tally: Mutex::new(Tally::default()),
            packs: Arc::new(PackShared { state: Mutex::new(PackState::default()), landed: Condvar::new() }),
            reads: Arc::new(PackReads::default()),
        };
        let mut tally = Tally::default();
        for kind in BlockKind::ALL {
            for (name, size) in disk.list_sized(kind)? {
                tally.sizes.insert(name, size);
                tally.used += size;
            }
        }
        let epoch = tally
            .sizes
            .keys()
            .filter_map(|n| if let BlockName::Owner { epoch } = n { Some(*epoch) } else { None })
            .max();
        *disk.lock() = tally;
        let packs = disk.open_packs(epoch.unwrap_or(0))?;
        disk.pack_state().packs = packs;
        Ok(disk)
    }

    /// The packs of this disk, replayed: each listed pack's records come from an index
    /// that covers it (`pack_index`) or else from its own header.
    fn open_packs(&self, epoch: u64) -> Result<Packs, DeviceError> {
        let store = &self.store;
        let list = |namespace: &str| {
            let prefix = self.location.key(namespace, "");
            block_on(store.list(Some(&prefix)).try_collect::<Vec<object_store::ObjectMeta>>())
                .and_then(|r| r.map_err(|e| self.error(e)))
        };
        let mut index_names = Vec::new();
        let mut from_index: HashMap<PackId, (PackId, u64, Vec<u8>)> = HashMap::new();
        let indexes: Vec<(PackId, object_store::ObjectMeta)> = list(pack_index::NAMESPACE)?
            .into_iter()
            .filter_map(|meta| Some((PackId::parse(meta.location.filename()?)?, meta)))
            .collect();
        let read = futures::stream::iter(indexes)
            .map(|(name, meta)| async move {
                let bytes = async { store.get(&meta.location).await?.bytes().await };
                (name, bytes.await)
            })
            .buffer_unordered(HEADERS_AT_ONCE)
            .collect::<Vec<_>>();
        for (name, bytes) in block_on(read)? {
            index_names.push(name);
            match bytes.map_err(|e| e.to_string()).and_then(|b| pack_index::decode(&b)) {
                Ok(covered) => {
                    for (id, size, header) in covered {
                        from_index.insert(id, (name, size, header));
                    }
                }
                Err(why) => {
                    tracing::warn!(disk = %self.location, index = %name.leaf(), %why, "a pack index cannot be read: the headers of its packs are read instead");
                }
            }
        }
        let mut listed = Vec::new();
        let mut covered = HashMap::new();
        let mut unread = Vec::new();
        for meta in list(packs::NAMESPACE)? {
            let Some(id) = meta.location.filename().and_then(PackId::parse) else { continue };
            match from_index.get(&id) {
                Some((index, size, header)) if *size == meta.size => {
                    listed.push((id, meta.size, meta.last_modified.timestamp(), packs::decode(header, meta.size)));
                    covered.insert(id, *index);
                }
                _ => unread.push((id, meta)),
            }
        }
        let read = futures::stream::iter(unread)
            .map(|(id, meta)| async move {
                let header = async {
                    let guess = HEADER_GUESS.min(meta.size);
                    let head = store.get_range(&meta.location, 0..guess).await?;
                    let Ok(len) = packs::header_len(&head) else { return Ok(head) };
                    if len as u64 <= guess || len as u64 > meta.size {
                        return Ok(head);
                    }
                    store.get_range(&meta.location, 0..len as u64).await
                };
                let entries = match header.await {
                    Ok(head) => Ok(packs::decode(&head, meta.size)),
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => Err(e),
                };
                entries.map(|entries| Some((id, meta.size, meta.last_modified.timestamp(), entries)))
            })
            .buffer_unordered(HEADERS_AT_ONCE)
            .try_collect::<Vec<_>>();
        listed.extend(block_on(read)?.map_err(|e| self.error(e))?.into_iter().flatten());
        for (id, _, _, entries) in &listed {
            if let Err(why) = entries {
                tracing::warn!(disk = %self.location, pack = %id.leaf(), %why, "a pack's header cannot be read: its fragments are missing");
            }
        }
        Ok(Packs::replay(listed, epoch, covered, index_names))
    }

    /// Writes the index of the oldest packs no index covers yet, once enough have
    /// gathered. An index only saves time at the next open: failing to write one is
    /// reported and tried again at the next sync.
    fn write_index(&self) {
        let Some(covered) = self.pack_state().packs.index_due(INDEX_PACKS) else { return };
        let Some(name) = covered.iter().map(|(id, ..)| *id).max() else { return };
        let path = self.location.key(pack_index::NAMESPACE, &name.leaf());
        let bytes = bytes::Bytes::from(pack_index::encode(&covered));
        let why = match block_on(create_object(self.store.as_ref(), &path, bytes)) {
            Ok(Ok(true)) => {
                let ids: Vec<PackId> = covered.iter().map(|(id, ..)| *id).collect();
                self.pack_state().packs.indexed(name, &ids);
                return;
            }
            Ok(Ok(false)) => "another index holds its name".to_string(),
            Ok(Err(e)) => self.error(e).to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(disk = %self.location, error = %why, "a pack index was not written");
    }

    fn pack_state(&self) -> MutexGuard<'_, PackState> {
        self.packs.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pack_path(&self, id: PackId) -> ObjectPath {
        self.location.key(packs::NAMESPACE, &id.leaf())
    }

    /// Sends pack `id` in the background: a create-only PUT; when it returns, the pack
    /// has landed (or failed, for `sync` to try again).
    fn send(&self, state: &mut PackState, id: PackId, bytes: Vec<u8>) {
        let bytes = bytes::Bytes::from(bytes);
        state.unsent.insert(id, bytes.clone());
        let Some(runtime) = runtime() else {
            state.failed.insert(id, "the object store runtime could not start".into());
            return;
        };
        state.running += 1;
        let (store, shared, path) = (self.store.clone(), self.packs.clone(), self.pack_path(id));
        runtime.spawn(async move {
            let outcome = match create_object(store.as_ref(), &path, bytes).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("pack {path} was created by another writer")),
                Err(e) => Err(e.to_string()),
            };
            let mut state = shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            state.running -= 1;
            match outcome {
                Ok(()) => state.land(id),
                Err(why) => {
                    state.failed.insert(id, why);
                }
            }
            shared.landed.notify_all();
        });
    }

    /// Waits until no pack is being sent; sends the failed ones again, here. `Err` if one
    /// still fails.
    fn settle_packs<'a>(
        &'a self,
        mut state: MutexGuard<'a, PackState>,
    ) -> Result<MutexGuard<'a, PackState>, DeviceError> {
        while state.running > 0 {
            state = self.packs.landed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        for (id, first_why) in std::mem::take(&mut state.failed) {
            let Some(bytes) = state.unsent.get(&id).cloned() else { continue };
            drop(state);
            let outcome = match block_on(create_object(self.store.as_ref(), &self.pack_path(id), bytes))? {
                Ok(true) => Ok(()),
                Ok(false) => {
                    Err(DeviceError::Io(format!("{}: pack {} was created by another writer", self.location, id.leaf())))
                }
                Err(e) => Err(self.error(e)),
            };
            state = self.pack_state();
            match outcome {
                Ok(()) => state.land(id),
                Err(e) => {
                    tracing::warn!(disk = %self.location, pack = %id.leaf(), first = %first_why, error = %e, "a pack could not be written");
                    state.failed.insert(id, first_why);
                    return Err(e);
                }
            }
        }
        Ok(state)
    }

    /// `Fenced` when a later owner has claimed the pool after this process did: asked
    /// before a tombstone is sent or a pack deleted, so a fenced writer deletes nothing.
    fn check_not_fenced<'a>(
        &'a self,
        state: MutexGuard<'a, PackState>,
    ) -> Result<MutexGuard<'a, PackState>, DeviceError> {
        let claimed = state.claimed;
        drop(state);
        if let Some(epoch) = claimed {
            let next = self.path(BlockName::Owner { epoch: epoch + 1 });
            match block_on(self.store.head(&next))? {
                Err(object_store::Error::NotFound { .. }) => {}
                Ok(_) => {
                    return Err(DeviceError::Fenced(format!(
                        "{}: another process claimed the pool (owner epoch {}) after this one (epoch {epoch}); \
                         this process deletes nothing",
                        self.location,
                        epoch + 1
                    )))
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(self.pack_state())
    }

    /// Deletes the packs nothing lives in any more (`Packs::deletable`), unless a later
    /// owner has claimed the pool.
    fn collect_packs<'a>(&'a self, state: MutexGuard<'a, PackState>) -> Result<MutexGuard<'a, PackState>, DeviceError> {
        if state.packs.deletable().is_empty() {
            return Ok(state);
        }
        let state = self.check_not_fenced(state)?;
        let dead = state.packs.deletable();
        drop(state);
        let mut gone = Vec::new();
        let mut failure = None;
        for id in dead {
            match block_on(self.store.delete(&self.pack_path(id)))? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => gone.push(id),
                Err(e) => {
                    failure = Some(self.error(e));
                    break;
                }
            }
        }
        for id in &gone {
            self.reads.forget(*id);
        }
        let mut state = self.pack_state();
        for id in gone {
            state.packs.forget(id);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(state),
        }
    }

    fn create_unreserved(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        let bytes = bytes::Bytes::copy_from_slice(data);
        match block_on(create_object(self.store.as_ref(), &self.path(name), bytes))? {
            Ok(true) => Ok(Created::Written),
            Ok(false) => Ok(Created::Taken),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Checks that the store refuses a second create-only write of one key — some accept
    /// the header and overwrite anyway, and on such a store two writers could not be
    /// told apart. Writes and removes one probe object under this disk's prefix.
    pub fn check_create_only(&self) -> Result<(), DeviceError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = self.location.key("probe", &format!("create-only-{}-{nanos}", std::process::id()));
        let create = |bytes: &'static [u8]| self.put(&path, PutPayload::from_static(bytes), PutMode::Create);
        let outcome = (|| {
            create(b"first")?.map_err(|e| self.error(e))?;
            let second = create(b"second")?;
            let kept = self.get(&path)?.map_err(|e| self.error(e))?;
            Ok::<_, DeviceError>((second, kept))
        })();
        let _ = block_on(self.store.delete(&path));
        let (second, kept) = outcome?;
        match second {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
                if kept.as_ref() == b"first" =>
            {
                Ok(())
            }
            Err(e) => Err(self.error(e)),
            Ok(_) => Err(DeviceError::Unavailable(format!(
                "{}: the store accepted a second create-only write of one key (If-None-Match: *) and {}: it \
                 cannot keep two machines from writing one pool, so it cannot hold a disk",
                self.location,
                if kept.as_ref() == b"first" { "reported success" } else { "overwrote the object" }
            ))),
        }
    }

    /// Where this disk keeps its blocks.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One GET of `path`: the store's answer, or why the request could not be made.
    fn get(&self, path: &ObjectPath) -> Result<Result<bytes::Bytes, object_store::Error>, DeviceError> {
        block_on(async { self.store.get(path).await?.bytes().await })
    }

    /// One PUT of `payload` at `path` in `mode`: the store's answer, or why the request
    /// could not be made.
    fn put(
        &self,
        path: &ObjectPath,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<Result<(), object_store::Error>, DeviceError> {
        let options = PutOptions { mode, ..PutOptions::default() };
        Ok(block_on(self.store.put_opts(path, payload, options))?.map(|_| ()))
    }

    fn path(&self, name: BlockName) -> ObjectPath {
        self.location.key(name.kind().namespace(), &name.leaf())
    }

    /// Every block of `kind` with its size, in ascending name order.
    fn list_sized(&self, kind: BlockKind) -> Result<Vec<(BlockName, u64)>, DeviceError> {
        let prefix = self.location.key(kind.namespace(), "");
        let objects: Vec<object_store::ObjectMeta> =
            block_on(self.store.list(Some(&prefix)).try_collect()).and_then(|r| r.map_err(|e| self.error(e)))?;
        let mut found: Vec<(BlockName, u64)> = objects
            .iter()
            .filter_map(|meta| {
                let leaf = meta.location.filename()?;
                // Only this namespace's own objects, not ones a level further down.
                let direct = meta.location.prefix_match(&prefix)?.count() == 1;
                let name = BlockName::parse(kind, leaf).filter(|_| direct)?;
                Some((name, meta.size))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// What an object store error means for this disk.
    fn error(&self, error: object_store::Error) -> DeviceError {
        let location = &self.location;
        match error {
            object_store::Error::NotFound { .. } => DeviceError::NotFound,
            object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => {
                DeviceError::Unavailable(format!(
                    "{location}: the object store rejected the credentials (check AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY): {}",
                    brief(&error.to_string())
                ))
            }
            other => classify(location, &other.to_string()),
        }
    }
}

/// Sorts a failure the client reports only as text: an endpoint that cannot be reached
/// and a bucket that does not exist make the disk unavailable; anything else is an I/O
/// error of this one call.
fn classify(location: &Location, text: &str) -> DeviceError {
    let text = &brief(text);
    let lower = text.to_ascii_lowercase();
    if lower.contains("nosuchbucket") || lower.contains("bucket does not exist") {
        return DeviceError::Unavailable(format!("{location}: bucket '{}' does not exist", location.bucket));
    }
    let unreachable = ["connection refused", "error sending request", "dns error", "timed out", "connect"];
    if unreachable.iter().any(|needle| lower.contains(needle)) {
        return DeviceError::Unavailable(format!("{location}: the object store endpoint cannot be reached: {text}"));
    }
    if lower.contains("invalidaccesskeyid") || lower.contains("signaturedoesnotmatch") || lower.contains("accessdenied")
    {
        return DeviceError::Unavailable(format!(
            "{location}: the object store rejected the credentials (check AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY): {text}"
        ));
    }
    DeviceError::Io(format!("{location}: {text}"))
}

/// `text` without the XML body a store's error answer carries, keeping its `<Code>`:
/// messages stay one readable line.
fn brief(text: &str) -> String {
    let Some(start) = text.find("<?xml").or_else(|| text.find("<Error>")) else { return text.to_string() };
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim().to_string());
    let head = text[..start].trim_end().trim_end_matches(':');
    match code {
        Some(code) => format!("{head}: {code}"),
        None => head.to_string(),
    }
}

/// One create-only PUT of `bytes` at `path`: `Ok(true)` when the key now holds them —
/// written, or found there already (a retried PUT whose first answer was lost is this
/// write, not someone else's) — and `Ok(false)` when it holds other bytes or was
/// deleted meanwhile.
async fn create_object(store: &dyn ObjectStore, path: &ObjectPath, bytes: bytes::Bytes) -> object_store::Result<bool> {
    let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match store.put_opts(path, PutPayload::from(bytes.clone()), options).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
            match store.get(path).await {
                Ok(held) => Ok(held.bytes().await? == bytes),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The wall clock's seconds: a landed pack's time, as the store would list it.
fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The runtime every object disk's requests run on; `None` when it could not start.
fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("dfs-object-io")
                .enable_all()
                .build()
                .map_err(|e| tracing::error!(error = %e, "the object store runtime could not start"))
                .ok()
        })
        .as_ref()
}

/// Runs `future` to completion on the shared runtime, blocking this thread.
fn block_on<F: Future>(future: F) -> Result<F::Output, DeviceError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Blocking inside the runtime would stall the threads that serve the requests.
        return Err(DeviceError::Io("an object disk was called from inside its own runtime".into()));
    }
    let runtime =
        runtime().ok_or_else(|| DeviceError::Unavailable("the object store runtime could not start".into()))?;
    Ok(runtime.block_on(future))
}

impl ObjectDisk {
    /// A fragment's bytes to `visit`: from the open pack or a pack in flight, by a ranged
    /// GET of its pack, or (a build before packs) from its own object.
    fn read_fragment(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        // A compaction may move the fragment between the look and the GET: its old pack
        // is then gone, and the look is taken again.
        for _ in 0..3 {
            let state = self.pack_state();
            let Some(Loc::Packed { pack, offset, len }) = state.packs.locate(name) else {
                if let Some(data) = state.packs.open_data(name) {
                    visit(data);
                    return Ok(());
                }
                drop(state);
                let bytes = self.get(&self.path(name))?.map_err(|e| self.error(e))?;
                visit(&bytes);
                return Ok(());
            };
            let range = offset as usize..(offset as usize + len as usize);
            if let Some(bytes) = state.unsent.get(&pack) {
                visit(&bytes[range]);
                return Ok(());
            }
            drop(state);
            let path = self.pack_path(pack);
            let fetched = match self.reads.plan(pack) {
                Plan::Cached(whole) if whole.len() >= range.end => {
                    visit(&whole[range]);
                    return Ok(());
                }
                Plan::Cached(_) | Plan::Range => {
                    block_on(self.store.get_range(&path, range.start as u64..range.end as u64))?
                }
                Plan::Fetch => {
                    self.fetch_ahead(pack);
                    let whole = block_on(async { self.store.get(&path).await?.bytes().await })?;
                    self.reads.fill(pack, whole.as_ref().ok().filter(|w| w.len() >= range.end).cloned());
                    whole.map(|w| w.slice(range.start.min(w.len())..range.end.min(w.len())))
                }
            };
            match fetched {
                Ok(bytes) if bytes.len() == len as usize => {
                    visit(&bytes);
                    return Ok(());
                }
                Ok(bytes) => {
                    return Err(DeviceError::Io(format!(
                        "{}: pack {} holds {} of the {len} bytes of {name}",
                        self.location,
                        pack.leaf(),
                        bytes.len()
                    )))
                }
                Err(object_store::Error::NotFound { .. })
                    if self.pack_state().packs.locate(name) != Some(Loc::Packed { pack, offset, len }) =>
                {
                    continue
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        Err(DeviceError::Io(format!("{}: {name} moved three times while being read", self.location)))
    }

    /// Starts fetching the pack after `pack` in the background, for a reader that reads
    /// on, if this disk holds it (landed) and it is not fetched yet.
    fn fetch_ahead(&self, pack: PackId) {
        let next = PackId { epoch: pack.epoch, seq: pack.seq + 1 };
        if !self.pack_state().packs.landed_pack(next) || !self.reads.fetch_ahead(next) {
            return;
        }
        let Some(runtime) = runtime() else {
            self.reads.fill(next, None);
            return;
        };
        let (store, reads, path) = (self.store.clone(), self.reads.clone(), self.pack_path(next));
        runtime.spawn(async move {
            let whole = match store.get(&path).await {
                Ok(got) => got.bytes().await.ok(),
                Err(_) => None,
            };
            reads.fill(next, whole);
        });
    }

    /// Gathers a fragment into the open pack, sending the pack once it is full; waits
    /// while `PACKS_IN_FLIGHT` packs are being sent.
    ///
    /// With `only_at`, writes only while the fragment is still there (a compaction's
    /// move, which a write or delete meanwhile must win); `Ok(false)` when it was not.
    fn write_fragment(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        self.write_fragment_at(name, data, None).map(|_| ())
    }

    fn write_fragment_at(&self, name: BlockName, data: &[u8], only_at: Option<Loc>) -> Result<bool, DeviceError> {
        let mut state = self.pack_state();
        while state.running >= PACKS_IN_FLIGHT {
            state = self.packs.landed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if !state.failed.is_empty() {
            // A pack that failed is sent again first (the store may be back): nothing
            // is gathered behind a pack that cannot land.
            state = self.settle_packs(state)?;
        }
        if only_at.is_some() && state.packs.locate(name) != only_at {
            return Ok(false);
        }
        let replaced = state.packs.open_data(name).map_or(0, |d| d.len() as u64);
        let (others, own_object) = {
            let tally = self.lock();
            (tally.used + tally.reserved, tally.sizes.contains_key(&name))
        };
        if others + state.packs.used() - replaced + data.len() as u64 > self.capacity_bytes {
            return Err(DeviceError::NoSpace);
        }
        state.packs.put(name, data);
        if own_object {
            state.doomed.insert(name);
        }
        if state.packs.open_bytes() >= PACK_BYTES {
            if let Some((id, bytes)) = state.packs.seal(false) {
                self.send(&mut state, id, bytes);
            }
        }
        Ok(true)
    }

    fn delete_fragment(&self, name: BlockName) -> Result<(), DeviceError> {
        let mut state = self.pack_state();
        state.packs.delete(name);
        state.doomed.remove(&name);
        let own_object = self.lock().sizes.contains_key(&name);
        drop(state);
        if own_object {
            self.delete_object(name)?;
        }
        Ok(())
    }

    fn delete_object(&self, name: BlockName) -> Result<(), DeviceError> {
        match block_on(self.store.delete(&self.path(name)))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.lock().remove(name);
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// Fragments kept as objects of their own.
    fn own_objects(&self) -> Vec<BlockName> {
        self.lock().sizes.keys().filter(|n| n.kind() == BlockKind::Fragment).copied().collect()
    }
}

impl BlockDevice for ObjectDisk {
    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        let mut out = Vec::new();
        self.read_with(name, &mut |bytes| out = bytes.to_vec())?;
        Ok(out)
    }

    fn read_with(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        if name.kind() == BlockKind::Fragment {
            return self.read_fragment(name, visit);
        }
        let bytes = self.get(&self.path(name))?.map_err(|e| self.error(e))?;
        visit(&bytes);
        Ok(())
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        if name.kind() == BlockKind::Fragment {
            return self.write_fragment(name, data);
        }
        let size = data.len() as u64;
        let packed = self.pack_state().packs.used();
        self.lock().reserve(name, size, self.capacity_bytes, packed)?;
        let path = self.path(name);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        let outcome = self.put(&path, payload, PutMode::Overwrite).and_then(|put| put.map_err(|e| self.error(e)));
        // A failed PUT may still have landed (its answer lost): the block is then
        // counted again by the next listing, at the next open.
        self.lock().settle(name, size, outcome.is_ok());
        outcome
    }

    /// One create-only PUT (`If-None-Match: *`), which the store refuses atomically when
    /// the key is taken, by this process or any other. `Written` also when the key holds
    /// exactly `data`: a retried PUT whose first attempt landed (its answer lost).
    ///
    /// A fragment is packed: `Taken` when this disk holds other bytes under its name.
    /// Two owners' packs never clash (each is named under its owner's epoch), and of two
    /// owners' fragments of one name the later owner's is the one every later reader sees.
    fn create(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        if name.kind() == BlockKind::Fragment {
            let held = self.pack_state().packs.locate(name).is_some() || self.lock().sizes.contains_key(&name);
            if held {
                return Ok(if self.read(name)? == data { Created::Written } else { Created::Taken });
            }
            self.write_fragment(name, data)?;
            return Ok(Created::Written);
        }
        let size = data.len() as u64;
        let packed = self.pack_state().packs.used();
        self.lock().reserve(name, size, self.capacity_bytes, packed)?;
        let outcome = self.create_unreserved(name, data);
        self.lock().settle(name, size, outcome == Ok(Created::Written));
        if let (BlockName::Owner { epoch }, Ok(Created::Written)) = (name, &outcome) {
            let mut state = self.pack_state();
            state.packs.set_epoch(epoch);
            state.claimed = Some(epoch);
        }
        outcome
    }

    fn shared(&self) -> bool {
        true
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        if name.kind() == BlockKind::Fragment {
            return self.delete_fragment(name);
        }
        self.delete_object(name)
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        let mut names: Vec<BlockName> = self.list_sized(kind)?.into_iter().map(|(name, _)| name).collect();
        if kind == BlockKind::Fragment {
            names.extend(self.pack_state().packs.names());
            names.sort();
            names.dedup();
        }
        Ok(names)
    }

    /// Sends the open pack, waits for every pack in flight, then deletes the packs
    /// nothing lives in any more and the fragments' own objects that packs replaced.
    fn sync(&self) -> Result<(), DeviceError> {
        let mut state = self.settle_packs(self.pack_state())?;
        if state.packs.open_tombs() {
            state = self.check_not_fenced(state)?;
        }
        if let Some((id, bytes)) = state.packs.seal(true) {
            self.send(&mut state, id, bytes);
        }
        let mut state = self.settle_packs(state)?;
        let doomed: Vec<BlockName> = std::mem::take(&mut state.doomed).into_iter().collect();
        let state = self.collect_packs(state)?;
        drop(state);
        self.write_index();
        for index in self.pack_state().packs.take_dead_indexes() {
            let path = self.location.key(pack_index::NAMESPACE, &index.leaf());
            if let Err(e) = block_on(self.store.delete(&path))?.map_err(|e| self.error(e)) {
                tracing::warn!(disk = %self.location, index = %index.leaf(), error = %e, "a pack index whose packs are gone was not deleted");
            }
        }
        for name in doomed {
            self.delete_object(name)?;
        }
        Ok(())
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn used_bytes(&self) -> u64 {
        let packed = self.pack_state().packs.used();
        self.lock().used + packed
    }

    fn describe(&self) -> String {
        self.location.to_string()
    }

    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        if name.kind() == BlockKind::Fragment {
            let state = self.pack_state();
            match state.packs.locate(name) {
                Some(Loc::Open) => return Ok(Some(now_secs())),
                Some(Loc::Packed { pack, .. }) => {
                    return Ok(Some(state.packs.modified(pack).filter(|&t| t > 0).unwrap_or_else(now_secs)))
                }
                None => {}
            }
        }
        let path = self.path(name);
        let meta = block_on(self.store.head(&path))?.map_err(|e| self.error(e))?;
        Ok(Some(meta.last_modified.timestamp()))
    }

    fn legacy_blocks(&self) -> u64 {
        self.own_objects().len() as u64
    }

    /// Moves fragments kept as objects of their own into packs: each is read, gathered
    /// into a pack, and its object deleted once the pack has landed (`sync`), so a crash
    /// leaves two good copies at worst, and the pack's is the one read.
    fn upgrade_layout(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, DeviceError> {
        let names = self.own_objects();
        let total = names.len() as u64;
        for (done, name) in names.into_iter().enumerate() {
            let bytes = self.get(&self.path(name))?.map_err(|e| self.error(e))?;
            self.write_fragment(name, &bytes)?;
            if done % 64 == 63 {
                self.sync()?;
            }
            progress(done as u64 + 1, total);
        }
        self.sync()?;
        Ok(total)
    }

    fn wants_compaction(&self) -> bool {
        let state = self.pack_state();
        let dead = state.packs.dead_bytes();
        dead >= 4 * PACK_BYTES && dead * 4 >= state.packs.used()
    }

    /// Copies the live fragments of packs at least half dead into new packs, then
    /// deletes the old ones (`sync`).
    fn compact(&self, budget_bytes: u64) -> Result<u64, DeviceError> {
        let moves = self.pack_state().packs.compaction(budget_bytes);
        let mut moved = 0u64;
        for (name, pack, offset, len) in moves {
            let range = offset as u64..offset as u64 + len as u64;
            let bytes = match block_on(self.store.get_range(&self.pack_path(pack), range))? {
                Ok(bytes) => bytes,
                Err(e) => return Err(self.error(e)),
            };
            if self.write_fragment_at(name, &bytes, Some(Loc::Packed { pack, offset, len }))? {
                moved += len as u64;
            }
        }
        if moved > 0 {
            self.sync()?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_engine::media::device::ExtentId;
    use object_store::memory::InMemory;

    fn frag(extent: u64, index: u8) -> BlockName {
        BlockName::Fragment { extent: ExtentId(extent), index }
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
    }

    /// A disk on an in-memory store, and a way to open it again (a new process).
    fn memory_disk(capacity: u64) -> (Arc<dyn ObjectStore>, Location, ObjectDisk) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let location: Location = "s3://bucket/disk".parse().unwrap_or_else(|e| panic!("{e}"));
        let disk = ObjectDisk::on_store(store.clone(), &location, capacity).unwrap();
        (store, location, disk)
    }

    fn objects(store: &Arc<dyn ObjectStore>, namespace: &str) -> usize {
        let prefix = ObjectPath::from(format!("disk/{namespace}"));
        block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>()).unwrap().unwrap().len()
    }

    #[test]
    fn fragments_are_packed_durable_at_sync_and_read_back_after_a_reopen() {
        let (store, location, disk) = memory_disk(1 << 30);
        for extent in 0..10u64 {
            disk.write(frag(extent, 0), &data(extent as u8, 256 << 10)).unwrap();
        }
        assert_eq!(disk.read(frag(3, 0)).unwrap(), data(3, 256 << 10), "read while in flight or open");
        disk.sync().unwrap();
        assert_eq!(objects(&store, "pack"), 3, "ten fragments of 256 KiB in packs of about 1 MiB");
        assert_eq!(objects(&store, "fragment"), 0, "no fragment is an object of its own");
        disk.write(frag(3, 0), &data(33, 1000)).unwrap();
        disk.delete(frag(4, 0)).unwrap();
        // Not synced: a crash may lose both changes.
        let crashed = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(crashed.read(frag(3, 0)).unwrap(), data(3, 256 << 10));
        assert_eq!(crashed.read(frag(4, 0)).unwrap(), data(4, 256 << 10));
        drop(crashed);
        disk.sync().unwrap();
        let again = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(again.read(frag(3, 0)).unwrap(), data(33, 1000), "a synced replacement");
        assert_eq!(again.read(frag(4, 0)), Err(DeviceError::NotFound), "a synced delete");
        let mut mine = None;
        again.read_with(frag(9, 0), &mut |bytes| mine = Some(bytes.to_vec())).unwrap();
        assert_eq!(mine, Some(data(9, 256 << 10)));
        let names: Vec<BlockName> = (0..10).filter(|&e| e != 4).map(|e| frag(e, 0)).collect();
        assert_eq!(again.list(BlockKind::Fragment).unwrap(), names);
        assert_eq!(again.used_bytes(), disk.used_bytes(), "both count the same packs");
        // Everything deleted: every pack goes, tombstones included.
        for name in names {
            again.delete(name).unwrap();
        }
        again.sync().unwrap();
        assert_eq!(objects(&store, "pack"), 0);
        assert_eq!(again.used_bytes(), 0);
    }

    #[test]
    fn an_open_reads_the_headers_of_indexed_packs_from_their_index() {
        let (store, location, disk) = memory_disk(1 << 30);
        let packs = pack_index::INDEX_PACKS as u64 + 10;
        for extent in 0..packs {
            disk.write(frag(extent, 0), &data(extent as u8, 100)).unwrap();
            disk.sync().unwrap();
        }
        assert_eq!(objects(&store, "pack"), packs as usize);
        assert_eq!(objects(&store, "pack-index"), 1, "one index of the first {} packs", pack_index::INDEX_PACKS);
        // Rot in the header of an indexed pack: the index's copy is read instead.
        let first = ObjectPath::from(format!("disk/pack/{}", PackId { epoch: 0, seq: 0 }.leaf()));
        let mut bytes = block_on(async { store.get(&first).await?.bytes().await }).unwrap().unwrap().to_vec();
        bytes[0] ^= 0xff;
        block_on(store.put(&first, PutPayload::from(bytes))).unwrap().unwrap();
        let again = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(again.read(frag(0, 0)).unwrap(), data(0, 100), "read through the index's header");
        assert_eq!(again.list(BlockKind::Fragment).unwrap().len(), packs as usize);
        // A rotten index is passed over: each pack's own header is read.
        let index = ObjectPath::from(format!(
            "disk/pack-index/{}",
            PackId { epoch: 0, seq: pack_index::INDEX_PACKS as u64 - 1 }.leaf()
        ));
        block_on(store.put(&index, PutPayload::from_static(b"rotten index bytes, nothing more"))).unwrap().unwrap();
        let third = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(third.read(frag(0, 0)), Err(DeviceError::NotFound), "the rotten header alone");
        assert_eq!(third.read(frag(1, 0)).unwrap(), data(1, 100));
        // Once its packs are gone, the index goes too.
        for extent in 0..packs {
            third.delete(frag(extent, 0)).unwrap();
        }
        third.sync().unwrap();
        assert_eq!(objects(&store, "pack-index"), 0);
        assert_eq!(objects(&store, "pack"), 1, "the pack whose header rotted holds what no one can read");
    }

    /// An in-memory store whose PUTs fail while `down` is set, as a store that is away.
    #[derive(Debug)]
    struct Flaky {
        inner: InMemory,
        down: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Flaky {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(object_store::Error::Generic { store: "flaky", source: "error sending request".into() });
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    #[test]
    fn a_pack_that_could_not_land_is_sent_again_before_anything_else_is_gathered() {
        let flaky = Arc::new(Flaky { inner: InMemory::new(), down: false.into() });
        let store: Arc<dyn ObjectStore> = flaky.clone();
        let location: Location = "s3://bucket/disk".parse().unwrap_or_else(|e| panic!("{e}"));
        let disk = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        disk.write(frag(1, 0), &data(1, 5000)).unwrap();
        assert!(disk.sync().is_err(), "the store is away: the fragment is not durable");
        assert_eq!(disk.read(frag(1, 0)).unwrap(), data(1, 5000), "still served from memory");
        assert!(disk.write(frag(2, 0), &data(2, 5000)).is_err(), "nothing is gathered behind a failed pack");
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        disk.write(frag(2, 0), &data(2, 5000)).unwrap();
        disk.sync().unwrap();
        let again = ObjectDisk::on_store(store, &location, 1 << 30).unwrap();
        assert_eq!(again.read(frag(1, 0)).unwrap(), data(1, 5000), "the failed pack landed once the store was back");
        assert_eq!(again.read(frag(2, 0)).unwrap(), data(2, 5000));
    }

    #[test]
    fn a_write_past_the_capacity_is_refused_and_keeps_nothing() {
        let (_, _, disk) = memory_disk(10_000);
        disk.write(frag(1, 0), &data(1, 6_000)).unwrap();
        assert_eq!(disk.write(frag(2, 0), &data(2, 6_000)), Err(DeviceError::NoSpace));
        assert_eq!(disk.read(frag(2, 0)), Err(DeviceError::NotFound));
        disk.write(frag(1, 0), &data(3, 9_000)).unwrap();
        assert_eq!(disk.used_bytes(), 9_000, "an unsent replacement counts once");
        assert_eq!(disk.write(BlockName::Journal { seq: 1 }, &data(4, 2_000)), Err(DeviceError::NoSpace));
    }

    #[test]
    fn fragments_of_a_build_before_packs_are_read_then_moved_into_packs() {
        let (store, location, _) = memory_disk(1 << 30);
        let old = ObjectPath::from(format!("disk/fragment/{}", frag(7, 2).leaf()));
        block_on(store.put(&old, PutPayload::from(data(7, 5000)))).unwrap().unwrap();
        let disk = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(disk.legacy_blocks(), 1);
        assert_eq!(disk.list(BlockKind::Fragment).unwrap(), vec![frag(7, 2)]);
        assert_eq!(disk.read(frag(7, 2)).unwrap(), data(7, 5000));
        assert_eq!(disk.create(frag(7, 2), &data(8, 5000)).unwrap(), Created::Taken, "it holds other bytes");
        let mut seen = Vec::new();
        assert_eq!(disk.upgrade_layout(&mut |done, total| seen.push((done, total))).unwrap(), 1);
        assert_eq!(seen, vec![(1, 1)]);
        assert_eq!((objects(&store, "fragment"), objects(&store, "pack")), (0, 1));
        let again = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(again.legacy_blocks(), 0);
        assert_eq!(again.read(frag(7, 2)).unwrap(), data(7, 5000));
    }

    #[test]
    fn compaction_gives_back_the_room_of_mostly_dead_packs() {
        let (store, location, disk) = memory_disk(1 << 30);
        for extent in 0..32u64 {
            disk.write(frag(extent, 1), &data(extent as u8, 256 << 10)).unwrap();
        }
        disk.sync().unwrap();
        assert_eq!(objects(&store, "pack"), 8);
        for extent in (0..32u64).filter(|e| e % 4 != 0) {
            disk.delete(frag(extent, 1)).unwrap();
        }
        disk.sync().unwrap();
        assert!(disk.wants_compaction(), "three quarters of every pack are dead");
        let before = disk.used_bytes();
        let mut moved = 0;
        loop {
            let step = disk.compact(1 << 20).unwrap();
            if step == 0 {
                break;
            }
            moved += step;
        }
        assert!(!disk.wants_compaction());
        assert_eq!(moved, 8 * (256 << 10), "the eight live fragments, once each");
        assert!(disk.used_bytes() < before / 3, "{} of {before}", disk.used_bytes());
        let again = ObjectDisk::on_store(store, &location, 1 << 30).unwrap();
        for extent in 0..32u64 {
            let expected = if extent % 4 == 0 { Ok(data(extent as u8, 256 << 10)) } else { Err(DeviceError::NotFound) };
            assert_eq!(again.read(frag(extent, 1)), expected, "extent {extent}");
        }
    }

    #[test]
    fn a_later_owners_fragments_win_and_a_fenced_owner_deletes_nothing() {
        let (store, location, first) = memory_disk(1 << 30);
        assert_eq!(first.create(BlockName::Owner { epoch: 1 }, b"first").unwrap(), Created::Written);
        first.write(frag(5, 0), &data(1, 4000)).unwrap();
        first.sync().unwrap();
        let second = ObjectDisk::on_store(store.clone(), &location, 1 << 30).unwrap();
        assert_eq!(second.create(BlockName::Owner { epoch: 2 }, b"second").unwrap(), Created::Written);
        second.write(frag(6, 0), &data(2, 4000)).unwrap();
        second.sync().unwrap();
        // The first writer, paused meanwhile, writes a fragment the second also writes.
        first.write(frag(6, 0), &data(3, 4000)).unwrap();
        first.sync().unwrap();
        first.delete(frag(5, 0)).unwrap();
        assert!(matches!(first.sync(), Err(DeviceError::Fenced(_))), "its dead pack would be deleted");
        let third = ObjectDisk::on_store(store, &location, 1 << 30).unwrap();
        assert_eq!(third.read(frag(6, 0)).unwrap(), data(2, 4000), "the later owner's bytes");
        assert_eq!(third.read(frag(5, 0)).unwrap(), data(1, 4000), "nothing deleted by the fenced writer's sync");
    }

    #[test]
    fn reservations_keep_racing_writes_within_the_capacity() {
        let (a, b) = (BlockName::Journal { seq: 1 }, BlockName::Journal { seq: 2 });
        let mut tally = Tally::default();
        tally.reserve(a, 600, 1000, 0).unwrap();
        assert_eq!(tally.reserve(b, 600, 1000, 0), Err(DeviceError::NoSpace), "the first write's room is taken");
        tally.settle(a, 600, true);
        assert_eq!(tally.used, 600);
        // A block written again counts its new size in place of its old one.
        tally.reserve(a, 900, 2000, 0).unwrap();
        tally.settle(a, 900, true);
        assert_eq!(tally.used, 900);
        tally.reserve(b, 50, 1000, 0).unwrap();
        assert_eq!(tally.reserve(b, 50, 1000, 100), Err(DeviceError::NoSpace), "packs hold room too");
        tally.settle(b, 50, false);
        assert_eq!((tally.used, tally.reserved), (900, 0), "a failed write adds nothing");
        tally.remove(a);
        assert_eq!(tally.used, 0);
    }

    #[test]
    fn access_debug_never_shows_the_secrets() {
        let access = Access {
            endpoint: Some("http://127.0.0.1:8333".into()),
            key_id: Some("AKIDSECRETID".into()),
            secret: Some("very-secret-key".into()),
            ..Access::default()
        };
        let shown = format!("{access:?}");
        assert!(shown.contains("127.0.0.1:8333"), "{shown}");
        assert!(!shown.contains("AKIDSECRETID") && !shown.contains("very-secret-key"), "{shown}");
    }

    #[test]
    fn failures_are_sorted_by_what_they_mean_for_the_disk() {
        let location: Location = "s3://pool-bucket/disk1".parse().unwrap_or_else(|e| panic!("{e}"));
        let missing = classify(&location, "Received <Code>NoSuchBucket</Code>");
        assert!(matches!(&missing, DeviceError::Unavailable(m) if m.contains("bucket 'pool-bucket' does not exist")));
        let refused = classify(&location, "error sending request: Connection refused (os error 111)");
        assert!(matches!(&refused, DeviceError::Unavailable(m) if m.contains("cannot be reached")));
        let denied = classify(&location, "<Code>InvalidAccessKeyId</Code>");
        assert!(matches!(&denied, DeviceError::Unavailable(m) if m.contains("rejected the credentials")));
        let other = classify(&location, "InternalError");
        assert!(matches!(&other, DeviceError::Io(m) if m.starts_with("s3://pool-bucket/disk1")));
    }

    #[test]
    fn a_profile_of_the_credentials_file_gives_its_own_keys() {
        let text = "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s-default\n\n\
                    # a comment\n[archive]\naws_access_key_id=AKARCHIVE\n aws_secret_access_key = s-archive \n\
                    aws_session_token = tok\n[other]\naws_access_key_id = AKOTHER\n";
        let archive = profile_keys(text, "archive");
        assert_eq!(archive.get("aws_access_key_id").map(String::as_str), Some("AKARCHIVE"));
        assert_eq!(archive.get("aws_secret_access_key").map(String::as_str), Some("s-archive"));
        assert_eq!(archive.get("aws_session_token").map(String::as_str), Some("tok"));
        assert_eq!(profile_keys(text, "default").get("aws_access_key_id").map(String::as_str), Some("AKDEFAULT"));
        assert!(profile_keys(text, "missing").is_empty());
    }

    #[test]
    fn a_stores_xml_answer_is_cut_to_its_code() {
        let answer = "Error performing GET http://h/b in 1ms - Server returned non-2xx status code: 403 Forbidden: \
                      <?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request \
                      signature we calculated does not match</Message></Error>";
        assert_eq!(
            brief(answer),
            "Error performing GET http://h/b in 1ms - Server returned non-2xx status code: 403 Forbidden: \
             SignatureDoesNotMatch"
        );
        assert_eq!(brief("plain text"), "plain text");
    }
}
