//! The `dfs-sim` binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn dfs_sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dfs-sim")).args(args).output().unwrap()
}

fn scenario(name: &str) -> String {
    format!("{}/../scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_malformed_scenario_is_rejected_with_line_and_column_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ron");
    std::fs::write(&bad, "Scenario(\n  name: \"x\",\n  seed: 1,\n  setup: Setup(disks: [\"64MiB\"], policy: \"replicate:1\"),\n  steps: [Write(path: \"/a\", offset: 0 len: 1, seed: 1)],\n)\n").unwrap();
    let good = scenario("dead-disk.ron");
    let out = dfs_sim(&["run", &good, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.ron:5:"), "{stderr}");
    assert!(out.stdout.is_empty(), "a scenario ran although another was malformed");
}

#[test]
fn run_prints_one_line_per_seed_and_is_deterministic() {
    let out = dfs_sim(&["run", &scenario("crash-storm.ron"), "--seeds", "1..4", "--check-determinism"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, seed) in lines.iter().zip(1..) {
        assert!(line.starts_with("PASS crash-storm"), "{line}");
        assert!(line.contains(&format!("seed={seed} ")) && line.contains("trace="), "{line}");
    }
}

#[test]
fn swarm_runs_seeds_and_reports_them() {
    let out = dfs_sim(&["swarm", "--seeds", "8", "--ops", "200"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("swarm: 8 seeds, 8 passed, 0 failed"), "{stdout}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    assert_eq!(dfs_sim(&["run", &scenario("crash-storm.ron"), "--seeds", "5..2"]).status.code(), Some(2));
    assert_eq!(dfs_sim(&["swarm", "--time", "soon"]).status.code(), Some(2));
}
