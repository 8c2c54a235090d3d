//! Health tells the truth about writes, and its advice runs as printed (issue 14, item
//! 4): a failed disk that leaves too few disks for the pool's policy makes the pool
//! unhealthy ("cannot accept writes"); following each printed command in turn — add a
//! disk, rebuild, remove the failed one — brings it back to healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fails, ok, pattern, Pool};

/// The first command of the "what to do" of the problem that says `marker`, split into
/// arguments (without `dfs`).
fn advice(report: &str, marker: &str) -> Vec<String> {
    let lines: Vec<&str> = report.lines().collect();
    let at = lines.iter().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("no '{marker}' in:\n{report}"));
    let line = lines[at..].iter().find(|l| l.trim_start().starts_with("what to do:")).unwrap();
    let command = &line[line.find("dfs ").unwrap_or_else(|| panic!("no command in {line}"))..];
    let command = command.split(['(', ')']).next().unwrap().trim();
    command.split_whitespace().skip(1).map(str::to_string).collect()
}

#[test]
fn a_pool_that_cannot_place_its_policy_is_unhealthy_and_the_advice_works() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let p = pool.path();
    let file = pool.local("f");
    std::fs::write(&file, pattern(500_000, 4)).unwrap();
    ok(&["put", "--pool", p, file.to_str().unwrap(), "/f"]);
    ok(&["fail-disk", "--pool", p, "--disk", "d1"]);
    let out = common::run(&["health", "--pool", p]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(report.contains("the pool cannot accept writes"), "{report}");
    // 1. Add a disk, as printed (DIR is the user's to choose).
    let spare = pool.local("spare");
    std::fs::create_dir(&spare).unwrap();
    let mut add = advice(&report, "cannot accept writes");
    assert_eq!(add[..3], ["add-disk".to_string(), "--pool".into(), p.to_string()]);
    let dir = add.iter().position(|a| a == "DIR").unwrap();
    add[dir] = spare.to_str().unwrap().to_string();
    ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
    // 2. Rebuild, as printed.
    let report = String::from_utf8_lossy(&common::run(&["health", "--pool", p]).stdout).to_string();
    assert!(!report.contains("cannot accept writes"), "{report}");
    let rebuild = advice(&report, "short of their policy");
    assert_eq!(rebuild, ["rebuild", "--pool", p]);
    ok(&rebuild.iter().map(String::as_str).collect::<Vec<_>>());
    // 3. Remove the failed disk, as printed; then nothing is left to do.
    let report = ok(&["health", "--pool", p]);
    let remove = advice(&report, "remove it");
    ok(&remove.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ok(&["health", "--pool", p]).trim(), "healthy: no problems found");
    let back = pool.local("back");
    ok(&["get", "--pool", p, "/f", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back).unwrap(), pattern(500_000, 4));
    let error = fails(&["remove-disk", "--pool", p, "--disk", "d1"]);
    assert!(error.contains("already removed") || error.contains("no disk"), "{error}");
}
