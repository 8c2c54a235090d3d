//! Every scenario in `scenarios/` runs and its outcome summary is snapshot-tested: a
//! behaviour change (trace hash, invariants, faults, losses) shows up as a diff in review.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dfs_sim::runner::{self, RunOptions};
use dfs_sim::scenario::Scenario;

#[test]
fn there_are_at_least_twelve_scenarios() {
    assert!(dfs_tests::scenario_files().len() >= 12, "{:?}", dfs_tests::scenario_files());
}

#[test]
fn every_scenario_passes_and_matches_its_snapshot() {
    for file in dfs_tests::scenario_files() {
        let scenario = Scenario::load(&file).unwrap();
        let outcome = runner::run(&scenario, &RunOptions { seed: scenario.seed, ..RunOptions::default() });
        assert!(outcome.passed(), "{}", outcome.line());
        insta::assert_snapshot!(scenario.name.clone(), outcome.summary());
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let scenario = Scenario::load(&dfs_tests::scenarios_dir().join("crash-storm.ron")).unwrap();
    let run = |seed| runner::run(&scenario, &RunOptions { seed, ..RunOptions::default() }).trace_hash;
    assert_eq!(run(14), run(14));
    assert_ne!(run(14), run(15));
}

#[test]
fn scenarios_beyond_tolerance_report_exactly_their_lost_files() {
    let scenario = Scenario::load(&dfs_tests::scenarios_dir().join("bitrot-beyond-tolerance.ron")).unwrap();
    let outcome = runner::run(&scenario, &RunOptions { seed: scenario.seed, ..RunOptions::default() });
    assert!(outcome.passed(), "{}", outcome.line());
    let lost: Vec<&str> = outcome.lost_files.iter().map(String::as_str).collect();
    assert_eq!(lost, ["/a", "/b"]);
    // Expecting less than what is lost fails the run.
    let mut wrong = scenario.clone();
    wrong.expect.lost_files = vec!["/a".into()];
    assert!(!runner::run(&wrong, &RunOptions { seed: wrong.seed, ..RunOptions::default() }).passed());
}

#[test]
fn within_tolerance_rot_is_read_around_and_counted_as_degraded() {
    let scenario = Scenario::load(&dfs_tests::scenarios_dir().join("bitrot-data-shards.ron")).unwrap();
    let outcome = runner::run(&scenario, &RunOptions { seed: scenario.seed, ..RunOptions::default() });
    assert!(outcome.passed(), "{}", outcome.line());
    assert!(outcome.degraded_reads > 0, "rotten data shards were never noticed");
    assert!(outcome.lost_files.is_empty());
}

/// Every crash point of scenario `name` (a file in `scenarios/`), each state checked.
fn crash_points_of(name: &str) -> dfs_sim::crashpoints::CrashReport {
    let scenario = Scenario::load(&dfs_tests::scenarios_dir().join(name)).unwrap();
    let report = dfs_sim::crashpoints::explore(&scenario, &RunOptions { seed: scenario.seed, ..RunOptions::default() });
    assert_eq!(report.failure, None);
    report
}

#[test]
fn crash_points_of_the_write_commit_check_thousands_of_states() {
    let report = crash_points_of("write-commit.ron");
    assert!(report.crash_points >= 50, "{}", report.line());
    assert!(report.states >= 5000, "{}", report.line());
}

#[test]
fn crash_points_of_a_layer_dropping_the_one_it_covers_all_recover() {
    let report = crash_points_of("layer-shadow-crash-points.ron");
    assert!(report.crash_points >= 20, "{}", report.line());
}

#[test]
fn crash_points_of_appends_gathered_in_one_layer_all_recover() {
    let report = crash_points_of("layer-append-crash-points.ron");
    assert!(report.crash_points >= 20, "{}", report.line());
}

#[test]
fn crash_points_of_checkpoints_into_the_paged_store_all_recover() {
    // Pages, indexes and roots of commits and merges, dropped, landed or torn.
    let report = crash_points_of("store-checkpoint-crash-points.ron");
    assert!(report.crash_points >= 50, "{}", report.line());
    assert!(report.states >= 5000, "{}", report.line());
}

#[test]
fn bursts_move_a_file_under_the_thresholds_but_hardly_under_the_hmm() {
    let changes = |name: &str| {
        let scenario = Scenario::load(&dfs_tests::scenarios_dir().join(format!("{name}.ron"))).unwrap();
        let outcome = runner::run(&scenario, &RunOptions { seed: scenario.seed, ..RunOptions::default() });
        assert!(outcome.passed(), "{}", outcome.line());
        outcome.policy_changes["/bursty"]
    };
    let (hmm, thresholds) = (changes("tier-bursts-hmm"), changes("tier-bursts-thresholds"));
    assert!(hmm <= 1, "the HMM re-encoded the bursty file {hmm} times");
    assert!(thresholds >= 20 * hmm.max(1), "thresholds {thresholds} vs HMM {hmm}: the comparison shows nothing");
}

#[test]
fn a_scenario_expecting_the_wrong_tier_fails() {
    let scenario = Scenario::load(&dfs_tests::scenarios_dir().join("tier-hot-file.ron")).unwrap();
    let mut wrong = scenario.clone();
    wrong.expect.policies.insert("/hot".into(), "erasure:4+2".into());
    let outcome = runner::run(&wrong, &RunOptions { seed: wrong.seed, ..RunOptions::default() });
    assert!(!outcome.passed());
    assert!(outcome.line().contains("/hot chunk 0 is under replicate:3"), "{}", outcome.line());
}
