//! The tiering commands: `list-hot`, `list-cold`, `extent-stats`, `classify`, `tiering`
//! (show or change the configuration) and `unpin`. Glue over `dfs_engine::services::tiering` and
//! `dfs_engine::reports::tier_report`.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Result};
use dfs_engine::base::units::{human, human_duration};
use dfs_engine::meta::state::ChunkSlot;
use dfs_engine::reports::tier_report::TemperatureRow;
use dfs_engine::temperature::config::TieringConfig;
use dfs_engine::temperature::Class;

use crate::args::TieringArgs;
use crate::context::{engine, print_json, print_text, Ctx};
use crate::table;

fn apply(args: &TieringArgs, mut config: TieringConfig) -> TieringConfig {
    if args.enable {
        config.enabled = true;
    }
    if args.disable {
        config.enabled = false;
    }
    let t = &mut config.thresholds;
    let h = &mut config.hmm;
    macro_rules! set {
        ($($field:expr => $value:expr),* $(,)?) => { $(if let Some(v) = $value { $field = v; })* };
    }
    set! {
        config.classifier => args.classifier,
        t.hot_ops_per_day => args.hot_ops_per_day,
        t.hot_within_secs => args.hot_within,
        t.warm_ops_per_day => args.warm_ops_per_day,
        t.warm_within_secs => args.warm_within,
        h.initial => args.hmm_initial,
        h.transition => args.hmm_transition,
        h.emission => args.hmm_emission,
        h.recency_boost => args.recency_boost,
        h.switch_confidence => args.switch_confidence,
        config.tiers.hot => args.hot_policy,
        config.tiers.warm => args.warm_policy.map(|w| w.0),
        config.tiers.cold => args.cold_policy,
        config.pass_interval_secs => args.pass_interval,
        config.stats_flush_secs => args.stats_flush,
        config.migrate_bytes_per_sec => args.migrate_rate,
    }
    config
}

/// `dfs tiering`: changes what the options name, then shows the configuration.
pub(crate) fn tiering(ctx: &mut Ctx<'_>, args: &TieringArgs, json: bool) -> Result<()> {
    let current = *ctx.pool.tiering();
    let wanted = apply(args, current);
    if wanted != current {
        ctx.pool.set_tiering(wanted).map_err(engine)?;
    }
    let config = ctx.pool.tiering();
    if json {
        // Policies as users write them; "default" for the pool default.
        let mut value = serde_json::to_value(config)?;
        value["tiers"] = serde_json::json!({
            "hot": config.tiers.hot.to_string(),
            "warm": config.tiers.warm.map_or("default".to_string(), |p| p.to_string()),
            "cold": config.tiers.cold.to_string(),
        });
        return print_json(ctx.out, &value);
    }
    let row = |m: &[f64; 3]| m.iter().map(|p| format!("{p}")).collect::<Vec<_>>().join(",");
    let matrix = |m: &[[f64; 3]; 3]| m.iter().map(row).collect::<Vec<_>>().join(";");
    let t = &config.thresholds;
    let default = ctx.pool.state().default_policy;
    let lines = [
        ("tiering", if config.enabled { "on".to_string() } else { "off".to_string() }),
        ("classifier", config.classifier.to_string()),
        (
            "hot",
            format!("more than {} ops/day or accessed within {}", t.hot_ops_per_day, human_duration(t.hot_within_secs)),
        ),
        (
            "warm",
            format!(
                "more than {} ops/day or accessed within {}",
                t.warm_ops_per_day,
                human_duration(t.warm_within_secs)
            ),
        ),
        ("cold", "otherwise".to_string()),
        ("hot policy", config.tiers.hot.to_string()),
        ("warm policy", config.tiers.warm.map_or(format!("pool default ({default})"), |p| p.to_string())),
        ("cold policy", config.tiers.cold.to_string()),
        ("pass interval", human_duration(config.pass_interval_secs)),
        ("stats flush", human_duration(config.stats_flush_secs)),
        ("migrate rate", format!("{}/s", human(config.migrate_bytes_per_sec))),
        ("hmm initial", row(&config.hmm.initial)),
        ("hmm transition", matrix(&config.hmm.transition)),
        ("hmm emission", matrix(&config.hmm.emission)),
        ("recency boost", config.hmm.recency_boost.to_string()),
        ("switch confidence", config.hmm.switch_confidence.to_string()),
    ];
    let rows: Vec<Vec<String>> = lines.iter().map(|(k, v)| vec![k.to_string(), v.clone()]).collect();
    print_text(ctx.out, &table::render(&["SETTING", "VALUE"], &rows))
}

fn require_tiering(ctx: &Ctx<'_>) -> Result<()> {
    if !ctx.pool.tiering().enabled {
        bail!(
            "tiering is off for this pool; turn it on with `dfs tiering --pool {} --enable` (EINVAL)",
            ctx.dir.path().display()
        );
    }
    Ok(())
}

/// `dfs list-hot` / `dfs list-cold`.
pub(crate) fn list_class(ctx: &mut Ctx<'_>, class: Class, args: &crate::args::ClassListArgs) -> Result<()> {
    require_tiering(ctx)?;
    let mut rows = ctx.pool.temperature_rows(class).map_err(engine)?;
    let total = rows.len();
    if let Some(limit) = args.limit {
        rows.truncate(limit);
    }
    if args.json.json {
        return print_json(ctx.out, &rows);
    }
    if rows.is_empty() {
        let passes = ctx.pool.state().passes.len();
        let when = ctx.pool.state().passes.back().map(|s| dfs_engine::base::clock::WallTime { secs: *s, nanos: 0 });
        let hint = match when {
            None => "no classification pass has run yet (run one with `dfs classify`)".to_string(),
            Some(at) => format!("{passes} pass(es) so far, the last at {at}"),
        };
        return print_text(ctx.out, &format!("no {class} extents ({hint})\n"));
    }
    let cells: Vec<Vec<String>> = rows.iter().map(row_cells).collect();
    let headers = ["EXTENT", "FILE", "OFFSET", "CLASS", "CONFIDENCE", "OPS/DAY", "LAST ACCESS", "POLICY", "TARGET"];
    let mut text = table::render(&headers, &cells);
    if total > rows.len() {
        text.push_str(&format!("… {} more (raise --limit)\n", total - rows.len()));
    }
    print_text(ctx.out, &text)
}

fn row_cells(row: &TemperatureRow) -> Vec<String> {
    vec![
        row.extent.clone(),
        row.file.clone(),
        row.offset.to_string(),
        row.class.to_string(),
        format!("{:.2}", row.confidence),
        format!("{:.1}", row.ops_per_day),
        row.last_access.clone().unwrap_or_else(|| "never".into()),
        row.policy.clone(),
        if row.pinned { format!("{} (pinned)", row.target) } else { row.target.clone() },
    ]
}

/// `dfs extent-stats`.
pub(crate) fn extent_stats(ctx: &mut Ctx<'_>, extent: &str, json: bool) -> Result<()> {
    let slot: ChunkSlot = extent.parse().map_err(|e| anyhow!("{e} (EINVAL)"))?;
    let stats = ctx.pool.extent_stats(slot).map_err(engine)?;
    if json {
        return print_json(ctx.out, &stats);
    }
    let r = &stats.row;
    let mut text = format!(
        "extent {}: {} at offset {}, {} bytes\n\
         policy {} -> target {}{}\n\
         class {} (confidence {:.2}); {:.1} ops/day; {} accesses; last access {}\n",
        r.extent,
        r.file,
        r.offset,
        stats.len,
        r.policy,
        r.target,
        if r.pinned { " (pinned: tiering never moves it)" } else { "" },
        r.class,
        r.confidence,
        r.ops_per_day,
        stats.total_accesses,
        r.last_access.clone().unwrap_or_else(|| "never".into()),
    );
    if !ctx.pool.tiering().enabled {
        text.push_str("tiering is off for this pool\n");
    }
    text.push_str("\nAccess and HMM state history (one row per classification pass):\n");
    if stats.passes.is_empty() {
        text.push_str("no pass has observed this extent yet\n");
    } else {
        let rows: Vec<Vec<String>> = stats
            .passes
            .iter()
            .map(|p| vec![p.at.clone(), p.accesses.to_string(), p.observed.to_string(), p.state.to_string()])
            .collect();
        text.push_str(&table::render(&["PASS", "ACCESSES", "OBSERVED", "STATE"], &rows));
    }
    text.push_str("\nPolicy history:\n");
    if stats.policy_history.is_empty() {
        text.push_str(&format!("always {}\n", r.policy));
    } else {
        let rows: Vec<Vec<String>> = stats
            .policy_history
            .iter()
            .map(|c| vec![c.at.clone(), c.from.clone(), c.to.clone(), c.cause.clone()])
            .collect();
        text.push_str(&table::render(&["AT", "FROM", "TO", "CAUSE"], &rows));
    }
    print_text(ctx.out, &text)
}

/// Extents `classify --migrate` re-encodes per barrier.
const MIGRATE_BATCH: usize = 16;

/// `dfs classify`: a pass now; with `migrate`, every pending migration now.
pub(crate) fn classify(ctx: &mut Ctx<'_>, migrate: bool, json: bool) -> Result<()> {
    require_tiering(ctx)?;
    let report = ctx.pool.classify_pass().map_err(engine)?;
    let mut migrated = 0;
    if migrate {
        let progress = ctx.local && std::io::stderr().is_terminal();
        loop {
            let moved = ctx.pool.migration_step(MIGRATE_BATCH, true).map_err(engine)?;
            if moved == 0 {
                break;
            }
            migrated += moved;
            if progress {
                let left = ctx.pool.pending_migrations_len();
                eprint!("\rclassify: {migrated} extents migrated, {left} to go{:20}", "");
            }
        }
        if progress {
            eprintln!();
        }
    }
    let left = ctx.pool.pending_migrations_len();
    if json {
        #[derive(serde::Serialize)]
        struct Classified<'a> {
            #[serde(flatten)]
            pass: &'a dfs_engine::services::tiering::PassReport,
            migrated: usize,
            migrations_left: usize,
        }
        return print_json(ctx.out, &Classified { pass: &report, migrated, migrations_left: left });
    }
    let mut text = format!(
        "classified {} extent(s): {} hot, {} warm, {} cold; {} changed class\n",
        report.extents, report.hot, report.warm, report.cold, report.changed
    );
    if migrate {
        text.push_str(&format!("migrated {migrated} extent(s) to the policy of their class; {left} left\n"));
    } else if left > 0 {
        text.push_str(&format!(
            "{left} extent(s) wait to migrate: reads move them at once, the daemon's background worker \
             within the migrate rate; or now with `dfs classify --migrate`\n"
        ));
    } else {
        text.push_str("every extent is under the policy of its class\n");
    }
    print_text(ctx.out, &text)
}

/// `dfs unpin`.
pub(crate) fn unpin(ctx: &mut Ctx<'_>, path: &str, recursive: bool) -> Result<()> {
    let ino = ctx.pool.resolve(path).map_err(engine)?;
    let changed = ctx.pool.unpin(ino, recursive).map_err(engine)?;
    let text = match changed {
        0 => format!("{path}: nothing was pinned (no policy of its own)\n"),
        n => format!("{path}: {n} inode(s) unpinned; they follow the pool default and their temperature now\n"),
    };
    print_text(ctx.out, &text)
}
