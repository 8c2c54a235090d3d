//! `shrink`: cuts a failing scenario down to a minimal one that fails on the same
//! invariant — delta debugging over the steps (halves, quarters, … single steps), then
//! shorter writes.

use crate::runner::{self, RunOptions};
use crate::scenario::{Scenario, Step};

/// A minimal failing scenario.
pub struct Shrunk {
    pub scenario: Scenario,
    /// Runs it took.
    pub runs: u64,
    /// How the minimal scenario fails.
    pub failure: String,
}

/// Shrinks `scenario`, which must fail with `options`.
pub fn shrink(scenario: &Scenario, options: &RunOptions) -> Result<Shrunk, String> {
    let first = runner::run(scenario, options);
    let Some(target) = first.failure.clone() else {
        return Err(format!("{} passes with seed {}; there is nothing to shrink", scenario.name, options.seed));
    };
    let mut runs = 1;
    let mut fails_the_same = |candidate: &Scenario| {
        runs += 1;
        runner::run(candidate, options).failure.is_some_and(|f| f.invariant == target.invariant)
    };
    let mut best = scenario.clone();
    best.name = format!("{}-shrunk", scenario.name);
    let mut chunk = best.steps.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < best.steps.len() {
            let mut candidate = best.clone();
            let end = (start + chunk).min(candidate.steps.len());
            candidate.steps.drain(start..end);
            if fails_the_same(&candidate) {
                best = candidate;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    for i in 0..best.steps.len() {
        loop {
            let mut candidate = best.clone();
            let shorter = match &mut candidate.steps[i] {
                Step::Write { len, .. } | Step::Append { len, .. } | Step::WriteOpen { len, .. } if *len > 1 => {
                    *len /= 2;
                    true
                }
                _ => false,
            };
            if shorter && fails_the_same(&candidate) {
                best = candidate;
            } else {
                break;
            }
        }
    }
    let failure =
        runner::run(&best, options).failure.map(|f| format!("{} at step {}: {}", f.invariant, f.step, f.detail));
    Ok(Shrunk { scenario: best, runs, failure: failure.unwrap_or_default() })
}
