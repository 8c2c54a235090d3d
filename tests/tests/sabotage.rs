//! Proof that the oracle bites: deliberately broken engines are caught by `swarm`
//! within 1,000 seeds each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dfs_engine::base::hooks::Sabotage;
use dfs_sim::runner::{self, RunOptions};
use dfs_sim::swarm::{self, Profile};

/// The first seed (of 1..=1000) whose swarm scenario fails with `defect`, and how.
fn first_failure(defect: Sabotage) -> Option<(u64, &'static str)> {
    let profile = Profile { ops: 1000, out_of_budget: false };
    (1..=1000).find_map(|seed| {
        let scenario = swarm::generate(seed, &profile);
        let outcome = runner::run(&scenario, &RunOptions { seed, sabotage: Some(defect), ..RunOptions::default() });
        outcome.failure.map(|f| (seed, f.invariant))
    })
}

/// The first seed (of 1..=1000) that runs on disks of an object store and fails with
/// `defect`, and how.
fn first_failure_on_a_store(defect: Sabotage) -> Option<(u64, &'static str)> {
    let profile = Profile { ops: 1000, out_of_budget: false };
    (1..=1000).find_map(|seed| {
        let scenario = swarm::generate(seed, &profile);
        if !scenario.setup.store {
            return None;
        }
        let outcome = runner::run(&scenario, &RunOptions { seed, sabotage: Some(defect), ..RunOptions::default() });
        outcome.failure.map(|f| (seed, f.invariant))
    })
}

/// Asserts `defect` is caught within 1,000 seeds by one of `invariants`.
fn assert_caught(defect: Sabotage, invariants: &[&str]) {
    let (seed, invariant) = first_failure(defect).expect("not caught within 1000 seeds");
    assert!(invariants.contains(&invariant), "seed {seed}: {invariant}");
}

#[test]
fn the_unbroken_engine_passes_the_same_seeds() {
    let profile = Profile { ops: 1000, out_of_budget: false };
    for seed in 1..=20 {
        let outcome = runner::run(&swarm::generate(seed, &profile), &RunOptions { seed, ..RunOptions::default() });
        assert!(outcome.passed(), "{}", outcome.line());
    }
}

#[test]
fn skipping_the_fragment_sync_before_the_journal_commit_is_caught() {
    assert_caught(
        Sabotage::SkipFragmentSync,
        &["acknowledged-data-readable", "no-half-visible-state", "loss-reported-exactly"],
    );
}

/// A store disk packs fragments and sends them at its sync (`dfs-objectdisk`), as the
/// simulator's shared disk models: a commit that skips the sync is caught there too.
#[test]
fn skipping_the_fragment_sync_is_caught_on_store_disks() {
    let (seed, invariant) = first_failure_on_a_store(Sabotage::SkipFragmentSync).expect("not caught within 1000 seeds");
    assert!(
        ["acknowledged-data-readable", "no-half-visible-state", "loss-reported-exactly"].contains(&invariant),
        "seed {seed}: {invariant}"
    );
}

#[test]
fn skipping_the_read_checksum_is_caught() {
    assert_caught(Sabotage::SkipReadChecksum, &["acknowledged-data-readable", "no-half-visible-state"]);
}

#[test]
fn two_fragments_of_one_extent_on_one_disk_is_caught() {
    assert_caught(Sabotage::SameDiskPlacement, &["extents-meet-policy"]);
}

#[test]
fn deleting_freed_fragments_before_the_record_freeing_them_is_durable_is_caught() {
    // A crash then recovers the older record, which still names the deleted fragments.
    assert_caught(Sabotage::FreeBeforeDurable, &["acknowledged-data-readable", "loss-reported-exactly"]);
}

#[test]
fn an_append_that_lands_at_the_wrong_offset_is_caught() {
    // Each misplaced fragment is missing where its record says it is, and the one it
    // landed on fails its checksum: extents lose fragments faster than faults explain.
    assert_caught(
        Sabotage::MisplacedAppend,
        &["acknowledged-data-readable", "loss-reported-exactly", "scrub-finds-and-repairs"],
    );
}

#[test]
fn shrink_cuts_a_failing_swarm_scenario_to_a_few_steps_that_fail_the_same_way() {
    let defect = Sabotage::SameDiskPlacement;
    let profile = Profile { ops: 300, out_of_budget: false };
    let scenario = swarm::generate(3, &profile);
    let options = RunOptions { seed: 3, sabotage: Some(defect), ..RunOptions::default() };
    let failure = runner::run(&scenario, &options).failure.expect("the broken engine fails");
    let shrunk = dfs_sim::shrink::shrink(&scenario, &options).unwrap();
    assert!(shrunk.scenario.steps.len() <= 3, "{}", shrunk.scenario.to_ron());
    let again = runner::run(&shrunk.scenario, &options).failure.expect("the shrunk scenario still fails");
    assert_eq!(again.invariant, failure.invariant);
    // It is a valid scenario file.
    let reparsed = dfs_sim::scenario::Scenario::parse(&shrunk.scenario.to_ron()).unwrap();
    assert_eq!(reparsed, shrunk.scenario);
}

#[test]
fn crash_points_catch_a_commit_that_skips_the_fragment_sync() {
    let scenario = dfs_sim::scenario::Scenario::load(&dfs_tests::scenarios_dir().join("write-commit.ron")).unwrap();
    let options =
        RunOptions { seed: scenario.seed, sabotage: Some(Sabotage::SkipFragmentSync), ..RunOptions::default() };
    let report = dfs_sim::crashpoints::explore(&scenario, &options);
    assert!(report.failure.is_some(), "{}", report.line());
}
