//! Launch commands (SPEC §7): wake an application that has events waiting.
//!
//! A session with a `launch_command` whose journal holds undelivered events, with no client
//! attached and no task waiting or running, gets its command run — with `FERRY_SESSION` and
//! `FERRY_HOME` set, output appended to `$FERRY_HOME/logs/launch-<session>.log` (a log that
//! reached 1 MiB is first renamed to `launch-<session>.log.1`, replacing an older one). If the events
//! are still undelivered later (the command failed, or the application did not attach and
//! acknowledge), it is run again after a delay that doubles each time, from the session's
//! `launch_retry_secs` up to an hour. A session the user terminated is never launched: like
//! iOS, which does not relaunch a force-quit app, until the application attaches again.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_proto::SessionConfig;
use rusqlite::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::home::Layout;
use crate::hub::Hub;
use crate::store::{Store, StoreError};

/// Longest delay between two launches of the same session.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// A launch log this long is rotated before the next launch.
const LOG_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, Default)]
struct Tries {
    launches: u32,
    next_at: Option<Instant>,
}

/// Runs launch commands.
pub struct Launcher {
    store: Arc<Store>,
    hub: Arc<Hub>,
    layout: Layout,
    tries: Mutex<HashMap<String, Tries>>,
}

impl Launcher {
    /// A launcher over the store.
    pub fn new(store: Arc<Store>, hub: Arc<Hub>, layout: Layout) -> Launcher {
        Launcher {
            store,
            hub,
            layout,
            tries: Mutex::new(HashMap::new()),
        }
    }

    /// Checks every second until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let store = self.store.clone();
            let due = tokio::task::spawn_blocking(move || store.read(sessions_to_launch)).await;
            match due {
                Ok(Ok(due)) => self.launch_due(due),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot look for sessions to launch"),
                Err(e) => tracing::error!(error = %e, "the launch check stopped"),
            }
        }
    }

    fn launch_due(&self, due: Vec<(String, SessionConfig)>) {
        let mut tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
        // A session whose events were delivered starts over at the shortest delay.
        tries.retain(|session, _| due.iter().any(|(s, _)| s == session));
        let now = Instant::now();
        for (session, config) in due {
            let Some(argv) = config.launch_command.as_ref().filter(|a| !a.is_empty()) else {
                continue;
            };
            if self.hub.is_attached(&session) {
                continue;
            }
            let t = tries.entry(session.clone()).or_default();
            if t.next_at.is_some_and(|at| now < at) {
                continue;
            }
            let base = Duration::from_secs(config.launch_retry_secs.max(1));
            let delay = base
                .saturating_mul(1u32 << t.launches.min(20))
                .min(MAX_DELAY);
            t.launches += 1;
            t.next_at = Some(now + delay);
            self.spawn(&session, argv);
        }
    }

    fn spawn(&self, session: &str, argv: &[String]) {
        let log = open_log(&self.layout.root.join("logs"), session);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(e) => {
                tracing::warn!(session, error = %e, "no launch log; output discarded");
                (Stdio::null(), Stdio::null())
            }
        };
        let child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("FERRY_SESSION", session)
            .env("FERRY_HOME", &self.layout.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false)
            .spawn();
        match child {
            Ok(mut child) => {
                tracing::info!(session, command = ?argv, "launched");
                let session = session.to_owned();
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(status) if status.success() => {}
                        Ok(status) => {
                            tracing::warn!(%session, %status, "the launch command failed")
                        }
                        Err(e) => tracing::warn!(%session, error = %e, "lost the launch command"),
                    }
                });
            }
            Err(e) => tracing::warn!(session, command = ?argv, error = %e, "cannot launch"),
        }
    }
}

/// Opens `launch-<session>.log` in `logs` for appending; one that has reached [`LOG_LIMIT`]
/// becomes `launch-<session>.log.1` (replacing an older one) and a new one is started.
fn open_log(logs: &std::path::Path, session: &str) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(logs)?;
    let path = logs.join(format!("launch-{session}.log"));
    match std::fs::metadata(&path) {
        Ok(m) if m.len() >= LOG_LIMIT => {
            std::fs::rename(&path, logs.join(format!("launch-{session}.log.1")))?;
        }
        _ => {}
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Sessions with undelivered events, nothing waiting or running, not terminated by the user.
fn sessions_to_launch(c: &Connection) -> Result<Vec<(String, SessionConfig)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT s.id, s.config FROM sessions s \
         WHERE s.terminated_at IS NULL \
           AND EXISTS (SELECT 1 FROM journal j WHERE j.session = s.id AND j.seq > s.acked_seq) \
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.session = s.id \
               AND t.state IN ('waiting', 'connecting', 'transferring', 'retry_wait'))",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut due = Vec::new();
    for row in rows {
        let (id, config) = row?;
        let config: SessionConfig = serde_json::from_str(&config)?;
        if config.launch_command.is_some() {
            due.push((id, config));
        }
    }
    Ok(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_launch_log_is_rotated() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let log = logs.join("launch-s.log");
        let old = logs.join("launch-s.log.1");

        // Under the limit: appended to.
        open_log(&logs, "s").unwrap().write_all(b"first\n").unwrap();
        open_log(&logs, "s")
            .unwrap()
            .write_all(b"second\n")
            .unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"first\nsecond\n");
        assert!(!old.exists());

        // At the limit: renamed to .1, replacing an older one, and a new log started.
        std::fs::write(&old, b"older").unwrap();
        let full = vec![b'x'; LOG_LIMIT as usize];
        std::fs::write(&log, &full).unwrap();
        open_log(&logs, "s").unwrap().write_all(b"new\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"new\n");
        assert_eq!(std::fs::read(&old).unwrap(), full);
        // Other sessions' logs are their own.
        open_log(&logs, "t").unwrap().write_all(b"t\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"new\n");
    }
}
