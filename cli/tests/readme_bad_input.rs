//! The README's bad-input table, run as written (issue 15): every row's command in a
//! directory holding the pool the README describes, checked for its exit code, for the
//! errno name that ends its message, and for leaving the pool exactly as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::pattern;

struct Row {
    command: String,
    exit: i32,
    errno: String,
}

/// The table after the `bad-input-table` marker, up to the first line that is not a row.
fn rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let (_, table) = readme.split_once("<!-- bad-input-table").expect("the README has the bad-input table");
    table
        .lines()
        .skip(3) // the rest of the marker line, the header and the rule
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 4, "a row has four cells: {line}");
            let command = cells[0].trim_matches('`').to_string();
            assert!(command.starts_with("dfs "), "{line}");
            Row { command, exit: cells[1].parse().unwrap(), errno: cells[2].to_string() }
        })
        .collect()
}

fn dfs(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dfs")).args(args).current_dir(dir).output().unwrap()
}

/// Every file under `dir` with its contents, to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_row_of_the_readme_bad_input_table_holds() {
    let rows = rows();
    assert!(rows.len() >= 20, "the table lost rows: {}", rows.len());
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    for disk in ["d1", "d2", "d3"] {
        std::fs::create_dir(dir.join(disk)).unwrap();
    }
    std::fs::write(dir.join("file"), pattern(100_000, 1)).unwrap();
    // The last step opens the pool once more, so the checkpoint a reopening writes of
    // the put before it is not counted against the first row.
    let setup: [&[&str]; 4] = [
        &["init", "--pool", "pool", "--policy", "replicate:2"],
        &["add-disk", "--pool", "pool", "--disk", "d1", "--disk", "d2", "--capacity", "64MiB"],
        &["put", "--pool", "pool", "file", "/f"],
        &["status", "--pool", "pool"],
    ];
    for args in setup {
        assert!(dfs(dir, args).status.success(), "{args:?}");
    }
    for row in &rows {
        let before = snapshot(dir);
        let args: Vec<&str> = row.command.split_whitespace().skip(1).collect();
        let out = dfs(dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(row.exit), "`{}`: {stderr}", row.command);
        if !row.errno.is_empty() {
            let last = stderr.lines().last().unwrap_or_default();
            assert!(last.trim_end().ends_with(&format!("({})", row.errno)), "`{}`: {stderr}", row.command);
        }
        let after = snapshot(dir);
        let changed: Vec<_> = after.iter().filter(|entry| !before.contains(entry)).map(|(path, _)| path).collect();
        assert!(after.len() == before.len() && changed.is_empty(), "`{}` changed {changed:?}", row.command);
    }
}
