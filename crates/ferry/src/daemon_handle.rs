//! The daemon itself rather than one session: its status, every session and task, and
//! stopping it — what a `ferry status` command or a settings panel needs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ferry_proto::{MAX_GET_TASKS, RemovedTask, Request, Response, SessionInfo, TaskId, TaskInfo};
use tokio::sync::mpsc;

use crate::daemon::{self, spawn};
use crate::error::{Error, ErrorKind};
use crate::session::unexpected;

/// How long [`Daemon::shutdown`] waits for the process to exit.
const EXIT_PATIENCE: Duration = Duration::from_secs(30);

/// A connection to `ferryd` that belongs to no session: daemon-wide questions, and
/// [`shutdown`](Daemon::shutdown). It attaches to nothing, so it never receives events and
/// never disturbs the process attached to a session.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
/// let daemon = ferry::Daemon::builder().start(false).open().await?;
/// for session in daemon.sessions().await? {
///     println!("{}: {} unfinished", session.id, session.unfinished);
/// }
/// # Ok(()) }
/// ```
pub struct Daemon {
    client: daemon::Client,
    home: PathBuf,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("home", &self.home)
            .field("pid", &self.pid())
            .finish()
    }
}

/// The daemon's answer to [`Daemon::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonStatus {
    /// Its process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// Its `FERRY_HOME`.
    pub home: PathBuf,
    /// Task counts by state name (`suspended`, `waiting`, `transferring`, `succeeded`…).
    pub tasks: BTreeMap<String, u64>,
}

/// The daemon's answer to [`Daemon::tasks_by_id`]: every id asked for is in exactly one of
/// the three lists, each in the order asked.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct FoundTasks {
    /// The tasks that exist.
    pub tasks: Vec<TaskInfo>,
    /// The tasks removed (by `remove`, by another client, or by retention) within the
    /// retention period: how each had ended.
    pub removed: Vec<RemovedTask>,
    /// The ids with no task: never created, or removed longer ago than that.
    pub unknown: Vec<TaskId>,
}

impl Daemon {
    /// A handle to configure, then [open](DaemonBuilder::open).
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            home: None,
            program: None,
            start: true,
            client_name: format!("ferry/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The pid of the daemon this handle is connected to (`None` while it reconnects).
    pub fn pid(&self) -> Option<u32> {
        self.client.daemon_pid()
    }

    /// The daemon's pid, version, home and task counts.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn status(&self) -> Result<DaemonStatus, Error> {
        match self.client.call(Request::Status).await? {
            Response::Status {
                pid,
                version,
                home,
                tasks,
            } => Ok(DaemonStatus {
                pid,
                version,
                home: PathBuf::from(home),
                tasks,
            }),
            _ => Err(unexpected("status")),
        }
    }

    /// Every session the daemon knows, in id order: who is attached, task counts, events
    /// not yet delivered.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, Error> {
        match self.client.call(Request::ListSessions).await? {
            Response::Sessions { sessions } => Ok(sessions),
            _ => Err(unexpected("list_sessions")),
        }
    }

    /// Every task of one session, or of all sessions (`None`), in id order.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn tasks(&self, session: Option<&str>) -> Result<Vec<TaskInfo>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let request = Request::ListTasks {
                session: session.map(str::to_owned),
                after,
                limit: None,
            };
            let Response::Tasks { tasks, next } = self.client.call(request).await? else {
                return Err(unexpected("list_tasks"));
            };
            all.extend(tasks);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Tasks by id, of any sessions, in as few requests as the frame limit allows — what a
    /// command following many tasks polls, instead of listing whole sessions.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn tasks_by_id(&self, ids: &[TaskId]) -> Result<FoundTasks, Error> {
        if self.client.daemon_revision().await? < 1 {
            return self.tasks_one_by_one(ids).await;
        }
        let mut found = FoundTasks::default();
        let mut rest = ids;
        while !rest.is_empty() {
            let asked = &rest[..rest.len().min(MAX_GET_TASKS)];
            let request = Request::GetTasks {
                tasks: asked.to_vec(),
            };
            let Response::FoundTasks {
                tasks,
                removed,
                unknown,
                answered,
            } = self.client.call(request).await?
            else {
                return Err(unexpected("get_tasks"));
            };
            let answered = usize::try_from(answered).unwrap_or(usize::MAX);
            // An answer that covers nothing (or more than asked) would loop for ever.
            if answered == 0 || answered > asked.len() {
                return Err(unexpected("get_tasks"));
            }
            found.tasks.extend(tasks);
            found.removed.extend(removed);
            found.unknown.extend(unknown);
            rest = &rest[answered..];
        }
        Ok(found)
    }

    /// `tasks_by_id` for a daemon older than `get_tasks` (still running after an upgrade):
    /// one `get_task` per id, and no tombstones to tell removed tasks from unknown ones.
    async fn tasks_one_by_one(&self, ids: &[TaskId]) -> Result<FoundTasks, Error> {
        let mut found = FoundTasks::default();
        for &id in ids {
            match self.task(id).await {
                Ok(task) => found.tasks.push(task),
                Err(e) if e.kind() == ErrorKind::NotFound => found.unknown.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Changes the daemon-wide bandwidth limit, in bytes per second for all transfers
    /// together (`None`: no limit), also while they run — until the daemon stops
    /// (`FERRY_RATE_LIMIT` sets it at start).
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn set_rate_limit(&self, bytes_per_second: Option<u64>) -> Result<(), Error> {
        let request = Request::SetRateLimit {
            task: None,
            session: None,
            bytes_per_second,
        };
        match self.client.call(request).await? {
            Response::Done => Ok(()),
            _ => Err(unexpected("set_rate_limit")),
        }
    }

    /// One task, of any session.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when there is no such task.
    pub async fn task(&self, id: TaskId) -> Result<TaskInfo, Error> {
        match self.client.call(Request::GetTask { task: id }).await? {
            Response::Task { task } => Ok(task),
            _ => Err(unexpected("get_task")),
        }
    }

    /// Stops the daemon as SIGTERM does — running transfers are checkpointed and continue
    /// when it starts again (any session opening starts it) — and waits until its process
    /// has exited (at most 30 s). A background session still open in some process
    /// reconnects, and so starts the daemon again.
    ///
    /// # Errors
    /// When the daemon cannot be reached, or has not exited in time ([`ErrorKind::Daemon`]).
    pub async fn shutdown(self) -> Result<(), Error> {
        let pid = match self.pid() {
            Some(pid) => pid,
            None => self.status().await?.pid,
        };
        match self.client.call(Request::Shutdown).await? {
            Response::Done => {}
            _ => return Err(unexpected("shutdown")),
        }
        // Closed at once: the connection must not go looking for a daemon again.
        drop(self.client);
        let deadline = tokio::time::Instant::now() + EXIT_PATIENCE;
        let mut pause = Duration::from_millis(5);
        while process_exists(pid) {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Daemon,
                    "daemon",
                    format!(
                        "ferryd (pid {pid}, home {}) did not exit within {} s of shutdown",
                        self.home.display(),
                        EXIT_PATIENCE.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Whether `pid` is a live process (a zombie, exited but not yet reaped, is not).
fn process_exists(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    if rustix::process::test_kill_process(raw).is_err_and(|e| e == rustix::io::Errno::SRCH) {
        return false;
    }
    // `/proc/<pid>/stat`: "pid (comm) S …"; the state follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Configures a [`Daemon`] handle before [opening](DaemonBuilder::open) it.
#[derive(Debug, Clone)]
#[must_use = "a daemon builder does nothing until it is opened"]
pub struct DaemonBuilder {
    home: Option<PathBuf>,
    program: Option<PathBuf>,
    start: bool,
    client_name: String,
}

impl DaemonBuilder {
    /// The daemon's `FERRY_HOME` (default: `$FERRY_HOME`, else `$XDG_STATE_HOME/ferry`,
    /// else `~/.local/state/ferry`).
    pub fn home(mut self, home: impl Into<PathBuf>) -> DaemonBuilder {
        self.home = Some(home.into());
        self
    }

    /// The `ferryd` program to start when no daemon runs (default: `$FERRY_DAEMON`, else
    /// `ferryd` next to this program, else on `PATH`).
    pub fn daemon_program(mut self, program: impl Into<PathBuf>) -> DaemonBuilder {
        self.program = Some(program.into());
        self
    }

    /// Whether [`open`](DaemonBuilder::open) starts `ferryd` when none runs (default
    /// true). With `false`, opening fails with [`ErrorKind::NotRunning`] instead — for
    /// tools that only look. Either way, a handle whose daemon went away later waits for
    /// another to appear and never starts one itself.
    pub fn start(mut self, start: bool) -> DaemonBuilder {
        self.start = start;
        self
    }

    /// How the daemon's logs name this client (default `ferry/<version>`).
    pub fn client_name(mut self, name: impl Into<String>) -> DaemonBuilder {
        self.client_name = name.into();
        self
    }

    /// Connects to the daemon (starting it first if asked and none runs). Must run inside a
    /// Tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::NotRunning`] with `start(false)` when no daemon runs (the message names
    /// the home); [`ErrorKind::Daemon`] when `ferryd` cannot be found, started or reached.
    pub async fn open(self) -> Result<Daemon, Error> {
        let home = match self.home {
            Some(home) => home,
            None => spawn::default_home()?,
        };
        let options = daemon::Options {
            home: home.clone(),
            program: self.program,
            // Never used: without `attach` nothing session-scoped is sent.
            session: String::new(),
            attach: None,
            client_name: self.client_name,
            start: if self.start {
                daemon::Start::FirstOnly
            } else {
                daemon::Start::Never
            },
        };
        // No session, no events: what would arrive (none, unattached) is dropped.
        let (events, _) = mpsc::unbounded_channel();
        let client = daemon::Client::connect(options, events).await?;
        Ok(Daemon { client, home })
    }
}
