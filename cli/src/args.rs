//! The `dfs` command line: every subcommand, its arguments and their parsers (clap).
//!
//! Contract: parsing only — a value that parses is one the command can be handed (sizes,
//! policies, capacities checked here, with a usage error otherwise); nothing here runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use dfs_engine::temperature::config::Classifier;
use dfs_engine::Policy;

/// DynamicFS: a filesystem over a pool of directory disks of any size, with a redundancy
/// policy (replicate:N or erasure:K+M) per extent.
#[derive(Parser, Debug)]
#[command(name = "dfs", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 bad usage.\nStart with: dfs init --pool P, then dfs add-disk --pool P --disk D (several times)."
)]
pub(crate) struct Cli {
    /// Log verbosity (error, warn, info, debug, trace; default warn, and error for
    /// `dfs demo`, which narrates the failures it causes itself); RUST_LOG overrides it.
    #[arg(long, global = true)]
    pub(crate) log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Whether this process serves a pool for long (a mount's daemon, `serve`,
    /// `metrics-server`): it must outlive clients that hang up on it.
    pub(crate) fn is_daemon(&self) -> bool {
        matches!(
            self.command,
            Command::Mount { foreground: true, .. } | Command::Serve { .. } | Command::MetricsServer { .. }
        )
    }

    /// The subcommand as typed, e.g. `list-disks`.
    pub(crate) fn command_name(&self) -> String {
        let debug = format!("{:?}", self.command);
        let variant = debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
        let mut name = String::new();
        for (i, c) in variant.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                name.push('-');
            }
            name.push(c.to_ascii_lowercase());
        }
        name
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PoolArg {
    /// The pool directory (holds the pool's config and lock).
    #[arg(long, value_name = "DIR")]
    pub(crate) pool: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct JsonArg {
    /// Print JSON instead of a table, for scripts.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The arguments of `list-hot` and `list-cold`.
#[derive(clap::Args, Debug)]
pub(crate) struct ClassListArgs {
    #[command(flatten)]
    pub(crate) pool: PoolArg,
    /// Show at most this many.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    #[command(flatten)]
    pub(crate) json: JsonArg,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Build a demo pool (6 disks of mixed sizes), store files under several policies,
    /// read them back and verify them, fail a disk and read them again, rebuild onto a
    /// spare, then show the pool.
    Demo {
        /// Where to build it (must not exist); default: a new directory under the system temp dir.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Mount the pool with FUSE. Returns once the mount is ready; the daemon keeps
    /// serving until `dfs umount` (or SIGTERM/SIGINT to the daemon).
    Mount {
        #[command(flatten)]
        pool: PoolArg,
        /// An existing, empty directory to mount on.
        #[arg(long, value_name = "DIR")]
        mountpoint: PathBuf,
        /// Stay attached: serve in this process until unmounted or interrupted.
        #[arg(long)]
        foreground: bool,
        /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
        /// Mount over a directory that is not empty (its files stay hidden until unmount).
        #[arg(long)]
        nonempty: bool,
        /// Serve Prometheus /metrics and /health on this address (e.g. 127.0.0.1:9090).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Memory for decoded extents kept for reads (e.g. 64MiB; default 256MiB): most
        /// of the daemon's resident memory. Same as -o cache=SIZE.
        #[arg(long, value_name = "SIZE", value_parser = dfs_engine::base::units::parse_size)]
        cache: Option<u64>,
        /// Mount options as in /etc/fstab, comma-separated: allow_other, ro, rw, suid,
        /// dev, noexec, noatime, nonempty, writeback_cache, nodirect_reads, metrics=ADDR,
        /// cache=SIZE, threads=N (defaults: rw, nosuid, nodev, relatime, direct_reads,
        /// cache=256MiB, one request thread per CPU and one more, 2–16).
        /// writeback_cache lets write(2) return once the kernel cached the page: small
        /// random writes run about three times faster, creating a file costs two more
        /// round trips to the daemon. direct_reads serves read-only opens of files of 1 MiB or more,
        /// and read-write opens, past the kernel's page cache: large reads and a
        /// database's writes run faster, reads of a few KiB each slower; nodirect_reads
        /// keeps the page cache for every read.
        #[arg(short = 'o', long, value_name = "LIST", default_value = "")]
        options: String,
    },
    /// Install the mount helper (a link named mount.fuse.dynamicfs to this binary), so
    /// `mount -t fuse.dynamicfs POOL DIR` and /etc/fstab lines of type fuse.dynamicfs
    /// work. Needs root for the default directory.
    InstallMountHelper {
        /// Where mount(8) looks for helpers.
        #[arg(long, value_name = "DIR", default_value = "/sbin")]
        dir: PathBuf,
    },
    /// Run the pool daemon without a mount, in the foreground: the control socket (so
    /// admin commands work as on a mounted pool), the background worker (drains, policy
    /// changes, rebuilds, tiering migrations), classification passes, the background
    /// scrub and hourly orphan collection. Stops on SIGINT/SIGTERM.
    Serve {
        #[command(flatten)]
        pool: PoolArg,
    },
    /// End the daemon serving a pool, whichever it is, and wait until it has released
    /// the pool: a mount is unmounted (as `dfs umount` does), a `dfs serve` daemon (also
    /// the one `scrub-daemon start` starts on an unmounted pool) is asked to stop.
    /// Nothing serving the pool is not an error.
    Stop {
        #[command(flatten)]
        pool: PoolArg,
    },
    /// Unmount a DynamicFS mount and wait until its daemon has released the pool.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Create a new, empty pool directory.
    Init {
        #[command(flatten)]
        pool: PoolArg,
        /// Default redundancy policy for new data: replicate:N (1-8) or erasure:K+M (K 1-16, M 1-8).
        #[arg(long, default_value = "replicate:2", value_parser = parse_policy)]
        policy: Policy,
        /// Start with tiering off: no access tracking, no migration by temperature
        /// (turn it on later with `dfs tiering --enable`).
        #[arg(long)]
        no_tiering: bool,
    },
    /// Add disks to the pool; new writes use them at once. A disk is a directory, or a
    /// prefix of a bucket on an S3-compatible object store (s3://bucket/prefix): the
    /// endpoint, region and credentials come from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or else the
    /// keys from profile AWS_PROFILE of ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE),
    /// and are never written to the pool and never logged. A store is first checked to honour
    /// create-only writes (If-None-Match: *), which keep two machines from both writing
    /// the pool; one that does not is refused.
    AddDisk {
        #[command(flatten)]
        pool: PoolArg,
        /// A directory, or s3://bucket/prefix, to use as a disk (repeat to add several).
        #[arg(long = "disk", value_name = "DIR|s3://BUCKET/PREFIX", required = true)]
        disks: Vec<PathBuf>,
        /// Capacity of each disk added (e.g. 10GiB, at least 16MiB); default: the free
        /// space of its filesystem. Required for a disk on an object store.
        #[arg(long, value_parser = parse_capacity)]
        capacity: Option<u64>,
    },
    /// Rebuild a pool directory on this machine from one of the pool's disks: how a pool
    /// moves to a new machine. Every disk keeps a copy of the pool's configuration; this
    /// writes it as the new pool directory (which must be new or empty), changing nothing
    /// on the disks. The first open there (a mount) claims the pool: a process still
    /// serving it from another machine over disks on an object store is fenced, and stops
    /// writing. Local disks named in the configuration must be reachable at their paths
    /// on this machine, or the pool serves without them (degraded).
    Import {
        #[command(flatten)]
        pool: PoolArg,
        /// A disk of the pool: a directory, or s3://bucket/prefix.
        #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
        disk: String,
    },
    /// List the pool's disks: id, path, capacity, used, state, fragment count.
    ListDisks {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Copy a local file into the pool, atomically (readers see all of it or nothing).
    Put {
        #[command(flatten)]
        pool: PoolArg,
        /// The local file to copy ("-" reads standard input).
        local: PathBuf,
        /// Where to put it in the pool; an existing directory receives the local file's name.
        pool_path: String,
        /// Redundancy policy for this file (default: its directory's, else the pool's).
        #[arg(long, value_parser = parse_policy)]
        policy: Option<Policy>,
    },
    /// Copy a file out of the pool.
    Get {
        #[command(flatten)]
        pool: PoolArg,
        /// The file in the pool.
        pool_path: String,
        /// The local file to write ("-" writes standard output).
        local: PathBuf,
    },
    /// List a directory of the pool (or show one file).
    Ls {
        #[command(flatten)]
        pool: PoolArg,
        /// Directory or file in the pool.
        #[arg(default_value = "/")]
        pool_path: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove a file or an empty directory from the pool.
    Rm {
        #[command(flatten)]
        pool: PoolArg,
        /// The path to remove.
        pool_path: String,
        /// Remove a directory and everything under it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Create a directory in the pool.
    Mkdir {
        #[command(flatten)]
        pool: PoolArg,
        /// The directory to create.
        pool_path: String,
        /// Create missing parents too, and succeed if it exists.
        #[arg(short, long)]
        parents: bool,
        /// Redundancy policy inherited by files created in it.
        #[arg(long, value_parser = parse_policy)]
        policy: Option<Policy>,
    },
    /// List extents: id, file, offset, length, policy, health.
    ListExtents {
        #[command(flatten)]
        pool: PoolArg,
        /// Only extents of files under this path.
        pool_path: Option<String>,
        /// Read every fragment and verify its checksum (slower; otherwise presence only).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Extents and bytes per policy and per health, raw bytes stored and the overhead ratio.
    ShowRedundancy {
        #[command(flatten)]
        pool: PoolArg,
        /// Read every fragment and verify its checksum (slower; otherwise presence only).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show or set how the pool rides out disks that go away: the grace period an
    /// offline disk is waited for before it is marked failed and rebuilt elsewhere
    /// (default 10m), and the fewest copies a replicate:N extent is written with while
    /// disks are away (default 2; erasure:K+M always needs K+1 fragments).
    Availability {
        #[command(flatten)]
        pool: PoolArg,
        /// Grace period, e.g. 30s, 10m, 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
        /// Write quorum of replicated extents, in copies (capped at N).
        #[arg(long)]
        replica_quorum: Option<u8>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Mark a disk failed, as if it had died: it is never read or written again, reads of
    /// its extents are served degraded at once, and they are rebuilt lazily elsewhere.
    /// An offline disk may be failed at once instead of waiting out its grace period.
    FailDisk {
        #[command(flatten)]
        pool: PoolArg,
        /// The disk: its id (d3), uuid or directory.
        #[arg(long)]
        disk: String,
    },
    /// Remove a disk: drain every fragment to other disks (keeping each extent on
    /// distinct disks), then drop it. Refuses up front when the rest cannot hold its data.
    /// Survives a crash or unmount: run it again, or let the daemon finish it.
    RemoveDisk {
        #[command(flatten)]
        pool: PoolArg,
        /// The disk: its id (d3), uuid or directory.
        #[arg(long)]
        disk: String,
    },
    /// Move fragments from the fullest disks to the emptiest (by fill ratio), keeping
    /// each extent on distinct disks, until they are within 2% of each other.
    Rebalance {
        #[command(flatten)]
        pool: PoolArg,
        /// Stop after moving this much (e.g. 10GiB).
        #[arg(long, value_parser = dfs_engine::base::units::parse_size)]
        max_bytes: Option<u64>,
    },
    /// Rebuild every degraded extent now, most endangered first (a mounted pool's daemon
    /// does this in the background).
    Rebuild {
        #[command(flatten)]
        pool: PoolArg,
    },
    /// Move fragments a pool made before segments keeps in files of their own (one per
    /// fragment, under each disk's `fragment/`) into segment files. Such a pool works
    /// as it is — old fragments read, list and delete where they lie, new ones go to
    /// segments — but one file per fragment costs an inode and a create each. Crash-safe
    /// and resumable; shows progress; safe on a mounted pool.
    Upgrade {
        #[command(flatten)]
        pool: PoolArg,
    },
    /// Show the rebuild queue: extents short of fragments, most endangered first.
    RebuildStatus {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Re-encode existing data under a new policy (decode with the old, encode with the
    /// new). Without --path/--extent: change the pool default and re-encode what follows it.
    ChangePolicy {
        #[command(flatten)]
        pool: PoolArg,
        /// The new policy: replicate:N or erasure:K+M.
        #[arg(long, value_parser = parse_policy)]
        policy: Policy,
        /// A file, or a directory (its files; with --recursive everything beneath it).
        #[arg(long, value_name = "POOL_PATH")]
        path: Option<String>,
        /// One extent, by the name `dfs list-extents` shows: INO:INDEX, the file chunk it
        /// serves (stays the same through re-encodes and rebuilds).
        #[arg(long, value_name = "INO:INDEX")]
        extent: Option<String>,
        /// With a directory --path: every file and directory beneath it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Show policy transitions (pending, in progress, done, failed) and each re-encoded
    /// extent's history.
    PolicyStatus {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List hot extents (busiest first): extent, file, offset, class, confidence,
    /// ops/day, last access, current and target policy. Classes are those of the last
    /// classification pass (see `dfs classify`).
    ListHot(ClassListArgs),
    /// List cold extents (least recently accessed first), with the same columns as list-hot.
    ListCold(ClassListArgs),
    /// Show one extent's temperature: access statistics, the observation and HMM state
    /// at every classification pass, and every policy change of its data.
    ExtentStats {
        #[command(flatten)]
        pool: PoolArg,
        /// The extent, by the name `dfs list-extents` shows: INO:INDEX, the file chunk it
        /// serves (stays the same through re-encodes and rebuilds).
        #[arg(long, value_name = "INO:INDEX")]
        extent: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run a classification pass now (the daemon runs one every pass interval). Extents
    /// whose class calls for another policy then migrate: at once when read, else in
    /// the daemon's background within the migrate rate, or now with --migrate.
    Classify {
        #[command(flatten)]
        pool: PoolArg,
        /// Re-encode every extent whose class calls for another policy now.
        #[arg(long)]
        migrate: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show the pool's tiering configuration, or change the settings given. Hot extents
    /// move to the hot policy, cold ones to the cold policy, warm ones to the pool
    /// default; files with a policy of their own (change-policy --path, mkdir --policy,
    /// the user.dynamicfs.policy xattr) are pinned and never move.
    Tiering {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        settings: Box<TieringArgs>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Read and verify every fragment of every extent (not only those a read would use);
    /// with --repair, rewrite every bad fragment within its extent's tolerance. Prints
    /// what it checked, found, repaired, and what is unrecoverable (by file and offset).
    /// Exit code 1 when anything is unrecoverable.
    Scrub {
        #[command(flatten)]
        pool: PoolArg,
        /// Rewrite bad fragments from the surviving ones.
        #[arg(long)]
        repair: bool,
        /// Only the files under this pool path.
        #[arg(long, value_name = "POOL_PATH")]
        path: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Control the daemon's background scrub, which verifies and repairs extent by
    /// extent within an I/O budget, oldest-checked first, and resumes across restarts.
    /// `start` on a pool with no daemon starts one (`dfs serve`, logging to
    /// POOL/daemon.log); `status` on such a pool says so and shows the saved progress.
    ScrubDaemon {
        /// start, status, pause, resume or stop.
        #[arg(value_enum)]
        action: ScrubDaemonAction,
        #[command(flatten)]
        pool: PoolArg,
        /// low (8 MiB/s, yields 500 ms to foreground I/O), medium (32 MiB/s, 100 ms) or
        /// high (unthrottled).
        #[arg(long, value_parser = parse_intensity)]
        intensity: Option<dfs_engine::services::scrub::Intensity>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// When the daemon starts background scrub passes by itself: nightly (24 h after the
    /// last began), weekly, continuous, or off. Stored in the pool's metadata.
    ScrubSchedule {
        #[command(flatten)]
        pool: PoolArg,
        /// nightly, weekly, continuous or off.
        #[arg(long, value_parser = parse_frequency)]
        frequency: dfs_engine::services::scrub::Frequency,
        /// How hard scheduled passes run: low, medium or high.
        #[arg(long, value_parser = parse_intensity)]
        intensity: Option<dfs_engine::services::scrub::Intensity>,
    },
    /// List orphan fragments: blocks on disk that no committed metadata references (left
    /// by crashes or failed writes): disk, block, size, age.
    DetectOrphans {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Delete orphan fragments older than the age guard (a fragment younger than that
    /// might belong to a write this process cannot see). Safe to interrupt and rerun.
    CleanupOrphans {
        #[command(flatten)]
        pool: PoolArg,
        /// Only orphans at least this old (e.g. 30m, 1h, 2d; 0 for all).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = dfs_engine::base::units::parse_duration)]
        older_than: u64,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Orphan fragments per disk: count, bytes, oldest.
    OrphanStats {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// One screen: pool state, disks with usage bars and health, redundancy, extent health,
    /// temperature, rebuild and migration queues, scrub progress, mount state, problems.
    Status {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Detailed diagnostics: every problem with what to do about it. Exit code 1 when the
    /// pool is unhealthy (a disk data depends on failed or is unreachable, extents are
    /// short of their policy or lost, the pool is read-only, a scrub found lost data).
    Health {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The metric values, in the Prometheus text format (what /metrics serves) or --json.
    Metrics {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run the pool daemon (as `dfs serve`) with Prometheus /metrics and /health on
    /// --listen, in the foreground. /health answers 200 when healthy, 503 when not.
    MetricsServer {
        #[command(flatten)]
        pool: PoolArg,
        /// Address to listen on; loopback unless told otherwise.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
    },
    /// Hand pinned files back to tiering: clear the policy of a file, or of a directory
    /// and the files in it (with --recursive everything beneath it). Their data then
    /// follows the pool default and its temperature.
    Unpin {
        #[command(flatten)]
        pool: PoolArg,
        /// The file or directory.
        #[arg(long, value_name = "POOL_PATH")]
        path: String,
        /// Everything beneath a directory, not only the files directly in it.
        #[arg(short, long)]
        recursive: bool,
    },
}

/// What `dfs scrub-daemon` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScrubDaemonAction {
    /// Start a background pass (resume a paused one); starts the pool daemon if none runs.
    Start,
    /// Show the pass's progress, rate, last full pass, findings and schedule.
    Status,
    /// Pause the pass (its progress is kept).
    Pause,
    /// Resume a paused pass.
    Resume,
    /// End the pass in progress (what it checked stays checked).
    Stop,
}

fn parse_intensity(text: &str) -> Result<dfs_engine::services::scrub::Intensity, String> {
    text.parse()
}

fn parse_frequency(text: &str) -> Result<dfs_engine::services::scrub::Frequency, String> {
    text.parse()
}

pub(crate) fn parse_policy(text: &str) -> Result<Policy, String> {
    text.parse::<Policy>().map_err(|e| e.to_string())
}

/// Options of `dfs tiering`; each one given changes that setting.
#[derive(clap::Args, Debug)]
pub(crate) struct TieringArgs {
    /// Turn tiering on: track accesses, classify, migrate.
    #[arg(long, conflicts_with = "disable", help_heading = "Switch")]
    pub(crate) enable: bool,
    /// Turn tiering off: no tracking, no migration; extents keep their policies.
    #[arg(long, help_heading = "Switch")]
    pub(crate) disable: bool,
    /// How a pass decides a class: hmm (smoothed, the default) or thresholds (raw).
    #[arg(long, value_parser = parse_classifier, help_heading = "Classification")]
    pub(crate) classifier: Option<Classifier>,
    /// Hot above this many accesses a day (default 100).
    #[arg(long, value_name = "OPS", help_heading = "Classification")]
    pub(crate) hot_ops_per_day: Option<f64>,
    /// Hot when accessed within this long (default 1h).
    #[arg(long, value_name = "DURATION", value_parser = dfs_engine::base::units::parse_duration, help_heading = "Classification")]
    pub(crate) hot_within: Option<u64>,
    /// Warm above this many accesses a day (default 10).
    #[arg(long, value_name = "OPS", help_heading = "Classification")]
    pub(crate) warm_ops_per_day: Option<f64>,
    /// Warm when accessed within this long (default 24h).
    #[arg(long, value_name = "DURATION", value_parser = dfs_engine::base::units::parse_duration, help_heading = "Classification")]
    pub(crate) warm_within: Option<u64>,
    /// HMM start probabilities of hot,warm,cold (default 0.1,0.8,0.1).
    #[arg(long, value_name = "P,P,P", value_parser = parse_row, help_heading = "HMM")]
    pub(crate) hmm_initial: Option<[f64; 3]>,
    /// HMM transition matrix, rows hot;warm;cold, each P(to hot),P(to warm),P(to cold).
    #[arg(long, value_name = "ROW;ROW;ROW", value_parser = parse_matrix, help_heading = "HMM")]
    pub(crate) hmm_transition: Option<[[f64; 3]; 3]>,
    /// HMM emission matrix, rows hot;warm;cold, each P(observed hot),P(warm),P(cold).
    #[arg(long, value_name = "ROW;ROW;ROW", value_parser = parse_matrix, help_heading = "HMM")]
    pub(crate) hmm_emission: Option<[[f64; 3]; 3]>,
    /// Factor on the hot state when the extent was just accessed (>= 1; default 1.5).
    #[arg(long, value_name = "FACTOR", help_heading = "HMM")]
    pub(crate) recency_boost: Option<f64>,
    /// A class changes only when the HMM gives the new one this probability (default 0.9).
    #[arg(long, value_name = "P", help_heading = "HMM")]
    pub(crate) switch_confidence: Option<f64>,
    /// Policy of hot extents (default replicate:3).
    #[arg(long, value_name = "POLICY", value_parser = parse_policy, help_heading = "Tiers")]
    pub(crate) hot_policy: Option<Policy>,
    /// Policy of warm extents: a policy, or "default" for the pool default (the default).
    #[arg(long, value_name = "POLICY|default", value_parser = parse_warm_policy, help_heading = "Tiers")]
    pub(crate) warm_policy: Option<WarmPolicy>,
    /// Policy of cold extents (default erasure:4+2).
    #[arg(long, value_name = "POLICY", value_parser = parse_policy, help_heading = "Tiers")]
    pub(crate) cold_policy: Option<Policy>,
    /// Time between classification passes (default 6h).
    #[arg(long, value_name = "DURATION", value_parser = dfs_engine::base::units::parse_duration, help_heading = "Schedule")]
    pub(crate) pass_interval: Option<u64>,
    /// Time between persisting access statistics: what a crash may lose of them (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = dfs_engine::base::units::parse_duration, help_heading = "Schedule")]
    pub(crate) stats_flush: Option<u64>,
    /// Bytes a second the background may re-encode for extents not being read (default 16MiB).
    #[arg(long, value_name = "SIZE", value_parser = dfs_engine::base::units::parse_size, help_heading = "Schedule")]
    pub(crate) migrate_rate: Option<u64>,
}

fn parse_classifier(text: &str) -> Result<Classifier, String> {
    match text {
        "hmm" => Ok(Classifier::Hmm),
        "thresholds" => Ok(Classifier::Thresholds),
        other => Err(format!("'{other}' is not a classifier (hmm or thresholds)")),
    }
}

fn parse_row(text: &str) -> Result<[f64; 3], String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|_| format!("'{v}' is not a probability")))
        .collect::<Result<_, _>>()?;
    values.try_into().map_err(|_| format!("'{text}' needs three comma-separated probabilities"))
}

fn parse_matrix(text: &str) -> Result<[[f64; 3]; 3], String> {
    let rows: Vec<[f64; 3]> = text.split(';').map(parse_row).collect::<Result<_, _>>()?;
    rows.try_into().map_err(|_| format!("'{text}' needs three rows separated by ';'"))
}

/// The warm tier's policy as `--warm-policy` takes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WarmPolicy(pub(crate) Option<Policy>);

fn parse_warm_policy(text: &str) -> Result<WarmPolicy, String> {
    if text == "default" {
        return Ok(WarmPolicy(None));
    }
    parse_policy(text).map(|p| WarmPolicy(Some(p)))
}

/// A disk capacity: a size of at least `DISK_CAPACITY_MIN` (16 MiB), else a usage error.
fn parse_capacity(text: &str) -> Result<u64, String> {
    let bytes = dfs_engine::base::units::parse_size(text)?;
    let min = dfs_engine::pooldir::DISK_CAPACITY_MIN;
    if bytes < min {
        return Err(format!("{text} is below the minimum disk capacity of {}", dfs_engine::base::units::human(min)));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its definitions only when a command is parsed; a mistake in a rarely
    /// used one would panic in front of the user. This walks all of them.
    #[test]
    fn every_command_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn warm_policy_takes_a_policy_or_default() {
        use clap::Parser;
        for value in ["default", "erasure:3+2"] {
            let parsed = super::Cli::try_parse_from(["dfs", "tiering", "--pool", "/p", "--warm-policy", value]);
            assert!(parsed.is_ok(), "{value}: {parsed:?}");
        }
        assert!(super::Cli::try_parse_from(["dfs", "tiering", "--pool", "/p", "--warm-policy", "warm"]).is_err());
        assert!(super::Cli::try_parse_from(["dfs", "tiering", "--pool", "/p", "--enable", "--disable"]).is_err());
    }
}
