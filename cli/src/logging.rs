//! Logging: the subscriber a command sets up from `--log-level`/`--log-format`, request
//! ids, and the daemon's messages to its operator (`announce!`), which stay parseable
//! lines when the log is JSON.

use crate::args::{Cli, Command, LogFormat};

/// Whether logs are JSON lines (`--log-format json`): then the daemon's own messages go
/// through the log too, so that every line of its log parses.
pub(crate) static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A daemon's message to its operator: a `dfs: …` line on stderr, or with JSON logs an
/// `info` event (shown whatever the log level).
macro_rules! announce {
    ($($arg:tt)*) => {
        if $crate::logging::JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(announcement = true, "{}", format!($($arg)*));
        } else {
            eprintln!("dfs: {}", format!($($arg)*));
        }
    };
}
pub(crate) use announce;

/// A request id for this process's command: the pid and a counter.
pub(crate) fn next_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Sets up the log for this process's command (`RUST_LOG` overrides the level).
pub(crate) fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            let default = if matches!(cli.command, Command::Demo { .. }) { "error" } else { "warn" };
            EnvFilter::try_new(cli.log_level.as_deref().unwrap_or(default))
        })
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    // fuser warns when its own unmount at exit finds the mount already gone — the normal
    // course after `umount` or `dfs umount` — so only its errors are shown.
    let filter = match "fuser::mnt=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            builder.json().with_current_span(true).with_span_list(true).try_init()
        }
    };
}
