//! A disk on an S3-compatible object store: `ObjectDisk`, a `BlockDevice` that keeps
//! each block as one object under a prefix of a bucket (`s3://bucket/prefix`), so a
//! pool's disks can live on a store that outlives the machine.
//!
//! Contract (the trait's, met more strictly):
//! - a block is one object, `{prefix}/{namespace}/{leaf}` (the same namespaces and
//!   leaves as a directory disk's files), written whole by one PUT: a write is visible
//!   and durable once it returns (S3's read-after-write consistency), never torn, so
//!   `sync` has nothing left to do;
//! - a read returns the object's bytes; the engine verifies them as from any disk;
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
//! runtime shared by every object disk of the process.

mod location;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dfs_engine::media::device::{
    BlockDevice, BlockKind, BlockName, Created, DeviceError, ObjectDiskOpen, ObjectStores,
};
use dfs_engine::media::label::DiskLabel;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};

pub use location::{Location, LocationError};

/// How long one request may take before the disk counts as away for it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take: an endpoint that does not answer is away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Retries of a request that failed in a way worth retrying (a dropped connection, a
/// 5xx), and the time they may take together: enough to ride out a store's restart of
/// one node, short enough that a dead endpoint is reported within seconds.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

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
    store: AmazonS3,
    location: Location,
    capacity_bytes: u64,
    /// Every block's size, from a listing at open and kept by each write and delete:
    /// `used_bytes` and the capacity check, without a request.
    tally: Mutex<Tally>,
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
    fn reserve(&mut self, name: BlockName, size: u64, capacity: u64) -> Result<(), DeviceError> {
        let replaced = self.sizes.get(&name).copied().unwrap_or(0);
        let after = (self.used - replaced).saturating_add(self.reserved).saturating_add(size);
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
        let disk =
            ObjectDisk { store, location: location.clone(), capacity_bytes, tally: Mutex::new(Tally::default()) };
        let mut tally = Tally::default();
        for kind in BlockKind::ALL {
            for (name, size) in disk.list_sized(kind)? {
                tally.sizes.insert(name, size);
                tally.used += size;
            }
        }
        *disk.lock() = tally;
        Ok(disk)
    }

    fn create_unreserved(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        let path = self.path(name);
        match self.put(&path, PutPayload::from(bytes::Bytes::copy_from_slice(data)), PutMode::Create)? {
            Ok(()) => Ok(Created::Written),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                // A retry of a PUT whose first attempt landed (its answer lost) finds
                // its own bytes there: that is this write, not someone else's.
                match self.get(&path)? {
                    Ok(held) if held.as_ref() == data => Ok(Created::Written),
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(Created::Taken),
                    Err(e) => Err(self.error(e)),
                }
            }
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

impl BlockDevice for ObjectDisk {
    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        let path = self.path(name);
        let bytes = self.get(&path)?.map_err(|e| self.error(e))?;
        Ok(bytes.to_vec())
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        let size = data.len() as u64;
        self.lock().reserve(name, size, self.capacity_bytes)?;
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
    fn create(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        let size = data.len() as u64;
        self.lock().reserve(name, size, self.capacity_bytes)?;
        let outcome = self.create_unreserved(name, data);
        self.lock().settle(name, size, outcome == Ok(Created::Written));
        outcome
    }

    fn shared(&self) -> bool {
        true
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        let path = self.path(name);
        match block_on(self.store.delete(&path))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.lock().remove(name);
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        Ok(self.list_sized(kind)?.into_iter().map(|(name, _)| name).collect())
    }

    fn sync(&self) -> Result<(), DeviceError> {
        // Every write and delete was durable when it returned.
        Ok(())
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    fn describe(&self) -> String {
        self.location.to_string()
    }

    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        let path = self.path(name);
        let meta = block_on(self.store.head(&path))?.map_err(|e| self.error(e))?;
        Ok(Some(meta.last_modified.timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_keep_racing_writes_within_the_capacity() {
        let (a, b) = (BlockName::Journal { seq: 1 }, BlockName::Journal { seq: 2 });
        let mut tally = Tally::default();
        tally.reserve(a, 600, 1000).unwrap();
        assert_eq!(tally.reserve(b, 600, 1000), Err(DeviceError::NoSpace), "the first write's room is taken");
        tally.settle(a, 600, true);
        assert_eq!(tally.used, 600);
        // A block written again counts its new size in place of its old one.
        tally.reserve(a, 900, 2000).unwrap();
        tally.settle(a, 900, true);
        assert_eq!(tally.used, 900);
        tally.reserve(b, 50, 1000).unwrap();
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
