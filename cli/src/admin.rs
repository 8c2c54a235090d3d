//! Disk and policy administration: add-disk, list-disks, availability, fail-disk,
//! remove-disk, rebalance, rebuild, rebuild-status, change-policy, policy-status, upgrade.
//!
//! On an unmounted pool the long ones (drain, rebuild, re-encode) run to completion here,
//! with progress on stderr; through a mount's daemon they are started and the daemon's
//! background worker carries them on, so the mount keeps serving. Either way the work is
//! recorded in metadata first and resumes after a crash or an unmount.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use dfs_engine::base::units::human;
use dfs_engine::media::segments::SEGMENT_FORMAT;
use dfs_engine::meta::state::{ChunkSlot, DiskId, DiskState, PolicyScope};
use dfs_engine::pooldir::OBJECT_SCHEME;
use dfs_engine::Policy;

use crate::context::{disk_state_text, engine, print_json, print_text, since_text, Ctx};
use crate::table;

/// Resolves a disk given as its id (`d3`), its uuid, or its directory.
pub(crate) fn resolve_disk(ctx: &Ctx<'_>, spec: &str) -> Result<DiskId> {
    let canonical = std::fs::canonicalize(ctx.local_path(std::path::Path::new(spec))).ok();
    ctx.pool
        .disk_infos()
        .into_iter()
        .find(|d| d.id == spec || d.uuid == spec || canonical.as_ref().is_some_and(|c| c.to_string_lossy() == d.path))
        .and_then(|d| d.id.trim_start_matches('d').parse().ok().map(DiskId))
        .ok_or_else(|| anyhow!("no disk '{spec}' in this pool; see `dfs list-disks` (ENOENT)"))
}

fn status(text: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r{text:60}");
    }
}

fn status_done() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

pub(crate) fn fail_disk(ctx: &mut Ctx<'_>, spec: &str) -> Result<()> {
    let disk = resolve_disk(ctx, spec)?;
    ctx.pool.fail_disk(disk).map_err(engine)?;
    let queued = ctx.pool.rebuild_queue().len();
    writeln!(ctx.out, "disk {disk} marked failed; {queued} extent(s) degraded, rebuilt lazily")?;
    if ctx.local {
        writeln!(ctx.out, "restore redundancy now with: dfs rebuild --pool {}", ctx.dir.path().display())?;
    }
    Ok(())
}

pub(crate) fn remove_disk(ctx: &mut Ctx<'_>, spec: &str) -> Result<()> {
    let disk = resolve_disk(ctx, spec)?;
    let affected = ctx.pool.start_removal(disk).map_err(engine).with_context(|| format!("removing disk {disk}"))?;
    let failed = ctx.pool.state().disks.get(&disk).is_some_and(|d| d.state == DiskState::Failed);
    if affected == 0 && failed {
        // Nothing lives there any more: nothing to drain or rebuild, mounted or not.
        ctx.pool.finish_removal(disk).map_err(engine)?;
        ctx.dir.forget_disk(ctx.pool, disk).map_err(engine)?;
        writeln!(ctx.out, "disk {disk} removed")?;
        return Ok(());
    }
    if !ctx.local {
        if failed {
            writeln!(
                ctx.out,
                "disk {disk} failed and {affected} extent(s) still need it; the daemon rebuilds them elsewhere — \
                 then run this again to remove it"
            )?;
        } else {
            writeln!(ctx.out, "disk {disk} is draining ({affected} extent(s) to move); the daemon moves them")?;
        }
        return Ok(());
    }
    let total = affected.max(1);
    loop {
        let progress = match ctx.pool.state().disks.get(&disk).map(|d| d.state) {
            Some(DiskState::Draining) => ctx.pool.drain_step(disk, 16).map_err(engine)?,
            _ => {
                // A failed disk holds nothing readable: its extents are rebuilt elsewhere.
                let rebuilt = ctx.pool.rebuild_step(16).map_err(engine)?;
                let left = ctx.pool.extents_on(disk).len();
                if left == 0 {
                    ctx.pool.finish_removal(disk).map_err(engine)?;
                } else if rebuilt == 0 {
                    status_done();
                    bail!(
                        "{left} extent(s) on failed disk {disk} cannot be rebuilt now (too few readable fragments, \
                         or no disk with room that holds no other fragment of them); add a disk and retry (EIO)"
                    );
                }
                dfs_engine::services::geometry::DrainProgress { moved: rebuilt, remaining: left }
            }
        };
        status(&format!("remove-disk {disk}: {} of {total} extents moved", total - progress.remaining.min(total)));
        if progress.remaining == 0 {
            break;
        }
    }
    status_done();
    ctx.dir.forget_disk(ctx.pool, disk).map_err(engine)?;
    writeln!(ctx.out, "disk {disk} removed")?;
    Ok(())
}

pub(crate) fn rebuild(ctx: &mut Ctx<'_>) -> Result<()> {
    if !ctx.local {
        let queued = ctx.pool.rebuild_queue().len();
        writeln!(ctx.out, "{queued} extent(s) queued; the daemon rebuilds them in the background")?;
        return Ok(());
    }
    let total = ctx.pool.rebuild_queue().len();
    let mut repaired = 0;
    loop {
        // A step ends with a barrier and starts its read pipeline afresh: long steps keep
        // the disks busy (measured: 16 extents a step took a tenth longer than 512).
        let step = ctx.pool.rebuild_step(512).map_err(engine)?;
        repaired += step;
        status(&format!("rebuild: {repaired} of {total} extents"));
        if step == 0 {
            break;
        }
    }
    status_done();
    let left = ctx.pool.rebuild_queue().len();
    writeln!(ctx.out, "rebuilt {repaired} extent(s); {left} still degraded")?;
    if left > 0 {
        bail!("{left} extent(s) could not be rebuilt: see `dfs rebuild-status` (EIO)");
    }
    Ok(())
}

/// Moves every disk's blocks kept in an older layout (fragments in files of their own,
/// from before segments) into the current one, disk by disk, with progress. Resumable:
/// run it again after an interruption. A disk that cannot be reached keeps its old
/// layout, which stays readable, and is named.
pub(crate) fn upgrade(ctx: &mut Ctx<'_>) -> Result<()> {
    let disks: Vec<DiskId> = ctx.pool.state().disks.keys().copied().collect();
    let (mut moved, mut unreachable) = (0u64, Vec::new());
    for disk in disks {
        let Some(device) = ctx.pool.device(disk).cloned() else { continue };
        let waiting = device.legacy_blocks();
        if waiting == 0 {
            continue;
        }
        let mut progress = |done: u64, total: u64| status(&format!("upgrade {disk}: {done} of {total} fragments"));
        match device.upgrade_layout(&mut progress) {
            Ok(count) => {
                status_done();
                writeln!(ctx.out, "{disk}: {count} fragment(s) moved into segments")?;
                moved += count;
            }
            Err(e) => {
                status_done();
                writeln!(ctx.out, "{disk}: not upgraded: {e}")?;
                unreachable.push(disk.to_string());
            }
        }
    }
    if moved == 0 && unreachable.is_empty() {
        writeln!(ctx.out, "every disk already stores its fragments in segments (disk layout {SEGMENT_FORMAT})")?;
    }
    if !unreachable.is_empty() {
        bail!(
            "{} kept the old layout (still readable); run `dfs upgrade` again once it is reachable (EIO)",
            unreachable.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn rebalance(ctx: &mut Ctx<'_>, max_bytes: Option<u64>) -> Result<()> {
    let report = ctx.pool.rebalance(max_bytes).map_err(engine)?;
    writeln!(
        ctx.out,
        "moved {} fragment(s), {}; fill ratios now within {:.1}%",
        report.fragments_moved,
        dfs_engine::base::units::human(report.bytes_moved),
        report.spread * 100.0
    )?;
    Ok(())
}

/// One extent waiting for repair, as `rebuild-status` shows it.
#[derive(serde::Serialize)]
struct RebuildView {
    /// Its name, `INO:INDEX` (see `ChunkSlot`).
    extent: String,
    policy: String,
    /// Fragments usable beyond the ones a read needs: 0 means one more loss loses it.
    spare: usize,
    fragments_to_rewrite: usize,
}

pub(crate) fn rebuild_status(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let slots = ctx.pool.state().extent_slots();
    let queue: Vec<RebuildView> = ctx
        .pool
        .rebuild_queue()
        .into_iter()
        .map(|item| RebuildView {
            extent: slots.get(&item.extent).map_or_else(|| item.extent.to_string(), ToString::to_string),
            policy: item.policy,
            spare: item.spare,
            fragments_to_rewrite: item.missing.len(),
        })
        .collect();
    if json {
        return print_json(ctx.out, &queue);
    }
    let rows: Vec<Vec<String>> = queue
        .iter()
        .map(|item| {
            vec![
                item.extent.clone(),
                item.policy.clone(),
                item.spare.to_string(),
                item.fragments_to_rewrite.to_string(),
            ]
        })
        .collect();
    if queue.is_empty() {
        writeln!(ctx.out, "nothing to rebuild: every extent has all its fragments")?;
        return Ok(());
    }
    print_text(ctx.out, &table::render(&["EXTENT", "POLICY", "SPARE", "FRAGMENTS TO REWRITE"], &rows))?;
    writeln!(ctx.out, "{} extent(s) queued, most endangered first", queue.len())?;
    Ok(())
}

pub(crate) fn change_policy(
    ctx: &mut Ctx<'_>,
    policy: Policy,
    path: Option<String>,
    extent: Option<String>,
    recursive: bool,
) -> Result<()> {
    let scope = match (path, extent) {
        (Some(_), Some(_)) => bail!("give --path or --extent, not both"),
        (Some(path), None) => {
            let ino = ctx.pool.resolve(&path).map_err(engine)?;
            PolicyScope::Path { ino, path, recursive }
        }
        (None, Some(extent)) => {
            let slot: ChunkSlot = extent.parse().map_err(|e| anyhow!("{e} (EINVAL)"))?;
            let id = ctx.pool.state().slot_extent_id(slot).ok_or_else(|| {
                anyhow!("no extent {slot}: no file holds chunk {} of inode {} (ENOENT)", slot.index, slot.ino.0)
            })?;
            PolicyScope::Extent(id)
        }
        (None, None) => PolicyScope::Default,
    };
    let id = ctx.pool.begin_policy_change(scope, policy).map_err(engine)?;
    if !ctx.local {
        writeln!(ctx.out, "policy transition {id} to {policy} started; the daemon re-encodes in the background")?;
        return Ok(());
    }
    let mut done = 0;
    loop {
        let progress = ctx.pool.policy_step(id, 16).map_err(engine)?;
        done += progress.reencoded;
        status(&format!("change-policy: {done} extents re-encoded, {} to go", progress.remaining));
        if progress.remaining == 0 {
            break;
        }
    }
    status_done();
    writeln!(ctx.out, "policy transition {id} done: {done} extent(s) re-encoded to {policy}")?;
    Ok(())
}

/// One policy transition, as `policy-status` shows it.
#[derive(serde::Serialize)]
struct TransitionView {
    id: u64,
    scope: String,
    policy: String,
    state: String,
    extents_done: u64,
    started: String,
    finished: Option<String>,
    error: Option<String>,
}

/// One re-encoding of one extent.
#[derive(serde::Serialize)]
struct ChangeView {
    at: String,
    from: String,
    to: String,
    /// "transition N" or "tiering (hot)".
    cause: String,
}

#[derive(serde::Serialize)]
struct ExtentHistory {
    extent: String,
    history: Vec<ChangeView>,
}

#[derive(serde::Serialize)]
struct PolicyStatus {
    transitions: Vec<TransitionView>,
    extents: Vec<ExtentHistory>,
}

pub(crate) fn policy_status(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let state = ctx.pool.state();
    let names = state.extent_slots();
    let mut extents = Vec::new();
    ctx.pool
        .each_extent_record(&mut |r| {
            if !r.history.is_empty() {
                extents.push(ExtentHistory {
                    extent: names.get(&r.id).map_or_else(|| r.id.to_string(), ToString::to_string),
                    history: r
                        .history
                        .iter()
                        .map(|c| ChangeView {
                            at: c.at.to_string(),
                            from: c.from.to_string(),
                            to: c.to.to_string(),
                            cause: c.cause.to_string(),
                        })
                        .collect(),
                });
            }
            true
        })
        .map_err(engine)?;
    let status = PolicyStatus {
        transitions: state
            .transitions
            .values()
            .map(|t| TransitionView {
                id: t.id,
                scope: match &t.scope {
                    PolicyScope::Default => "pool default".to_string(),
                    PolicyScope::Path { path, recursive, .. } => {
                        format!("{path}{}", if *recursive { " (recursive)" } else { "" })
                    }
                    PolicyScope::Extent(id) => format!(
                        "extent {}",
                        names.get(id).map_or_else(|| format!("{id} (since rewritten)"), ToString::to_string)
                    ),
                },
                policy: t.policy.to_string(),
                state: t.state.to_string(),
                extents_done: t.extents_done,
                started: t.started.to_string(),
                finished: t.finished.map(|f| f.to_string()),
                error: t.error.clone(),
            })
            .collect(),
        extents,
    };
    if json {
        return print_json(ctx.out, &status);
    }
    let rows: Vec<Vec<String>> = status
        .transitions
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.scope.clone(),
                t.policy.clone(),
                t.state.clone(),
                t.extents_done.to_string(),
                t.started.clone(),
                t.finished.clone().unwrap_or_default(),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if rows.is_empty() && status.extents.is_empty() {
        return print_text(ctx.out, "no policy transitions yet (start one with `dfs change-policy`)\n");
    }
    let mut text = if rows.is_empty() {
        "no policy transitions (extents below were moved by tiering)\n".to_string()
    } else {
        table::render(&["ID", "SCOPE", "POLICY", "STATE", "EXTENTS", "STARTED", "FINISHED", "ERROR"], &rows)
    };
    text.push_str("\nExtent history:\n");
    let rows: Vec<Vec<String>> = status
        .extents
        .iter()
        .flat_map(|e| {
            e.history
                .iter()
                .map(|c| vec![e.extent.clone(), c.at.clone(), c.from.clone(), c.to.clone(), c.cause.clone()])
        })
        .collect();
    text.push_str(&table::render(&["EXTENT", "AT", "FROM", "TO", "CAUSE"], &rows));
    print_text(ctx.out, &text)
}

/// `dfs availability`: shows the grace period and the replica write quorum, changing
/// those given first.
pub(crate) fn availability(
    ctx: &mut Ctx<'_>,
    grace: Option<std::time::Duration>,
    replica_quorum: Option<u8>,
    json: bool,
) -> Result<()> {
    let mut availability = ctx.pool.state().availability;
    if let Some(grace) = grace {
        availability.grace_secs = grace.as_secs();
    }
    if let Some(quorum) = replica_quorum {
        availability.replica_quorum = quorum;
    }
    if availability != ctx.pool.state().availability {
        ctx.pool.set_availability(availability).map_err(engine)?;
    }
    if json {
        return print_json(ctx.out, &availability);
    }
    writeln!(
        ctx.out,
        "grace period {} (an offline disk is failed and rebuilt elsewhere after it)\nreplica write quorum {} \
         cop{} (erasure:K+M writes need K+1 fragments)",
        humantime::format_duration(std::time::Duration::from_secs(availability.grace_secs)),
        availability.replica_quorum,
        if availability.replica_quorum == 1 { "y" } else { "ies" }
    )?;
    Ok(())
}

/// `dfs add-disk`: adds directory and object-store disks, all or nothing — every one is
/// checked before any is added (a failed disk given back is taken back).
pub(crate) fn add_disks(ctx: &mut Ctx<'_>, disks: Vec<PathBuf>, capacity: Option<u64>) -> Result<()> {
    let (objects, disks): (Vec<PathBuf>, Vec<PathBuf>) =
        disks.into_iter().partition(|d| d.to_str().is_some_and(|s| s.starts_with(OBJECT_SCHEME)));
    let objects: Vec<String> = objects.iter().map(|d| d.to_string_lossy().into_owned()).collect();
    // All or nothing: every disk is checked before any is added.
    let mut vetted_objects: Vec<dfs_engine::pooldir::VettedObject> = Vec::new();
    for url in &objects {
        let found = ctx
            .dir
            .vet_object_disk(ctx.pool, url, capacity)
            .map_err(engine)
            .with_context(|| format!("adding disk {url} (nothing was added)"))?;
        if let Some(twin) = vetted_objects.iter().find(|v| v.location.overlaps(&found.location)) {
            bail!("{url} is given twice (or overlaps {}) (EINVAL); nothing was added", twin.location);
        }
        vetted_objects.push(found);
    }
    let mut vetted: Vec<std::path::PathBuf> = Vec::new();
    for disk in &disks {
        let disk = ctx.local_path(disk);
        if let Some(mountpoint) = crate::mount::own_mount_containing(ctx.dir.path(), &disk) {
            bail!(
                "{} is inside the pool's own mount at {}: a disk must live outside the pool (EINVAL); \
                 nothing was added",
                disk.display(),
                mountpoint.display()
            );
        }
        let canonical = match ctx.dir.vet_disk(ctx.pool, &disk, capacity) {
            Ok(
                dfs_engine::pooldir::Vetted::FailedDisk(path)
                | dfs_engine::pooldir::Vetted::New { canonical: path, .. },
            ) => path,
            Err(e) => {
                return Err(engine(e)).with_context(|| format!("adding disk {} (nothing was added)", disk.display()))
            }
        };
        if let Some(twin) = vetted.iter().find(|v| v.starts_with(&canonical) || canonical.starts_with(v)) {
            bail!("{} is given twice (or overlaps {}) (EINVAL); nothing was added", disk.display(), twin.display());
        }
        vetted.push(canonical);
    }
    for vetted in vetted_objects {
        let url = vetted.location.to_string();
        let id = ctx
            .dir
            .add_object_disk(ctx.pool, vetted, capacity)
            .map_err(engine)
            .with_context(|| format!("adding disk {url}"))?;
        let info = ctx.pool.disk_infos().into_iter().find(|d| d.id == id.to_string());
        let shown = info.map(|i| human(i.capacity_bytes)).unwrap_or_default();
        writeln!(ctx.out, "added disk {id} at {url} ({shown}); the store honours create-only writes")?;
    }
    for disk in &disks {
        let disk = ctx.local_path(disk);
        let disks_before = ctx.pool.state().disks.len();
        let owed_before: usize = ctx.pool.state().owed.values().map(|o| o.len()).sum();
        let id = ctx
            .dir
            .add_disk(ctx.pool, &disk, capacity)
            .map_err(engine)
            .with_context(|| format!("adding disk {}", disk.display()))?;
        if ctx.pool.state().disks.len() == disks_before {
            let owed: usize = ctx.pool.state().owed.values().map(|o| o.len()).sum::<usize>() - owed_before;
            writeln!(
                ctx.out,
                "took back failed disk {id} at {}: the fragments it holds that are still referenced are read \
                 from it again; {owed} extent(s) it lacks are repaired onto it (dfs rebuild, or the daemon)",
                disk.display()
            )?;
            continue;
        }
        let info = ctx.pool.disk_infos().into_iter().find(|d| d.id == id.to_string());
        let shown = info.as_ref().map(|i| human(i.capacity_bytes)).unwrap_or_default();
        writeln!(ctx.out, "added disk {id} at {} ({shown})", disk.display())?;
        // Said when a filesystem first holds two disks; `list-disks` names every group.
        if let Some(others) = info.map(|i| i.shares_filesystem_with).filter(|o| o.len() == 1) {
            writeln!(
                ctx.out,
                "note: {id} is a directory of the same filesystem as {}: disks there share its free space, and \
                 losing that filesystem loses them all at once, which no policy over them survives (dfs list-disks \
                 names them)",
                others.join(", ")
            )?;
        }
        let free = dfs_engine::media::dirdisk::filesystem_free_bytes(&disk);
        if let (Some(declared), Some(free)) = (capacity, free) {
            if declared > free {
                writeln!(
                    ctx.out,
                    "warning: --capacity {} is more than the {} free on the filesystem of {}; the disk \
                     will be full (dfs health says so) when that filesystem fills up",
                    human(declared),
                    human(free),
                    disk.display()
                )?;
            }
        }
    }
    Ok(())
}

/// `dfs list-disks`: every disk with its capacity, use, state and fragments.
pub(crate) fn list_disks(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let disks = ctx.pool.disk_infos();
    if json {
        return print_json(ctx.out, &disks);
    }
    let rows: Vec<Vec<String>> = disks
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.path.clone(),
                human(d.capacity_bytes),
                human(d.used_bytes),
                disk_state_text(&d.state, d.reachable, d.offline_reason.is_some(), d.full),
                since_text(d.changed_secs),
                d.fragments.to_string(),
                if d.journal_replica { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    let mut text = table::render(&["ID", "PATH", "CAPACITY", "USED", "STATE", "SINCE", "FRAGMENTS", "JOURNAL"], &rows);
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for d in disks.iter().filter(|d| !d.shares_filesystem_with.is_empty()) {
        let mut group: Vec<&str> = d.shares_filesystem_with.iter().map(String::as_str).collect();
        group.push(&d.id);
        group.sort_by_key(|id| (id.len(), *id));
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let mut notes: Vec<String> = groups
        .iter()
        .map(|group| {
            format!(
                "{} are directories of one filesystem: they share its free space (CAPACITY shows each its share), \
                 and losing that filesystem loses them all at once, which no policy over them survives",
                group.join(", ")
            )
        })
        .collect();
    notes.extend(disks.iter().filter(|d| d.offline_reason.is_some()).map(|d| {
        format!(
            "{} is offline: {}; {} extent(s) written meanwhile will be repaired onto it when it is back; \
             it is marked failed at {} unless it returns (dfs fail-disk does it now)",
            d.id,
            d.offline_reason.clone().unwrap_or_default(),
            d.owed_extents,
            since_text(d.fails_at_secs),
        )
    }));
    for note in notes {
        text.push('\n');
        text.push_str(&note);
        text.push('\n');
    }
    print_text(ctx.out, &text)
}
