//! `dfs`: the DynamicFS admin CLI. Argument parsing and glue only; the work is the
//! engine's. Exit codes: 0 success, 1 the operation failed (message on stderr),
//! 2 bad usage.

mod admin;
mod args;
mod commands;
mod context;
mod control;
mod kernel_mount;
mod logging;
mod mount;
mod mount_helper;

mod exporter;
mod files;
mod maintenance;
mod observe;
mod table;
mod tiering;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::logging::{init_logging, next_request_id};

/// Extent-sized buffers (1 MiB chunks, fragments) are allocated and freed all the time.
/// glibc serves blocks that large with fresh mmaps, so each one page-faults and is zeroed
/// again; keeping them on the heap measured about 10% faster `put`s. What the heap keeps
/// free stays resident, per arena: with four arenas the I/O threads' buffers left ~40 MB
/// more resident than a 16 MiB cache explains; two arenas hold the daemon near its
/// `--cache` setting (trimming them at 8 MiB instead of 32 cost small-file creates ~5%).
#[allow(unsafe_code)]
fn keep_large_buffers_on_the_heap() {
    // SAFETY: mallopt only adjusts allocator tunables; it is called before any thread
    // starts, and a refused setting (return 0) leaves the defaults, which are correct.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A command's output piped into `head` ends when the reader hangs up, quietly, as `ls`
/// or `cat` do: SIGPIPE gets its default action back (Rust ignores it, which turns every
/// later print into a panic). Daemons keep ignoring it: a client that hangs up must not
/// end them.
#[allow(unsafe_code)]
fn end_quietly_on_broken_pipe() {
    // SAFETY: restores a signal's default disposition before any thread starts; no
    // handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    keep_large_buffers_on_the_heap();
    let program = std::env::args_os().next().unwrap_or_default();
    if mount_helper::is_helper_name(std::path::Path::new(&program)) {
        return mount_helper::main(std::env::args_os().skip(1).collect());
    }
    let cli = Cli::parse();
    if !cli.is_daemon() {
        end_quietly_on_broken_pipe();
    }
    mount::set_daemon_log_args(vec![
        "--log-level".into(),
        cli.log_level.clone().unwrap_or_else(|| "warn".into()).into(),
        "--log-format".into(),
        format!("{:?}", cli.log_format).to_lowercase().into(),
    ]);
    init_logging(&cli);
    let name = cli.command_name();
    let _span = tracing::info_span!("command", command = name, request_id = %next_request_id()).entered();
    tracing::debug!("command starts");
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
                return ExitCode::SUCCESS;
            }
            eprintln!("dfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
