//! What every command shares: reaching the daemon, printing, errors and their exit statuses.

use std::fmt;
use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use ferry::{Daemon, ErrorKind, Session};

use crate::exit;

/// The session of the command's own tasks.
pub const DEFAULT_SESSION: &str = "ferry.cli";

/// `--session ID`.
#[derive(Debug, Clone, Args)]
pub struct SessionArg {
    /// The session whose tasks to act on.
    #[arg(long, value_name = "ID", default_value = DEFAULT_SESSION)]
    pub session: String,
}

/// A handle on `id` that does not attach (so it never competes with the application that
/// owns the session for its events), starting ferryd if none runs.
pub async fn session(id: &str) -> Result<Session> {
    Session::background(id)
        .attach(false)
        .client_name("ferry")
        .open()
        .await
        .context("cannot reach ferryd")
}

/// A handle for creating tasks in `id`. The command's own session is first configured
/// without a journal: nothing attaches to it to acknowledge events, so its tasks' states are
/// what counts, and retention can forget its old tasks.
pub async fn session_for_new_tasks(id: &str) -> Result<Session> {
    if id == DEFAULT_SESSION {
        // Attaching stores the configuration; closing detaches again. Another `ferry`
        // attached for the same purpose at this moment makes this one unnecessary.
        let configured = Session::background(id)
            .journal(false)
            .client_name("ferry")
            .open()
            .await;
        match configured {
            Ok(session) => drop(session),
            Err(e) if e.kind() == ErrorKind::SessionInUse => {}
            Err(e) => return Err(anyhow::Error::new(e).context("cannot reach ferryd")),
        }
    }
    session(id).await
}

/// The daemon-wide handle; `start`: start ferryd if none runs.
pub async fn daemon(start: bool) -> Result<Daemon> {
    let opened = Daemon::builder()
        .start(start)
        .client_name("ferry")
        .open()
        .await;
    match opened {
        Ok(daemon) => Ok(daemon),
        Err(e) if e.kind() == ErrorKind::NotRunning => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot reach ferryd")),
    }
}

/// Bad usage or input that clap could not catch (exit status 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Fails with exit status 2.
pub fn usage<T>(message: impl Into<String>) -> Result<T> {
    Err(Usage(message.into()).into())
}

/// The exit status for an error that stopped a command.
pub fn exit_status(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<Usage>() || cause.is::<crate::input::InputError>() {
            return exit::USAGE;
        }
        if let Some(e) = cause.downcast_ref::<ferry::Error>() {
            return match e.kind() {
                ErrorKind::InvalidInput | ErrorKind::InvalidResumeData => exit::USAGE,
                _ => exit::ERROR,
            };
        }
    }
    exit::ERROR
}

pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes to stdout, returning (rather than panicking on) a broken pipe.
pub fn print(text: &str) -> Result<()> {
    print_bytes(text.as_bytes())
}

pub fn print_bytes(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Pretty JSON and a newline.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

/// `K: V` request headers.
pub fn parse_header(line: &str) -> Result<(String, String), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("header {line:?} must look like \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("header name {name:?} is not valid"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// `20M`, `500k`, `1.5G` or plain bytes per second (K = 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("rate {text:?} must be a number with an optional K, M or G suffix"))?;
    if !(value.is_finite() && value >= 1.0) {
        return Err(format!("rate {text:?} must be at least 1 byte per second"));
    }
    Ok((value * scale as f64) as u64)
}

/// `--priority`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PriorityArg {
    Foreground,
    High,
    Normal,
    Low,
}

impl From<PriorityArg> for ferry::Priority {
    fn from(p: PriorityArg) -> ferry::Priority {
        match p {
            PriorityArg::Foreground => ferry::Priority::Foreground,
            PriorityArg::High => ferry::Priority::High,
            PriorityArg::Normal => ferry::Priority::Normal,
            PriorityArg::Low => ferry::Priority::Low,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("1.5k"), Ok(1536));
        assert!(parse_rate("fast").unwrap_err().contains("fast"));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn parses_headers() {
        assert_eq!(
            parse_header("X-Token:  abc "),
            Ok(("X-Token".into(), "abc".into()))
        );
        assert!(
            parse_header("no colon")
                .unwrap_err()
                .contains("Name: value")
        );
        assert!(parse_header("bad name: v").is_err());
    }
}
