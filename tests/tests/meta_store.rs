//! The paged metadata store (`meta::store`) against a model, crashes and rot: what it
//! returns is always what was committed (and, after a crash, what was committed before
//! it or by the commit it interrupted — never a mix, never a wrong value).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName};
use dfs_engine::meta::store::{ScanCache, Store, StoreConfig, StoreError};
use dfs_faults::{CrashSwitch, FaultyDevice};
use dfs_sim::memdisk::{Fate, MemDisk};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Small pages and a small cache, so that runs span many pages, merges split and join
/// them, and reads miss the cache.
fn config() -> StoreConfig {
    StoreConfig { page_bytes: 96, bulk_page_bytes: 160, cache_bytes: 600, ..StoreConfig::default() }
}

fn key(k: u16) -> Vec<u8> {
    k.to_be_bytes().to_vec()
}

fn value(seed: u8) -> Vec<u8> {
    vec![seed; 1 + seed as usize % 40]
}

fn contents(store: &Store, devices: &[&dyn BlockDevice]) -> Result<Model, StoreError> {
    let mut out = Model::new();
    store.scan(devices, &[], None, ScanCache::Keep, &mut |k, v| {
        out.insert(k.to_vec(), v.to_vec());
        true
    })?;
    Ok(out)
}

#[derive(Clone, Debug)]
enum Op {
    Put(u16, u8),
    Delete(u16),
    Commit,
    Merge,
    Reopen,
    Scan(u16, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..120, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u16..120).prop_map(Op::Delete),
        2 => Just(Op::Commit),
        1 => Just(Op::Merge),
        1 => Just(Op::Reopen),
        1 => (0u16..120, 0u16..120).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every read answers as a map would; a reopen forgets exactly what was not
    /// committed, keeps the last payload, and leaves no block the root does not name.
    #[test]
    fn the_store_answers_as_a_map_through_commits_merges_and_reopens(ops in prop::collection::vec(op(), 1..120)) {
        let disks: Vec<MemDisk> = (0..2).map(|i| MemDisk::new(format!("d{i}"), 1 << 30)).collect();
        let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
        let mut store = Store::create(&devices, config(), b"0".to_vec()).unwrap();
        let (mut committed, mut current) = (Model::new(), Model::new());
        let mut commits = 0u32;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    store.put(key(k), value(v));
                    current.insert(key(k), value(v));
                }
                Op::Delete(k) => {
                    store.delete(key(k));
                    current.remove(&key(k));
                }
                Op::Commit => {
                    commits += 1;
                    store.commit(&devices, commits.to_string().into_bytes()).unwrap();
                    committed = current.clone();
                }
                Op::Merge => {
                    while store.wants_merge() {
                        store.merge(&devices).unwrap();
                    }
                    prop_assert!(store.runs() <= 24);
                }
                Op::Reopen => {
                    store = Store::open(&devices, config()).unwrap();
                    prop_assert_eq!(store.holders().len(), 2);
                    prop_assert!(store.tidy(&devices).is_empty());
                    current = committed.clone();
                    prop_assert_eq!(store.payload().to_vec(), commits.to_string().into_bytes());
                    for disk in &disks {
                        prop_assert_eq!(disk.list(BlockKind::StorePage).unwrap().len() as u64, store.blocks());
                        prop_assert_eq!(disk.list(BlockKind::StoreRoot).unwrap().len(), 1);
                    }
                }
                Op::Scan(from, to) => {
                    let mut seen = Vec::new();
                    store.scan(&devices, &key(from), Some(&key(to)), ScanCache::Keep, &mut |k, v| {
                        seen.push((k.to_vec(), v.to_vec()));
                        true
                    }).unwrap();
                    let wanted: Vec<_> = current.range(key(from)..key(to)).map(|(k, v)| (k.clone(), v.clone())).collect();
                    prop_assert_eq!(seen, wanted);
                }
            }
            for k in (0u16..120).step_by(7) {
                prop_assert_eq!(store.get(&devices, &key(k)).unwrap(), current.get(&key(k)).cloned(), "key {}", k);
            }
        }
        prop_assert_eq!(contents(&store, &devices).unwrap(), current);
        prop_assert!(store.cached_bytes() <= 600);
    }
}

/// Three replicas behind one crash switch; some committed history; then one more commit
/// or merge that the machine crashes in after a random number of writes, each unsynced
/// operation dropped, landed or torn. Returns why the reopened store is wrong, if it is.
fn crash_round(seed: u64, sabotage: bool) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let switch = CrashSwitch::new();
    let disks: Vec<FaultyDevice<MemDisk>> =
        (0..3).map(|i| FaultyDevice::new(MemDisk::new(format!("d{i}"), 1 << 30), switch.clone(), None)).collect();
    let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    let config = StoreConfig { sabotage_root_before_pages: sabotage, ..config() };
    let mut store = Store::create(&devices, config.clone(), b"0".to_vec()).map_err(|e| e.to_string())?;
    let mut committed = Model::new();
    let change = |rng: &mut ChaCha8Rng, store: &mut Store, model: &mut Model| {
        for _ in 0..rng.random_range(1..30) {
            let k = key(rng.random_range(0..80));
            if rng.random_bool(0.2) {
                store.delete(k.clone());
                model.remove(&k);
            } else {
                let v = value(rng.random());
                store.put(k.clone(), v.clone());
                model.insert(k, v);
            }
        }
    };
    let rounds = rng.random_range(1..6);
    for round in 0..rounds {
        change(&mut rng, &mut store, &mut committed);
        store.commit(&devices, format!("{round}").into_bytes()).map_err(|e| e.to_string())?;
        if rng.random_bool(0.5) {
            store.merge(&devices).map_err(|e| e.to_string())?;
        }
    }
    let before = (committed.clone(), format!("{}", rounds - 1).into_bytes());
    let mut after = committed.clone();
    let merging = store.wants_merge() && rng.random_bool(0.4);
    if !merging {
        change(&mut rng, &mut store, &mut after);
    }
    let after = (after, if merging { before.1.clone() } else { b"last".to_vec() });
    switch.arm_after_writes(rng.random_range(0..40));
    let finished =
        if merging { store.merge(&devices).is_ok() } else { store.commit(&devices, b"last".to_vec()).is_ok() };
    switch.crash_now();
    for disk in &disks {
        let fates: Vec<Fate> = disk
            .inner()
            .pending()
            .iter()
            .map(|_| match rng.random_range(0..3) {
                0 => Fate::Drop,
                1 => Fate::Land,
                _ => Fate::Torn { keep: rng.random_range(0..200), garbage: rng.random_range(0..8) },
            })
            .collect();
        disk.inner().crash(&fates);
    }
    switch.reset();
    let reopened = Store::open(&devices, config).map_err(|e| format!("reopen refused: {e}"))?;
    if let Some(failure) = reopened.tidy(&devices).first() {
        return Err(format!("tidy failed: {}: {}", failure.device, failure.error));
    }
    let found = (contents(&reopened, &devices).map_err(|e| format!("scan failed: {e}"))?, reopened.payload().to_vec());
    if found == after || (!finished && found == before) {
        return Ok(());
    }
    Err(format!(
        "finished {finished}: found {found:?}, wanted {after:?}{}",
        if finished { "" } else { " or the state before" }
    ))
}

#[test]
fn a_crash_anywhere_in_a_commit_or_merge_leaves_the_state_before_it_or_after_it() {
    for seed in 0..1_000 {
        if let Err(why) = crash_round(seed, false) {
            panic!("seed {seed}: {why}");
        }
    }
}

#[test]
fn a_root_published_before_its_pages_are_synced_is_caught_within_a_thousand_seeds() {
    let caught = (0..1_000).find(|&seed| crash_round(seed, true).is_err());
    assert!(caught.is_some(), "no seed caught the defect");
}

/// A store of one commit on three replicas, and the ids of its pages (the index last).
fn one_run() -> (Vec<FaultyDevice<MemDisk>>, Model, Vec<u64>) {
    let switch = CrashSwitch::new();
    let disks: Vec<FaultyDevice<MemDisk>> =
        (0..3).map(|i| FaultyDevice::new(MemDisk::new(format!("d{i}"), 1 << 30), switch.clone(), None)).collect();
    let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    let mut store = Store::create(&devices, config(), Vec::new()).unwrap();
    let model: Model = (0..50).map(|k| (key(k), value(k as u8))).collect();
    for (k, v) in &model {
        store.put(k.clone(), v.clone());
    }
    store.commit(&devices, Vec::new()).unwrap();
    let ids = disks[0]
        .list(BlockKind::StorePage)
        .unwrap()
        .into_iter()
        .map(|name| match name {
            BlockName::StorePage { id } => id,
            other => panic!("{other} listed as a store page"),
        })
        .collect();
    (disks, model, ids)
}

#[test]
fn a_page_rotten_on_one_replica_is_read_from_another_and_rewritten() {
    let (disks, model, ids) = one_run();
    let page = BlockName::StorePage { id: ids[1] };
    disks[0].rot(page, 77);
    let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    let store = Store::open(&devices, config()).unwrap();
    assert_eq!(contents(&store, &devices).unwrap(), model);
    // The rotten copy was replaced: the first replica alone now reads whole.
    assert!(!disks[0].is_faulted(page));
    let alone = Store::open(&devices[..1], config()).unwrap();
    assert_eq!(contents(&alone, &devices[..1]).unwrap(), model);
}

#[test]
fn a_page_rotten_on_every_replica_fails_its_reads_by_name_and_an_index_refuses_the_open() {
    let (disks, model, ids) = one_run();
    let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    let data = BlockName::StorePage { id: ids[2] };
    for disk in &disks {
        disk.rot(data, 5);
    }
    let store = Store::open(&devices, config()).unwrap();
    let error = contents(&store, &devices).unwrap_err();
    assert!(matches!(&error, StoreError::Lost { what, .. } if what.contains(&data.to_string())), "{error}");
    // Keys on other pages still read.
    let first = model.keys().next().unwrap();
    assert_eq!(store.get(&devices, first).unwrap().as_ref(), model.get(first));

    let index = BlockName::StorePage { id: *ids.last().unwrap() };
    for disk in &disks {
        disk.rot(index, 9);
    }
    let error = Store::open(&devices, config()).err().expect("a store without its index must not open");
    assert!(
        matches!(&error, StoreError::Lost { what, .. } if what.contains(&index.to_string()) && what.contains("a run of store root")),
        "{error}"
    );
}

#[test]
fn a_store_is_created_once_and_missing_stores_are_named() {
    let disks: Vec<MemDisk> = (0..2).map(|i| MemDisk::new(format!("d{i}"), 1 << 30)).collect();
    let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    assert_eq!(Store::open(&devices, config()).err(), Some(StoreError::Missing(2)));
    Store::create(&devices, config(), Vec::new()).unwrap();
    assert!(matches!(Store::create(&devices, config(), Vec::new()), Err(StoreError::Exists(d)) if d == "d0"));
}

#[test]
fn a_replica_that_fails_drops_out_of_the_commit_and_a_whole_write_starts_a_new_generation_anywhere() {
    let switch = CrashSwitch::new();
    let disks: Vec<FaultyDevice<MemDisk>> =
        (0..3).map(|i| FaultyDevice::new(MemDisk::new(format!("d{i}"), 1 << 30), switch.clone(), None)).collect();
    let devices: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    let mut store = Store::create(&devices, config(), b"a".to_vec()).unwrap();
    let model: Model = (0..40).map(|k| (key(k), value(k as u8))).collect();
    for (k, v) in &model {
        store.put(k.clone(), v.clone());
    }
    disks[1].inject(&dfs_faults::Fault::Die);
    let committed = store.commit(&devices, b"b".to_vec()).unwrap();
    assert_eq!(committed.failed.iter().map(|f| f.replica).collect::<Vec<_>>(), vec![1]);
    let reopened = Store::open(&devices, config()).unwrap();
    assert_eq!(reopened.holders().iter().copied().collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!((reopened.payload(), contents(&reopened, &devices).unwrap()), (&b"b"[..], model.clone()));

    // Every replica down: the commit fails, its changes stay pending for the next one.
    for disk in [&disks[0], &disks[2]] {
        disk.inject(&dfs_faults::Fault::Die);
    }
    store.put(key(99), value(9));
    assert!(matches!(store.commit(&devices, b"c".to_vec()), Err(StoreError::NoReplica(_))));
    assert_eq!(store.pending(), 1);

    // A whole write on a new set (a fresh disk and one holder) starts above every root.
    let fresh = MemDisk::new("d3", 1 << 30);
    let survivor = MemDisk::new("d4", 1 << 30);
    let old = Store::create(&[&survivor as &dyn BlockDevice], config(), Vec::new()).unwrap();
    let set: Vec<&dyn BlockDevice> = vec![&fresh, &survivor];
    let entries: Vec<_> = model.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
    let (whole, written) = Store::write_whole(&set, config(), Some(&old), entries, b"w".to_vec()).unwrap();
    assert!(written.failed.is_empty());
    assert!(whole.generation() > old.generation());
    for disk in [&fresh, &survivor] {
        assert_eq!(disk.list(BlockKind::StorePage).unwrap().len() as u64, whole.blocks(), "only the new run's blocks");
        assert_eq!(disk.list(BlockKind::StoreRoot).unwrap(), vec![BlockName::StoreRoot { gen: whole.generation() }]);
    }
    let alone = Store::open(&[&fresh as &dyn BlockDevice], config()).unwrap();
    assert_eq!(contents(&alone, &[&fresh]).unwrap(), model);
}
