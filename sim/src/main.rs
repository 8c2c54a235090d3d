//! `dfs-sim`: runs seeded scenarios against the engine on simulated disks.
//! Exit codes: 0 every run passed; 1 some run failed (each failure prints the step, the
//! invariant and the command that reproduces it); 2 bad usage or a malformed scenario
//! (nothing runs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use dfs_sim::runner::{self, RunOptions};
use dfs_sim::scenario::Scenario;
use dfs_sim::{crashpoints, shrink, swarm};

/// Deterministic simulation of DynamicFS: crashes, disk failures and bit rot, replayed
/// bit-for-bit from a seed and checked against a reference model.
#[derive(Parser, Debug)]
#[command(name = "dfs-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run scenario files; one line per scenario and seed.
    Run {
        /// Scenario files (RON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Run with this seed instead of the scenario's own.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run every seed of a range, e.g. 1..100 (end exclusive).
        #[arg(long, value_parser = parse_range)]
        seeds: Option<(u64, u64)>,
        /// Re-run crashing at every device write and check every crash state there.
        #[arg(long)]
        crash_points: bool,
        /// Run each seed twice and fail when the trace hashes differ.
        #[arg(long)]
        check_determinism: bool,
        #[command(flatten)]
        sabotage: SabotageArg,
    },
    /// Random scenarios drawn from seeds: disks, policies, workload and faults.
    Swarm {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Stop after this long even if seeds remain (e.g. 60s, 5m).
        #[arg(long, value_parser = parse_duration)]
        time: Option<Duration>,
        /// Operations per scenario.
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        /// Let faults exceed tolerance; check only "right bytes or EIO" and exact loss reports.
        #[arg(long)]
        out_of_budget: bool,
        /// Write each failing scenario as RON into this directory.
        #[arg(long, value_name = "DIR")]
        save_failures: Option<PathBuf>,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        sabotage: SabotageArg,
    },
    /// Cut a failing scenario down to a minimal one that fails the same way.
    Shrink {
        /// The failing scenario.
        file: PathBuf,
        /// The seed it fails with.
        #[arg(long)]
        seed: u64,
        /// Where to write the minimal scenario (default: FILE with .shrunk.ron).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        sabotage: SabotageArg,
    },
}

#[derive(clap::Args, Debug, Default)]
struct SabotageArg {
    /// Run a deliberately broken engine (skip-fragment-sync, skip-read-checksum,
    /// same-disk-placement, free-before-durable, misplaced-append); only in builds with the `sabotage`
    /// feature.
    #[arg(long, value_name = "DEFECT")]
    sabotage: Option<String>,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text.split_once("..").ok_or("expected A..B, e.g. 1..100")?;
    let a: u64 = a.parse().map_err(|_| format!("'{a}' is not a seed"))?;
    let b: u64 = b.parse().map_err(|_| format!("'{b}' is not a seed"))?;
    if b <= a {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok((a, b))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration like 60s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("'{text}': unknown unit (use s, m or h)")),
    }
}

fn options(seed: u64, sabotage: &SabotageArg) -> Result<RunOptions, String> {
    #[allow(unused_mut)]
    let mut options = RunOptions { seed, ..RunOptions::default() };
    if let Some(defect) = &sabotage.sabotage {
        #[cfg(feature = "sabotage")]
        {
            options.sabotage = Some(swarm::parse_sabotage(defect)?);
        }
        #[cfg(not(feature = "sabotage"))]
        return Err(format!(
            "--sabotage {defect}: this build has no sabotage feature (cargo build -p dfs-sim --features sabotage)"
        ));
    }
    Ok(options)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { files, seed, seeds, crash_points, check_determinism, sabotage } => {
            let mut scenarios = Vec::new();
            for file in &files {
                match Scenario::load(file) {
                    Ok(scenario) => scenarios.push((file.clone(), scenario)),
                    Err(e) => {
                        eprintln!("dfs-sim: malformed scenario: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let mut failed = false;
            for (file, scenario) in &scenarios {
                let seeds: Vec<u64> = match (seed, seeds) {
                    (Some(s), _) => vec![s],
                    (None, Some((a, b))) => (a..b).collect(),
                    (None, None) => vec![scenario.seed],
                };
                for seed in seeds {
                    let options = match options(seed, &sabotage) {
                        Ok(o) => o,
                        Err(e) => {
                            eprintln!("dfs-sim: {e}");
                            return ExitCode::from(2);
                        }
                    };
                    if crash_points {
                        let report = crashpoints::explore(scenario, &options);
                        println!("{}", report.line());
                        if let Some(failure) = &report.failure {
                            failed = true;
                            println!("  {failure}");
                            println!("  reproduce: dfs-sim run --crash-points {} --seed {seed}", file.display());
                        }
                        continue;
                    }
                    let outcome = runner::run(scenario, &options);
                    println!("{}", outcome.line());
                    if check_determinism {
                        let again = runner::run(scenario, &options);
                        if again.trace_hash != outcome.trace_hash {
                            failed = true;
                            println!(
                                "FAIL {} seed={seed} nondeterministic: trace {} then {}",
                                scenario.name, outcome.trace_hash, again.trace_hash
                            );
                        }
                    }
                    if !outcome.passed() {
                        failed = true;
                        println!("  reproduce: dfs-sim run {} --seed {seed}", file.display());
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Swarm { seeds, first_seed, time, ops, out_of_budget, save_failures, threads, sabotage } => {
            let base = match options(0, &sabotage) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("dfs-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let profile = swarm::Profile { ops, out_of_budget };
            let started = Instant::now();
            let report = swarm::run(first_seed..first_seed + seeds, &profile, &base, threads, time);
            let elapsed = started.elapsed().as_secs_f64();
            for failure in &report.failures {
                println!("{}", failure.line());
                if let Some(dir) = &save_failures {
                    let _ = std::fs::create_dir_all(dir);
                    let path = dir.join(format!("swarm-seed-{}.ron", failure.seed));
                    let scenario = swarm::generate(failure.seed, &profile);
                    if std::fs::write(&path, scenario.to_ron()).is_ok() {
                        println!("  saved: {}", path.display());
                        println!("  reproduce: dfs-sim run {} --seed {}", path.display(), failure.seed);
                        println!("  shrink:    dfs-sim shrink {} --seed {}", path.display(), failure.seed);
                    }
                } else {
                    println!("  reproduce: dfs-sim swarm --first-seed {} --seeds 1 --ops {ops}", failure.seed);
                }
            }
            println!(
                "swarm: {} seeds, {} passed, {} failed, {:.1} s, {:.0} seeds/min, {} ops each{}",
                report.ran,
                report.ran - report.failures.len() as u64,
                report.failures.len(),
                elapsed,
                report.ran as f64 / elapsed * 60.0,
                ops,
                if out_of_budget { ", out of budget" } else { "" }
            );
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Shrink { file, seed, output, sabotage } => {
            let scenario = match Scenario::load(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dfs-sim: malformed scenario: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = match options(seed, &sabotage) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("dfs-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            match shrink::shrink(&scenario, &options) {
                Ok(result) => {
                    let output = output.unwrap_or_else(|| file.with_extension("shrunk.ron"));
                    if let Err(e) = std::fs::write(&output, result.scenario.to_ron()) {
                        eprintln!("dfs-sim: writing {}: {e}", output.display());
                        return ExitCode::FAILURE;
                    }
                    println!(
                        "shrunk {} from {} to {} steps ({} runs); still fails: {}",
                        scenario.name,
                        scenario.steps.len(),
                        result.scenario.steps.len(),
                        result.runs,
                        result.failure
                    );
                    println!("wrote {}", output.display());
                    println!("reproduce: dfs-sim run {} --seed {seed}", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dfs-sim: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
