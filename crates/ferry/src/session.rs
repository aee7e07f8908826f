//! Sessions: a named set of tasks with one configuration, in the daemon or in this process.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_proto::{
    Conflict, EventFrame, GroupInfo, Priority, Request, Response, SessionConfig, TaskId, TaskInfo,
};
use tokio::sync::mpsc;

use crate::daemon::{self, spawn};
use crate::error::{Error, ErrorKind};
use crate::event::Events;
use crate::group::Group;
use crate::local;
use crate::resume::ResumeData;
use crate::task::{DataBuilder, DownloadBuilder, Task};
use crate::upload::UploadBuilder;

/// A session: where tasks are created, listed and controlled, and where their events come
/// from. Cheap to clone; every clone is the same session.
///
/// - [`Session::background`] — the tasks belong to the `ferryd` daemon and go on when this
///   process exits, crashes or is killed; the process (or its next run) re-attaches by id and
///   receives the events it missed.
/// - [`Session::in_process`] — the same API with the transfers running inside this process;
///   they end with it. Only here are there [data tasks](Session::data).
///
/// Dropping the last clone (tasks, groups and the event stream hold one too) detaches a
/// background session — its tasks go on, its events wait in the daemon's journal — and
/// cancels everything in an in-process session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    backend: Backend,
    events: Mutex<Option<mpsc::UnboundedReceiver<Result<EventFrame, Error>>>>,
}

enum Backend {
    Daemon(daemon::Client),
    Local(Arc<local::Runtime>),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Backend::Local(runtime) = &self.backend {
            runtime.shutdown();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("background", &self.is_background())
            .finish()
    }
}

impl Session {
    /// A background session with this id (e.g. `com.example.sync`: 1–128 letters, digits,
    /// `.`, `_`, `-`). Configure it, then [`SessionBuilder::open`] it.
    pub fn background(id: impl Into<String>) -> SessionBuilder {
        SessionBuilder::new(Kind::Background, id.into())
    }

    /// An in-process session: no daemon, transfers end with the process.
    pub fn in_process() -> SessionBuilder {
        SessionBuilder::new(Kind::InProcess, "in-process".to_owned())
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The pid of the daemon this background session is connected to (`None` in-process,
    /// or while reconnecting).
    pub fn daemon_pid(&self) -> Option<u32> {
        match &self.inner.backend {
            Backend::Daemon(client) => client.daemon_pid(),
            Backend::Local(_) => None,
        }
    }

    /// How many events happened while no process was attached, which the daemon replays
    /// first on [`Session::events`]; a [`BacklogDelivered`](crate::EventKind::BacklogDelivered)
    /// follows them. 0 — always for in-process sessions — means nothing was missed and no
    /// `BacklogDelivered` comes.
    pub fn backlog(&self) -> u64 {
        match &self.inner.backend {
            Backend::Daemon(client) => client.backlog(),
            Backend::Local(_) => 0,
        }
    }

    /// Whether the daemon runs this session's transfers.
    pub fn is_background(&self) -> bool {
        matches!(self.inner.backend, Backend::Daemon(_))
    }

    /// A download of `url` to configure and [start](DownloadBuilder::start).
    pub fn download(&self, url: impl Into<String>) -> DownloadBuilder {
        DownloadBuilder::new(self.clone(), url.into())
    }

    /// Creates many downloads of this session in one step — all or none — and starts them.
    /// Much faster than one at a time for thousands of small files.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the index of the first bad download, and then
    /// nothing was created.
    pub async fn start_downloads(
        &self,
        downloads: impl IntoIterator<Item = DownloadBuilder>,
    ) -> Result<Vec<Task>, Error> {
        let requests = downloads
            .into_iter()
            .map(DownloadBuilder::into_started_request)
            .collect::<Result<Vec<_>, _>>()?;
        let request = Request::CreateDownloads {
            session: self.inner.id.clone(),
            requests,
        };
        match self.call(request).await? {
            Response::Created { ids } => Ok(ids.into_iter().map(|id| self.task(id)).collect()),
            _ => Err(unexpected("create_downloads")),
        }
    }

    /// A raw upload of `file` (PUT by default): the file's bytes are the request body.
    /// Configure it and [start](UploadBuilder::start) it; the server's reply comes in the
    /// task's [`Completed`](crate::EventKind::Completed) event.
    pub fn upload(&self, file: impl Into<PathBuf>, url: impl Into<String>) -> UploadBuilder {
        UploadBuilder::raw(self.clone(), file.into(), url.into())
    }

    /// A multipart/form-data upload (POST by default); add
    /// [fields](UploadBuilder::field) and [files](UploadBuilder::file), then
    /// [start](UploadBuilder::start) it.
    pub fn multipart(&self, url: impl Into<String>) -> UploadBuilder {
        UploadBuilder::form(self.clone(), url.into())
    }

    /// A data task (the response body in memory), for in-process sessions.
    pub fn data(&self, url: impl Into<String>) -> DataBuilder {
        DataBuilder::new(self.clone(), url.into())
    }

    /// A handle to a task of this session by id (no request is made).
    pub fn task(&self, id: TaskId) -> Task {
        Task::new(self.clone(), id)
    }

    /// Every task of the session, including those created by an earlier run of the
    /// application (URLSession's `getTasks`), with their state at the time of the call.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn tasks(&self) -> Result<Vec<(Task, TaskInfo)>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let request = Request::ListTasks {
                session: Some(self.inner.id.clone()),
                after,
                limit: None,
            };
            let Response::Tasks { tasks, next } = self.call(request).await? else {
                return Err(unexpected("list_tasks"));
            };
            all.extend(tasks.into_iter().map(|info| (self.task(info.id), info)));
            match next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Creates a download that continues from `resume_data` (from
    /// [`Task::cancel_with_resume_data`] or the [`Error::resume_data`] of a task cancelled or
    /// failed with its bytes kept), to the original destination.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidResumeData`] when the blob is corrupt, tampered with, foreign or
    /// already used.
    pub async fn download_from_resume_data(&self, resume_data: &ResumeData) -> Result<Task, Error> {
        self.resume_download(resume_data, None).await
    }

    /// Like [`Session::download_from_resume_data`], placing the file at `destination`.
    ///
    /// # Errors
    /// As [`Session::download_from_resume_data`].
    pub async fn resume_download(
        &self,
        resume_data: &ResumeData,
        destination: Option<PathBuf>,
    ) -> Result<Task, Error> {
        let destination = destination.map(|d| crate::task::absolute(&d)).transpose()?;
        let request = Request::CreateFromResumeData {
            session: self.inner.id.clone(),
            resume_data: resume_data.as_str().to_owned(),
            destination,
            headers: Default::default(),
        };
        let info = self.call_for_task(request).await?;
        Ok(self.task(info.id))
    }

    /// A handle to the group `name` of this session (SPEC §12).
    pub fn group(&self, name: impl Into<String>) -> Group {
        Group::new(self.clone(), name.into())
    }

    /// The session's groups with their aggregate progress.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, Error> {
        match self
            .call(Request::ListGroups {
                session: self.inner.id.clone(),
            })
            .await?
        {
            Response::Groups { groups } => Ok(groups),
            _ => Err(unexpected("list_groups")),
        }
    }

    /// The session's events, in order. Can be taken once per session; the events of a
    /// background session go to the journal while it is not taken.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when the stream was taken already, or the session was
    /// opened with [`SessionBuilder::attach`]`(false)`.
    pub fn events(&self) -> Result<Events, Error> {
        let receiver = self
            .inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidState,
                    "invalid_state",
                    "the session's events were taken already, or it is not attached",
                )
            })?;
        Ok(Events::new(self.clone(), receiver))
    }

    /// Changes the session's bandwidth limit, in bytes per second for all its transfers
    /// together (`None`: no limit), also while they run; a background session stores it in
    /// its configuration — until the next attach with a configuration (this process
    /// reconnecting after a daemon restart included) replaces it with the builder's.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn set_rate_limit(&self, bytes_per_second: Option<u64>) -> Result<(), Error> {
        self.call_done(Request::SetRateLimit {
            task: None,
            session: Some(self.inner.id.clone()),
            bytes_per_second,
        })
        .await
    }

    /// The user force-quits the session (SPEC §6): every unfinished task completes
    /// `cancelled` with reason `user_terminated`, with resume data when it has bytes.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn terminate(&self) -> Result<(), Error> {
        self.call_done(Request::Terminate {
            session: self.inner.id.clone(),
        })
        .await
    }

    /// Takes no new tasks; once every task has completed, a
    /// [`SessionInvalidated`](crate::EventKind::SessionInvalidated) event follows
    /// (URLSession's `finishTasksAndInvalidate`).
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn finish_tasks_and_invalidate(&self) -> Result<(), Error> {
        self.call_done(Request::FinishTasksAndInvalidate {
            session: self.inner.id.clone(),
        })
        .await
    }

    /// Cancels every unfinished task, then invalidates the session
    /// (URLSession's `invalidateAndCancel`).
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn invalidate_and_cancel(&self) -> Result<(), Error> {
        self.call_done(Request::InvalidateAndCancel {
            session: self.inner.id.clone(),
        })
        .await
    }

    pub(crate) async fn call(&self, request: Request) -> Result<Response, Error> {
        match &self.inner.backend {
            Backend::Daemon(client) => client.call(request).await,
            Backend::Local(runtime) => runtime.handle(request).await.map_err(Error::from),
        }
    }

    pub(crate) async fn call_for_task(&self, request: Request) -> Result<TaskInfo, Error> {
        match self.call(request).await? {
            Response::Task { task } => Ok(task),
            _ => Err(unexpected("a task request")),
        }
    }

    pub(crate) async fn call_done(&self, request: Request) -> Result<(), Error> {
        self.call(request).await.map(|_| ())
    }

    pub(crate) fn ack_soon(&self, seq: u64) {
        match &self.inner.backend {
            Backend::Daemon(client) => client.ack_soon(seq),
            Backend::Local(runtime) => {
                let request = Request::Ack {
                    session: self.inner.id.clone(),
                    seq,
                };
                let runtime = runtime.clone();
                tokio::spawn(async move { runtime.handle(request).await });
            }
        }
    }

    /// An acknowledgement through `seq` was answered: no merged one below it needs to go.
    pub(crate) fn acknowledged(&self, seq: u64) {
        if let Backend::Daemon(client) = &self.inner.backend {
            client.acknowledged(seq);
        }
    }

    pub(crate) fn local(&self) -> Option<&local::Runtime> {
        match &self.inner.backend {
            Backend::Local(runtime) => Some(runtime),
            Backend::Daemon(_) => None,
        }
    }
}

pub(crate) fn unexpected(what: &str) -> Error {
    Error::new(
        ErrorKind::Daemon,
        "protocol_error",
        format!("unexpected answer to {what}"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Background,
    InProcess,
}

/// Configures a session (SPEC §4) before [opening](SessionBuilder::open) it. A background
/// session's configuration is stored by the daemon and replaced at every attach.
#[derive(Debug, Clone)]
#[must_use = "a session builder does nothing until it is opened"]
pub struct SessionBuilder {
    kind: Kind,
    id: String,
    config: SessionConfig,
    home: Option<PathBuf>,
    daemon: Option<PathBuf>,
    attach: bool,
    take_over: bool,
    client_name: String,
    extra_roots_pem: Vec<Vec<u8>>,
}

impl SessionBuilder {
    fn new(kind: Kind, id: String) -> SessionBuilder {
        SessionBuilder {
            kind,
            id,
            config: SessionConfig::default(),
            home: None,
            daemon: None,
            attach: true,
            take_over: false,
            client_name: format!("ferry/{}", env!("CARGO_PKG_VERSION")),
            extra_roots_pem: Vec::new(),
        }
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: SessionConfig) -> SessionBuilder {
        self.config = config;
        self
    }

    /// Transfers of the session running at once (default 6).
    pub fn max_concurrent(mut self, n: u32) -> SessionBuilder {
        self.config.max_concurrent = n;
        self
    }

    /// Transfers to one host running at once (default 6).
    pub fn max_per_host(mut self, n: u32) -> SessionBuilder {
        self.config.max_per_host = n;
        self
    }

    /// Tasks of one group running at once.
    pub fn group_max_concurrent(mut self, n: u32) -> SessionBuilder {
        self.config.group_max_concurrent = Some(n);
        self
    }

    /// The default priority of new tasks (default normal).
    pub fn priority(mut self, priority: Priority) -> SessionBuilder {
        self.config.priority = priority;
        self
    }

    /// No byte for this long is a transient error, retried (default 60 s).
    pub fn request_timeout(mut self, timeout: Duration) -> SessionBuilder {
        self.config.request_timeout_secs = timeout.as_secs().max(1);
        self
    }

    /// A task that has not finished this long after its first start fails `timed_out`
    /// (default 7 days).
    pub fn resource_timeout(mut self, timeout: Duration) -> SessionBuilder {
        self.config.resource_timeout_secs = timeout.as_secs().max(1);
        self
    }

    /// A header sent with every request of the session.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> SessionBuilder {
        self.config.headers.0.push((name.into(), value.into()));
        self
    }

    /// Bytes per second for the whole session.
    pub fn rate_limit(mut self, bytes_per_second: u64) -> SessionBuilder {
        self.config.rate_limit = Some(bytes_per_second);
        self
    }

    /// What to do when a destination exists (default [`Conflict::Rename`]).
    pub fn destination_conflict(mut self, conflict: Conflict) -> SessionBuilder {
        self.config.destination_conflict = conflict;
        self
    }

    /// Whether the daemon keeps events for an absent client (default true).
    pub fn journal(mut self, journal: bool) -> SessionBuilder {
        self.config.journal = journal;
        self
    }

    /// The program (and arguments) the daemon runs when the session has undelivered events,
    /// no attached client and nothing left to run — the application, to collect them.
    pub fn launch_command<I, S>(mut self, argv: I) -> SessionBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.launch_command = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// The first pause before the launch command runs again when the events stay
    /// undelivered (default 30 s; doubles each time).
    pub fn launch_retry(mut self, delay: Duration) -> SessionBuilder {
        self.config.launch_retry_secs = delay.as_secs().max(1);
        self
    }

    /// The daemon's `FERRY_HOME` (default: `$FERRY_HOME`, else `~/.local/state/ferry`).
    pub fn home(mut self, home: impl Into<PathBuf>) -> SessionBuilder {
        self.home = Some(home.into());
        self
    }

    /// The `ferryd` program to start when no daemon runs (default: `$FERRY_DAEMON`, else
    /// `ferryd` next to this program, else on `PATH`).
    pub fn daemon_program(mut self, program: impl Into<PathBuf>) -> SessionBuilder {
        self.daemon = Some(program.into());
        self
    }

    /// Whether this process receives the session's events (default true). `false` opens it
    /// for control only — create, list, pause, cancel — while another process may be
    /// attached; [`Session::events`] is then unavailable.
    pub fn attach(mut self, attach: bool) -> SessionBuilder {
        self.attach = attach;
        self
    }

    /// Take the session from another attached process instead of failing with
    /// [`ErrorKind::SessionInUse`].
    pub fn take_over(mut self, take_over: bool) -> SessionBuilder {
        self.take_over = take_over;
        self
    }

    /// How the daemon's logs name this client (default `ferry/<version>`).
    pub fn client_name(mut self, name: impl Into<String>) -> SessionBuilder {
        self.client_name = name.into();
        self
    }

    /// Trusts this PEM root certificate too (in-process sessions only; for either kind,
    /// [`SessionBuilder::trust_roots_file`]).
    pub fn add_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> SessionBuilder {
        self.extra_roots_pem.push(pem.into());
        self
    }

    /// Trusts the root certificates in this PEM file too, besides the system's (read when the
    /// session is opened and when each transfer starts).
    pub fn trust_roots_file(mut self, path: impl Into<PathBuf>) -> SessionBuilder {
        self.config.tls.extra_roots.push(absolute(path.into()));
        self
    }

    /// Presents this identity to servers that ask for a client certificate (mutual TLS): a
    /// PEM file with the private key and its certificate chain.
    pub fn client_identity_file(mut self, path: impl Into<PathBuf>) -> SessionBuilder {
        self.config.tls.client_identity = Some(absolute(path.into()));
        self
    }

    /// The `User-Agent` of the session's requests (a `User-Agent` header wins).
    pub fn user_agent(mut self, agent: impl Into<String>) -> SessionBuilder {
        self.config.user_agent = Some(agent.into());
        self
    }

    /// How transient failures are retried: backoff from `initial` doubling up to `max`, and
    /// at most `max_attempts` failed attempts in a row (`None`: until the resource timeout).
    pub fn retry(
        mut self,
        initial: Duration,
        max: Duration,
        max_attempts: Option<u32>,
    ) -> SessionBuilder {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.config.retry = ferry_proto::RetryConfig {
            initial_ms: ms(initial),
            max_ms: ms(max),
            max_attempts,
        };
        self
    }

    /// Whether an unreachable host is waited for (the default) or fails the task at once.
    pub fn waits_for_connectivity(mut self, wait: bool) -> SessionBuilder {
        self.config.waits_for_connectivity = wait;
        self
    }

    /// Follows redirects from `https` to `http` (refused by default).
    pub fn allow_insecure_redirects(mut self, allow: bool) -> SessionBuilder {
        self.config.allow_insecure_redirects = allow;
        self
    }

    /// Opens the session: for a background session, connects to `ferryd` (starting it when
    /// none runs) and attaches; for an in-process session, starts its engine. Must run
    /// inside a Tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::SessionInUse`] when another process is attached (see
    /// [`SessionBuilder::take_over`]); [`ErrorKind::Daemon`] when `ferryd` cannot be found
    /// or started (the message says why); [`ErrorKind::InvalidInput`] for a bad id or
    /// configuration.
    pub async fn open(self) -> Result<Session, Error> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let backend = match self.kind {
            Kind::Background => {
                let home = match self.home {
                    Some(home) => home,
                    None => spawn::default_home()?,
                };
                let options = daemon::Options {
                    home,
                    program: self.daemon,
                    session: self.id.clone(),
                    attach: self.attach.then_some(daemon::Attach {
                        config: self.config,
                        take_over: self.take_over,
                    }),
                    client_name: self.client_name,
                    start: daemon::Start::Always,
                };
                Backend::Daemon(daemon::Client::connect(options, sender).await?)
            }
            Kind::InProcess => {
                let client = ferry_engine::ClientConfig {
                    extra_roots_pem: self.extra_roots_pem,
                    ..Default::default()
                };
                let (events, mut local_events) = mpsc::unbounded_channel();
                let runtime = local::Runtime::new(self.id.clone(), self.config, &client, events)?;
                tokio::spawn(async move {
                    while let Some(event) = local_events.recv().await {
                        if sender.send(Ok(event)).is_err() {
                            break;
                        }
                    }
                });
                Backend::Local(Arc::new(runtime))
            }
        };
        Ok(Session {
            inner: Arc::new(Inner {
                id: self.id,
                backend,
                events: Mutex::new(self.attach.then_some(receiver)),
            }),
        })
    }
}

/// `path` made absolute against this process's working folder (the daemon's is another), as
/// text; left as given if that fails (the session is then refused, saying so).
fn absolute(path: PathBuf) -> String {
    std::path::absolute(&path)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}
