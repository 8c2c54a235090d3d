//! `dfs status`, `dfs health`, `dfs metrics`, `dfs list-extents` and `dfs show-redundancy`:
//! what an operator looks at. Glue over `dfs_engine::reports`; `metrics` renders the same
//! text the daemon's `/metrics` serves.

use anyhow::{bail, Result};
use dfs_engine::base::units::human;
use dfs_engine::reports::report::Tally;

use crate::context::{engine, print_json, print_text, Ctx};
use crate::table;

/// A bar of `width` cells filled in proportion to `used / capacity`.
fn bar(used: u64, capacity: u64, width: usize) -> String {
    let filled = ((used as f64 / capacity.max(1) as f64) * width as f64).round() as usize;
    let filled = filled.min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// `dfs status`: one screen.
/// How the serving daemon is doing: running, and its resident memory.
fn daemon_line() -> String {
    match crate::exporter::resident_bytes() {
        Some(bytes) => format!("; daemon running, {} resident", dfs_engine::base::units::human(bytes)),
        None => "; daemon running".to_string(),
    }
}

pub(crate) fn status(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let snapshot = ctx.pool.metrics();
    let health = ctx.pool.pool_health().naming_pool(ctx.dir.path());
    if json {
        #[derive(serde::Serialize)]
        struct Status<'a> {
            mounted: bool,
            /// Resident memory of the process that answered (the daemon when mounted).
            resident_bytes: Option<u64>,
            health: &'a dfs_engine::reports::health::HealthReport,
            metrics: &'a dfs_engine::reports::metrics::MetricsSnapshot,
        }
        let resident_bytes = crate::exporter::resident_bytes();
        return print_json(
            ctx.out,
            &Status { mounted: !ctx.local, resident_bytes, health: &health, metrics: &snapshot },
        );
    }
    let state = ctx.pool.state();
    let critical =
        health.problems.iter().filter(|p| p.severity == dfs_engine::reports::health::Severity::Critical).count();
    let mut text = format!(
        "pool {}: {} ({} problem(s), {critical} critical){}\n",
        state.pool_id,
        if health.healthy { "healthy" } else { "UNHEALTHY" },
        health.problems.len(),
        if ctx.local { "; not mounted (no daemon)".to_string() } else { daemon_line() },
    );
    text.push_str(&format!(
        "default policy {}; tiering {}; journal seq {}\n\nDisks:\n",
        state.default_policy,
        if state.tiering.enabled { "on" } else { "off" },
        snapshot.journal_seq
    ));
    let rows: Vec<Vec<String>> = snapshot
        .disks
        .iter()
        .map(|d| {
            vec![
                d.disk.clone(),
                crate::context::disk_state_text(&d.state, d.reachable, d.offline, d.full),
                crate::context::since_text(d.changed_secs),
                bar(d.used_bytes, d.capacity_bytes, 20),
                format!("{} / {}", human(d.used_bytes), human(d.capacity_bytes)),
                d.fragments.to_string(),
            ]
        })
        .collect();
    text.push_str(&table::render(&["DISK", "STATE", "SINCE", "USAGE", "USED", "FRAGMENTS"], &rows));
    let counts = |map: &std::collections::BTreeMap<String, dfs_engine::reports::metrics::Count>| {
        map.iter()
            .filter(|(_, c)| c.extents > 0)
            .map(|(k, c)| format!("{k} {} ({})", c.extents, human(c.bytes)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if snapshot.by_policy.values().all(|c| c.extents == 0) {
        text.push_str("\nNo data stored yet.\n");
    } else {
        text.push_str(&format!("\nRedundancy: {}\n", counts(&snapshot.by_policy)));
        text.push_str(&format!("Health of extents: {}\n", counts(&snapshot.by_health)));
        if state.tiering.enabled && snapshot.by_class.values().any(|c| c.extents > 0) {
            text.push_str(&format!("Temperature: {}\n", counts(&snapshot.by_class)));
        }
    }
    text.push_str(&format!(
        "Queues: {} extent(s) to rebuild, {} to migrate, {} policy transition(s) open\n",
        snapshot.rebuild_queue,
        snapshot.migration_queue,
        ctx.pool.open_transitions().len()
    ));
    let scrub = ctx.pool.scrub_state();
    text.push_str(&match scrub.pass {
        Some(pass) => format!(
            "Scrub: pass {} — {} checked, {} left\n",
            if scrub.paused { "paused" } else { "running" },
            pass.extents,
            snapshot.scrub_pass_extents_left
        ),
        None => format!("Scrub: idle; {} pass(es) completed; schedule {}\n", scrub.passes_completed, scrub.frequency),
    });
    if !health.problems.is_empty() {
        text.push_str("\nProblems (details and what to do: dfs health):\n");
        for problem in &health.problems {
            text.push_str(&format!("  {}: {}\n", problem.severity, problem.what));
        }
    }
    print_text(ctx.out, &text)
}

/// `dfs health`: each problem with what to do; fails (exit 1) when unhealthy.
pub(crate) fn health(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let report = ctx.pool.pool_health().naming_pool(ctx.dir.path());
    if json {
        print_json(ctx.out, &report)?;
    } else if report.problems.is_empty() {
        print_text(ctx.out, "healthy: no problems found\n")?;
    } else {
        let mut text = format!("{}\n", if report.healthy { "healthy, with warnings:" } else { "UNHEALTHY:" });
        for problem in &report.problems {
            text.push_str(&format!(
                "\n{} [{}] {}\n  what to do: {}\n",
                problem.severity, problem.subject, problem.what, problem.action
            ));
        }
        print_text(ctx.out, &text)?;
    }
    if !report.healthy {
        let critical =
            report.problems.iter().filter(|p| p.severity == dfs_engine::reports::health::Severity::Critical).count();
        bail!("the pool is unhealthy: {critical} critical problem(s) (EIO)");
    }
    Ok(())
}

/// `dfs metrics`: the Prometheus text exposition, or the snapshot as JSON.
pub(crate) fn metrics(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let snapshot = ctx.pool.metrics();
    if json {
        return print_json(ctx.out, &snapshot);
    }
    let text = crate::exporter::render(&snapshot).map_err(|e| engine(dfs_engine::Error::Io(e.to_string())))?;
    print_text(ctx.out, &text)
}

/// Widest FILE column of `list-extents`: longer paths keep their start and end.
const FILE_COLUMN_MAX: usize = 48;

/// `dfs list-extents`: every extent (or those of the files under `pool_path`) with its
/// file, policy, health and disks.
pub(crate) fn list_extents(ctx: &mut Ctx<'_>, pool_path: Option<String>, verify: bool, json: bool) -> Result<()> {
    let under = match &pool_path {
        Some(path) => Some(ctx.pool.resolve(path).map_err(engine)?),
        None => None,
    };
    let extents = ctx.pool.list_extents(under, verify);
    if json {
        return print_json(ctx.out, &extents);
    }
    let rows: Vec<Vec<String>> = extents
        .iter()
        .map(|e| {
            vec![
                e.extent.clone(),
                table::shorten(&e.file, FILE_COLUMN_MAX),
                e.offset.to_string(),
                e.length.to_string(),
                e.policy.clone(),
                e.health.to_string(),
                if e.inline {
                    "inline".to_string()
                } else {
                    format!("{}/{}", e.fragments_available, e.fragments_total)
                },
                if e.inline { "metadata".to_string() } else { e.disks.join(",") },
            ]
        })
        .collect();
    print_text(
        ctx.out,
        &table::render(&["EXTENT", "FILE", "OFFSET", "LENGTH", "POLICY", "HEALTH", "FRAGMENTS", "DISKS"], &rows),
    )
}

/// `dfs show-redundancy`: the pool's data by policy and by health, and its overhead.
pub(crate) fn show_redundancy(ctx: &mut Ctx<'_>, verify: bool, json: bool) -> Result<()> {
    let summary = ctx.pool.redundancy_summary(verify);
    if json {
        return print_json(ctx.out, &summary);
    }
    let mut text = String::from("By policy:\n");
    text.push_str(&tally_table("POLICY", summary.by_policy.iter().map(|(policy, t)| (policy.clone(), t))));
    text.push_str("\nBy health:\n");
    text.push_str(&tally_table("HEALTH", summary.by_health.iter().map(|(health, t)| (health.to_string(), t))));
    text.push_str(&format!(
        "\nData bytes: {} ({}), of which inline in the metadata: {} ({})\nRaw bytes stored in fragments: {} \
         ({})\nOverhead ratio: {:.3}\n",
        summary.data_bytes,
        human(summary.data_bytes),
        summary.inline_bytes,
        human(summary.inline_bytes),
        summary.raw_bytes,
        human(summary.raw_bytes),
        summary.overhead_ratio
    ));
    print_text(ctx.out, &text)
}

/// A table of extents and bytes per `key` (a policy, a health).
fn tally_table<'a>(key: &str, tallies: impl Iterator<Item = (String, &'a Tally)>) -> String {
    let rows: Vec<Vec<String>> = tallies.map(|(name, t)| vec![name, t.extents.to_string(), human(t.bytes)]).collect();
    table::render(&[key, "EXTENTS", "BYTES"], &rows)
}
