//! Scrub and orphan commands: `scrub`, `scrub-daemon`, `scrub-schedule`,
//! `detect-orphans`, `cleanup-orphans`, `orphan-stats`. Glue over `dfs_engine::services::scrub`
//! and `dfs_engine::services::orphans`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use dfs_engine::base::units::{human, human_duration};
use dfs_engine::services::scrub::{Frequency, Intensity, ScrubReport, ScrubRun};
use dfs_engine::Pool;

use crate::args::{Command, ScrubDaemonAction};
use crate::context::{engine, print_json, print_text, Ctx};
use crate::table;

/// Extents a scrub step checks (the daemon releases the pool between steps).
const SCRUB_STEP_EXTENTS: usize = 4;

/// Plans a scrub of the pool, or of the files under `path`.
fn plan(pool: &Pool, path: Option<&str>, repair: bool) -> Result<ScrubRun> {
    let under = match path {
        Some(path) => Some(pool.resolve(path).map_err(engine)?),
        None => None,
    };
    pool.scrub_plan(under, repair).map_err(engine)
}

/// Runs `run` to the end through `step`, with a progress line on a terminal.
fn drive(mut run: ScrubRun, progress: bool, step: &mut dyn FnMut(&mut ScrubRun) -> Result<()>) -> Result<ScrubReport> {
    let total = run.total();
    while !run.is_done() {
        step(&mut run)?;
        if progress {
            let done = total - run.remaining();
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\rscrub [{}{}] {done}/{total} extents, {} verified, {} bad",
                "#".repeat(filled),
                "-".repeat(width - filled),
                human(run.report.bytes_checked),
                run.report.findings.len()
            );
        }
    }
    if progress {
        eprintln!();
    }
    Ok(run.report)
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_string()
}

/// Prints a scrub's report; fails (exit 1) when anything is unrecoverable.
fn finish(out: &mut dyn Write, report: &ScrubReport, repair: bool, json: bool) -> Result<()> {
    if json {
        print_json(out, report)?;
    } else {
        let mut text = format!(
            "scrubbed {} extent(s): {} fragment(s), {} verified\n\
             found {} corrupt and {} missing or unreadable fragment(s)\n",
            report.extents_checked,
            report.fragments_checked,
            human(report.bytes_checked),
            report.corrupt_fragments,
            report.missing_fragments,
        );
        if repair {
            text.push_str(&format!(
                "repaired {} extent(s) ({} fragment(s) rewritten)\n",
                report.repaired_extents, report.repaired_fragments
            ));
        } else if !report.findings.is_empty() {
            text.push_str("nothing repaired: run again with --repair to rewrite them from the surviving fragments\n");
        }
        if let Some(metadata) = &report.metadata {
            let repaired = metadata.findings.iter().filter(|f| f.repaired).count();
            text.push_str(&format!(
                "metadata: {} block copies on {} journal disk(s) verified, {} bad{}\n",
                metadata.copies_checked,
                metadata.disks.len(),
                metadata.findings.len(),
                if repair { format!(", {repaired} rewritten") } else { String::new() }
            ));
        }
        if !report.findings.is_empty() {
            let rows: Vec<Vec<String>> = report
                .findings
                .iter()
                .map(|f| {
                    vec![
                        f.extent.clone(),
                        f.file.clone(),
                        f.offset.to_string(),
                        f.fragment.to_string(),
                        f.disk.clone(),
                        f.problem.clone(),
                        yes_no(f.repaired),
                    ]
                })
                .collect();
            text.push('\n');
            text.push_str(&table::render(
                &["EXTENT", "FILE", "OFFSET", "FRAGMENT", "DISK", "PROBLEM", "REPAIRED"],
                &rows,
            ));
        }
        for (title, list) in [("Could not repair", &report.repair_failed), ("Unrecoverable", &report.unrecoverable)] {
            if list.is_empty() {
                continue;
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|u| vec![u.extent.clone(), u.file.clone(), u.offset.to_string(), u.detail.clone()])
                .collect();
            text.push_str(&format!("\n{title}:\n"));
            text.push_str(&table::render(&["EXTENT", "FILE", "OFFSET", "WHY"], &rows));
        }
        print_text(out, &text)?;
    }
    let metadata_findings = report.metadata.as_ref().map_or(&[][..], |m| m.findings.as_slice());
    if !json && !metadata_findings.is_empty() {
        let rows: Vec<Vec<String>> = metadata_findings
            .iter()
            .map(|f| vec![f.disk.to_string(), f.block.clone(), f.problem.clone(), yes_no(f.repaired)])
            .collect();
        let text = format!("\nMetadata copies:\n{}", table::render(&["DISK", "BLOCK", "PROBLEM", "REPAIRED"], &rows));
        print_text(out, &text)?;
    }
    if let Some(lost) = report.metadata.as_ref().map(|m| &m.lost).filter(|lost| !lost.is_empty()) {
        bail!(
            "{} metadata block(s) have no good copy on any journal disk ({}): the pool will refuse to open; \
             keep it mounted and copy the data off",
            lost.len(),
            lost.join(", ")
        );
    }
    if !report.unrecoverable.is_empty() {
        bail!(
            "{} extent(s) unrecoverable: fewer intact fragments than their policy needs (EIO)",
            report.unrecoverable.len()
        );
    }
    Ok(())
}

/// `dfs scrub` on a pool this process holds.
pub(crate) fn scrub(ctx: &mut Ctx<'_>, repair: bool, path: Option<String>, json: bool) -> Result<()> {
    let run = plan(ctx.pool, path.as_deref(), repair)?;
    let progress = ctx.local && std::io::stderr().is_terminal();
    let pool = &mut *ctx.pool;
    let report = drive(run, progress, &mut |run| pool.scrub_run_step(run, SCRUB_STEP_EXTENTS).map_err(engine))?;
    finish(ctx.out, &report, repair, json)
}

/// `dfs scrub` in the daemon: the pool is locked per step, so FUSE requests are served
/// between steps.
pub(crate) fn scrub_in_daemon(command: Command, pool: &Mutex<Pool>, out: &mut dyn Write) -> Result<()> {
    let Command::Scrub { repair, path, json, .. } = command else { bail!("not a scrub command") };
    let lock = || dfs_engine::pool::lock(pool);
    let run = plan(&lock(), path.as_deref(), repair)?;
    let report = drive(run, false, &mut |run| lock().scrub_run_step(run, SCRUB_STEP_EXTENTS).map_err(engine))?;
    finish(out, &report, repair, json.json)
}

#[derive(serde::Serialize)]
struct Status<'a> {
    daemon: bool,
    state: &'a dfs_engine::services::scrub::ScrubState,
    pass_extents_total: usize,
    pass_extents_left: usize,
    pass_rate_bytes_per_sec: Option<f64>,
}

/// `scrub-daemon start|status|pause|resume|stop` against the pool.
pub(crate) fn scrub_daemon(
    ctx: &mut Ctx<'_>,
    action: ScrubDaemonAction,
    intensity: Option<Intensity>,
    json: bool,
) -> Result<()> {
    let daemon = !ctx.local;
    match action {
        ScrubDaemonAction::Start => {
            ctx.pool.scrub_start(intensity).map_err(engine)?;
            let scrub = ctx.pool.scrub_state();
            if !json {
                writeln!(ctx.out, "background scrub running at {} intensity", scrub.intensity)?;
            }
        }
        ScrubDaemonAction::Pause => ctx.pool.scrub_pause(true).map_err(engine)?,
        ScrubDaemonAction::Resume => ctx.pool.scrub_pause(false).map_err(engine)?,
        ScrubDaemonAction::Stop => ctx.pool.scrub_stop().map_err(engine)?,
        ScrubDaemonAction::Status => {}
    }
    let scrub = *ctx.pool.scrub_state();
    let left = usize::try_from(ctx.pool.scrub_pass_left()).unwrap_or(usize::MAX);
    let total = scrub.pass.map_or(0, |p| p.extents as usize + left);
    let now = ctx.pool.now().secs;
    let rate = scrub.pass.and_then(|p| {
        let elapsed = now.saturating_sub(p.started_secs);
        (elapsed > 0).then(|| p.bytes as f64 / elapsed as f64)
    });
    if json {
        let status = Status {
            daemon,
            state: &scrub,
            pass_extents_total: total,
            pass_extents_left: left,
            pass_rate_bytes_per_sec: rate,
        };
        return print_json(ctx.out, &status);
    }
    let when = |secs: i64| dfs_engine::base::clock::WallTime { secs, nanos: 0 }.to_string();
    let mut text = String::new();
    if action == ScrubDaemonAction::Status {
        text.push_str(if daemon {
            "daemon: running\n"
        } else {
            "daemon: not running (nothing scrubs in the background; `dfs scrub-daemon start` or `dfs mount` starts one)\n"
        });
    }
    match scrub.pass {
        None => text.push_str("pass: none in progress\n"),
        Some(p) => {
            let done = total - left;
            let percent = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
            text.push_str(&format!(
                "pass: {}{done} of {total} extents ({percent:.1}%), {} verified since {}{}\n\
                 this pass found {} corrupt, {} missing; repaired {} extent(s); {} unrecoverable\n",
                if scrub.paused { "paused at " } else { "" },
                human(p.bytes),
                when(p.started_secs),
                rate.map_or(String::new(), |r| format!(", {}/s", human(r as u64))),
                p.corrupt,
                p.missing,
                p.repaired,
                p.unrecoverable
            ));
        }
    }
    match scrub.last_full_pass {
        None => text.push_str("last full pass: never\n"),
        Some(last) => text.push_str(&format!(
            "last full pass: {} to {} ({}), {} extents, {} verified, {} corrupt, {} missing, {} repaired, {} unrecoverable\n",
            when(last.stats.started_secs),
            when(last.finished_secs),
            human_duration(u64::try_from(last.finished_secs - last.stats.started_secs).unwrap_or(0)),
            last.stats.extents,
            human(last.stats.bytes),
            last.stats.corrupt,
            last.stats.missing,
            last.stats.repaired,
            last.stats.unrecoverable
        )),
    }
    text.push_str(&format!(
        "schedule: {}, intensity {} ({} passes completed)\n",
        scrub.frequency, scrub.intensity, scrub.passes_completed
    ));
    print_text(ctx.out, &text)
}

/// `dfs scrub-schedule`.
pub(crate) fn scrub_schedule(ctx: &mut Ctx<'_>, frequency: Frequency, intensity: Option<Intensity>) -> Result<()> {
    ctx.pool.scrub_schedule(frequency, intensity).map_err(engine)?;
    let scrub = ctx.pool.scrub_state();
    let when = match frequency {
        Frequency::Off => "never by itself".to_string(),
        Frequency::Continuous => "continuously, a new pass as each one ends".to_string(),
        other => format!(
            "{other}: a new pass when the last began {} ago or more",
            human_duration(other.interval_secs().map_or(0, |s| s.unsigned_abs()))
        ),
    };
    let note = if ctx.local { " (the pool daemon honours it: `dfs mount` or `dfs serve`)" } else { "" };
    writeln!(ctx.out, "background scrub runs {when}, at {} intensity{note}", scrub.intensity)?;
    Ok(())
}

fn age(secs: Option<u64>) -> String {
    secs.map_or_else(|| "unknown".to_string(), human_duration)
}

/// `dfs detect-orphans`.
pub(crate) fn detect_orphans(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let orphans = ctx.pool.detect_orphans().map_err(engine)?;
    if json {
        return print_json(ctx.out, &orphans);
    }
    if orphans.is_empty() {
        return print_text(ctx.out, "no orphan fragments: every fragment on disk is referenced by metadata\n");
    }
    let rows: Vec<Vec<String>> = orphans
        .iter()
        .map(|o| vec![o.disk.to_string(), o.block.clone(), o.bytes.to_string(), age(o.age_secs)])
        .collect();
    let mut text = table::render(&["DISK", "BLOCK", "BYTES", "AGE"], &rows);
    let bytes: u64 = orphans.iter().map(|o| o.bytes).sum();
    text.push_str(&format!(
        "{} orphan fragment(s), {}; delete them with `dfs cleanup-orphans`\n",
        orphans.len(),
        human(bytes)
    ));
    print_text(ctx.out, &text)
}

/// `dfs cleanup-orphans`.
pub(crate) fn cleanup_orphans(ctx: &mut Ctx<'_>, older_than: u64, json: bool) -> Result<()> {
    let cleanup = ctx.pool.cleanup_orphans(older_than).map_err(engine)?;
    if json {
        print_json(ctx.out, &cleanup)?;
    } else {
        let mut text = format!(
            "deleted {} orphan fragment(s), {} freed; {} younger than {} left alone\n",
            cleanup.deleted,
            human(cleanup.bytes_freed),
            cleanup.too_young,
            human_duration(older_than)
        );
        for error in &cleanup.errors {
            text.push_str(&format!("could not delete: {error}\n"));
        }
        print_text(ctx.out, &text)?;
    }
    if !cleanup.errors.is_empty() {
        return Err(anyhow!("{} orphan fragment(s) could not be deleted (EIO)", cleanup.errors.len()));
    }
    Ok(())
}

/// `dfs orphan-stats`.
pub(crate) fn orphan_stats(ctx: &mut Ctx<'_>, json: bool) -> Result<()> {
    let stats = ctx.pool.orphan_stats().map_err(engine)?;
    if json {
        return print_json(ctx.out, &stats);
    }
    let rows: Vec<Vec<String>> =
        stats.iter().map(|s| vec![s.disk.clone(), s.count.to_string(), human(s.bytes), age(s.oldest_secs)]).collect();
    let mut text = table::render(&["DISK", "ORPHANS", "BYTES", "OLDEST"], &rows);
    let count: u64 = stats.iter().map(|s| s.count).sum();
    let bytes: u64 = stats.iter().map(|s| s.bytes).sum();
    text.push_str(&format!("total: {count} orphan fragment(s), {}\n", human(bytes)));
    print_text(ctx.out, &text)
}
