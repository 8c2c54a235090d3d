//! The Prometheus exporter: renders the engine's `MetricsSnapshot` in the text
//! exposition format (the `prometheus` crate's encoder), and serves `/metrics` and
//! `/health` over HTTP (`tiny_http`).
//!
//! Names follow Prometheus conventions: `dynamicfs_` prefix, base units (bytes,
//! seconds), `_total` for counters, histograms for latencies. The server answers GET of
//! its two paths only (anything else: 405 or 404) and binds where it is told; the CLI
//! defaults to 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use dfs_engine::reports::metrics::{MetricsSnapshot, LATENCY_BUCKETS_SECS};
use dfs_engine::Pool;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.0.push(family);
    }

    /// One family of plain samples (a counter or a gauge per label set).
    fn samples(&mut self, name: &str, help: &str, kind: MetricType, values: Vec<(Vec<(&str, &str)>, f64)>) {
        let metrics = values
            .into_iter()
            .map(|(pairs, value)| {
                let mut metric = Metric::from_label(labels(&pairs));
                if kind == MetricType::COUNTER {
                    let mut counter = Counter::default();
                    counter.set_value(value);
                    metric.set_counter(counter);
                } else {
                    let mut gauge = Gauge::default();
                    gauge.set_value(value);
                    metric.set_gauge(gauge);
                }
                metric
            })
            .collect();
        self.family(name, help, kind, metrics);
    }

    fn counters(&mut self, name: &str, help: &str, values: Vec<(Vec<(&str, &str)>, f64)>) {
        self.samples(name, help, MetricType::COUNTER, values);
    }

    fn gauges(&mut self, name: &str, help: &str, values: Vec<(Vec<(&str, &str)>, f64)>) {
        self.samples(name, help, MetricType::GAUGE, values);
    }
}

/// Every metric of `snapshot` as Prometheus families.
pub(crate) fn families(snapshot: &MetricsSnapshot) -> Vec<MetricFamily> {
    let mut f = Families(Vec::new());
    let c = &snapshot.counters;
    let counter = |v: u64| v as f64;
    f.counters(
        "dynamicfs_operations_total",
        "Foreground operations served, by kind.",
        snapshot.ops.ops.iter().map(|(kind, n)| (vec![("op", kind.name())], counter(*n))).collect(),
    );
    f.counters(
        "dynamicfs_operation_bytes_total",
        "Bytes moved by foreground operations, by kind.",
        snapshot.ops.bytes.iter().map(|(kind, n)| (vec![("op", kind.name())], counter(*n))).collect(),
    );
    let histograms = snapshot
        .ops
        .latency
        .iter()
        .map(|(kind, h)| {
            let mut cumulative = 0;
            let buckets = LATENCY_BUCKETS_SECS
                .iter()
                .zip(h.buckets.iter())
                .map(|(bound, count)| {
                    cumulative += count;
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            let mut histogram = Histogram::default();
            histogram.set_sample_count(h.count);
            histogram.set_sample_sum(h.sum_secs);
            histogram.set_bucket(buckets);
            let mut metric = Metric::from_label(labels(&[("op", kind.name())]));
            metric.set_histogram(histogram);
            metric
        })
        .collect();
    f.family(
        "dynamicfs_operation_duration_seconds",
        "Latency of foreground operations, by kind.",
        MetricType::HISTOGRAM,
        histograms,
    );
    for (name, help, value) in [
        ("dynamicfs_journal_commits_total", "Metadata commits.", c.commits),
        ("dynamicfs_durability_barriers_total", "Durability barriers completed.", c.barriers),
        ("dynamicfs_checkpoints_total", "Metadata checkpoints written.", c.checkpoints),
        (
            "dynamicfs_journal_bytes_total",
            "Bytes of metadata journal records written, summed over replicas.",
            c.journal_bytes,
        ),
        (
            "dynamicfs_checkpoint_bytes_total",
            "Bytes of metadata checkpoints written, summed over replicas.",
            c.checkpoint_bytes,
        ),
        (
            "dynamicfs_metadata_store_merges_total",
            "Runs of the paged metadata store folded into one after a checkpoint.",
            c.store_merges,
        ),
        ("dynamicfs_extents_written_total", "Extents written.", c.extents_written),
        ("dynamicfs_extents_read_total", "Extents fetched from fragments.", c.extents_read),
        ("dynamicfs_degraded_reads_total", "Extent reads that met a bad or missing fragment.", c.degraded_reads),
        ("dynamicfs_fragment_errors_total", "Fragments found bad or missing by reads.", c.fragment_errors),
        ("dynamicfs_extents_repaired_total", "Extents rebuilt to full redundancy.", c.extents_repaired),
        ("dynamicfs_extents_reencoded_total", "Extents re-encoded under another policy.", c.extents_reencoded),
        ("dynamicfs_extents_migrated_total", "Extents re-encoded by tiering.", c.extents_migrated),
        (
            "dynamicfs_layers_written_total",
            "Small overwrites stored as layers over their chunk's extent.",
            c.layers_written,
        ),
        ("dynamicfs_layers_merged_total", "Layered chunks folded back into whole extents.", c.layers_merged),
        ("dynamicfs_disks_failed_total", "Disks marked failed.", c.disks_failed),
        ("dynamicfs_disks_offline_total", "Times a disk went offline.", c.disks_offline),
        ("dynamicfs_disks_rejoined_total", "Times an offline disk came back and rejoined.", c.disks_rejoined),
        (
            "dynamicfs_degraded_writes_total",
            "Extents written at reduced width (down to the write quorum) while disks were away.",
            c.degraded_writes,
        ),
    ] {
        f.counters(name, help, vec![(Vec::new(), counter(value))]);
    }
    let disk = |values: &dyn Fn(&dfs_engine::reports::metrics::DiskMetrics) -> f64| {
        snapshot.disks.iter().map(|d| (vec![("disk", d.disk.as_str())], values(d))).collect::<Vec<_>>()
    };
    f.gauges("dynamicfs_disk_capacity_bytes", "Capacity of each disk.", disk(&|d| d.capacity_bytes as f64));
    f.gauges("dynamicfs_disk_used_bytes", "Bytes each disk holds.", disk(&|d| d.used_bytes as f64));
    f.gauges("dynamicfs_disk_fragments", "Fragments placed on each disk.", disk(&|d| d.fragments as f64));
    f.gauges(
        "dynamicfs_disk_io_errors",
        "Write and sync failures of each disk since its last success.",
        disk(&|d| d.io_errors as f64),
    );
    f.gauges("dynamicfs_disk_up", "1 when the disk answers.", disk(&|d| f64::from(u8::from(d.reachable))));
    f.gauges(
        "dynamicfs_disk_offline",
        "1 while the disk is offline (unreachable, waited for until its grace period ends).",
        disk(&|d| f64::from(u8::from(d.offline))),
    );
    f.gauges(
        "dynamicfs_disk_full",
        "1 when the disk has no room for another fragment (its capacity or its filesystem is exhausted).",
        disk(&|d| f64::from(u8::from(d.full))),
    );
    f.gauges(
        "dynamicfs_disk_owed_extents",
        "Extents written while the disk was away, still to repair onto it.",
        disk(&|d| d.owed_extents as f64),
    );
    f.gauges(
        "dynamicfs_disk_state_changed_timestamp_seconds",
        "When the disk's state last changed (Unix time; 0 if never dated).",
        disk(&|d| d.changed_secs.unwrap_or(0) as f64),
    );
    let states = ["active", "draining", "failed", "removed", "offline"];
    f.gauges(
        "dynamicfs_disk_state",
        "1 for each disk's state.",
        snapshot
            .disks
            .iter()
            .flat_map(|d| {
                states.iter().map(move |s| {
                    // "offline (draining)" counts as offline.
                    let on = d.state == *s || (d.offline && *s == "offline");
                    (vec![("disk", d.disk.as_str()), ("state", *s)], f64::from(u8::from(on)))
                })
            })
            .collect(),
    );
    for (key, map, label) in [
        ("policy", &snapshot.by_policy, "policy"),
        ("health", &snapshot.by_health, "health"),
        ("class", &snapshot.by_class, "class"),
    ] {
        f.gauges(
            &format!("dynamicfs_extents_by_{key}"),
            &format!("Extents by {key}."),
            map.iter().map(|(k, v)| (vec![(label, k.as_str())], v.extents as f64)).collect(),
        );
        f.gauges(
            &format!("dynamicfs_extent_bytes_by_{key}"),
            &format!("Bytes of extent data by {key}."),
            map.iter().map(|(k, v)| (vec![(label, k.as_str())], v.bytes as f64)).collect(),
        );
    }
    for (name, help, value) in [
        ("dynamicfs_rebuild_queue_extents", "Extents waiting for a rebuild.", snapshot.rebuild_queue as f64),
        (
            "dynamicfs_migration_queue_extents",
            "Extents waiting to migrate by temperature.",
            snapshot.migration_queue as f64,
        ),
        (
            "dynamicfs_scrub_pass_running",
            "1 while a background scrub pass runs.",
            f64::from(u8::from(snapshot.scrub_pass_running)),
        ),
        (
            "dynamicfs_scrub_pass_extents_checked",
            "Extents the current pass has checked.",
            snapshot.scrub_pass_extents_checked as f64,
        ),
        (
            "dynamicfs_scrub_pass_extents_left",
            "Extents the current pass has still to check.",
            snapshot.scrub_pass_extents_left as f64,
        ),
        (
            "dynamicfs_scrub_last_pass_corrupt_fragments",
            "Corrupt fragments the last full pass found.",
            snapshot.scrub_last_pass_corrupt as f64,
        ),
        (
            "dynamicfs_scrub_last_pass_repaired_extents",
            "Extents the last full pass repaired.",
            snapshot.scrub_last_pass_repaired as f64,
        ),
        (
            "dynamicfs_scrub_last_pass_unrecoverable_extents",
            "Extents the last full pass found beyond repair.",
            snapshot.scrub_last_pass_unrecoverable as f64,
        ),
        ("dynamicfs_journal_sequence", "Records ever committed to the metadata journal.", snapshot.journal_seq as f64),
        ("dynamicfs_healthy", "1 when no critical problem (see dfs health).", f64::from(u8::from(snapshot.healthy))),
    ] {
        f.gauges(name, help, vec![(Vec::new(), value)]);
    }
    f.counters(
        "dynamicfs_scrub_passes_total",
        "Background scrub passes completed.",
        vec![(Vec::new(), snapshot.scrub_passes_completed as f64)],
    );
    if let Some(age) = snapshot.checkpoint_age_secs {
        f.gauges(
            "dynamicfs_checkpoint_age_seconds",
            "Seconds since this process wrote a checkpoint.",
            vec![(Vec::new(), age)],
        );
    }
    if let Some(bytes) = resident_bytes() {
        f.gauges(
            "dynamicfs_process_resident_bytes",
            "Resident memory of the process serving the pool (the daemon when mounted).",
            vec![(Vec::new(), bytes as f64)],
        );
    }
    f.0.retain(|family| !family.get_metric().is_empty());
    f.0
}

/// This process's resident memory, from `/proc/self/statm`.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|page| pages * page)
}

/// The snapshot in the text exposition format.
pub(crate) fn render(snapshot: &MetricsSnapshot) -> Result<String> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&families(snapshot), &mut out).map_err(|e| anyhow!("encoding metrics: {e}"))?;
    String::from_utf8(out).map_err(|e| anyhow!("encoding metrics: {e}"))
}

/// `response` with the header `name: value` (static, well-formed ASCII).
fn with_header<R: std::io::Read>(response: tiny_http::Response<R>, name: &str, value: &str) -> tiny_http::Response<R> {
    match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

/// Serves `/metrics` and `/health` for `pool` on `addr` from a thread of its own.
pub(crate) fn serve(addr: SocketAddr, pool: Arc<Mutex<Pool>>, pool_dir: std::path::PathBuf) -> Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or("").to_string();
            let response = match (request.method(), path.as_str()) {
                (tiny_http::Method::Get, "/metrics") => {
                    let snapshot = dfs_engine::pool::lock(&pool).metrics();
                    match render(&snapshot) {
                        Ok(text) => with_header(
                            tiny_http::Response::from_string(text),
                            "Content-Type",
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                        Err(e) => tiny_http::Response::from_string(e.to_string()).with_status_code(500),
                    }
                }
                (tiny_http::Method::Get, "/health") => {
                    let report = dfs_engine::pool::lock(&pool).known_pool_health().naming_pool(&pool_dir);
                    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
                    let response =
                        tiny_http::Response::from_string(body).with_status_code(if report.healthy { 200 } else { 503 });
                    with_header(response, "Content-Type", "application/json")
                }
                (_, "/metrics" | "/health") => with_header(
                    tiny_http::Response::from_string("only GET is served here\n").with_status_code(405),
                    "Allow",
                    "GET",
                ),
                _ => tiny_http::Response::from_string("not found: try /metrics or /health\n").with_status_code(404),
            };
            let response = with_header(response, "Cache-Control", "no-store");
            if let Err(error) = request.respond(response) {
                tracing::debug!(%error, "metrics client went away");
            }
        }
    });
    Ok(())
}
