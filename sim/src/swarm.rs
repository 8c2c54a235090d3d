//! `swarm`: random scenarios drawn from a seed — disk count and sizes, policy, workload
//! mix and fault rates — run in parallel.
//!
//! Fault budget: faults land only on at most T "faulty" disks, T being the policy's
//! tolerance. Every extent has at most one fragment per disk, so no extent ever loses
//! more than T fragments and everything must stay readable. With `out_of_budget` the
//! faults hit any disk (fragments only, and no journal disk dies, so metadata survives)
//! and the oracle checks only "right bytes or EIO" and the exactness of the loss report.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dfs_engine::base::hooks::CommitPhase;
use dfs_engine::Policy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::runner::{self, Outcome, RunOptions};
use crate::scenario::{Expect, Scenario, Setup, Step, Target};

/// The shape of generated scenarios.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Steps per scenario.
    pub ops: usize,
    /// Let faults exceed tolerance.
    pub out_of_budget: bool,
}

/// What a swarm found.
pub struct SwarmReport {
    pub ran: u64,
    pub failures: Vec<Outcome>,
}

const FILES: [&str; 10] = ["/f0", "/f1", "/f2", "/f3", "/f4", "/d0/f0", "/d0/f1", "/d1/f0", "/d1/d2/f0", "/d0/f2"];
const DIRS: [&str; 3] = ["/d0", "/d1", "/d1/d2"];

/// The scenario seed `seed` stands for.
pub fn generate(seed: u64, profile: &Profile) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let disks = rng.random_range(4..=8usize);
    let capacities: Vec<u64> = (0..disks).map(|_| rng.random_range(48..=256u64)).collect();
    let mut policies = vec!["replicate:2", "replicate:3", "erasure:2+1"];
    if disks >= 5 {
        policies.push("erasure:3+2");
    }
    if disks >= 6 {
        policies.push("erasure:4+2");
    }
    let policy = policies[rng.random_range(0..policies.len())];
    let tolerance = policy.parse::<Policy>().map(|p| p.tolerance()).unwrap_or(0);
    let faulty: Vec<usize> = if profile.out_of_budget {
        (0..disks).collect()
    } else {
        let mut all: Vec<usize> = (0..disks).collect();
        let mut chosen = Vec::new();
        for _ in 0..tolerance.min(disks) {
            chosen.push(all.swap_remove(rng.random_range(0..all.len())));
        }
        chosen
    };
    let mut steps = Vec::with_capacity(profile.ops);
    let mut dead = Vec::new();
    let mut removed = Vec::new();
    let safer: Vec<&str> = policies
        .iter()
        .copied()
        .filter(|p| p.parse::<Policy>().map(|p| p.tolerance()).unwrap_or(0) >= tolerance)
        .collect();
    let mut vanished = Vec::new();
    // Tiering draws from a side stream, so seeds without it generate exactly as before.
    let mut side = ChaCha8Rng::seed_from_u64(seed ^ 0x7431_e5a1_d00d_f00d);
    let tiered = side.random_range(0..2) == 0;
    let mut maintenance = ChaCha8Rng::seed_from_u64(seed ^ 0x5c2b_0b5e_0c1e_a4ed);
    for _ in 0..profile.ops {
        let file = FILES[rng.random_range(0..FILES.len())].to_string();
        let roll = rng.random_range(0..1000u32);
        // Mostly small I/O; one write in 200 crosses extent boundaries.
        let len =
            if rng.random_range(0..200) == 0 { rng.random_range(0..(3u64 << 19)) } else { rng.random_range(0..16_384) };
        let offset = match rng.random_range(0..10) {
            0..=5 => 0,
            6..=8 => rng.random_range(0..(256u64 << 10)),
            _ => rng.random_range(0..(3u64 << 19)),
        };
        let data_seed = rng.random();
        let fault_disk = (!faulty.is_empty()).then(|| faulty[rng.random_range(0..faulty.len())]);
        let step = match roll {
            0..=199 => Step::Write { path: file, offset, len, seed: data_seed },
            200..=279 => Step::Append { path: file, len, seed: data_seed },
            280..=339 => Step::Truncate { path: file, size: rng.random_range(0..(3u64 << 19)) },
            340..=399 => Step::Rename { from: file, to: FILES[rng.random_range(0..FILES.len())].to_string() },
            400..=449 => Step::Unlink { path: file },
            450..=489 => Step::Mkdir { path: DIRS[rng.random_range(0..DIRS.len())].to_string() },
            490..=509 => Step::Rmdir { path: DIRS[rng.random_range(0..DIRS.len())].to_string() },
            510..=549 => Step::Open { path: file },
            550..=609 => Step::WriteOpen { path: file, offset, len, seed: data_seed },
            610..=649 => Step::Fsync { path: file },
            650..=689 => Step::Close { path: file },
            690..=789 => Step::Read { path: file },
            790..=819 => Step::Sync,
            820..=829 => Step::Verify,
            830..=839 => Step::Checkpoint,
            840..=849 => Step::Crash,
            850..=864 => Step::CrashAfterWrites { writes: rng.random_range(1..40) },
            865..=874 => Step::CrashAtPhase {
                phase: CommitPhase::ALL[rng.random_range(0..CommitPhase::ALL.len())],
                occurrence: rng.random_range(1..4),
            },
            875..=877 => Step::AdvanceClock { secs: rng.random_range(1..7200) },
            // The daemon's timers: offline disks rejoin, or are failed past the grace period.
            878..=879 => Step::Daemon { secs: rng.random_range(1..1200) },
            880..=882 => Step::Background { steps: rng.random_range(1..20) },
            883..=884 => Step::Rebalance { max_bytes: Some(rng.random_range(1..16) << 20) },
            // Only to policies at least as tolerant, so the fault budget still holds.
            885..=886 => Step::ChangePolicy {
                path: (rng.random_range(0..2) == 0).then(|| DIRS[rng.random_range(0..DIRS.len())].to_string()),
                policy: safer[rng.random_range(0..safer.len())].to_string(),
            },
            887..=889 => {
                let healthy: Vec<usize> = (0..disks).filter(|d| !faulty.contains(d) && !removed.contains(d)).collect();
                match healthy.is_empty() {
                    true => Step::Background { steps: 5 },
                    false => {
                        let disk = healthy[rng.random_range(0..healthy.len())];
                        removed.push(disk);
                        Step::RemoveDisk { disk }
                    }
                }
            }
            890..=999 => match fault_disk {
                None => Step::Read { path: file },
                Some(disk) => match roll {
                    890..=929 => {
                        let target = if profile.out_of_budget {
                            Target::Fragment
                        } else {
                            [
                                Target::Fragment,
                                Target::DataShard,
                                Target::ParityShard,
                                Target::Journal,
                                Target::Checkpoint,
                            ][rng.random_range(0..5)]
                        };
                        Step::BitRot { disk, blocks: rng.random_range(1..5), target }
                    }
                    930..=954 => Step::LatentErrors { disk, blocks: rng.random_range(1..4) },
                    955..=964 => Step::Misdirect { disk },
                    965..=969 if !dead.contains(&disk) && (!profile.out_of_budget || disk >= 3) => {
                        dead.push(disk);
                        Step::FailDisk { disk }
                    }
                    970..=974 if !dead.contains(&disk) && (!profile.out_of_budget || disk >= 3) => {
                        dead.push(disk);
                        Step::MarkFailed { disk }
                    }
                    975..=984 if !vanished.contains(&disk) && (!profile.out_of_budget || disk >= 3) => {
                        vanished.push(disk);
                        Step::VanishDisk { disk }
                    }
                    985..=992 if !vanished.is_empty() => Step::ReturnDisk { disk: vanished.remove(0) },
                    993..=996 if !profile.out_of_budget || disk >= 3 => Step::FillDisk { disk },
                    _ => Step::Latency { disk, ticks: rng.random_range(0..50) },
                },
            },
            _ => Step::Verify,
        };
        let step = maintenance_step(step, &mut maintenance);
        steps.push(if tiered { tiering_step(step, &mut side) } else { step });
    }
    Scenario {
        name: format!("swarm-{seed}"),
        description: format!(
            "generated: {disks} disks, {policy}, faulty disks {faulty:?}{}",
            if profile.out_of_budget { ", out of budget" } else { "" }
        ),
        seed,
        setup: Setup {
            disks: capacities.iter().map(|c| format!("{c}MiB")).collect(),
            policy: policy.to_string(),
            checkpoint_every: Some(rng.random_range(8..300)),
            tiering: tiered.then(crate::scenario::TieringSetup::default),
            // One seed in four puts the disks on an object store, chosen without drawing
            // from the generator, so the other seeds' scenarios are as they were.
            store: seed % 4 == 3,
            // Half the store seeds list eventually: a name shows one to three listings late.
            listing_lag: if seed % 8 == 7 { 1 + (seed / 8 % 3) as u32 } else { 0 },
        },
        steps,
        expect: Expect { lost_files: Vec::new(), out_of_budget: profile.out_of_budget, ..Expect::default() },
    }
}

/// Some verifies become scrubs (with or without repair) and some checkpoints become
/// orphan collections, so scrub and GC meet every fault and crash the swarm makes.
fn maintenance_step(step: Step, rng: &mut ChaCha8Rng) -> Step {
    match step {
        Step::Verify if rng.random_range(0..3) == 0 => Step::Scrub { repair: rng.random_range(0..3) > 0 },
        Step::Checkpoint if rng.random_range(0..3) == 0 => {
            Step::CleanupOrphans { older_than_secs: [0, 60, 3600][rng.random_range(0..3)] }
        }
        other => other,
    }
}

/// In a tiered scenario, some steps become tiering ones: clock advances become the
/// daemon running (passes, flushes, migrations) for longer, background rounds become
/// classification passes, reads become bursts of reads.
fn tiering_step(step: Step, side: &mut ChaCha8Rng) -> Step {
    match step {
        Step::AdvanceClock { secs } if side.random_range(0..2) == 0 => Step::Daemon { secs: secs * 24 },
        Step::Background { .. } if side.random_range(0..2) == 0 => Step::Classify,
        Step::Read { path } if side.random_range(0..10) == 0 => {
            Step::Access { path, times: side.random_range(1..6), every_secs: side.random_range(30..3600) }
        }
        other => other,
    }
}

/// Runs `seeds` on `threads` workers (default: the cores), stopping early after `time`.
pub fn run(
    seeds: Range<u64>,
    profile: &Profile,
    base: &RunOptions,
    threads: Option<usize>,
    time: Option<Duration>,
) -> SwarmReport {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let ran = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if time.is_some_and(|t| started.elapsed() >= t) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    break;
                }
                let scenario = generate(seed, profile);
                let options = RunOptions { seed, ..base.clone() };
                let outcome = runner::run(&scenario, &options);
                ran.fetch_add(1, Ordering::SeqCst);
                if !outcome.passed() {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(outcome);
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort_by_key(|o| o.seed);
    SwarmReport { ran: ran.load(Ordering::SeqCst), failures }
}

/// Parses a `--sabotage` defect name.
#[cfg(feature = "sabotage")]
pub fn parse_sabotage(text: &str) -> Result<dfs_engine::base::hooks::Sabotage, String> {
    use dfs_engine::base::hooks::Sabotage;
    match text {
        "skip-fragment-sync" => Ok(Sabotage::SkipFragmentSync),
        "skip-read-checksum" => Ok(Sabotage::SkipReadChecksum),
        "same-disk-placement" => Ok(Sabotage::SameDiskPlacement),
        "free-before-durable" => Ok(Sabotage::FreeBeforeDurable),
        "misplaced-append" => Ok(Sabotage::MisplacedAppend),
        other => Err(format!(
            "unknown defect '{other}' (skip-fragment-sync, skip-read-checksum, same-disk-placement, free-before-durable, misplaced-append)"
        )),
    }
}
