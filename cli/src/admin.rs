//! Disk and policy administration: fail-disk, remove-disk, rebalance, rebuild,
//! rebuild-status, change-policy, policy-status, upgrade.
//!
//! On an unmounted pool the long ones (drain, rebuild, re-encode) run to completion here,
//! with progress on stderr; through a mount's daemon they are started and the daemon's
//! background worker carries them on, so the mount keeps serving. Either way the work is
//! recorded in metadata first and resumes after a crash or an unmount.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use dfs_engine::media::segments::SEGMENT_FORMAT;
use dfs_engine::meta::state::{ChunkSlot, DiskId, DiskState, PolicyScope};
use dfs_engine::Policy;

use crate::context::{engine, print_json, print_text, Ctx};
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
