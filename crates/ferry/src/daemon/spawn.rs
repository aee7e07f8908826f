//! Finding `FERRY_HOME` and `ferryd`, and starting the daemon when none runs (SPEC §3).
//!
//! Starting is race-free because the daemon is: it takes an exclusive lock on its home
//! before it binds the socket, and a second `ferryd` exits at once. Every client that found
//! no daemon starts one and then waits for the socket, so whichever daemon won serves all.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::error::{Error, ErrorKind};

/// How long a started daemon may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// `$FERRY_HOME`, else `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`.
pub(crate) fn default_home() -> Result<PathBuf, Error> {
    let var = |name| std::env::var_os(name).filter(|v: &OsString| !v.is_empty());
    if let Some(home) = var("FERRY_HOME") {
        Ok(PathBuf::from(home))
    } else if let Some(state) = var("XDG_STATE_HOME") {
        Ok(PathBuf::from(state).join("ferry"))
    } else if let Some(user) = var("HOME") {
        Ok(PathBuf::from(user).join(".local/state/ferry"))
    } else {
        Err(daemon_error(
            "cannot find a place for ferry's state: set FERRY_HOME or HOME",
        ))
    }
}

/// The daemon's socket in `home`.
pub(crate) fn socket(home: &Path) -> PathBuf {
    home.join("ferryd.sock")
}

/// Connects to the daemon of `home`, starting it first when nothing listens — or, when
/// `start` is false, failing with [`ErrorKind::NotRunning`].
pub(crate) async fn connect_or_start(
    home: &Path,
    program: Option<&Path>,
    start: bool,
) -> Result<UnixStream, Error> {
    let socket = socket(home);
    match UnixStream::connect(&socket).await {
        Ok(stream) => return Ok(stream),
        Err(e) if absent(&e) => {}
        Err(e) => {
            return Err(daemon_error(format!(
                "cannot connect to ferryd at {}: {e}",
                socket.display()
            )));
        }
    }
    if !start {
        return Err(Error::new(
            ErrorKind::NotRunning,
            "not_running",
            format!(
                "no ferryd is running for {} (nothing listens on {})",
                home.display(),
                socket.display()
            ),
        ));
    }
    self::start(home, program).await
}

/// No daemon listens: the socket is missing, or left over by one that died.
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

async fn start(home: &Path, program: Option<&Path>) -> Result<UnixStream, Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| daemon_error(format!("cannot create {}: {e}", home.display())))?;
    let program = match program {
        Some(program) => program.to_owned(),
        None => locate_daemon()?,
    };
    let log_path = home.join("ferryd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| daemon_error(format!("cannot open {}: {e}", log_path.display())))?;
    let mut child = tokio::process::Command::new(&program)
        .env("FERRY_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C meant for the application must not stop it.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| daemon_error(format!("cannot run {}: {e}", program.display())))?;
    tracing::debug!(program = %program.display(), home = %home.display(), "started ferryd");

    let socket = socket(home);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut our_daemon_failed = None;
    let mut delay = Duration::from_millis(5);
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                reap(child);
                return Ok(stream);
            }
            Err(e) if !absent(&e) => {
                return Err(daemon_error(format!(
                    "cannot connect to ferryd at {}: {e}",
                    socket.display()
                )));
            }
            Err(_) => {}
        }
        if our_daemon_failed.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            // Losing the race to another daemon is fine: that one will answer. Anything else
            // (a corrupt database, a bad home) is reported from the log.
            let tail = log_tail(&log_path);
            if !tail.contains("already serves") {
                return Err(daemon_error(format!(
                    "{} exited ({status}) before accepting connections: {tail}",
                    program.display()
                )));
            }
            our_daemon_failed = Some(tail);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(daemon_error(format!(
                "ferryd did not accept connections at {} within {} s (see {})",
                socket.display(),
                START_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Waits for the daemon in the background so it never lingers as a zombie of this process.
fn reap(mut child: tokio::process::Child) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = child.wait().await;
        });
    }
}

/// The last lines the daemon wrote, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// `FERRY_DAEMON`; else `ferryd` next to the running program (or one folder up, where
/// cargo puts binaries beside `examples/` and `deps/`); else `ferryd` on `PATH`.
fn locate_daemon() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("FERRY_DAEMON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let candidates = [Some(dir), dir.parent()];
        candidates
            .into_iter()
            .flatten()
            .map(|d| d.join("ferryd"))
            .find(|p| p.is_file())
    });
    if let Some(path) = beside {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("ferryd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            daemon_error(
                "ferryd was not found next to this program or on PATH; install it or set \
                 FERRY_DAEMON to its path",
            )
        })
}

fn daemon_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Daemon, "daemon", message)
}
