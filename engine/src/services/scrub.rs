//! Scrub: read and verify every fragment of every extent (not only those a read would
//! use), repair what is within tolerance from the surviving fragments, report what is
//! not.
//!
//! Contract:
//! - A check reads every fragment of an extent from its disk and verifies it as exactly
//!   that fragment (extent, index, length, checksum), then checks the decoded data
//!   against the extent's BLAKE3. Every corrupt, missing or unreadable fragment it visits
//!   is a finding; nothing is hidden.
//! - Repair (`rewrite_fragments`) writes only the bad fragments, in place on healthy
//!   disks, and follows the geometry rule: new fragments durable → record → old copies
//!   deleted. An extent with fewer intact fragments than its policy needs is reported
//!   unrecoverable, never "repaired".
//! - Progress is metadata: each checked extent's time (`Op::Scrubbed`) and the pass's
//!   statistics (`Op::SetScrub`), so a background pass resumes where it stopped after a
//!   restart, and the oldest-checked extents go first (SnapRAID's incremental scrub).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::base::io::run_all;
use crate::media::codec;
use crate::media::device::{BlockName, DeviceError, ExtentId};
use crate::media::fragment;
use crate::meta::state::{ChunkSlot, DiskId, ExtentRecord, Ino, Op, Transaction, EXTENT_BYTES_MAX};
use crate::pool::Pool;

pub use crate::meta::scrub_state::{FinishedPass, Frequency, Intensity, PassStats, ScrubState};
pub use crate::pool::stored::{MetadataCheck, MetadataFinding, METADATA_CHECK_STEP};

/// What is wrong with one fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Problem {
    /// The disk holds no such block.
    Missing,
    /// The block is there but is not this fragment (rot, torn or misdirected write).
    Corrupt(String),
    /// The disk could not read it (latent error, failed or vanished disk).
    Unreadable(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::Corrupt(why) => write!(f, "corrupt: {why}"),
            Problem::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// One bad fragment a check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub extent: ExtentId,
    pub index: u8,
    pub disk: DiskId,
    pub problem: Problem,
}

/// One extent's check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentCheck {
    pub fragments: u64,
    pub bytes: u64,
    pub findings: Vec<Finding>,
    /// Why the data cannot be rebuilt, when it cannot.
    pub lost: Option<String>,
}

/// One finding, as reports show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FindingView {
    pub extent: String,
    pub file: String,
    pub offset: u64,
    pub fragment: u8,
    pub disk: String,
    pub problem: String,
    /// Whether the repair rewrote it.
    pub repaired: bool,
    /// The finding itself, for programs.
    #[serde(skip)]
    pub raw: Finding,
}

/// An extent that could not be repaired, or was lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtentProblemView {
    pub extent: String,
    pub file: String,
    pub offset: u64,
    pub detail: String,
}

/// What a one-shot scrub found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    pub extents_checked: u64,
    pub fragments_checked: u64,
    pub bytes_checked: u64,
    pub corrupt_fragments: u64,
    pub missing_fragments: u64,
    pub repaired_extents: u64,
    pub repaired_fragments: u64,
    pub findings: Vec<FindingView>,
    /// In tolerance, but the repair could not be written (no disk with room, say).
    pub repair_failed: Vec<ExtentProblemView>,
    /// Beyond tolerance: fewer intact fragments than the policy needs.
    pub unrecoverable: Vec<ExtentProblemView>,
    /// The metadata store's copies on the journal disks, checked (and repaired) once the
    /// extents are done; `None` for a scrub of part of the namespace.
    pub metadata: Option<MetadataCheck>,
}

/// A one-shot scrub in progress: the extents still to check and the report so far.
/// Driven by `Pool::scrub_run_step`, so a caller may release the pool between steps.
pub struct ScrubRun {
    queue: VecDeque<ExtentId>,
    total: usize,
    repair: bool,
    /// File and offset of every extent in scope, for the report.
    /// Each extent's file, offset and name (its chunk).
    places: BTreeMap<ExtentId, (String, u64, String)>,
    /// Where the check of the metadata store's copies goes on (a scrub of the whole
    /// pool), `None` once done or not wanted.
    metadata_from: Option<u64>,
    pub report: ScrubReport,
}

impl ScrubRun {
    /// Extents in scope.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Extents still to check.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is left to check: no extent, and not the metadata.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty() && self.metadata_from.is_none()
    }
}

/// What the daemon's scrub step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubTick {
    pub extents: usize,
    pub pass_started: bool,
    pub pass_finished: bool,
}

/// One fragment to read: index, disk, its device, whether the disk is in service.
type FragmentJob = (usize, DiskId, Option<std::sync::Arc<dyn crate::media::device::BlockDevice>>, bool);

/// How a repair went: `Err` says why the extent is still not whole.
type RepairOutcome = std::result::Result<(), String>;

impl Pool {
    /// Reads every fragment of `record` and verifies it; decodes and checks the data.
    pub fn check_extent(&self, record: &ExtentRecord) -> ExtentCheck {
        if record.is_inline() {
            let (bytes, lost) = match self.inline_data(record) {
                Ok(data) => (
                    data.len() as u64,
                    (blake3::hash(&data).as_bytes() != &record.hash)
                        .then(|| "inline data does not match the extent checksum".to_string()),
                ),
                Err(error) => (0, Some(format!("inline data unreadable: {error}"))),
            };
            return ExtentCheck { bytes, lost, ..ExtentCheck::default() };
        }
        let id = record.id;
        let shard_len = codec::shard_len(record.policy, record.len as usize);
        let jobs: Vec<FragmentJob> = record
            .fragments
            .iter()
            .enumerate()
            .map(|(i, disk)| {
                let readable = self.state.disk_readable(*disk);
                (i, *disk, self.devices.get(disk).cloned(), readable)
            })
            .collect();
        let results = run_all(self.options.parallel_io, jobs, |(i, disk, device, readable)| {
            let name = BlockName::Fragment { extent: id, index: i as u8 };
            let outcome = match (device, readable) {
                (Some(device), true) => match device.read(name) {
                    Ok(block) => {
                        let bytes = block.len() as u64;
                        match fragment::verify(&block, id, i as u8, shard_len) {
                            Ok(payload) => Ok((bytes, payload.to_vec())),
                            Err(e) => Err((bytes, Problem::Corrupt(e.to_string()))),
                        }
                    }
                    Err(DeviceError::NotFound) => Err((0, Problem::Missing)),
                    Err(e) => Err((0, Problem::Unreadable(e.to_string()))),
                },
                _ => Err((0, Problem::Unreadable(format!("disk {disk} is not in service")))),
            };
            (i, disk, outcome)
        });
        let mut check = ExtentCheck::default();
        let mut payloads: Vec<Option<Vec<u8>>> = vec![None; record.fragments.len()];
        for (i, disk, outcome) in results {
            if self.state.disk_awaited(disk) {
                // Offline and waited for: unknown, not bad, and not repaired until it is
                // back (its grace period decides).
                continue;
            }
            check.fragments += 1;
            match outcome {
                Ok((bytes, payload)) => {
                    check.bytes += bytes;
                    payloads[i] = Some(payload);
                }
                Err((bytes, problem)) => {
                    check.bytes += bytes;
                    check.findings.push(Finding { extent: id, index: i as u8, disk, problem });
                }
            }
        }
        let intact = payloads.iter().filter(|p| p.is_some()).count();
        let needed = record.policy.needed();
        check.lost = if intact < needed {
            Some(format!("{intact} of {} fragments intact, {needed} needed", record.fragments.len()))
        } else {
            match codec::decode(record.codec, record.policy, record.len as usize, &payloads) {
                Ok(data) if blake3::hash(&data).as_bytes() == &record.hash => None,
                Ok(_) => Some("every fragment verifies but the decoded data does not match the extent".into()),
                Err(e) => Some(format!("decoding failed: {e}")),
            }
        };
        check
    }

    /// Checks extent `id` and, with `repair`, rewrites its bad fragments. Returns the
    /// check and the repair's outcome (`Some(Ok(()))` repaired, `Some(Err(why))` not).
    fn scrub_extent(&mut self, id: ExtentId, repair: bool) -> Result<Option<(ExtentCheck, Option<RepairOutcome>)>> {
        let record = match self.extent_record(id) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(error) => {
                let lost = Some(format!("its record cannot be read from the metadata store: {error}"));
                return Ok(Some((ExtentCheck { lost, ..ExtentCheck::default() }, None)));
            }
        };
        let check = self.check_extent(&record);
        if check.findings.is_empty() || check.lost.is_some() {
            return Ok(Some((check, None)));
        }
        if !repair {
            self.degraded.insert(id);
            return Ok(Some((check, None)));
        }
        // A repair write can itself go wrong (a misdirected write lands elsewhere), so
        // the extent is checked again after each attempt; two attempts at most.
        let mut outcome = Err("not attempted".to_string());
        for _ in 0..2 {
            outcome = match self.rewrite_fragments(id) {
                Ok(_) => match self.extent_record(id)?.map(|r| self.check_extent(&r)) {
                    Some(after) if after.findings.is_empty() && after.lost.is_none() => Ok(()),
                    Some(after) => Err(format!("still {} bad fragment(s) after the repair", after.findings.len())),
                    None => Ok(()),
                },
                Err(e @ (Error::ReadOnly(_) | Error::NoDisks)) => return Err(e),
                Err(e) => Err(e.to_string()),
            };
            if outcome.is_ok() {
                break;
            }
        }
        if outcome.is_err() {
            self.degraded.insert(id);
        }
        Ok(Some((check, Some(outcome))))
    }

    /// Every extent of the files under `under` (all files when `None`), as (id, file,
    /// offset), oldest-checked first.
    fn scrub_scope(&self, under: Option<Ino>) -> Result<Vec<(ExtentId, Ino, u64)>> {
        let files: Vec<Ino> = match under {
            None => self.state.file_extents.keys().copied().collect(),
            Some(ino) => self.scope_inodes(ino, true)?,
        };
        let mut scope: Vec<(ExtentId, Ino, u64)> = files
            .iter()
            .flat_map(|ino| {
                let ids = self.state.file_extent_ids(*ino);
                ids.into_iter().map(move |(index, id)| (id, *ino, index * EXTENT_BYTES_MAX))
            })
            .collect();
        scope.sort_by_key(|(id, _, _)| (self.state.scrubbed.get(id).copied(), *id));
        Ok(scope)
    }

    /// Plans a one-shot scrub of every extent (or of the files under `under`).
    pub fn scrub_plan(&self, under: Option<Ino>, repair: bool) -> Result<ScrubRun> {
        let scope = self.scrub_scope(under)?;
        let paths = self.paths();
        let places = scope
            .iter()
            .map(|(id, ino, offset)| {
                let file = paths.get(ino).cloned().unwrap_or_else(|| format!("(unlinked inode {})", ino.0));
                let name = ChunkSlot { ino: *ino, index: offset / EXTENT_BYTES_MAX }.to_string();
                (*id, (file, *offset, name))
            })
            .collect();
        Ok(ScrubRun {
            total: scope.len(),
            queue: scope.into_iter().map(|(id, _, _)| id).collect(),
            repair,
            places,
            metadata_from: under.is_none().then_some(0),
            report: ScrubReport::default(),
        })
    }

    /// Checks (and repairs) up to `max_extents` extents of `run`, records them as
    /// scrubbed, and makes it durable; once no extent is left, checks the metadata
    /// store's copies (a scrub of the whole pool).
    pub fn scrub_run_step(&mut self, run: &mut ScrubRun, max_extents: usize) -> Result<()> {
        let now = self.clock.wall().secs;
        let mut checked = Vec::new();
        while checked.len() < max_extents {
            let Some(id) = run.queue.pop_front() else { break };
            let Some((check, repair)) = self.scrub_extent(id, run.repair)? else { continue };
            checked.push(id);
            let (file, offset, name) = run.places.get(&id).cloned().unwrap_or_default();
            let report = &mut run.report;
            report.extents_checked += 1;
            report.fragments_checked += check.fragments;
            report.bytes_checked += check.bytes;
            let repaired = matches!(repair, Some(Ok(())));
            for finding in &check.findings {
                match finding.problem {
                    Problem::Corrupt(_) => report.corrupt_fragments += 1,
                    _ => report.missing_fragments += 1,
                }
                report.findings.push(FindingView {
                    extent: name.clone(),
                    file: file.clone(),
                    offset,
                    fragment: finding.index,
                    disk: finding.disk.to_string(),
                    problem: finding.problem.to_string(),
                    repaired,
                    raw: finding.clone(),
                });
            }
            let view = |detail: String| ExtentProblemView { extent: name.clone(), file: file.clone(), offset, detail };
            match (&check.lost, repair) {
                (Some(why), _) => report.unrecoverable.push(view(why.clone())),
                (None, Some(Ok(()))) => {
                    report.repaired_extents += 1;
                    report.repaired_fragments += check.findings.len() as u64;
                }
                (None, Some(Err(why))) => report.repair_failed.push(view(why)),
                (None, None) => {}
            }
        }
        if !checked.is_empty() {
            self.commit(Transaction { ops: vec![Op::Scrubbed { at_secs: now, extents: checked }] })?;
        }
        self.sync()?;
        if let Some(from) = run.metadata_from.filter(|_| run.queue.is_empty()) {
            let (step, next) = self.check_metadata_step(run.repair, from, METADATA_CHECK_STEP);
            run.report.metadata.get_or_insert_with(MetadataCheck::default).absorb(step);
            run.metadata_from = next;
        }
        Ok(())
    }

    /// A whole one-shot scrub.
    pub fn scrub_all(&mut self, under: Option<Ino>, repair: bool) -> Result<ScrubReport> {
        let mut run = self.scrub_plan(under, repair)?;
        while !run.is_done() {
            self.scrub_run_step(&mut run, 16)?;
        }
        Ok(run.report)
    }

    /// The background scrub's state.
    pub fn scrub_state(&self) -> &ScrubState {
        &self.state.scrub
    }

    fn put_scrub(&mut self, scrub: ScrubState) -> Result<()> {
        self.commit(Transaction { ops: vec![Op::SetScrub(scrub)] })?;
        self.sync()
    }

    /// A pass covers the extents that exist now and were last checked before it started.
    /// It counts as started at the next second, so an extent a one-shot scrub checked in
    /// this second is checked again (else a pass begun right after one would find nothing
    /// to check and record "0 of 0 extents" as the last full pass); the pass's own checks
    /// are recorded no earlier than its start, so they count as done.
    fn new_pass(&self) -> PassStats {
        PassStats {
            started_secs: self.clock.wall().secs.saturating_add(1),
            extent_limit: self.state.next_extent,
            ..PassStats::default()
        }
    }

    /// `scrub-daemon start`: begins a background pass (unless one is in progress) and
    /// resumes it. Durable on return.
    pub fn scrub_start(&mut self, intensity: Option<Intensity>) -> Result<()> {
        let mut scrub = self.state.scrub;
        if scrub.pass.is_none() {
            scrub.pass = Some(self.new_pass());
            self.pacing.metadata_from = None;
        }
        scrub.paused = false;
        scrub.intensity = intensity.unwrap_or(scrub.intensity);
        self.put_scrub(scrub)
    }

    /// `scrub-daemon pause` (`true`) or `resume` (`false`); `NotFound` without a pass.
    pub fn scrub_pause(&mut self, paused: bool) -> Result<()> {
        let mut scrub = self.state.scrub;
        if scrub.pass.is_none() {
            return Err(Error::NotFound("background scrub pass (start one with `dfs scrub-daemon start`)".into()));
        }
        scrub.paused = paused;
        self.put_scrub(scrub)
    }

    /// `scrub-daemon stop`: ends the pass in progress (what it checked stays checked).
    pub fn scrub_stop(&mut self) -> Result<()> {
        let mut scrub = self.state.scrub;
        scrub.pass = None;
        scrub.paused = false;
        self.pacing.metadata_from = None;
        self.put_scrub(scrub)
    }

    /// `scrub-schedule`: when the daemon starts passes by itself, and how hard they run.
    pub fn scrub_schedule(&mut self, frequency: Frequency, intensity: Option<Intensity>) -> Result<()> {
        let mut scrub = self.state.scrub;
        scrub.frequency = frequency;
        scrub.intensity = intensity.unwrap_or(scrub.intensity);
        self.put_scrub(scrub)
    }

    /// How many extents the pass in progress still has to check.
    pub fn scrub_pass_left(&self) -> u64 {
        self.state.extent_index.unscrubbed_len()
    }

    /// Extents the pass in progress still has to check, oldest-checked first, from a
    /// visit of every extent: what `ScrubOrder` must agree with.
    fn scanned_scrub_remaining(&self) -> Vec<ExtentId> {
        let Some(pass) = self.state.scrub.pass else { return Vec::new() };
        let mut left: Vec<ExtentId> = self
            .state
            .extents
            .keys()
            .filter(|id| id.0 < pass.extent_limit)
            .filter(|id| self.state.scrubbed.get(id).is_none_or(|at| *at < pass.started_secs))
            .collect();
        left.sort_by_key(|id| (self.state.scrubbed.get(id).copied(), *id));
        left
    }

    /// Notes a foreground request, which the background scrub yields to.
    pub(crate) fn note_foreground(&mut self) {
        self.pacing.foreground_nanos = Some(self.clock.monotonic_nanos());
    }

    /// The daemon's scrub step: starts a pass when the schedule says so; then, unless
    /// paused, out of budget or yielding to a recent foreground request, checks and
    /// repairs the next few extents of the pass, and finishes it when none is left.
    pub fn scrub_tick(&mut self) -> Result<ScrubTick> {
        let mut tick = ScrubTick::default();
        let mut scrub = self.state.scrub;
        let now = self.clock.wall().secs;
        if scrub.pass.is_none() {
            let last = scrub.last_full_pass.map(|p| p.stats.started_secs);
            let due = scrub
                .frequency
                .interval_secs()
                .is_some_and(|every| last.is_none_or(|last| now.saturating_sub(last) >= every));
            if !due {
                return Ok(tick);
            }
            scrub.pass = Some(self.new_pass());
            scrub.paused = false;
            self.put_scrub(scrub)?;
            self.pacing.metadata_from = None;
            tick.pass_started = true;
        }
        if scrub.paused {
            return Ok(tick);
        }
        let intensity = scrub.intensity;
        let monotonic = self.clock.monotonic_nanos();
        let yield_nanos = intensity.yield_millis() * 1_000_000;
        if self.pacing.foreground_nanos.is_some_and(|at| monotonic.saturating_sub(at) < yield_nanos) {
            return Ok(tick);
        }
        // One second of budget at most: a full budget fits any extent.
        let budget = intensity
            .bytes_per_sec()
            .map_or(f64::INFINITY, |rate| self.pacing.budget.available(rate as f64, rate as f64, monotonic));
        let left = self.scrub_pass_left();
        let front = self.scrub_order.front(&self.state, intensity.extents_per_step());
        debug_assert!(
            self.scanned_scrub_remaining().into_iter().take(front.len()).eq(front.iter().copied()),
            "the scrub order differs from a sort of the extents left"
        );
        let mut pass = scrub.pass.unwrap_or_default();
        let mut checked = Vec::new();
        let mut spent = 0.0;
        for id in front {
            let len = self.state.extents.get(&id).map_or(0, |r| u64::from(r.len)) as f64;
            if spent + len > budget {
                break;
            }
            let Some((check, repair)) = self.scrub_extent(id, true)? else { continue };
            spent += len;
            checked.push(id);
            pass.extents += 1;
            pass.fragments += check.fragments;
            pass.bytes += check.bytes;
            for finding in &check.findings {
                match finding.problem {
                    Problem::Corrupt(_) => pass.corrupt += 1,
                    _ => pass.missing += 1,
                }
            }
            if check.lost.is_some() {
                pass.unrecoverable += 1;
                tracing::error!(stored_as = %id, detail = ?check.lost, "scrub: extent beyond repair");
            }
            if matches!(repair, Some(Ok(()))) {
                pass.repaired += 1;
            }
        }
        self.pacing.budget.spend(spent);
        tick.extents = checked.len();
        // A pass ends with the metadata's copies, as a one-shot scrub of the pool does, a
        // step a tick (where it stands is kept in memory: a restart checks them again).
        let mut finished = left == checked.len() as u64;
        if finished {
            let from = self.pacing.metadata_from.unwrap_or(0);
            let (metadata, next) = self.check_metadata_step(true, from, METADATA_CHECK_STEP);
            if !metadata.findings.is_empty() || !metadata.lost.is_empty() {
                tracing::warn!(
                    bad = metadata.findings.len(),
                    repaired = metadata.findings.iter().filter(|f| f.repaired).count(),
                    lost = ?metadata.lost,
                    "scrub: metadata store copies did not verify"
                );
            }
            self.pacing.metadata_from = next;
            finished = next.is_none();
        }
        scrub.pass = Some(pass);
        if finished {
            scrub.pass = None;
            scrub.last_full_pass = Some(FinishedPass { stats: pass, finished_secs: now });
            scrub.passes_completed += 1;
            tick.pass_finished = true;
        }
        let mut ops = Vec::new();
        if !checked.is_empty() {
            ops.push(Op::Scrubbed { at_secs: now.max(pass.started_secs), extents: checked });
        }
        if tick.extents > 0 || finished {
            ops.push(Op::SetScrub(scrub));
            self.commit(Transaction { ops })?;
            self.sync()?;
        }
        Ok(tick)
    }
}
