//! `FERRY_HOME`: the daemon's files and who may touch them (SPEC §3, §14).
//!
//! ```text
//! $FERRY_HOME/            0700
//!   ferry.db (+ -wal, -shm) 0600  the store
//!   ferryd.lock             held (flock) by the running daemon: one daemon per home
//!   ferryd.pid              its pid, for people and `ferry daemon status`
//!   ferryd.sock             0600  the protocol socket
//!   staging/<task>.part     bytes of unfinished downloads
//!   inbox/<session>/        finished downloads without a destination
//!   replies/<task>.reply    the reply to an upload, until its `completed` is acknowledged
//!   resume/<id>.part        kept bytes of resume data, reclaimed after the retention period
//!                           once no task or unacknowledged event holds their blob
//!   logs/launch-<session>.log (+ .1)  launch command output, rotated at 1 MiB
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The paths inside one `FERRY_HOME`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The folder itself.
    pub root: PathBuf,
}

impl Layout {
    /// `$FERRY_HOME`, else `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`.
    pub fn from_env() -> Result<Layout> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let root = if let Some(h) = var("FERRY_HOME") {
            PathBuf::from(h)
        } else if let Some(state) = var("XDG_STATE_HOME") {
            PathBuf::from(state).join("ferry")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/state/ferry")
        } else {
            bail!("cannot find a place for ferry's state: set FERRY_HOME or HOME");
        };
        Ok(Layout { root })
    }

    /// The store.
    pub fn database(&self) -> PathBuf {
        self.root.join("ferry.db")
    }

    /// The protocol socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("ferryd.sock")
    }

    /// The pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("ferryd.pid")
    }

    fn lock_file(&self) -> PathBuf {
        self.root.join("ferryd.lock")
    }

    /// Staging file of a task.
    pub fn staging(&self, task: u64) -> PathBuf {
        self.root.join("staging").join(format!("{task}.part"))
    }

    /// The server's reply to upload `task`: a folder of its own, so that no name a server
    /// gives an inbox download can meet it.
    pub fn reply(&self, task: u64) -> PathBuf {
        self.replies().join(format!("{task}.reply"))
    }

    /// The folder of upload replies.
    pub fn replies(&self) -> PathBuf {
        self.root.join("replies")
    }

    /// The inbox of a session (its id was validated by [`valid_session_id`]).
    pub fn inbox(&self, session: &str) -> PathBuf {
        self.root.join("inbox").join(session)
    }

    /// Creates the folders with their modes and takes the daemon lock.
    ///
    /// # Errors
    /// When another daemon holds the lock (naming its pid), or a folder cannot be created.
    pub fn prepare(&self) -> Result<DaemonLock> {
        private_dir(&self.root)?;
        // An existing folder keeps its mode on create: make it private explicitly.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("while restricting {}", self.root.display()))?;
        private_dir(&self.root.join("staging"))?;
        private_dir(&self.root.join("inbox"))?;
        private_dir(&self.replies())?;

        let path = self.lock_file();
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("while opening {}", path.display()))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            bail!(
                "another ferryd (pid {}) already serves {}",
                pid.trim(),
                self.root.display()
            );
        }
        lock.set_len(0)?;
        write!(lock, "{}", std::process::id())?;
        std::fs::write(self.pid_file(), format!("{}\n", std::process::id()))
            .with_context(|| format!("while writing {}", self.pid_file().display()))?;
        Ok(DaemonLock {
            _file: lock,
            pid_file: self.pid_file(),
        })
    }
}

/// Held while the daemon runs; releasing it (drop) removes the pid file.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
    pid_file: PathBuf,
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("while creating {}", dir.display()))
}

/// A session id is a folder name in the inbox, so it is restricted: 1 to 128 characters of
/// letters, digits, `.`, `_` and `-`, not starting with a dot.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert!(valid_session_id("com.example.sync"));
        assert!(valid_session_id("ferry.cli"));
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "sp ace",
            &"x".repeat(129),
        ] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn one_daemon_per_home() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().join("home"),
        };
        let lock = layout.prepare().unwrap();
        let err = layout.prepare().unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&layout.root).unwrap().mode() & 0o777,
            0o700
        );
        drop(lock);
        assert!(!layout.pid_file().exists());
        layout.prepare().unwrap();
    }
}
