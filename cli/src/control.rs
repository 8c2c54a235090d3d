//! The control socket: how admin commands reach a pool that a daemon has mounted.
//!
//! The daemon listens on `<pool>/control.sock` (mode 0600 in the 0700 pool directory,
//! so only the pool's owner can connect). A client whose `PoolDir::open` answers EBUSY
//! sends its argument list and working directory as one JSON line; the daemon runs the
//! same command against its open pool and answers with the output and the error, so a
//! command prints the same whether the pool is mounted or not.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use dfs_engine::pooldir::PoolDir;
use dfs_engine::Pool;
use serde::{Deserialize, Serialize};

/// The socket's name in the pool directory.
pub const SOCKET_NAME: &str = "control.sock";

#[derive(Serialize, Deserialize)]
struct Request {
    args: Vec<String>,
    cwd: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Response {
    stdout: String,
    error: Option<String>,
}

/// Runs one command a client sent against the daemon's pool, its output into `out`. The
/// socket knows no command itself: whoever starts the daemon hands this in
/// (`commands::execute_for_client`), so the socket sits below the commands it serves.
pub type Execute = fn(
    command: crate::args::Command,
    dir: &Mutex<PoolDir>,
    pool: &Mutex<Pool>,
    cwd: PathBuf,
    out: &mut Vec<u8>,
) -> Result<()>;

/// Sends this process's command to the daemon owning `pool`. `Ok(None)` when no daemon
/// listens (the pool is busy with another command instead).
pub fn forward(pool: &Path) -> Result<Option<()>> {
    let socket = pool.join(SOCKET_NAME);
    let Ok(mut stream) = UnixStream::connect(&socket) else { return Ok(None) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let request = Request { args, cwd: std::env::current_dir().unwrap_or_default() };
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("talking to the pool daemon")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).context("reading the pool daemon's answer")?;
    let response: Response =
        serde_json::from_str(&reply).map_err(|e| anyhow!("the pool daemon answered garbage: {e}"))?;
    std::io::stdout().write_all(response.stdout.as_bytes())?;
    match response.error {
        None => Ok(Some(())),
        Some(error) => Err(anyhow!(error)),
    }
}

/// Serves admin commands for the daemon's pool, each run by `execute`, until the process
/// exits.
pub fn listen(dir_path: &Path, dir: Arc<Mutex<PoolDir>>, pool: Arc<Mutex<Pool>>, execute: Execute) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let socket = dir_path.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Err(error) = serve_one(stream, &dir, &pool, execute) {
                tracing::warn!(%error, "control request failed");
            }
        }
    });
    Ok(())
}

fn serve_one(stream: UnixStream, dir: &Mutex<PoolDir>, pool: &Mutex<Pool>, execute: Execute) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim().is_empty() {
        return Ok(()); // a liveness probe: connected, sent nothing
    }
    let request: Request = serde_json::from_str(&line)?;
    let command = request.args.first().cloned().unwrap_or_default();
    let _span = tracing::info_span!("control", command, request_id = %crate::logging::next_request_id()).entered();
    tracing::debug!("control request");
    let mut stdout = Vec::new();
    let error = match crate::args::Cli::try_parse_from(std::iter::once("dfs".to_string()).chain(request.args)) {
        Err(e) => Some(e.to_string()),
        Ok(cli) => execute(cli.command, dir, pool, request.cwd, &mut stdout).err().map(|e| format!("{e:#}")),
    };
    let response = Response { stdout: String::from_utf8_lossy(&stdout).into_owned(), error };
    let mut reply = serde_json::to_string(&response)?;
    reply.push('\n');
    let mut stream = stream;
    stream.write_all(reply.as_bytes())?;
    Ok(())
}
