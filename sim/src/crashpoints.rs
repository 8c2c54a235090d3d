//! `--crash-points`: re-runs a scenario crashing at every device write, and at each one
//! checks the oracle after recovering from many crash states of the pending operations —
//! every subset when there are at most 10, otherwise every prefix, every drop-one and
//! 1,000 random subsets; then every tear-one, all torn at once, and random mixes in
//! which each write is independently dropped, landed or torn (a disk's segments can
//! tear several appends in one crash).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::memdisk::{Fate, Pending};
use crate::runner::{self, RunOptions};
use crate::scenario::Scenario;

/// Most pending operations for which every subset is tried.
const EXHAUSTIVE_MAX: usize = 10;
/// Random subsets tried beyond the exhaustive limit.
const RANDOM_SUBSETS: usize = 1000;
/// Random mixes of dropped, landed and torn writes tried at every crash point.
const RANDOM_TEARS: usize = 16;

/// What the exploration covered and found.
pub struct CrashReport {
    pub name: String,
    pub seed: u64,
    /// Device writes the scenario issues (each one a crash point).
    pub crash_points: u64,
    /// Crash states recovered and checked.
    pub states: u64,
    pub failure: Option<String>,
}

impl CrashReport {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "{} {} seed={} crash_points={} crash_states={}",
            if self.failure.is_none() { "PASS" } else { "FAIL" },
            self.name,
            self.seed,
            self.crash_points,
            self.states
        )
    }
}

/// The crash states to try for `pending` (per disk): each is a fate per pending op.
pub fn crash_states(pending: &[Vec<Pending>], seed: u64) -> Vec<Vec<Vec<Fate>>> {
    let flat: Vec<(usize, usize, usize)> = pending
        .iter()
        .enumerate()
        .flat_map(|(disk, ops)| {
            ops.iter().enumerate().map(move |(i, op)| {
                let len = match op {
                    Pending::Write(_, data) => data.len(),
                    Pending::Delete(_) => 0,
                };
                (disk, i, len)
            })
        })
        .collect();
    let n = flat.len();
    let shape = |choose: &dyn Fn(usize) -> Fate| -> Vec<Vec<Fate>> {
        let mut fates: Vec<Vec<Fate>> = pending.iter().map(|ops| vec![Fate::Drop; ops.len()]).collect();
        for (k, (disk, i, _)) in flat.iter().enumerate() {
            fates[*disk][*i] = choose(k);
        }
        fates
    };
    let land = |on: bool| if on { Fate::Land } else { Fate::Drop };
    let mut states = Vec::new();
    if n <= EXHAUSTIVE_MAX {
        for mask in 0u32..(1 << n) {
            states.push(shape(&|k| land(mask & (1 << k) != 0)));
        }
    } else {
        for prefix in 0..=n {
            states.push(shape(&|k| land(k < prefix)));
        }
        for dropped in 0..n {
            states.push(shape(&|k| land(k != dropped)));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..RANDOM_SUBSETS {
            let mask: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
            states.push(shape(&|k| land(mask[k])));
        }
    }
    for (torn, (_, _, len)) in flat.iter().enumerate() {
        if *len > 1 {
            states.push(shape(&|k| if k == torn { Fate::Torn { keep: len / 2, garbage: 7 } } else { Fate::Land }));
        }
    }
    let tear = |len: usize, keep: usize, garbage: usize| {
        if len > 1 {
            Fate::Torn { keep: keep.min(len - 1), garbage }
        } else {
            Fate::Drop
        }
    };
    if flat.iter().filter(|(_, _, len)| *len > 1).count() > 1 {
        states.push(shape(&|k| tear(flat[k].2, flat[k].2 / 2, 7)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ea5);
    for _ in 0..RANDOM_TEARS.min(n) {
        let mix: Vec<Fate> = flat
            .iter()
            .map(|(_, _, len)| match rng.random_range(0..3) {
                0 => Fate::Drop,
                1 => Fate::Land,
                _ => tear(*len, rng.random_range(0..(*len).max(1)), rng.random_range(0..2) * 7),
            })
            .collect();
        states.push(shape(&|k| mix[k]));
    }
    states
}

/// Explores every crash point of `scenario`.
pub fn explore(scenario: &Scenario, options: &RunOptions) -> CrashReport {
    let mut report =
        CrashReport { name: scenario.name.clone(), seed: options.seed, crash_points: 0, states: 0, failure: None };
    for n in 1.. {
        let frozen = match runner::run_until_write(scenario, options, n) {
            Ok(frozen) => frozen,
            Err(failure) => {
                report.failure = Some(format!("crash point {n}: the run failed before it: {failure:?}"));
                return report;
            }
        };
        if !frozen.reached {
            break;
        }
        report.crash_points = n;
        for fates in crash_states(&frozen.world.pending(), options.seed ^ n) {
            report.states += 1;
            if let Err(failure) = runner::check_crash_state(&frozen, &fates, scenario) {
                report.failure = Some(format!(
                    "crash after write {n}, state {fates:?}: {} {}: {}",
                    failure.invariant, failure.step, failure.detail
                ));
                return report;
            }
        }
    }
    report
}
