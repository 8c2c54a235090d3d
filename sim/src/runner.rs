//! The runner: replays a scenario on a simulated world, step by step, and checks the
//! oracle after every step and every recovery. Same scenario and seed ⇒ same trace hash.

use std::collections::{BTreeMap, BTreeSet};

use dfs_engine::data::namespace::{Owner, RenameMode, SetAttr};
use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName};
use dfs_engine::meta::state::ChunkSlot;
use dfs_engine::meta::state::{DiskId, PolicyChange, PolicyScope};
use dfs_engine::pool::PoolOptions;
use dfs_engine::temperature::config::TieringConfig;
use dfs_engine::{Error, Ino, Policy};
use dfs_faults::Fault;
use rand::Rng;

use crate::memdisk::Fate;
use crate::model::{FileId, Tree, View};
use crate::oracle;
use crate::scenario::{Scenario, ScrubAction, Step, Target};
use crate::world::World;

const OWNER: Owner = Owner { mode: 0o644, uid: 1000, gid: 1000, umask: 0 };
const STEP_NANOS: u64 = 1_000_000;
/// How often the simulated daemon's timers fire.
const DAEMON_TICK_SECS: u64 = 300;
/// Background rounds the simulated daemon runs per tick at most.
const DAEMON_ROUNDS_PER_TICK: u32 = 64;

/// How to run a scenario.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The seed (engine placement, fault choices, crash fates).
    pub seed: u64,
    /// Stop the world after this many device writes and return its crash state instead
    /// of finishing (used by `--crash-points`).
    pub freeze_after_writes: Option<u64>,
    /// A deliberate engine defect.
    #[cfg(feature = "sabotage")]
    pub sabotage: Option<dfs_engine::base::hooks::Sabotage>,
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the step during or after which the check failed (`steps.len()` = the
    /// final checks).
    pub step: usize,
    pub invariant: &'static str,
    pub detail: String,
}

/// What a run did and found.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub seed: u64,
    pub steps: usize,
    pub sim_nanos: u64,
    pub faults: u64,
    pub crashes: u64,
    pub degraded_reads: u64,
    pub lost_files: BTreeSet<String>,
    pub checks: BTreeMap<&'static str, u64>,
    pub trace_hash: String,
    pub failure: Option<Failure>,
    /// With tiering: each file's classes, policies and most policy changes of an extent.
    pub tiers: BTreeMap<String, String>,
    /// Each file's most policy changes of one extent.
    pub policy_changes: BTreeMap<String, usize>,
    /// One line per `Scrub` and `CleanupOrphans` step: what it checked, found, repaired,
    /// deleted and reported.
    pub maintenance: Vec<String>,
}

impl Outcome {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// One line: PASS/FAIL, seed, steps, simulated time, faults, trace hash.
    pub fn line(&self) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let mut line = format!(
            "{verdict} {} seed={} steps={} sim_time={:.3}s faults={} crashes={} trace={}",
            self.name,
            self.seed,
            self.steps,
            self.sim_nanos as f64 / 1e9,
            self.faults,
            self.crashes,
            self.trace_hash
        );
        if let Some(failure) = &self.failure {
            line.push_str(&format!(" step={} invariant={}: {}", failure.step, failure.invariant, failure.detail));
        }
        line
    }

    /// A stable multi-line summary for snapshot tests.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "scenario: {}\nseed: {}\nresult: {}\nsteps: {}\nsim_time_ns: {}\nfaults: {}\ncrashes: {}\ndegraded_reads: {}\ntrace: {}\n",
            self.name,
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.steps,
            self.sim_nanos,
            self.faults,
            self.crashes,
            self.degraded_reads,
            self.trace_hash
        );
        out.push_str(&format!("lost_files: {:?}\ninvariants:\n", self.lost_files));
        for invariant in oracle::ALL {
            let verdict = match (&self.failure, self.checks.get(invariant)) {
                (Some(f), _) if f.invariant == invariant => "FAIL".to_string(),
                (_, Some(n)) => format!("held ({n} checks)"),
                (_, None) => "not exercised".to_string(),
            };
            out.push_str(&format!("  {invariant}: {verdict}\n"));
        }
        if !self.maintenance.is_empty() {
            out.push_str("maintenance:\n");
            for line in &self.maintenance {
                out.push_str(&format!("  {line}\n"));
            }
        }
        if !self.tiers.is_empty() {
            out.push_str("tiers:\n");
            for (path, line) in &self.tiers {
                out.push_str(&format!("  {path}: {line}\n"));
            }
        }
        if let Some(failure) = &self.failure {
            out.push_str(&format!("failure: step {} {}: {}\n", failure.step, failure.invariant, failure.detail));
        }
        out
    }
}

/// The state of a run frozen by `freeze_after_writes`, for crash-state exploration.
pub struct Frozen {
    pub world: World,
    /// Namespaces a recovery may legitimately show.
    pub candidates: Vec<Tree>,
    /// Whether the run reached the write before finishing.
    pub reached: bool,
}

struct OpenHandle {
    fh: u64,
    ino: Ino,
    id: FileId,
    /// Whether this handle wrote: the engine flushes on its close only then, or when it
    /// is the file's last handle.
    wrote: bool,
}

struct Run<'s> {
    scenario: &'s Scenario,
    world: World,
    /// What a reader sees now, buffered writes included.
    live: Tree,
    /// What the engine committed (in memory): what survives a clean shutdown.
    acked: Tree,
    /// What the last durability barrier made durable: what survives a crash.
    durable: Tree,
    handles: BTreeMap<String, OpenHandle>,
    next_id: FileId,
    trace: blake3::Hasher,
    faults: u64,
    checks: BTreeMap<&'static str, u64>,
    lost_files: BTreeSet<String>,
    step: usize,
    freeze_after_writes: Option<u64>,
    frozen_candidates: Option<Vec<Tree>>,
    tiers: BTreeMap<String, String>,
    policy_changes: BTreeMap<String, usize>,
    maintenance: Vec<String>,
    /// A second engine on the same disks (`Step::SecondWriter`), and the namespace it
    /// recovered: what was durable when it opened.
    rival: Option<(dfs_engine::Pool, Tree)>,
    /// A second engine armed to open mid-barrier, not yet opened.
    rival_armed: bool,
    /// Whether the last `Write`/`Append` step failed at the write itself (which then took
    /// nothing) rather than at its close.
    write_refused: bool,
}

fn fail(step: usize, invariant: &'static str, detail: impl Into<String>) -> Failure {
    Failure { step, invariant, detail: detail.into() }
}

/// Deterministic file contents for a write step.
pub fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn split(path: &str) -> (&str, &[u8]) {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    (parent, name.as_bytes())
}

fn errno_of(result: &Result<Option<Vec<u8>>, Error>) -> Option<i32> {
    result.as_ref().err().map(Error::errno)
}

/// Builds the world a scenario starts from.
pub fn build_world(scenario: &Scenario, options: &RunOptions) -> Result<World, String> {
    let capacities: Vec<u64> =
        scenario.setup.disks.iter().map(|c| dfs_engine::base::units::parse_size(c)).collect::<Result<_, _>>()?;
    let policy: Policy =
        scenario.setup.policy.parse().map_err(|e: dfs_engine::base::policy::PolicyParseError| e.to_string())?;
    #[allow(unused_mut)]
    let mut pool_options = PoolOptions {
        checkpoint_every_records: scenario.setup.checkpoint_every.unwrap_or(256),
        dirty_bytes_max: 64 << 20,
        // Barriers happen where the scenario says (Fsync, Sync, Checkpoint, AddDisk), so
        // the model knows which states a crash may leave.
        barrier_after_ops: usize::MAX,
        extent_cache_bytes: 16 << 20,
        // Small pages, so that the small states of scenarios span several, and commits
        // and merges split and join them.
        metadata_store: dfs_engine::meta::store::StoreConfig {
            page_bytes: 2 << 10,
            bulk_page_bytes: 4 << 10,
            cache_bytes: 64 << 10,
            ..Default::default()
        },
        tiering: tiering_config(scenario)?,
        ..PoolOptions::default()
    };
    #[cfg(feature = "sabotage")]
    {
        pool_options.sabotage = options.sabotage;
    }
    World::new(&capacities, policy, options.seed, (scenario.setup.store, scenario.setup.listing_lag), pool_options)
}

/// The tiering a scenario's pool starts with: off unless its setup names it.
fn tiering_config(scenario: &Scenario) -> Result<TieringConfig, String> {
    let Some(setup) = &scenario.setup.tiering else {
        return Ok(TieringConfig { enabled: false, ..TieringConfig::default() });
    };
    let mut config = TieringConfig { enabled: true, classifier: setup.classifier, ..TieringConfig::default() };
    if let Some(rate) = &setup.migrate_per_sec {
        config.migrate_bytes_per_sec = dfs_engine::base::units::parse_size(rate)?;
    }
    Ok(config)
}

/// Runs `scenario` to the end (or its first failure).
pub fn run(scenario: &Scenario, options: &RunOptions) -> Outcome {
    let mut outcome = Outcome {
        name: scenario.name.clone(),
        seed: options.seed,
        steps: 0,
        sim_nanos: 0,
        faults: 0,
        crashes: 0,
        degraded_reads: 0,
        lost_files: BTreeSet::new(),
        checks: BTreeMap::new(),
        trace_hash: String::new(),
        failure: None,
        tiers: BTreeMap::new(),
        policy_changes: BTreeMap::new(),
        maintenance: Vec::new(),
    };
    let world = match build_world(scenario, options) {
        Ok(world) => world,
        Err(e) => {
            outcome.failure = Some(fail(0, oracle::OPERATIONS_MATCH_MODEL, format!("setup: {e}")));
            return outcome;
        }
    };
    let mut run = Run::new(scenario, world, None);
    let result = run.all_steps().and_then(|()| run.finish());
    outcome.failure = result.err();
    outcome.steps = run.step;
    outcome.sim_nanos = run.world.clock.elapsed_nanos();
    outcome.faults = run.faults;
    outcome.crashes = run.world.crashes;
    outcome.degraded_reads = run.world.degraded_reads();
    outcome.checks = run.checks;
    outcome.lost_files = run.lost_files;
    outcome.tiers = run.tiers;
    outcome.policy_changes = run.policy_changes;
    outcome.maintenance = run.maintenance;
    outcome.trace_hash = run.trace.finalize().to_hex()[..16].to_string();
    outcome
}

/// Runs `scenario` until the `writes`-th device write, then stops the world there.
pub fn run_until_write(scenario: &Scenario, options: &RunOptions, writes: u64) -> Result<Frozen, Failure> {
    let world = build_world(scenario, options).map_err(|e| fail(0, oracle::OPERATIONS_MATCH_MODEL, e))?;
    let mut run = Run::new(scenario, world, Some(writes));
    run.world.switch.arm_after_writes(writes);
    match run.all_steps() {
        Err(failure) if failure.invariant == FROZEN => {
            let candidates = run.frozen_candidates.take().unwrap_or_default();
            Ok(Frozen { world: run.world, candidates, reached: true })
        }
        Err(failure) => Err(failure),
        Ok(()) => Ok(Frozen { world: run.world, candidates: Vec::new(), reached: false }),
    }
}

/// Recovers a frozen world after a crash that gave each pending operation `fates`, and
/// checks the oracle.
pub fn check_crash_state(frozen: &Frozen, fates: &[Vec<Fate>], scenario: &Scenario) -> Result<(), Failure> {
    let mut world = frozen.world.fork();
    world.crash_with(fates);
    let mut run = Run::new(scenario, world, None);
    run.step = scenario.steps.len();
    run.recover_expecting(frozen.candidates.clone())
}

const FROZEN: &str = "frozen";

impl<'s> Run<'s> {
    fn new(scenario: &'s Scenario, world: World, freeze_after_writes: Option<u64>) -> Self {
        let mut trace = blake3::Hasher::new();
        trace.update(scenario.name.as_bytes());
        Run {
            scenario,
            world,
            live: Tree::default(),
            acked: Tree::default(),
            durable: Tree::default(),
            handles: BTreeMap::new(),
            next_id: 1,
            trace,
            faults: 0,
            checks: BTreeMap::new(),
            lost_files: BTreeSet::new(),
            step: 0,
            freeze_after_writes,
            frozen_candidates: None,
            tiers: BTreeMap::new(),
            policy_changes: BTreeMap::new(),
            maintenance: Vec::new(),
            rival: None,
            rival_armed: false,
            write_refused: false,
        }
    }

    fn checked(&mut self, invariant: &'static str) {
        *self.checks.entry(invariant).or_default() += 1;
    }

    fn note(&mut self, text: &str) {
        if std::env::var_os("DFS_SIM_TRACE").is_some() {
            eprintln!("trace: {text}");
        }
        self.trace.update(text.as_bytes());
        self.trace.update(b"\n");
    }

    fn all_steps(&mut self) -> Result<(), Failure> {
        for (index, step) in self.scenario.steps.iter().enumerate() {
            self.step = index;
            self.note(&format!("{index} {step:?}"));
            let barriers = self.world.pool.as_ref().map(|p| p.counters().barriers);
            let crashes = self.world.crashes;
            let mut acked_before = self.acked.clone();
            if let Step::Write { path, .. } | Step::Append { path, .. } = step {
                // Its create, if any, commits before anything could barrier.
                let _ = acked_before.open(path, self.next_id);
            }
            self.run_step(step)?;
            self.collect_rival(index)?;
            // A barrier in this step made everything committed before it durable: steps
            // that barrier either end with it (Fsync), do not change the namespace, or
            // barrier before their own commit (a write that waits for freed space). A
            // recovery inside the step replaced the pool, and its counters with it: then
            // only an empty queue of undurable commits says so.
            let same_pool = self.world.crashes == crashes;
            if let Some(pool) = self.world.pool.as_ref() {
                if !pool.has_undurable_commits() {
                    self.durable = self.acked.clone();
                } else if same_pool && Some(pool.counters().barriers) != barriers {
                    self.durable = acked_before;
                }
            }
            self.world.clock.advance(STEP_NANOS);
            if let Some(pool) = self.world.pool.as_ref() {
                oracle::structure(pool).map_err(|e| fail(index, oracle::EXTENTS_MEET_POLICY, e))?;
                self.checked(oracle::EXTENTS_MEET_POLICY);
            }
        }
        self.step = self.scenario.steps.len();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Failure> {
        let open: Vec<String> = self.handles.keys().cloned().collect();
        for path in open {
            self.run_step(&Step::Close { path })?;
        }
        self.verify()?;
        // A clean shutdown ends with a barrier, as an unmount does.
        let synced = self.world.pool().sync();
        self.note(&format!("final sync {:?}", synced.as_ref().map_err(|e| e.errno())));
        let candidates =
            if synced.is_ok() { vec![self.acked.clone()] } else { vec![self.durable.clone(), self.acked.clone()] };
        self.after_maybe_crash(candidates.clone())?;
        self.note("clean restart");
        self.world.crash_with(&[]);
        self.recover_expecting(candidates)?;
        self.verify()?;
        let expected: BTreeSet<String> = self.scenario.expect.lost_files.iter().cloned().collect();
        let judged = !self.scenario.expect.out_of_budget || !expected.is_empty();
        if judged && self.lost_files != expected {
            return Err(fail(
                self.step,
                oracle::LOSS_REPORTED_EXACTLY,
                format!("files lost: {:?}; the scenario expects {:?}", self.lost_files, expected),
            ));
        }
        if self.scenario.expect.settled {
            self.checked(oracle::EXTENTS_MEET_POLICY);
            oracle::settled(self.world.pool()).map_err(|e| fail(self.step, oracle::EXTENTS_MEET_POLICY, e))?;
        }
        self.check_tiers()?;
        if let Some(tolerance) = self.scenario.expect.balanced_fill {
            let ratios: Vec<f64> = self
                .world
                .disks
                .iter()
                .map(|d| d.inner().used_bytes() as f64 / d.inner().capacity_bytes() as f64)
                .collect();
            let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
            self.checked(oracle::SPACE_ACCOUNTING);
            if ratios.iter().any(|r| (r - mean).abs() > tolerance * mean) {
                return Err(fail(
                    self.step,
                    oracle::SPACE_ACCOUNTING,
                    format!("disks did not fill in proportion: fill ratios {ratios:.3?}, mean {mean:.3}"),
                ));
            }
            self.note(&format!("fill ratios {ratios:.4?}"));
        }
        let (view, _) = oracle::engine_view(self.world.pool());
        let mut digest = blake3::Hasher::new();
        for (path, bytes) in &view {
            digest.update(path.as_bytes());
            if let Some(bytes) = bytes {
                digest.update(&(bytes.len() as u64).to_le_bytes());
                digest.update(bytes);
            }
        }
        self.note(&format!("final {}", digest.finalize().to_hex()));
        Ok(())
    }

    /// Whether ENOSPC is a fair answer: a disk is down, failed, removed or draining (so
    /// a wide policy may lack distinct disks), or nearly full.
    /// Whether ENOSPC is a fair answer now: a disk is nearly full, or disks left the pool
    /// for good (failed, draining, removed) so the rest may lack room. A disk that is
    /// merely away (offline, or down but not yet noticed) is no reason: writes go on at
    /// reduced width, or fail with EIO below the write quorum — never ENOSPC.
    fn space_pressure(&mut self) -> bool {
        let shrunk = self.world.pool.as_ref().is_some_and(|p| {
            p.state().disks.values().any(|d| {
                matches!(
                    d.state,
                    dfs_engine::meta::state::DiskState::Failed
                        | dfs_engine::meta::state::DiskState::Draining
                        | dfs_engine::meta::state::DiskState::Removed
                )
            })
        });
        shrunk || self.world.disks.iter().any(|d| !d.is_down() && d.used_bytes() + (8 << 20) > d.capacity_bytes())
    }

    fn run_step(&mut self, step: &Step) -> Result<(), Failure> {
        let index = self.step;
        match step {
            Step::Mkdir { .. }
            | Step::Write { .. }
            | Step::Append { .. }
            | Step::Truncate { .. }
            | Step::Rename { .. }
            | Step::Unlink { .. }
            | Step::Rmdir { .. }
            | Step::Open { .. }
            | Step::WriteOpen { .. }
            | Step::Fsync { .. }
            | Step::Close { .. }
            | Step::Read { .. } => self.namespace_step(step),
            Step::Verify => self.verify(),
            Step::AddDisk { capacity } => {
                let bytes = dfs_engine::base::units::parse_size(capacity)
                    .map_err(|e| fail(index, oracle::OPERATIONS_MATCH_MODEL, e))?;
                let result = self.world.add_disk(bytes);
                self.note(&format!("add-disk {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Checkpoint => {
                let result = self.world.pool().checkpoint().map_err(|e| e.errno());
                self.note(&format!("checkpoint {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Sync => {
                let result = self.world.pool().sync().map_err(|e| e.errno());
                self.note(&format!("sync {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Crash => {
                self.faults += 1;
                self.world.crash_randomly();
                self.recover_expecting(vec![self.durable.clone()])
            }
            Step::CrashAfterWrites { writes } => {
                self.faults += 1;
                self.world.switch.arm_after_writes(*writes);
                Ok(())
            }
            Step::CrashAtPhase { phase, occurrence } => {
                self.faults += 1;
                self.world.trigger.arm(*phase, *occurrence);
                Ok(())
            }
            Step::FailDisk { disk } => self.inject(*disk, Fault::Die),
            Step::VanishDisk { disk } => self.inject(*disk, Fault::Vanish),
            Step::ReturnDisk { disk } => self.inject(*disk, Fault::Return),
            Step::FillDisk { disk } => self.inject(*disk, Fault::Fill),
            Step::Latency { disk, ticks } => self.inject(*disk, Fault::Latency { ticks: *ticks }),
            Step::BitRot { disk, blocks, target } => {
                let names = self.pick_blocks(*disk, *blocks, *target);
                for name in names {
                    let bit = self.world.rng.random_range(0..1 << 20);
                    self.world.disks[*disk].rot(name, bit);
                    self.faults += 1;
                    self.note(&format!("rot {name} bit {bit}"));
                }
                Ok(())
            }
            Step::LatentErrors { disk, blocks } => {
                let names = self.pick_blocks(*disk, *blocks, Target::Fragment);
                for name in names {
                    self.world.disks[*disk].latent(name);
                    self.faults += 1;
                    self.note(&format!("latent {name}"));
                }
                Ok(())
            }
            Step::Misdirect { disk } => {
                if let Some(target) = self.pick_blocks(*disk, 1, Target::Fragment).pop() {
                    self.world.disks[*disk].misdirect_next_write(target);
                    self.faults += 1;
                    self.note(&format!("misdirect to {target}"));
                }
                Ok(())
            }
            Step::AdvanceClock { secs } => {
                self.world.clock.advance(secs * 1_000_000_000);
                Ok(())
            }
            Step::MarkFailed { disk } => {
                self.faults += 1;
                let result = self.world.pool().fail_disk(DiskId(*disk as u32 + 1)).map_err(|e| e.errno());
                self.note(&format!("mark-failed {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::RemoveDisk { disk } => {
                let result = self.world.pool().start_removal(DiskId(*disk as u32 + 1)).map_err(|e| e.errno());
                self.note(&format!("remove-disk {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::ChangePolicy { path, policy } => {
                let result = policy.parse::<Policy>().map_err(|_| libc_einval()).and_then(|policy| {
                    let scope = match path {
                        None => PolicyScope::Default,
                        Some(path) => {
                            let ino = self.world.pool().resolve(path).map_err(|e| e.errno())?;
                            PolicyScope::Path { ino, path: path.clone(), recursive: true }
                        }
                    };
                    self.world.pool().begin_policy_change(scope, policy).map_err(|e| e.errno())
                });
                self.note(&format!("change-policy {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Rebalance { max_bytes } => {
                let result = self.world.pool().rebalance(*max_bytes);
                self.note(&format!(
                    "rebalance {:?}",
                    result.as_ref().map(|r| r.fragments_moved).map_err(|e| e.errno())
                ));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Background { steps } => {
                for _ in 0..*steps {
                    let result = self.world.pool().background_step();
                    self.note(&format!("background {:?}", result.as_ref().map_err(|e| e.errno())));
                    if self.world.switch.is_crashed() {
                        break;
                    }
                    if !matches!(result, Ok(n) if n > 0) {
                        if matches!(result, Ok(0)) && !self.scenario.expect.out_of_budget && !self.space_pressure() {
                            // The work is done: nothing may still be owed to a disk that is back.
                            self.checked(oracle::OWED_REPAIRED_ON_RETURN);
                            oracle::owed_repaired(self.world.pool())
                                .map_err(|e| fail(index, oracle::OWED_REPAIRED_ON_RETURN, e))?;
                        }
                        break;
                    }
                }
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Classify => {
                let result = self.world.pool().classify_pass();
                self.note(&format!("classify {:?}", result.as_ref().map_err(|e| e.errno())));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::Access { path, times, every_secs } => {
                for _ in 0..*times {
                    self.namespace_step(&Step::Read { path: path.clone() })?;
                    self.daemon_for(*every_secs)?;
                }
                Ok(())
            }
            Step::Daemon { secs } => self.daemon_for(*secs),
            Step::Scrub { repair } => {
                let (before, lost) = oracle::bad_fragments(self.world.pool());
                let offline_before = awaited_disks(self.world.pool());
                let result = self.world.pool().scrub_all(None, *repair);
                if self.world.switch.is_crashed() {
                    self.note("scrub interrupted by a crash");
                    return self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()]);
                }
                let report = match result {
                    Ok(report) => report,
                    // Beyond tolerance (or out of room) a repair may find no disk to
                    // write to, and the pool refuses rather than lie: a fair answer.
                    Err(e @ (Error::ReadOnly(_) | Error::NoSpace(_) | Error::Unplaceable { .. }))
                        if self.scenario.expect.out_of_budget || self.space_pressure() =>
                    {
                        self.note(&format!("scrub stopped: {}", e.errno()));
                        return Ok(());
                    }
                    Err(e) => return Err(fail(index, oracle::SCRUB_FINDS_AND_REPAIRS, e.to_string())),
                };
                let line = format!(
                    "scrub repair={repair}: {} extents, {} fragments, {} corrupt, {} missing, {} repaired, {} unrecoverable",
                    report.extents_checked,
                    report.fragments_checked,
                    report.corrupt_fragments,
                    report.missing_fragments,
                    report.repaired_extents,
                    report.unrecoverable.len()
                );
                self.note(&line);
                self.maintenance.push(format!("step {index}: {line}"));
                self.checked(oracle::SCRUB_FINDS_AND_REPAIRS);
                let pressure = self.space_pressure();
                let misdirects = self.scenario.steps[..index].iter().any(|s| matches!(s, Step::Misdirect { .. }));
                // A disk the scrub's own I/O found unreachable went offline meanwhile: its
                // fragments are neither checked nor repaired from then on.
                let went_offline = awaited_disks(self.world.pool()) != offline_before;
                let before: std::collections::BTreeSet<oracle::FragmentAt> = if went_offline {
                    let state = self.world.pool().state();
                    before.into_iter().filter(|(_, _, disk)| !state.disk_awaited(*disk)).collect()
                } else {
                    before
                };
                let faults_during = misdirects || went_offline;
                oracle::scrub_report(self.world.pool(), &report, &before, &lost, *repair, pressure, faults_during)
                    .map_err(|e| fail(index, oracle::SCRUB_FINDS_AND_REPAIRS, e))?;
                if *repair && !faults_during {
                    oracle::metadata_scrubbed(&self.world, &report)
                        .map_err(|e| fail(index, oracle::SCRUB_FINDS_AND_REPAIRS, e))?;
                }
                Ok(())
            }
            Step::ScrubDaemon { action, intensity } => {
                let pool = self.world.pool();
                let result = match action {
                    ScrubAction::Start => pool.scrub_start(*intensity),
                    ScrubAction::Pause => pool.scrub_pause(true),
                    ScrubAction::Resume => pool.scrub_pause(false),
                    ScrubAction::Stop => pool.scrub_stop(),
                };
                self.note(&format!("scrub-daemon {action:?} {:?}", result.map_err(|e| e.errno())));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::ScrubSchedule { frequency } => {
                let result = self.world.pool().scrub_schedule(*frequency, None).map_err(|e| e.errno());
                self.note(&format!("scrub-schedule {frequency:?} {result:?}"));
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])
            }
            Step::CleanupOrphans { older_than_secs } => {
                let result = self.world.pool().cleanup_orphans(*older_than_secs);
                if self.world.switch.is_crashed() {
                    self.note("cleanup interrupted by a crash");
                    return self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()]);
                }
                let cleanup = match result {
                    Ok(cleanup) => cleanup,
                    // Its barrier comes first; a pool that went read-only refuses it.
                    Err(e @ (Error::ReadOnly(_) | Error::NoSpace(_)))
                        if self.scenario.expect.out_of_budget || self.space_pressure() =>
                    {
                        self.note(&format!("cleanup-orphans stopped: {}", e.errno()));
                        return Ok(());
                    }
                    Err(e) => return Err(fail(index, oracle::NO_LEAKED_FRAGMENTS, e.to_string())),
                };
                let line = format!(
                    "cleanup-orphans older-than {older_than_secs}s: {} deleted ({} bytes), {} too young, {} errors",
                    cleanup.deleted,
                    cleanup.bytes_freed,
                    cleanup.too_young,
                    cleanup.errors.len()
                );
                self.note(&line);
                self.maintenance.push(format!("step {index}: {line}"));
                // Every orphan past the age guard is gone (unknown ages count as young).
                let now = dfs_engine::base::clock::Clock::wall(self.world.clock.as_ref()).secs;
                let left = oracle::unreferenced(&self.world, now);
                let old = left
                    .iter()
                    .find(|(_, _, age)| *older_than_secs == 0 || age.is_some_and(|age| age >= *older_than_secs));
                self.checked(oracle::NO_LEAKED_FRAGMENTS);
                if let Some((disk, name, age)) = old {
                    return Err(fail(
                        index,
                        oracle::NO_LEAKED_FRAGMENTS,
                        format!(
                            "{name} on {disk} (age {age:?}) survived cleanup-orphans --older-than {older_than_secs}s"
                        ),
                    ));
                }
                Ok(())
            }
            Step::BitRotPool { per_mille } => {
                let mut names = Vec::new();
                for disk in 0..self.world.disks.len() {
                    let all = self.pick_blocks(disk, u32::MAX, Target::Fragment);
                    let count = (all.len() as u64 * u64::from(*per_mille)).div_ceil(1000) as usize;
                    let mut all = all;
                    while names.iter().filter(|(d, _)| *d == disk).count() < count && !all.is_empty() {
                        let i = self.world.rng.random_range(0..all.len());
                        names.push((disk, all.swap_remove(i)));
                    }
                }
                for (disk, name) in names {
                    let bit = self.world.rng.random_range(0..1 << 20);
                    self.world.disks[disk].rot(name, bit);
                    self.faults += 1;
                    self.note(&format!("rot {name} on disk {disk} bit {bit}"));
                }
                Ok(())
            }
            Step::AwayAtNextRecovery { disk } => {
                self.faults += 1;
                self.world.away_at_recovery.push(*disk);
                Ok(())
            }
            Step::SecondWriter { at } => {
                self.faults += 1;
                let opener = self.world.rival_opener();
                match at {
                    Some(phase) => {
                        self.world.trigger.arm_rival(*phase, opener);
                        self.rival_armed = true;
                    }
                    None => {
                        let pool =
                            opener().map_err(|e| fail(index, oracle::ONE_WRITER, format!("the second engine: {e}")))?;
                        self.note("second writer opened");
                        self.rival = Some((pool, self.durable.clone()));
                    }
                }
                Ok(())
            }
            Step::RivalWrite { path, len, seed } => self.rival_write(index, path, *len as u64, *seed),
        }
    }

    /// Takes the second engine out of the trigger once it opened mid-barrier. It opened
    /// inside the current step's barrier, before that barrier's record, so it recovered
    /// what was durable before the step — which `durable` still is until the step ends.
    fn collect_rival(&mut self, index: usize) -> Result<(), Failure> {
        if !self.rival_armed {
            return Ok(());
        }
        if let Some(opened) = self.world.trigger.take_rival() {
            self.rival_armed = false;
            let pool = opened.map_err(|e| fail(index, oracle::ONE_WRITER, format!("the second engine: {e}")))?;
            self.note("second writer opened mid-barrier");
            self.rival = Some((pool, self.durable.clone()));
        }
        Ok(())
    }

    /// The second engine writes `path` and fsyncs: the first of the two to write owns the
    /// pool and the other must be refused (EROFS). Whoever owns it goes on serving.
    fn rival_write(&mut self, index: usize, path: &str, len: u64, seed: u64) -> Result<(), Failure> {
        let Some((mut rival, view)) = self.rival.take() else {
            self.note("skipped: no second writer");
            return Ok(());
        };
        let data = pattern(len, seed);
        let written = (|| {
            let (parent, name) = split(path);
            let parent = rival.resolve(parent)?;
            let ino = rival.create(parent, name, OWNER)?.ino;
            let fh = rival.open_file(ino)?;
            rival.write(fh, 0, &data)?;
            let synced = rival.fsync(fh);
            let _ = rival.release(fh);
            synced
        })();
        self.checked(oracle::ONE_WRITER);
        match written {
            Ok(()) => {
                // The second engine owns the pool: the first must now be refused.
                self.note("second writer wrote first: it owns the pool");
                let probe = (|| {
                    let pool = self.world.pool();
                    let ino = pool.create(Ino::ROOT, b".fence-probe", OWNER)?.ino;
                    let fh = pool.open_file(ino)?;
                    pool.write(fh, 0, b"x")?;
                    let synced = pool.fsync(fh);
                    let _ = pool.release(fh);
                    synced
                })();
                match probe {
                    Err(e) if e.errno() == libc_erofs() => {}
                    other => {
                        return Err(fail(
                            index,
                            oracle::ONE_WRITER,
                            format!("the second engine wrote, yet the first still could: {other:?}"),
                        ))
                    }
                }
                self.take_over(rival, view);
                let id = self.next_id;
                self.next_id += 1;
                for tree in [&mut self.live, &mut self.acked, &mut self.durable] {
                    let id = tree.open(path, id).map_err(|e| fail(index, oracle::ONE_WRITER, format!("model: {e}")))?;
                    tree.write(id, 0, &data);
                }
                Ok(())
            }
            Err(e) if e.errno() == libc_erofs() => {
                self.note("second writer refused: the first owns the pool");
                Ok(())
            }
            Err(e) => Err(fail(index, oracle::ONE_WRITER, format!("the second engine's write failed otherwise: {e}"))),
        }
    }

    /// The first engine was fenced: the second serves from now on, with the namespace it
    /// recovered. The first engine's open handles die with it.
    fn take_over(&mut self, rival: dfs_engine::Pool, view: Tree) {
        self.world.pool = Some(rival);
        self.handles.clear();
        self.live = view.clone();
        self.acked = view.clone();
        self.durable = view;
    }

    /// Lets `secs` of simulated time pass with the daemon running (see `Step::Daemon`).
    fn daemon_for(&mut self, secs: u64) -> Result<(), Failure> {
        let mut left = secs;
        while left > 0 {
            let tick = left.min(DAEMON_TICK_SECS);
            left -= tick;
            self.world.clock.advance(tick * 1_000_000_000);
            match self.world.pool().check_disks() {
                Ok(check) if !check.is_empty() => self.note(&format!("disks {check:?}")),
                Ok(_) => {}
                Err(e) => self.note(&format!("check-disks {}", e.errno())),
            }
            if self.world.switch.is_crashed() {
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])?;
                continue;
            }
            match self.world.pool().tiering_tick() {
                Ok(report) => {
                    if let Some(pass) = report.pass {
                        self.note(&format!("pass {pass:?}"));
                    }
                }
                Err(e) => self.note(&format!("tiering tick {}", e.errno())),
            }
            if !self.world.switch.is_crashed() {
                for _ in 0..DAEMON_ROUNDS_PER_TICK {
                    let result = self.world.pool().background_step();
                    if !matches!(result, Ok(0)) {
                        self.note(&format!("background {:?}", result.as_ref().map_err(|e| e.errno())));
                    }
                    if self.world.switch.is_crashed() || !matches!(result, Ok(n) if n > 0) {
                        break;
                    }
                }
            }
            for _ in 0..DAEMON_ROUNDS_PER_TICK {
                if self.world.switch.is_crashed() {
                    break;
                }
                match self.world.pool().scrub_tick() {
                    Ok(tick) if tick.extents == 0 && !tick.pass_started => break,
                    Ok(tick) => {
                        if tick.pass_started || tick.pass_finished {
                            self.note(&format!("scrub {tick:?}"));
                        }
                    }
                    Err(e) => {
                        self.note(&format!("scrub tick {}", e.errno()));
                        break;
                    }
                }
            }
            if !self.world.switch.is_crashed() {
                if let Err(e) = self.world.pool().sync() {
                    self.note(&format!("daemon barrier {}", e.errno()));
                }
            }
            if self.world.switch.is_crashed() {
                self.after_maybe_crash(vec![self.durable.clone(), self.acked.clone()])?;
            }
        }
        Ok(())
    }

    /// Checks the tiering expectations and records each file's tier line.
    fn check_tiers(&mut self) -> Result<(), Failure> {
        let expect = &self.scenario.expect;
        let pool = self.world.pool();
        let paths = pool.paths();
        let state = pool.state();
        let mut lines = BTreeMap::new();
        let mut counts = BTreeMap::new();
        let mut problems = Vec::new();
        for (ino, map) in &state.file_extents {
            let Some(path) = paths.get(ino) else { continue };
            let mut classes = BTreeSet::new();
            let mut policies = BTreeSet::new();
            let mut changes = 0;
            for (index, id) in map {
                let record = match pool.extent_record(*id) {
                    Ok(Some(record)) => record,
                    Ok(None) => continue,
                    Err(e) => {
                        problems.push(format!("{path} chunk {index}: {e}"));
                        continue;
                    }
                };
                let class = match pool.temperature(ChunkSlot { ino: *ino, index: *index }) {
                    Ok(temperature) => temperature.map(|t| t.class),
                    Err(e) => {
                        problems.push(format!("{path} chunk {index}: {e}"));
                        None
                    }
                };
                classes.insert(class.map_or("unclassified".to_string(), |c| c.to_string()));
                policies.insert(record.policy.to_string());
                let folded: u64 = record.history.iter().map(PolicyChange::changes).sum();
                changes = changes.max(usize::try_from(folded).unwrap_or(usize::MAX));
                if let Some(wanted) = expect.classes.get(path) {
                    if class != Some(*wanted) {
                        problems.push(format!("{path} chunk {index} is {class:?}, expected {wanted}"));
                    }
                }
                if let Some(wanted) = expect.policies.get(path) {
                    if record.policy.to_string() != *wanted {
                        problems.push(format!("{path} chunk {index} is under {}, expected {wanted}", record.policy));
                    }
                }
            }
            if expect.policy_changes_max.get(path).is_some_and(|max| changes > *max) {
                problems.push(format!(
                    "{path} went through {changes} policy changes, at most {:?} expected",
                    expect.policy_changes_max.get(path)
                ));
            }
            if expect.policy_changes_min.get(path).is_some_and(|min| changes < *min) {
                problems.push(format!(
                    "{path} went through {changes} policy changes, at least {:?} expected",
                    expect.policy_changes_min.get(path)
                ));
            }
            counts.insert(path.clone(), changes);
            let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(",");
            lines.insert(
                path.clone(),
                format!(
                    "class={} policy={} pinned={} changes={changes}",
                    join(&classes),
                    join(&policies),
                    pool.is_pinned(*ino)
                ),
            );
        }
        let named = expect
            .policies
            .keys()
            .chain(expect.classes.keys())
            .chain(expect.policy_changes_max.keys())
            .chain(expect.policy_changes_min.keys());
        for path in named {
            if !lines.contains_key(path) {
                problems.push(format!("{path} holds no extent at the end"));
            }
        }
        let tiered = state.tiering.enabled;
        if tiered {
            self.tiers = lines;
        }
        self.policy_changes = counts;
        if tiered || !problems.is_empty() {
            self.checked(oracle::EXTENTS_MEET_POLICY);
        }
        match problems.first() {
            Some(problem) => Err(fail(self.step, oracle::EXTENTS_MEET_POLICY, problem.clone())),
            None => Ok(()),
        }
    }

    fn inject(&mut self, disk: usize, fault: Fault) -> Result<(), Failure> {
        self.faults += 1;
        self.world.disks[disk].inject(&fault);
        Ok(())
    }

    /// Up to `count` distinct blocks of `target` kind on `disk`, chosen by the seed.
    fn pick_blocks(&mut self, disk: usize, count: u32, target: Target) -> Vec<BlockName> {
        let Some(sim) = self.world.disks.get(disk) else { return Vec::new() };
        let state = self.world.pool.as_ref().map(|p| p.state().clone());
        let mut candidates: Vec<BlockName> = sim
            .inner()
            .blocks()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| match (target, name) {
                (Target::Journal, BlockName::Journal { .. }) => true,
                (Target::Checkpoint, BlockName::StoreRoot { .. } | BlockName::StorePage { .. }) => true,
                (Target::Fragment, BlockName::Fragment { .. }) => true,
                (Target::DataShard | Target::ParityShard, BlockName::Fragment { extent, index }) => {
                    let needed = state
                        .as_ref()
                        .and_then(|s| s.extents.get(extent))
                        .map(|r| r.policy.needed())
                        .unwrap_or(usize::MAX);
                    (usize::from(*index) < needed) == (target == Target::DataShard)
                }
                _ => false,
            })
            .collect();
        let mut chosen = Vec::new();
        while chosen.len() < count as usize && !candidates.is_empty() {
            let i = self.world.rng.random_range(0..candidates.len());
            chosen.push(candidates.swap_remove(i));
        }
        chosen.sort();
        chosen
    }

    /// If the world stopped during the last step, crash and recover expecting one of
    /// `candidates`.
    fn after_maybe_crash(&mut self, candidates: Vec<Tree>) -> Result<(), Failure> {
        if !self.world.switch.is_crashed() {
            return Ok(());
        }
        if self.freeze_after_writes.is_some() {
            self.frozen_candidates = Some(candidates);
            return Err(fail(self.step, FROZEN, "frozen for crash-state exploration"));
        }
        self.world.crash_randomly();
        self.recover_expecting(candidates)
    }

    fn engine_parent(&mut self, path: &str) -> Result<(Ino, Vec<u8>), Error> {
        let (parent, name) = split(path);
        let parent = self.world.pool().resolve(parent)?;
        Ok((parent, name.to_vec()))
    }

    fn engine_open(&mut self, path: &str) -> Result<(Ino, u64), Error> {
        let (parent, name) = self.engine_parent(path)?;
        let pool = self.world.pool();
        let ino = match pool.lookup(parent, &name) {
            Ok(attr) => attr.ino,
            Err(Error::NotFound(_)) => pool.create(parent, &name, OWNER)?.ino,
            Err(e) => return Err(e),
        };
        let fh = pool.open_file(ino)?;
        Ok((ino, fh))
    }

    /// Runs a namespace step on the engine.
    fn execute(&mut self, step: &Step) -> Result<Option<Vec<u8>>, Error> {
        match step {
            Step::Mkdir { path } => {
                let (parent, name) = self.engine_parent(path)?;
                self.world.pool().mkdir(parent, &name, OWNER).map(|_| None)
            }
            Step::Write { path, offset, len, seed } => {
                let (_, fh) = self.engine_open(path)?;
                let pool = self.world.pool();
                let written = pool.write(fh, *offset, &pattern(*len, *seed));
                let released = pool.release(fh);
                self.write_refused = written.is_err();
                written.and(released).map(|_| None)
            }
            Step::Append { path, len, seed } => {
                let (ino, fh) = self.engine_open(path)?;
                let pool = self.world.pool();
                let size = pool.getattr(ino).map(|a| a.size);
                let written = size.and_then(|size| pool.write(fh, size, &pattern(*len, *seed)));
                let released = pool.release(fh);
                self.write_refused = written.is_err();
                written.and(released).map(|_| None)
            }
            Step::Truncate { path, size } => {
                let ino = self.world.pool().resolve(path)?;
                self.world.pool().setattr(ino, &SetAttr { size: Some(*size), ..SetAttr::default() }).map(|_| None)
            }
            Step::Rename { from, to } => {
                let (source_parent, source_name) = self.engine_parent(from)?;
                let (target_parent, target_name) = self.engine_parent(to)?;
                self.world
                    .pool()
                    .rename(source_parent, &source_name, target_parent, &target_name, RenameMode::Replace)
                    .map(|()| None)
            }
            Step::Unlink { path } => {
                let (parent, name) = self.engine_parent(path)?;
                self.world.pool().unlink(parent, &name).map(|()| None)
            }
            Step::Rmdir { path } => {
                let (parent, name) = self.engine_parent(path)?;
                self.world.pool().rmdir(parent, &name).map(|()| None)
            }
            Step::Open { path } => {
                let (_, fh) = self.engine_open(path)?;
                Ok(Some(fh.to_le_bytes().to_vec()))
            }
            Step::WriteOpen { path, offset, len, seed } => {
                let fh = self.handles.get(path).map(|h| h.fh).unwrap_or(0);
                self.world.pool().write(fh, *offset, &pattern(*len, *seed)).map(|_| None)
            }
            Step::Fsync { path } => {
                let fh = self.handles.get(path).map(|h| h.fh).unwrap_or(0);
                self.world.pool().fsync(fh).map(|()| None)
            }
            Step::Close { path } => {
                let fh = self.handles.get(path).map(|h| h.fh).unwrap_or(0);
                self.world.pool().release(fh).map(|()| None)
            }
            Step::Read { path } => {
                let ino = self.world.pool().resolve(path)?;
                let attr = self.world.pool().getattr(ino)?;
                if attr.kind == dfs_engine::InodeKind::Directory {
                    return Err(Error::IsDirectory(path.clone()));
                }
                oracle::read_all(self.world.pool(), ino).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// What the model says `step` does to `live` and `acked`.
    fn predict(
        &mut self,
        step: &Step,
        new_id: FileId,
        live: &mut Tree,
        acked: &mut Tree,
    ) -> Result<Option<Vec<u8>>, i32> {
        match step {
            Step::Mkdir { path } => {
                live.mkdir(path)?;
                acked.mkdir(path)?;
            }
            Step::Write { path, offset, len, seed } => {
                let id = live.open(path, new_id)?;
                acked.open(path, new_id)?;
                live.write(id, *offset, &pattern(*len, *seed));
                if self.close_flushes(id, *len) {
                    acked.contents.insert(id, live.contents.get(&id).cloned().unwrap_or_default());
                }
            }
            Step::Append { path, len, seed } => {
                let id = live.open(path, new_id)?;
                acked.open(path, new_id)?;
                let end = live.contents.get(&id).map(|c| c.len() as u64).unwrap_or(0);
                live.write(id, end, &pattern(*len, *seed));
                if self.close_flushes(id, *len) {
                    acked.contents.insert(id, live.contents.get(&id).cloned().unwrap_or_default());
                }
            }
            Step::Truncate { path, size } => {
                live.truncate(path, *size)?;
                acked.truncate(path, *size)?;
                if let Some(crate::model::Entry::File(id)) = live.entries.get(path.as_str()).cloned() {
                    acked.contents.insert(id, live.contents.get(&id).cloned().unwrap_or_default());
                }
            }
            Step::Rename { from, to } => {
                live.rename(from, to)?;
                acked.rename(from, to)?;
            }
            Step::Unlink { path } => {
                live.unlink(path)?;
                acked.unlink(path)?;
            }
            Step::Rmdir { path } => {
                live.rmdir(path)?;
                acked.rmdir(path)?;
            }
            Step::Open { path } => {
                live.open(path, new_id)?;
                acked.open(path, new_id)?;
            }
            Step::WriteOpen { path, offset, len, seed } => {
                let id = self.handles.get(path).map(|h| h.id).ok_or(9)?;
                live.write(id, *offset, &pattern(*len, *seed));
            }
            Step::Fsync { path } => {
                let id = self.handles.get(path).map(|h| h.id).ok_or(9)?;
                acked.contents.insert(id, live.contents.get(&id).cloned().unwrap_or_default());
            }
            Step::Close { path } => {
                let handle = self.handles.get(path).ok_or(9)?;
                let id = handle.id;
                if handle.wrote || self.handles_on(id) == 1 {
                    acked.contents.insert(id, live.contents.get(&id).cloned().unwrap_or_default());
                }
            }
            Step::Read { path } => return live.read(path).map(Some),
            _ => {}
        }
        Ok(None)
    }

    fn namespace_step(&mut self, step: &Step) -> Result<(), Failure> {
        let index = self.step;
        if let Step::Open { path } = step {
            if self.handles.contains_key(path) {
                // One handle per path: reopening closes the previous one first.
                self.namespace_step(&Step::Close { path: path.clone() })?;
            }
        }
        if let Step::WriteOpen { path, .. } | Step::Fsync { path } | Step::Close { path } = step {
            if !self.handles.contains_key(path) {
                self.note("skipped: no open handle (lost in a crash)");
                return Ok(());
            }
        }
        let new_id = self.next_id;
        self.next_id += 1;
        let mut live = self.live.clone();
        let mut acked = self.acked.clone();
        let predicted = self.predict(step, new_id, &mut live, &mut acked);
        let before = self.world.pool.as_ref().map(|p| (p.state().next_extent, unwritable_disks(p)));
        let actual = self.execute(step);
        self.collect_rival(index)?;
        if let (Some((first_new, unwritable)), false) = (before, self.world.switch.is_crashed()) {
            self.checked(oracle::WRITES_MEET_QUORUM);
            oracle::new_extents_meet_quorum(self.world.pool(), first_new, &unwritable)
                .map_err(|e| fail(index, oracle::WRITES_MEET_QUORUM, e))?;
        }
        self.note(&format!("-> {:?}", errno_of(&actual)));
        if self.world.switch.is_crashed() {
            self.handles.clear();
            // Only a barrier makes commits durable: `Fsync` runs one, which makes every
            // commit so far durable, or none; a write or truncate waiting for freed space
            // runs one before its own commit.
            let mut candidates = vec![self.durable.clone()];
            match step {
                Step::Fsync { .. } => candidates.push(acked),
                Step::Write { path, .. } | Step::Append { path, .. } => {
                    // The step's create, if any, commits before its write.
                    let mut created = self.acked.clone();
                    let _ = created.open(path, new_id);
                    candidates.push(created);
                    candidates.push(self.acked.clone());
                }
                Step::WriteOpen { .. } | Step::Close { .. } => candidates.push(self.acked.clone()),
                // A cut chunk is stored anew; short of room, that store runs a barrier
                // (frees may be waiting for one) before the truncate commits.
                Step::Truncate { .. } => candidates.push(self.acked.clone()),
                _ => {}
            }
            return self.after_maybe_crash(candidates);
        }
        match (&predicted, &actual) {
            (Ok(expected), Ok(got)) => {
                if let (Step::Read { path }, Some(expected), Some(got)) = (step, expected, got) {
                    self.checked(oracle::ACKNOWLEDGED_DATA_READABLE);
                    if expected != got {
                        return Err(fail(
                            index,
                            oracle::ACKNOWLEDGED_DATA_READABLE,
                            format!("{path}: read {} bytes that differ from the {} written", got.len(), expected.len()),
                        ));
                    }
                }
                self.accept(step, new_id, live, acked, got.as_deref());
            }
            (Err(expected), Err(got)) if *expected == got.errno() => {}
            (Ok(_), Err(error @ Error::Unavailable(_))) => {
                // Refused below the write quorum: fair only when it is true.
                self.checked(oracle::WRITES_MEET_QUORUM);
                oracle::below_quorum(&self.world)
                    .map_err(|e| fail(index, oracle::WRITES_MEET_QUORUM, format!("{error}, but {e}")))?;
                self.note("refused below the write quorum");
                self.reject_for_space(step, new_id, live);
            }
            (Ok(_), Err(error)) if error.errno() == libc_eio() => {
                let path = step.paths().first().map(|p| p.to_string()).unwrap_or_default();
                let ino = match (self.handles.get(&path), step) {
                    (Some(handle), Step::WriteOpen { .. } | Step::Fsync { .. } | Step::Close { .. }) => {
                        Some(handle.ino)
                    }
                    _ => self.world.pool().resolve(&path).ok(),
                };
                let pool = self.world.pool();
                let lost = oracle::truly_lost(pool);
                let holds_lost =
                    ino.is_some_and(|ino| pool.state().file_extent_ids(ino).iter().any(|(_, id)| lost.contains(id)));
                self.checked(oracle::LOSS_REPORTED_EXACTLY);
                if !holds_lost {
                    return Err(fail(
                        index,
                        oracle::ACKNOWLEDGED_DATA_READABLE,
                        format!("{path}: {error}, but its data is intact"),
                    ));
                }
                self.check_loss_allowed(index, &path)?;
                self.lost_files.insert(path);
            }
            (Ok(_), Err(error)) if error.errno() == libc_enospc() && self.space_pressure() => {
                self.note("enospc under space pressure");
                self.reject_for_space(step, new_id, live);
            }
            (Ok(_), Err(error)) if error.errno() == libc_erofs() && self.rival.is_some() => {
                // Fenced: the second engine claimed the pool (its open wrote a record before
                // deleting what it did not know); it serves from now on.
                self.checked(oracle::ONE_WRITER);
                let text = error.to_string();
                if !text.contains("another process wrote journal record") && !text.contains("fenced:") {
                    return Err(fail(index, oracle::ONE_WRITER, format!("refused, but not fenced: {error}")));
                }
                self.note("first writer fenced: the second owns the pool");
                if let Some((rival, view)) = self.rival.take() {
                    self.take_over(rival, view);
                }
                return Ok(());
            }
            (Ok(_), Err(error)) if error.errno() == libc_erofs() && self.scenario.expect.out_of_budget => {
                // Read-only refuses like a full pool (buffered data stays buffered) — unless
                // it refused the create itself.
                let created = match step {
                    Step::Write { path, .. } | Step::Append { path, .. } => self.world.pool().resolve(path).is_ok(),
                    _ => true,
                };
                if created {
                    self.reject_for_space(step, new_id, live);
                }
            }
            _ => {
                return Err(fail(
                    index,
                    oracle::OPERATIONS_MATCH_MODEL,
                    format!("{step:?}: the model says {predicted:?}, the engine answered {actual:?}"),
                ))
            }
        }
        self.checked(oracle::OPERATIONS_MATCH_MODEL);
        Ok(())
    }

    /// Takes a successful step's model effects and handle bookkeeping.
    fn accept(&mut self, step: &Step, new_id: FileId, live: Tree, acked: Tree, result: Option<&[u8]>) {
        self.live = live;
        self.acked = acked;
        match step {
            Step::Open { path } => {
                let id = match self.live.entries.get(path) {
                    Some(crate::model::Entry::File(id)) => *id,
                    _ => new_id,
                };
                let fh = result.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
                let ino = self.world.pool().resolve(path).unwrap_or(Ino(0));
                self.handles.insert(path.clone(), OpenHandle { fh, ino, id, wrote: false });
            }
            Step::Close { path } => {
                self.handles.remove(path);
                self.collect_garbage();
            }
            Step::WriteOpen { path, .. } => {
                if let Some(handle) = self.handles.get_mut(path) {
                    handle.wrote = true;
                }
            }
            Step::Unlink { .. } | Step::Rename { .. } => self.collect_garbage(),
            _ => {}
        }
    }

    /// After ENOSPC: the file may have been created, but no data became durable; a failed
    /// last close drops what was buffered, while an open handle keeps it buffered.
    fn reject_for_space(&mut self, step: &Step, new_id: FileId, live_after: Tree) {
        match step {
            Step::Write { path, .. } | Step::Append { path, .. } => {
                let id = self.live.open(path, new_id).ok();
                let _ = self.acked.open(path, new_id);
                if !self.write_refused && id.is_some_and(|id| self.handles.values().any(|h| h.id == id)) {
                    // The close failed, but another handle keeps the file open: its buffer
                    // keeps the data. (A refused write took nothing.)
                    self.live = live_after;
                }
            }
            Step::Close { path } => {
                if let Some(handle) = self.handles.remove(path) {
                    if self.handles_on(handle.id) == 0 {
                        let acked = self.acked.contents.get(&handle.id).cloned().unwrap_or_default();
                        self.live.contents.insert(handle.id, acked);
                    }
                }
                self.collect_garbage();
            }
            _ => {}
        }
    }

    /// A file may be lost only when the scenario says so, or faults went beyond
    /// tolerance on purpose; otherwise losing it breaks invariant 1.
    fn check_loss_allowed(&self, index: usize, path: &str) -> Result<(), Failure> {
        let expect = &self.scenario.expect;
        if expect.out_of_budget || expect.lost_files.iter().any(|p| p == path) {
            return Ok(());
        }
        Err(fail(
            index,
            oracle::ACKNOWLEDGED_DATA_READABLE,
            format!("{path}: data lost although every fault stayed within tolerance"),
        ))
    }

    /// Whether the close ending a `Write`/`Append` step of `len` bytes flushes file `id`:
    /// the engine flushes on a release only when the handle wrote (a zero-length write
    /// writes nothing) or it was the file's last handle.
    fn close_flushes(&self, id: FileId, len: u64) -> bool {
        len > 0 || self.handles_on(id) == 0
    }

    /// How many open handles hold file `id`.
    fn handles_on(&self, id: FileId) -> usize {
        self.handles.values().filter(|h| h.id == id).count()
    }

    fn lost_files_now(&mut self) -> BTreeSet<String> {
        let pool = self.world.pool();
        oracle::files_of(pool, &oracle::truly_lost(pool))
    }

    fn collect_garbage(&mut self) {
        let held: BTreeSet<FileId> = self.handles.values().map(|h| h.id).collect();
        let keep = |tree: &Tree, id: &FileId| {
            held.contains(id) || tree.entries.values().any(|e| *e == crate::model::Entry::File(*id))
        };
        let live_ids: Vec<FileId> = self.live.contents.keys().copied().filter(|id| !keep(&self.live, id)).collect();
        for id in live_ids {
            self.live.contents.remove(&id);
        }
        let acked_ids: Vec<FileId> = self.acked.contents.keys().copied().filter(|id| !keep(&self.acked, id)).collect();
        for id in acked_ids {
            self.acked.contents.remove(&id);
        }
    }

    /// Recovers the pool and checks it shows one of `candidates`, then every
    /// post-recovery invariant.
    fn recover_expecting(&mut self, candidates: Vec<Tree>) -> Result<(), Failure> {
        let index = self.step;
        self.handles.clear();
        let report = loop {
            match self.world.recover() {
                Ok(_) if self.world.switch.is_crashed() && self.freeze_after_writes.is_some() => {
                    self.frozen_candidates = Some(candidates);
                    return Err(fail(index, FROZEN, "frozen during recovery"));
                }
                Ok(report) => break report,
                Err(_) if self.world.switch.is_crashed() => {
                    // The machine crashed again while recovering: crash and recover anew.
                    if self.freeze_after_writes.is_some() {
                        self.frozen_candidates = Some(candidates);
                        return Err(fail(index, FROZEN, "frozen during recovery"));
                    }
                    self.world.crash_randomly();
                }
                Err(e) => return Err(fail(index, oracle::METADATA_REPLICAS_AGREE, format!("recovery failed: {e}"))),
            }
        };
        self.note(&format!(
            "recovered replayed={} rewritten={} orphans={}/{}",
            report.records_replayed,
            report.journal_rewritten,
            report.orphan_fragments_removed,
            report.orphan_inodes_removed
        ));
        let (view, failed) = oracle::engine_view(self.world.pool());
        let lost = self.lost_files_now();
        for (path, (error, _)) in &failed {
            if !lost.contains(path) {
                return Err(fail(
                    index,
                    oracle::ACKNOWLEDGED_DATA_READABLE,
                    format!("{path}: {error}, but its data is intact"),
                ));
            }
            self.check_loss_allowed(index, path)?;
            self.lost_files.insert(path.clone());
        }
        let pool_ref =
            self.world.pool.as_ref().ok_or_else(|| fail(index, oracle::METADATA_REPLICAS_AGREE, "no pool"))?;
        let matches = |expected: &View| {
            expected.len() == view.len()
                && expected.iter().all(|(path, bytes)| match view.get(path) {
                    None => false,
                    // Unreadable (lost) data: judge by the size metadata still holds.
                    Some(_) if failed.contains_key(path) => match (failed.get(path), bytes) {
                        (Some((_, ino)), Some(bytes)) => oracle::metadata_matches(pool_ref, *ino, bytes),
                        _ => false,
                    },
                    Some(got) => got == bytes,
                })
        };
        let views: Vec<View> = candidates.iter().map(Tree::view).collect();
        let matched = views.iter().position(matches);
        let Some(matched) = matched else {
            let differences: Vec<String> = views
                .iter()
                .enumerate()
                .map(|(i, expected)| {
                    let mut paths: Vec<&String> = expected
                        .iter()
                        .filter(|(p, b)| !failed.contains_key(*p) && view.get(*p) != Some(b))
                        .map(|(p, _)| p)
                        .chain(view.keys().filter(|p| !expected.contains_key(*p)))
                        .chain(failed.keys().filter(|p| expected.contains_key(*p)))
                        .collect();
                    paths.sort();
                    paths.dedup();
                    let details: Vec<String> = paths
                        .iter()
                        .map(|p| {
                            let want = expected.get(*p).map(|b| b.as_ref().map(|b| b.len()));
                            let got = view.get(*p).map(|b| b.as_ref().map(|b| b.len()));
                            let unreadable = if failed.contains_key(*p) { " unreadable" } else { "" };
                            format!("{p} (engine {got:?}{unreadable}, model {want:?})")
                        })
                        .collect();
                    format!("state {i} differs at {}", details.join(", "))
                })
                .collect();
            let invariant =
                if views.len() > 1 { oracle::NO_HALF_VISIBLE_STATE } else { oracle::ACKNOWLEDGED_DATA_READABLE };
            return Err(fail(
                index,
                invariant,
                format!(
                    "after recovery the namespace is none of the {} acceptable states: {}",
                    views.len(),
                    differences.join("; ")
                ),
            ));
        };
        self.checked(oracle::NO_HALF_VISIBLE_STATE);
        self.checked(oracle::ACKNOWLEDGED_DATA_READABLE);
        self.note(&format!("matched state {matched}"));
        self.acked = candidates[matched].clone();
        self.acked.collect_garbage();
        self.live = self.acked.clone();
        self.durable = self.acked.clone();
        let pool = self.world.pool.as_ref().ok_or_else(|| fail(index, oracle::METADATA_REPLICAS_AGREE, "no pool"))?;
        oracle::structure(pool).map_err(|e| fail(index, oracle::EXTENTS_MEET_POLICY, e))?;
        let away: Vec<dfs_engine::DiskId> =
            self.world.away_last_recovery.iter().map(|d| dfs_engine::DiskId(*d as u32 + 1)).collect();
        oracle::no_leaks_except(&self.world, &away).map_err(|e| fail(index, oracle::NO_LEAKED_FRAGMENTS, e))?;
        oracle::replicas_agree(&self.world).map_err(|e| fail(index, oracle::METADATA_REPLICAS_AGREE, e))?;
        oracle::space_accounting(&self.world).map_err(|e| fail(index, oracle::SPACE_ACCOUNTING, e))?;
        for invariant in [
            oracle::EXTENTS_MEET_POLICY,
            oracle::NO_LEAKED_FRAGMENTS,
            oracle::METADATA_REPLICAS_AGREE,
            oracle::SPACE_ACCOUNTING,
        ] {
            self.checked(invariant);
        }
        Ok(())
    }

    /// Reads everything and compares with the live model; checks the loss report.
    fn verify(&mut self) -> Result<(), Failure> {
        let index = self.step;
        let (view, failed) = oracle::engine_view(self.world.pool());
        let truly_lost = oracle::truly_lost(self.world.pool());
        let lost_files = oracle::files_of(self.world.pool(), &truly_lost);
        self.checked(oracle::ACKNOWLEDGED_DATA_READABLE);
        let expected = self.live.view();
        for (path, bytes) in &expected {
            match (view.get(path), failed.get(path).map(|(error, _)| error)) {
                (_, Some(error)) => {
                    if !lost_files.contains(path) || error.errno() != libc_eio() {
                        return Err(fail(
                            index,
                            oracle::ACKNOWLEDGED_DATA_READABLE,
                            format!("{path}: {error}, but its data is intact"),
                        ));
                    }
                    if !error.to_string().contains("lost") {
                        return Err(fail(
                            index,
                            oracle::LOSS_REPORTED_EXACTLY,
                            format!("{path}: {error} does not name the lost extent"),
                        ));
                    }
                    self.check_loss_allowed(index, path)?;
                    self.lost_files.insert(path.clone());
                }
                (Some(got), None) if got == bytes => {}
                (got, None) => {
                    let first_difference = match (got, bytes) {
                        (Some(Some(got)), Some(want)) => got.iter().zip(want.iter()).position(|(a, b)| a != b),
                        _ => None,
                    };
                    return Err(fail(
                        index,
                        oracle::ACKNOWLEDGED_DATA_READABLE,
                        format!(
                            "{path}: engine holds {:?} bytes, the model {:?}; first difference at {first_difference:?}",
                            got.map(|g| g.as_ref().map(|b| b.len())),
                            bytes.as_ref().map(|b| b.len())
                        ),
                    ));
                }
            }
        }
        if let Some(extra) = view.keys().find(|p| !expected.contains_key(*p)) {
            return Err(fail(
                index,
                oracle::OPERATIONS_MATCH_MODEL,
                format!("{extra} exists in the engine but not in the model"),
            ));
        }
        let reported = oracle::reported_lost(self.world.pool());
        let truth: BTreeSet<String> = truly_lost.iter().map(ToString::to_string).collect();
        self.checked(oracle::LOSS_REPORTED_EXACTLY);
        if reported != truth {
            return Err(fail(
                index,
                oracle::LOSS_REPORTED_EXACTLY,
                format!("engine reports lost {reported:?}, truly lost {truth:?}"),
            ));
        }
        self.note(&format!("verified {} paths, {} lost", expected.len(), truth.len()));
        Ok(())
    }
}

/// Disks offline and waited for.
fn awaited_disks(pool: &dfs_engine::Pool) -> Vec<dfs_engine::DiskId> {
    let state = pool.state();
    state.disks.keys().filter(|d| state.disk_awaited(**d)).copied().collect()
}

/// Disks that take no new fragment now (offline, failed, draining, removed).
fn unwritable_disks(pool: &dfs_engine::Pool) -> Vec<dfs_engine::DiskId> {
    let state = pool.state();
    state.disks.keys().filter(|d| !state.disk_writable(**d)).copied().collect()
}

fn libc_einval() -> i32 {
    22
}

fn libc_eio() -> i32 {
    Error::Io(String::new()).errno()
}

fn libc_enospc() -> i32 {
    Error::NoSpace(String::new()).errno()
}

fn libc_erofs() -> i32 {
    Error::ReadOnly(String::new()).errno()
}

/// Every fragment block on a disk (for tests and tools).
pub fn fragment_names(device: &dyn BlockDevice) -> Vec<BlockName> {
    device.list(BlockKind::Fragment).unwrap_or_default()
}
