//! A disk is only ever what its label says (issue 14, item 3): a vanished disk
//! directory is never recreated and nothing lands outside the disks; an empty directory
//! in its place is never written; a disk without its label is never written; a pool
//! whose `pool.ron` names a pool id none of its disks carry refuses to open; a disk path
//! inside the pool's own mountpoint is refused without hanging. Real directories, and a
//! real mount where the defect was seen there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{fails, fragments_on, ok, pattern, Pool};

fn write_synced(path: &Path, data: &[u8]) {
    let mut file = fs::File::create(path).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn a_vanished_disk_directory_is_never_recreated_nor_replaced() {
    let pool = Pool::new("replicate:2", &[128, 128, 128]);
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    let before = pattern(700_000, 1);
    write_synced(&mount.join("before"), &before);
    let away = pool.root.path().join("disk2.away");
    fs::rename(&pool.disks[2], &away).unwrap();
    let during: Vec<Vec<u8>> = (0..4).map(|i| pattern(400_000, 10 + i)).collect();
    for (i, data) in during.iter().enumerate() {
        write_synced(&mount.join(format!("during{i}")), data);
    }
    assert!(!pool.disks[2].exists(), "the engine recreated the vanished disk directory");
    // An empty directory where the disk was (an unmounted disk's mountpoint) is not it.
    fs::create_dir(&pool.disks[2]).unwrap();
    let after = pattern(500_000, 20);
    write_synced(&mount.join("after"), &after);
    assert!(entries(&pool.disks[2]).is_empty(), "wrote into a directory that is not the disk");
    assert_eq!(fs::read(mount.join("before")).unwrap(), before);
    for (i, data) in during.iter().enumerate() {
        assert_eq!(fs::read(mount.join(format!("during{i}"))).unwrap(), *data);
    }
    assert_eq!(fs::read(mount.join("after")).unwrap(), after);
    ok(&["umount", mount.to_str().unwrap()]);
    assert!(entries(&pool.disks[2]).is_empty(), "reopening must not adopt the empty directory either");
}

#[test]
fn a_disk_without_its_label_is_never_written() {
    let pool = Pool::new("replicate:2", &[128, 128, 128]);
    let first = pool.local("first");
    fs::write(&first, pattern(300_000, 2)).unwrap();
    ok(&["put", "--pool", pool.path(), first.to_str().unwrap(), "/first"]);
    fs::remove_dir_all(pool.disks[1].join("label")).unwrap();
    let fragments = fragments_on(&pool.disks[1]);
    let second = pool.local("second");
    fs::write(&second, pattern(900_000, 3)).unwrap();
    ok(&["put", "--pool", pool.path(), second.to_str().unwrap(), "/second"]);
    assert_eq!(fragments_on(&pool.disks[1]), fragments, "fragments written to an unlabelled disk");
    assert!(!pool.disks[1].join("label").exists(), "a label was made up for it");
    let disks: serde_json::Value = serde_json::from_str(&ok(&["list-disks", "--pool", pool.path(), "--json"])).unwrap();
    assert_eq!(disks.as_array().unwrap().len(), 3, "the disk stays in the pool, unavailable");
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/second", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), pattern(900_000, 3));
}

#[test]
fn a_pool_id_that_none_of_the_disks_carry_refuses_to_open_and_changes_nothing() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let file = pool.local("f");
    fs::write(&file, b"kept").unwrap();
    ok(&["put", "--pool", pool.path(), file.to_str().unwrap(), "/f"]);
    let config = pool.root.path().join("pool").join("pool.ron");
    let text = fs::read_to_string(&config).unwrap();
    let start = text.find("pool_id: \"").unwrap() + "pool_id: \"".len();
    let original = &text[start..start + 36];
    let changed = text.replace(original, "00000000-0000-4000-8000-000000000000");
    fs::write(&config, &changed).unwrap();
    let disk_files = |disk: &Path| -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for dir in ["label", "journal", "journal-log", "checkpoint", "fragment", "segments"] {
            let path = disk.join(dir);
            if path.is_file() {
                out.push((dir.to_string(), fs::read(&path).unwrap()));
            } else if path.is_dir() {
                for name in entries(&path) {
                    out.push((format!("{dir}/{name}"), fs::read(path.join(&name)).unwrap()));
                }
            }
        }
        out
    };
    let before: Vec<_> = pool.disks.iter().map(|d| disk_files(d)).collect();
    let error = fails(&["ls", "--pool", pool.path()]);
    assert!(error.contains("none of the 2 disks") && error.contains(original), "{error}");
    let after: Vec<_> = pool.disks.iter().map(|d| disk_files(d)).collect();
    assert!(before == after, "refusing to open changed a disk");
    assert_eq!(fs::read_to_string(&config).unwrap(), changed);
    fs::write(&config, &text).unwrap();
    ok(&["ls", "--pool", pool.path()]);
}

#[test]
fn a_disk_inside_the_pools_own_mountpoint_is_refused_without_hanging() {
    let pool = Pool::new("replicate:1", &[64]);
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    fs::create_dir(mount.join("inside")).unwrap();
    let started = Instant::now();
    let mut child = common::dfs()
        .args(["add-disk", "--pool", pool.path(), "--disk", mount.join("inside").to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("add-disk of a path inside the mount hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut error = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut error).unwrap();
    assert_eq!(status.code(), Some(1), "{error}");
    assert!(error.contains("inside the pool's own mount"), "{error}");
    // The mount still answers, and the pool still has its one disk.
    fs::write(mount.join("still"), b"alive").unwrap();
    let disks: serde_json::Value = serde_json::from_str(&ok(&["list-disks", "--pool", pool.path(), "--json"])).unwrap();
    assert_eq!(disks.as_array().unwrap().len(), 1);
    ok(&["umount", mount.to_str().unwrap()]);
}
