//! The scenario model: one story per RON file — setup, a workload with faults and clock
//! advances, and the expected outcome.
//!
//! A malformed file is rejected with its line and column before anything runs; so is a
//! well-formed file that names an impossible policy, a size that does not parse, or a
//! disk that does not exist.

use std::collections::BTreeMap;
use std::path::Path;

use dfs_engine::base::hooks::CommitPhase;
use dfs_engine::services::scrub::{Frequency, Intensity};
use dfs_engine::temperature::config::Classifier;
use dfs_engine::temperature::Class;
use dfs_engine::Policy;
use serde::{Deserialize, Serialize};

/// One scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Default seed; `--seed` overrides it.
    pub seed: u64,
    pub setup: Setup,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
}

/// The pool the story starts with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Disk capacities, e.g. `"64MiB"`; disk `i` in steps is the i-th of this list.
    pub disks: Vec<String>,
    /// The pool's default policy.
    pub policy: String,
    /// Records between checkpoints (default 256).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// Temperature-driven policies; absent, the pool has tiering off.
    #[serde(default)]
    pub tiering: Option<TieringSetup>,
    /// The disks are on an object store (default `false`): shared with other machines,
    /// so owners' claims and create-only writes fence a second writer (`media::owner`),
    /// and every write is whole and durable once it returns.
    #[serde(default)]
    pub store: bool,
    /// With `store`: listings of a kind that pass before one shows a name just created,
    /// or stops showing one just deleted (default 0, an exact listing); reads stay exact.
    /// Models a store whose listing is eventually consistent.
    #[serde(default)]
    pub listing_lag: u32,
}

/// Tiering as a scenario sets it up: the engine's defaults unless named here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TieringSetup {
    /// `Hmm` (default) or `Thresholds` (the raw rule, to compare with).
    #[serde(default)]
    pub classifier: Classifier,
    /// Background migration budget, e.g. `"1MiB"` (per second); default 16 MiB.
    #[serde(default)]
    pub migrate_per_sec: Option<String>,
}

/// Which kind of block a fault targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Any fragment.
    Fragment,
    /// Data shards only (fragment index < K), or the first copy of a replica.
    DataShard,
    /// Parity shards only (fragment index ≥ K).
    ParityShard,
    Journal,
    Checkpoint,
}

/// One step of the story. Paths are absolute pool paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// Create a directory.
    Mkdir { path: String },
    /// Open (creating if needed), write `len` bytes generated from `seed` at `offset`, close.
    Write { path: String, offset: u64, len: u64, seed: u64 },
    /// Write `len` bytes from `seed` at the end of the file, then close.
    Append { path: String, len: u64, seed: u64 },
    /// Set the file's size.
    Truncate { path: String, size: u64 },
    /// Rename, replacing the target.
    Rename { from: String, to: String },
    /// Remove a file.
    Unlink { path: String },
    /// Remove an empty directory.
    Rmdir { path: String },
    /// Open a handle (creating the file if needed) that later steps write through.
    Open { path: String },
    /// Write through the open handle; buffered, not acknowledged until `Fsync`/`Close`.
    WriteOpen { path: String, offset: u64, len: u64, seed: u64 },
    /// Make the open handle's writes durable.
    Fsync { path: String },
    /// Close the open handle (flushes).
    Close { path: String },
    /// Read the whole file and compare with the model.
    Read { path: String },
    /// Read every file and run every check now.
    Verify,
    /// Add a disk of this capacity.
    AddDisk { capacity: String },
    /// Take a metadata checkpoint now.
    Checkpoint,
    /// Make every commit durable now (`sync(2)`; the daemon does it every second).
    Sync,
    /// Crash now: a random subset of unsynced writes lands (some torn); then recover.
    Crash,
    /// Crash after `writes` more device writes.
    CrashAfterWrites { writes: u64 },
    /// Crash when a commit reaches `phase` for the `occurrence`-th time (1 = next).
    CrashAtPhase { phase: CommitPhase, occurrence: u32 },
    /// The disk dies: every call fails from now on.
    FailDisk { disk: usize },
    /// The disk vanishes (every call fails) until `ReturnDisk`.
    VanishDisk { disk: usize },
    /// A vanished disk comes back with what it held.
    ReturnDisk { disk: usize },
    /// Flip one bit in each of `blocks` blocks of `target` kind on the disk.
    BitRot { disk: usize, blocks: u32, target: Target },
    /// Give `blocks` fragment blocks on the disk latent read errors.
    LatentErrors { disk: usize, blocks: u32 },
    /// The next fragment written to the disk lands under another fragment's name.
    Misdirect { disk: usize },
    /// The disk refuses every write with ENOSPC.
    FillDisk { disk: usize },
    /// Each call on the disk costs this many ticks (microseconds) of simulated time.
    Latency { disk: usize, ticks: u64 },
    /// Let simulated time pass.
    AdvanceClock { secs: u64 },
    /// `dfs fail-disk`: the pool marks the disk failed (the disk itself still works).
    MarkFailed { disk: usize },
    /// `dfs remove-disk`: the disk starts draining; `Background` steps move its fragments.
    RemoveDisk { disk: usize },
    /// `dfs change-policy`: of `path` (recursively), or of the pool default when absent;
    /// `Background` steps re-encode.
    ChangePolicy {
        #[serde(default)]
        path: Option<String>,
        policy: String,
    },
    /// `dfs rebalance`: move fragments toward even fill, up to `max_bytes` when given.
    Rebalance {
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// Up to `steps` rounds of the daemon's background worker (drains, policy changes,
    /// rebuilds, migrations), stopping early when it has nothing to do.
    Background { steps: u32 },
    /// `dfs classify`: a classification pass now.
    Classify,
    /// Read the whole file `times` times, `every_secs` apart, with the daemon running
    /// between reads (see `Daemon`).
    Access { path: String, times: u32, every_secs: u64 },
    /// Let `secs` of simulated time pass with the daemon running: every five minutes its
    /// timers fire (access statistics persisted, a classification pass when one is due),
    /// its background worker and scrub run until idle, and a durability barrier follows.
    Daemon { secs: u64 },
    /// `dfs scrub [--repair]`: verify every fragment now; the oracle compares the report
    /// with every fragment it verifies itself.
    Scrub { repair: bool },
    /// `dfs scrub-daemon start|pause|resume|stop`; `Daemon` steps carry a pass forward.
    ScrubDaemon {
        action: ScrubAction,
        #[serde(default)]
        intensity: Option<Intensity>,
    },
    /// `dfs scrub-schedule --frequency F`.
    ScrubSchedule { frequency: Frequency },
    /// `dfs cleanup-orphans --older-than SECS`; with 0 the oracle then finds no orphan.
    CleanupOrphans { older_than_secs: u64 },
    /// Flip one bit in `per_mille`‰ of all fragment blocks on the disks in service.
    BitRotPool { per_mille: u32 },
    /// The disk is away while the pool next recovers from a crash (slow to come back
    /// after a power loss), and back once the pool is open.
    AwayAtNextRecovery { disk: usize },
    /// A second engine opens the same disks — the lock forced away — at once (`at:
    /// None`), or in the middle of the next barrier, when the pool reaches `at`
    /// (`FragmentsWritten` or `FragmentsSynced`: before its journal record is written).
    /// Exactly one of the two may go on writing; the other must be refused.
    SecondWriter { at: Option<CommitPhase> },
    /// The second engine writes a file of `len` bytes and fsyncs it: it owns the pool if
    /// it is first to write, and the first engine is then refused (EROFS); otherwise it
    /// is refused itself.
    RivalWrite { path: String, len: usize, seed: u64 },
}

/// What `ScrubDaemon` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScrubAction {
    Start,
    Pause,
    Resume,
    Stop,
}

/// What the run must show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Expect {
    /// Files that must be reported lost (reads fail with EIO): a scenario that goes beyond
    /// tolerance on purpose names them. Empty means nothing may be lost.
    #[serde(default)]
    pub lost_files: Vec<String>,
    /// Faults exceed some extents' tolerance: check only "right bytes or EIO" and that the
    /// loss report is exact.
    #[serde(default)]
    pub out_of_budget: bool,
    /// At the end, every disk's fill ratio (used / capacity) must be within this
    /// fraction of the mean ratio: disks of different sizes fill in proportion.
    #[serde(default)]
    pub balanced_fill: Option<f64>,
    /// At the end, no background work remains: no disk draining, no policy transition
    /// open, no extent waiting for a rebuild, and every extent under its file's policy.
    #[serde(default)]
    pub settled: bool,
    /// At the end, every extent of each named file is under this policy.
    #[serde(default)]
    pub policies: BTreeMap<String, String>,
    /// At the end, every extent of each named file is of this temperature class.
    #[serde(default)]
    pub classes: BTreeMap<String, Class>,
    /// No extent of each named file went through more policy changes than this.
    #[serde(default)]
    pub policy_changes_max: BTreeMap<String, usize>,
    /// Some extent of each named file went through at least this many policy changes.
    #[serde(default)]
    pub policy_changes_min: BTreeMap<String, usize>,
}

/// A scenario that failed to load, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError(format!("{}: {e}", path.display())))?;
        Scenario::parse(&text).map_err(|e| LoadError(format!("{}:{}", path.display(), e.0)))
    }

    /// Parses and validates scenario text; errors start with `line:column: `.
    pub fn parse(text: &str) -> Result<Scenario, LoadError> {
        let scenario: Scenario = ron::Options::default()
            .from_str(text)
            .map_err(|e| LoadError(format!("{}:{}: {}", e.span.start.line, e.span.start.col, e.code)))?;
        scenario.validate().map_err(|(at, why)| {
            let (line, column) = locate(text, at);
            LoadError(format!("{line}:{column}: {why}"))
        })?;
        Ok(scenario)
    }

    /// The scenario as RON text (how `shrink` and `swarm` write them).
    pub fn to_ron(&self) -> String {
        let config = ron::ser::PrettyConfig::default().struct_names(true);
        ron::ser::to_string_pretty(self, config).unwrap_or_else(|e| format!("// cannot encode: {e}"))
    }

    /// Checks what the RON grammar cannot; an error says where (see `locate`) and why.
    fn validate(&self) -> Result<(), (Where, String)> {
        let setup = |why: String| (Where::Key("setup"), why);
        if self.setup.disks.is_empty() {
            return Err(setup("setup needs at least one disk".into()));
        }
        for capacity in &self.setup.disks {
            dfs_engine::base::units::parse_size(capacity).map_err(setup)?;
        }
        self.setup.policy.parse::<Policy>().map_err(|e| setup(e.to_string()))?;
        if self.setup.listing_lag > 0 && !self.setup.store {
            return Err(setup("listing_lag models an object store's listing: it needs `store: true`".into()));
        }
        if let Some(rate) = self.setup.tiering.as_ref().and_then(|t| t.migrate_per_sec.as_ref()) {
            if dfs_engine::base::units::parse_size(rate).map_err(setup)? == 0 {
                return Err(setup("tiering: migrate_per_sec must be at least one byte".into()));
            }
        }
        for (path, policy) in &self.expect.policies {
            policy.parse::<Policy>().map_err(|e| (Where::Key("expect"), format!("expect.policies[{path}]: {e}")))?;
        }
        let tiering_named = !self.expect.classes.is_empty()
            || self.steps.iter().any(|s| matches!(s, Step::Classify | Step::Access { .. }));
        if tiering_named && self.setup.tiering.is_none() {
            return Err(setup("the scenario classifies or expects classes but its setup has no `tiering`".into()));
        }
        let mut disks = self.setup.disks.len();
        for (i, step) in self.steps.iter().enumerate() {
            let fail = |why: String| (Where::Step(i), format!("step {i} ({step:?}): {why}"));
            match step {
                Step::AddDisk { capacity } => {
                    dfs_engine::base::units::parse_size(capacity).map_err(fail)?;
                    disks += 1;
                }
                Step::FailDisk { disk }
                | Step::VanishDisk { disk }
                | Step::ReturnDisk { disk }
                | Step::BitRot { disk, .. }
                | Step::LatentErrors { disk, .. }
                | Step::Misdirect { disk }
                | Step::FillDisk { disk }
                | Step::Latency { disk, .. }
                | Step::AwayAtNextRecovery { disk }
                    if *disk >= disks =>
                {
                    return Err(fail(format!("no disk {disk}; the pool has disks 0..{disks}")));
                }
                Step::Write { len, .. } | Step::Append { len, .. } | Step::WriteOpen { len, .. } if *len > 8 << 20 => {
                    return Err(fail("writes are limited to 8 MiB per step".into()));
                }
                Step::CrashAtPhase { occurrence: 0, .. } => return Err(fail("occurrence counts from 1".into())),
                Step::SecondWriter { at: Some(phase) }
                    if !matches!(phase, CommitPhase::FragmentsWritten | CommitPhase::FragmentsSynced) =>
                {
                    return Err(fail(
                        "a second writer opens mid-barrier at FragmentsWritten or FragmentsSynced".into(),
                    ));
                }
                Step::Access { times: 0, .. } => return Err(fail("times counts from 1".into())),
                Step::BitRotPool { per_mille } if *per_mille > 1000 => {
                    return Err(fail("per_mille is at most 1000".into()))
                }
                _ => {}
            }
            for path in step.paths() {
                if !path.starts_with('/') || path.len() < 2 {
                    return Err(fail(format!("'{path}' is not an absolute pool path")));
                }
            }
        }
        Ok(())
    }
}

/// Where in a scenario a validation error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// The `key:` of the top-level structure.
    Key(&'static str),
    /// The n-th entry of `steps`.
    Step(usize),
}

/// The 1-based line and column of `at` in the RON `text`: the key, or the first character
/// of the step (strings and `//` comments skipped). Where it cannot be found, 1:1.
fn locate(text: &str, at: Where) -> (usize, usize) {
    let key = match at {
        Where::Key(key) => key,
        Where::Step(_) => "steps",
    };
    let Some(key_at) = find_key(text, key) else { return (1, 1) };
    let offset = match at {
        Where::Key(_) => Some(key_at),
        Where::Step(index) => nth_entry(text, key_at, index),
    };
    let offset = offset.unwrap_or(key_at);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset of `key:` at nesting depth 1 (the scenario's own fields).
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (at, c) in Scan::new(text) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ if depth == 1 && text[at..].starts_with(key) => {
                let rest = text[at + key.len()..].trim_start();
                let word_start = at == 0 || !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
                if word_start && rest.starts_with(':') {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

/// The byte offset of entry `index` of the list after `key_at`.
fn nth_entry(text: &str, key_at: usize, index: usize) -> Option<usize> {
    let open = key_at + text[key_at..].find('[')?;
    let mut depth = 0usize;
    let mut entry = 0usize;
    let mut expecting = true;
    let mut scan = Scan::new(text);
    scan.skip_to(open);
    for (at, c) in scan {
        match c {
            '[' if depth == 0 => depth = 1,
            '(' | '[' | '{' => {
                if depth == 1 && expecting {
                    if entry == index {
                        return Some(at);
                    }
                    expecting = false;
                }
                depth += 1;
            }
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            ',' if depth == 1 => {
                entry += 1;
                expecting = true;
            }
            c if depth == 1 && expecting && !c.is_whitespace() => {
                if entry == index {
                    return Some(at);
                }
                expecting = false;
            }
            _ => {}
        }
    }
    None
}

/// Characters of RON text outside strings and `//` comments, with their byte offsets
/// (a string counts as one `"` at its start).
struct Scan<'t> {
    text: &'t str,
    chars: std::iter::Peekable<std::str::CharIndices<'t>>,
}

impl<'t> Scan<'t> {
    fn new(text: &'t str) -> Self {
        Scan { text, chars: text.char_indices().peekable() }
    }

    fn skip_to(&mut self, offset: usize) {
        while self.chars.peek().is_some_and(|(at, _)| *at < offset) {
            self.chars.next();
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = (usize, char);

    fn next(&mut self) -> Option<(usize, char)> {
        loop {
            let (at, c) = self.chars.next()?;
            if c == '/' && self.text[at..].starts_with("//") {
                while self.chars.next_if(|(_, c)| *c != '\n').is_some() {}
                continue;
            }
            if c == '"' {
                let mut escaped = false;
                for (_, c) in self.chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                return Some((at, '"'));
            }
            return Some((at, c));
        }
    }
}

impl Step {
    /// The paths a step names.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Step::Mkdir { path }
            | Step::Write { path, .. }
            | Step::Append { path, .. }
            | Step::Truncate { path, .. }
            | Step::Unlink { path }
            | Step::Rmdir { path }
            | Step::Open { path }
            | Step::WriteOpen { path, .. }
            | Step::Fsync { path }
            | Step::Close { path }
            | Step::Read { path }
            | Step::Access { path, .. } => vec![path],
            Step::Rename { from, to } => vec![from, to],
            _ => Vec::new(),
        }
    }

    /// Whether the step is a fault (counted in the run summary).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Step::Crash
                | Step::CrashAfterWrites { .. }
                | Step::CrashAtPhase { .. }
                | Step::FailDisk { .. }
                | Step::VanishDisk { .. }
                | Step::BitRot { .. }
                | Step::LatentErrors { .. }
                | Step::Misdirect { .. }
                | Step::FillDisk { .. }
                | Step::Latency { .. }
                | Step::BitRotPool { .. }
                | Step::AwayAtNextRecovery { .. }
                | Step::SecondWriter { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_semantic_error_names_its_line_and_column() {
        let text = "// a comment with steps: [ and \"quotes\"\nScenario(\n    name: \"x\",\n    description: \"a (tricky) [text]\",\n    seed: 1,\n    setup: Setup(disks: [\"64MiB\"], policy: \"replicate:1\"),\n    steps: [\n        Write(path: \"/a\", offset: 0, len: 10, seed: 1),\n        // FailDisk(disk: 0),\n        Sync,\n        FailDisk(disk: 5),\n    ],\n)\n";
        let error = Scenario::parse(text).err().map(|e| e.0).unwrap_or_default();
        assert!(error.starts_with("11:9: step 2"), "{error}");
        let text = text.replace("replicate:1", "replicate:9").replace("disk: 5", "disk: 0");
        let error = Scenario::parse(&text).err().map(|e| e.0).unwrap_or_default();
        assert!(error.starts_with("6:5: invalid policy"), "{error}");
    }

    const GOOD: &str = r#"Scenario(
        name: "t", seed: 1,
        setup: Setup(disks: ["64MiB", "64MiB"], policy: "replicate:2"),
        steps: [Write(path: "/a", offset: 0, len: 10, seed: 1), Crash, Read(path: "/a")],
    )"#;

    #[test]
    fn a_good_file_parses_and_round_trips() {
        let scenario = Scenario::parse(GOOD).unwrap();
        assert_eq!(scenario.steps.len(), 3);
        assert_eq!(Scenario::parse(&scenario.to_ron()).unwrap(), scenario);
    }

    #[test]
    fn a_malformed_file_names_line_and_column() {
        let bad = GOOD.replace("Crash,", "Crash(,");
        let error = Scenario::parse(&bad).unwrap_err().0;
        assert!(error.starts_with("4:"), "{error}");
        let unknown = GOOD.replace("Crash,", "Explode,");
        assert!(Scenario::parse(&unknown).unwrap_err().0.contains("Explode"));
    }

    #[test]
    fn impossible_setups_are_refused() {
        assert!(Scenario::parse(&GOOD.replace("replicate:2", "erasure:0+1")).is_err());
        assert!(Scenario::parse(&GOOD.replace("\"64MiB\", \"64MiB\"", "\"64XB\"")).is_err());
        assert!(Scenario::parse(&GOOD.replace("Crash,", "FailDisk(disk: 2),")).is_err());
        assert!(Scenario::parse(&GOOD.replace("path: \"/a\", offset", "path: \"a\", offset")).is_err());
        assert!(Scenario::parse(&GOOD.replace("Crash,", "Classify,")).unwrap_err().0.contains("tiering"));
        let tiered =
            GOOD.replace("policy: \"replicate:2\")", "policy: \"replicate:2\", tiering: Some(TieringSetup()))");
        assert!(Scenario::parse(&tiered.replace("Crash,", "Classify,")).is_ok());
        assert!(Scenario::parse(&tiered.replace("Crash,", "Access(path: \"/a\", times: 0, every_secs: 1),")).is_err());
        let bad_rate = tiered.replace("TieringSetup()", "TieringSetup(migrate_per_sec: Some(\"0\"))");
        assert!(Scenario::parse(&bad_rate).is_err());
    }
}
