//! The metrics endpoint of a running daemon (`dfs metrics-server`): exact counter values
//! after a known workload, GET of two paths only, and `/health` turning unhealthy when a
//! disk fails and healthy again after the rebuild (as `dfs health`'s exit code does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::{eventually, fails, ok, pattern, Pool};

/// A free loopback port (bound and released; good enough on a test machine).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 request; returns the status code and the body.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, as exposed) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn start(pool: &Pool, port: u16) -> Daemon {
    let child = common::dfs()
        .args(["metrics-server", "--pool", pool.path(), "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    eventually("the metrics endpoint", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    daemon
}

#[test]
fn metrics_after_a_known_workload_are_exact_and_health_follows_a_disk_failure() {
    let pool = Pool::new("erasure:2+1", &[64, 64, 64]);
    let p = pool.path();
    let port = free_port();
    let _daemon = start(&pool, port);

    let sizes = [1_500_000usize, 2_100_000, 300_000];
    for (i, size) in sizes.iter().enumerate() {
        let local = pool.local(&format!("in{i}"));
        std::fs::write(&local, pattern(*size, i as u64)).unwrap();
        ok(&["put", "--pool", p, local.to_str().unwrap(), &format!("/f{i}")]);
    }
    let back = pool.local("back");
    ok(&["get", "--pool", p, "/f1", back.to_str().unwrap()]);

    let (status, text) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    let total: usize = sizes.iter().sum();
    assert_eq!(sample(&text, r#"dynamicfs_operation_bytes_total{op="write"}"#), Some(total as f64), "{text}");
    assert_eq!(sample(&text, r#"dynamicfs_operation_bytes_total{op="read"}"#), Some(sizes[1] as f64));
    assert_eq!(sample(&text, r#"dynamicfs_operations_total{op="fsync"}"#), Some(3.0));
    // 1.5 MB and 2.1 MB make 2 and 3 extents, 300 kB one: six extents of erasure:2+1.
    assert_eq!(sample(&text, "dynamicfs_extents_written_total"), Some(6.0));
    assert!(sample(&text, "dynamicfs_journal_bytes_total").is_some_and(|b| b > 0.0), "{text}");
    // A few records since the daemon opened the pool: nothing for the store to merge.
    assert_eq!(sample(&text, "dynamicfs_metadata_store_merges_total"), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"dynamicfs_extents_by_policy{policy="erasure:2+1"}"#), Some(6.0));
    assert_eq!(sample(&text, r#"dynamicfs_extent_bytes_by_policy{policy="erasure:2+1"}"#), Some(total as f64));
    assert_eq!(sample(&text, r#"dynamicfs_extents_by_health{health="healthy"}"#), Some(6.0));
    assert_eq!(sample(&text, r#"dynamicfs_disk_state{disk="d2",state="active"}"#), Some(1.0));
    assert_eq!(sample(&text, "dynamicfs_healthy"), Some(1.0));
    assert!(text.contains("# TYPE dynamicfs_operation_duration_seconds histogram"));
    assert_eq!(sample(&text, r#"dynamicfs_operation_duration_seconds_count{op="fsync"}"#), Some(3.0));
    assert!(text.contains(r#"dynamicfs_operation_duration_seconds_bucket{op="read",le="+Inf"}"#));
    // `dfs metrics` through the daemon prints the same families.
    let cli = ok(&["metrics", "--pool", p]);
    assert_eq!(sample(&cli, "dynamicfs_extents_written_total"), Some(6.0));

    // Only GET of the two paths.
    assert_eq!(http(port, "POST", "/metrics").0, 405);
    assert_eq!(http(port, "DELETE", "/health").0, 405);
    assert_eq!(http(port, "GET", "/").0, 404);
    assert_eq!(http(port, "GET", "/metrics/../etc").0, 404);

    let (status, body) = http(port, "GET", "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""healthy":true"#), "{body}");
    ok(&["fail-disk", "--pool", p, "--disk", "d2"]);
    let (status, body) = http(port, "GET", "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("disk d2 failed") && body.contains("dfs rebuild"), "{body}");
    let error = fails(&["health", "--pool", p]);
    assert!(error.contains("unhealthy"), "{error}");
    assert_eq!(sample(&http(port, "GET", "/metrics").1, "dynamicfs_healthy"), Some(0.0));

    let spare = pool.root.path().join("spare");
    std::fs::create_dir(&spare).unwrap();
    ok(&["add-disk", "--pool", p, "--disk", spare.to_str().unwrap(), "--capacity", "64MiB"]);
    ok(&["rebuild", "--pool", p]); // through the daemon: its background worker rebuilds
    eventually("health after the rebuild", || http(port, "GET", "/health").0 == 200);
    let report = ok(&["health", "--pool", p]);
    // The advice is a command that works as printed: run it (through the daemon).
    let advice = report.lines().find_map(|l| l.split("remove it: ").nth(1)).unwrap_or_else(|| panic!("{report}"));
    assert_eq!(advice, format!("dfs remove-disk --pool {p} --disk d2"));
    let args: Vec<&str> = advice.split_whitespace().skip(1).collect();
    let removed = ok(&args);
    assert!(removed.contains("disk d2 removed"), "{removed}");
    assert_eq!(ok(&["health", "--pool", p]).trim(), "healthy: no problems found");
}

#[test]
fn the_metrics_server_listens_on_loopback_unless_told_otherwise() {
    let help = ok(&["metrics-server", "--help"]);
    assert!(help.contains("[default: 127.0.0.1:9090]"), "{help}");
    let pool = Pool::new("replicate:1", &[64]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = common::run(&["metrics-server", "--pool", pool.path(), "--listen", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"), "{out:?}");
}

/// Needs Debian's `prometheus` package (`.ci/run` installs it); fails, never skips,
/// without it.
#[test]
fn a_real_prometheus_server_scrapes_the_daemon_and_answers_a_query() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("the prometheus server is not installed: apt-get install prometheus (.ci/run does)");
    let pool = Pool::new("replicate:2", &[64, 64]);
    let p = pool.path();
    let port = free_port();
    let _daemon = start(&pool, port);
    let local = pool.local("in");
    std::fs::write(&local, pattern(2_500_000, 9)).unwrap();
    ok(&["put", "--pool", p, local.to_str().unwrap(), "/f"]);

    let config = pool.local("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dynamicfs\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let log = std::fs::File::create(pool.local("prometheus.log")).unwrap();
    let server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", pool.local("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _server = Daemon(server);
    // Three extents of 2.5 MB were written; Prometheus must report the same number.
    let query = "/api/v1/query?query=dynamicfs_extents_written_total";
    let mut last = String::new();
    eventually("Prometheus to scrape the daemon", || {
        if TcpStream::connect(("127.0.0.1", web)).is_err() {
            return false;
        }
        last = http(web, "GET", query).1;
        last.contains(r#""status":"success""#) && last.contains(r#""job":"dynamicfs""#) && last.contains(r#","3"]"#)
    });
    let up = http(web, "GET", "/api/v1/query?query=up%7Bjob%3D%22dynamicfs%22%7D").1;
    assert!(up.contains(r#","1"]"#), "the scrape target is not up: {up}");
}

#[test]
fn a_mount_serves_metrics_when_asked() {
    let pool = Pool::new("replicate:1", &[64]);
    let m = pool.root.path().join("mnt");
    std::fs::create_dir(&m).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap(), "--metrics", &addr]);
    std::fs::write(m.join("f"), pattern(10_000, 1)).unwrap();
    std::fs::File::open(m.join("f")).unwrap().sync_all().unwrap();
    let (status, text) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(sample(&text, r#"dynamicfs_operations_total{op="fsync"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(http(port, "GET", "/health").0, 200);
    // The daemon's resident memory, in the metrics and in `status` (issue 15, item 10):
    // both from the daemon, which holds at least its code and the file's extent.
    let resident = sample(&text, "dynamicfs_process_resident_bytes").unwrap_or(0.0);
    assert!(resident > 1e6 && resident < 4e9, "{text}");
    let status = ok(&["status", "--pool", pool.path(), "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["resident_bytes"].as_u64().is_some_and(|b| b as f64 > 1e6), "{status}");
    assert!(ok(&["status", "--pool", pool.path()]).contains(" resident"));
    ok(&["umount", m.to_str().unwrap()]);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the endpoint outlived the daemon");
}

/// The daemon's memory is bounded by the cache setting (issue 15, item 10): reading
/// 96 MB back through a mount with `-o cache=16MiB` leaves it far below what the same
/// reads leave with the default 256 MiB cache, which holds every extent read.
#[test]
fn the_extent_cache_setting_bounds_the_daemons_memory() {
    let resident_after_reading = |options: &str| -> f64 {
        let pool = Pool::new("replicate:1", &[512]);
        let m = pool.root.path().join("mnt");
        std::fs::create_dir(&m).unwrap();
        ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap(), "-o", options]);
        let data = pattern(12_000_000, 3);
        for i in 0..8 {
            std::fs::write(m.join(format!("f{i}")), &data).unwrap();
        }
        ok(&["umount", m.to_str().unwrap()]);
        ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap(), "-o", options]);
        for i in 0..8 {
            assert!(common::read_uncached(&m.join(format!("f{i}"))) == data);
        }
        let status: serde_json::Value =
            serde_json::from_str(&ok(&["status", "--pool", pool.path(), "--json"])).unwrap();
        ok(&["umount", m.to_str().unwrap()]);
        status["resident_bytes"].as_u64().unwrap() as f64
    };
    let small = resident_after_reading("cache=16MiB");
    let default = resident_after_reading("noatime");
    assert!(small < 100e6, "{} MB resident with a 16 MiB cache", small / 1e6);
    assert!(default > small + 50e6, "default cache {} MB, 16 MiB cache {} MB", default / 1e6, small / 1e6);
}

/// Read-only descriptors of files of an extent or more, and read-write descriptors of any
/// file, read past the page cache (`direct_reads`, the default): each 4 KiB `pread` of
/// one reaches the daemon, counted in `dynamicfs_operations_total{op="read"}`. A
/// read-only descriptor of a small file and every descriptor under `nodirect_reads` go
/// through the kernel's page cache, whose read-ahead asks for 1 MiB at a time. Either
/// way the bytes are the file's.
#[test]
fn read_only_descriptors_of_large_files_and_read_write_ones_read_past_the_page_cache_unless_told_otherwise() {
    use std::os::unix::fs::FileExt;
    let reads_of = |options: &str, file_len: usize, write_access: bool| -> f64 {
        let pool = Pool::new("replicate:1", &[64]);
        let m = pool.root.path().join("mnt");
        std::fs::create_dir(&m).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap(), "--metrics", &addr, "-o", options]);
        let data = pattern(file_len, 7);
        std::fs::write(m.join("f"), &data).unwrap();
        let before =
            sample(&http(port, "GET", "/metrics").1, r#"dynamicfs_operations_total{op="read"}"#).unwrap_or(0.0);
        let file = std::fs::OpenOptions::new().read(true).write(write_access).open(m.join("f")).unwrap();
        let mut block = vec![0u8; 4096];
        for (k, expected) in data.chunks(4096).take(256).enumerate() {
            file.read_exact_at(&mut block[..expected.len()], (k * 4096) as u64).unwrap();
            assert_eq!(&block[..expected.len()], expected, "bytes at {}", k * 4096);
        }
        drop(file);
        let after = sample(&http(port, "GET", "/metrics").1, r#"dynamicfs_operations_total{op="read"}"#).unwrap_or(0.0);
        ok(&["umount", m.to_str().unwrap()]);
        after - before
    };
    let mib = 1 << 20;
    assert!(reads_of("", 2 * mib, false) >= 256.0, "every 4 KiB read of a read-only descriptor reaches the daemon");
    assert!(reads_of("direct_reads", 2 * mib, false) >= 256.0);
    assert!(reads_of("", 2 * mib, true) >= 256.0, "every 4 KiB read of a read-write descriptor reaches the daemon");
    assert!(reads_of("", mib - 4096, true) >= 255.0, "a read-write descriptor of a small file reads past it too");
    assert!(reads_of("", mib - 4096, false) <= 16.0, "a file under one extent reads through the page cache");
    assert!(reads_of("nodirect_reads", 2 * mib, false) <= 16.0, "nodirect_reads keeps the page cache");
    assert!(reads_of("nodirect_reads", 2 * mib, true) <= 16.0, "for read-write descriptors too");
}
