//! Every message of protocol version 1. `docs/PROTOCOL.md` shows each as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A task's id: assigned by the daemon, unique in it, never reused.
pub type TaskId = u64;

/// What a client sends.
// A frame is decoded once and moved to its handler; boxing the request would only change
// the API of every client.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame of every connection.
    Hello {
        /// The client's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// Free text naming the client, for logs (`"ferry-cli/0.1.0"`).
        client: String,
    },
    /// A request; the answer carries the same `id`.
    Request {
        /// Chosen by the client; echoed in the answer.
        id: u64,
        /// What is asked.
        request: Request,
    },
}

/// What the daemon sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to a valid `hello`.
    Welcome {
        /// The daemon's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The daemon's version.
        daemon_version: String,
        /// The daemon's process id.
        pid: u32,
        /// The daemon's [`crate::PROTOCOL_REVISION`]: which compatible additions to the
        /// protocol it knows (absent from daemons older than revisions: 0).
        #[serde(default)]
        revision: u32,
    },
    /// A successful answer.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// A failed request (`id` set), or a connection-level error (`id` absent) after which the
    /// daemon closes the connection.
    Error {
        /// The request's id, if the error answers one.
        id: Option<u64>,
        /// What went wrong.
        error: ErrorInfo,
    },
    /// Something that happened in an attached session.
    Event(EventFrame),
}

/// The requests of protocol version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Creates or re-attaches to a session and makes this connection the one that receives
    /// and acknowledges its events. The configuration is stored (replacing an older one).
    /// Replayed journal events follow the response, then `backlog_delivered`.
    Attach {
        /// The session id, e.g. `com.example.sync`.
        session: String,
        /// The session's configuration.
        #[serde(default)]
        config: SessionConfig,
        /// Take the session from another attached client instead of failing.
        #[serde(default)]
        take_over: bool,
    },
    /// Stops receiving the session's events; they go to the journal again.
    Detach {
        /// The session id.
        session: String,
    },
    /// Acknowledges every event of the session up to and including `seq`.
    Ack {
        /// The session id.
        session: String,
        /// The highest sequence number handled.
        seq: u64,
    },
    /// Creates a download task (the session is created with the default configuration if it
    /// does not exist yet). Needs no attachment.
    CreateDownload {
        /// The session the task belongs to.
        session: String,
        /// The download.
        request: DownloadRequest,
    },
    /// Creates many downloads in one transaction (bulk enqueue); all or none.
    CreateDownloads {
        /// The session the tasks belong to.
        session: String,
        /// The downloads.
        requests: Vec<DownloadRequest>,
    },
    /// Creates an upload task (the session is created with the default configuration if it
    /// does not exist yet). Needs no attachment. The source files must exist and be
    /// regular files when the task is created.
    CreateUpload {
        /// The session the task belongs to.
        session: String,
        /// The upload.
        request: UploadRequest,
    },
    /// Lists tasks, of one session or of all, in id order, a page at a time: a page holds at
    /// most `limit` tasks and always fits in a frame; `next` in the answer continues it.
    ListTasks {
        /// Only this session's tasks.
        #[serde(default)]
        session: Option<String>,
        /// Only tasks with a greater id (the previous page's `next`).
        #[serde(default)]
        after: Option<TaskId>,
        /// At most this many tasks (default and maximum 10,000).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// One task.
    GetTask {
        /// The task.
        task: TaskId,
    },
    /// Tasks by id, of any sessions (at most [`MAX_GET_TASKS`] ids). The answer covers the
    /// first `answered` ids asked, all of them unless their tasks would not fit in one frame;
    /// ask again for the rest.
    GetTasks {
        /// The tasks.
        tasks: Vec<TaskId>,
    },
    /// Changes an unfinished task's priority. A task raised above a running one may preempt
    /// it; a running task lowered below a waiting one may be preempted.
    SetPriority {
        /// The task.
        task: TaskId,
        /// Its new priority.
        priority: Priority,
    },
    /// Changes a bandwidth limit, also of transfers already running: a task's own (`task`),
    /// a session's (`session`, stored in its configuration), or the whole daemon's (neither;
    /// until the daemon stops). `bytes_per_second` null or 0: no limit.
    SetRateLimit {
        /// The task whose limit changes.
        #[serde(default)]
        task: Option<TaskId>,
        /// The session whose limit changes.
        #[serde(default)]
        session: Option<String>,
        /// The new limit.
        #[serde(default)]
        bytes_per_second: Option<u64>,
    },
    /// Points an unfinished download at a new URL (a signed URL expired). The bytes are kept:
    /// the transfer continues from the new URL with `If-Range` against the validators it
    /// had, and restarts from zero (`resumed_at_offset` 0) if they no longer match. The new
    /// URL becomes the task's `url`; `current_url` is cleared until it is requested.
    UpdateUrl {
        /// The task.
        task: TaskId,
        /// The new URL (`http` or `https`).
        url: String,
    },
    /// Forgets a completed task: its row disappears from `list_tasks`. Its journaled events
    /// stay deliverable until acknowledged.
    Remove {
        /// The task.
        task: TaskId,
        /// Also delete what it left on disk: the placed file of a succeeded download, the
        /// kept bytes of one cancelled with resume data (its resume data then stops working).
        #[serde(default)]
        delete_file: bool,
    },
    /// Pauses a task, keeping its bytes (URLSession's `suspend`).
    Suspend {
        /// The task.
        task: TaskId,
    },
    /// Starts or continues a suspended task (URLSession's `resume`).
    Resume {
        /// The task.
        task: TaskId,
    },
    /// Cancels a task and deletes its bytes.
    Cancel {
        /// The task.
        task: TaskId,
    },
    /// Cancels a download, keeping its bytes: the task's `resume_data` (and its `completed`
    /// event) then holds a blob that `create_from_resume_data` continues from.
    CancelWithResumeData {
        /// The task.
        task: TaskId,
    },
    /// The user force-quits the session (SPEC §6): every unfinished task completes
    /// `cancelled` with reason `user_terminated`, with resume data when it has bytes.
    Terminate {
        /// The session id.
        session: String,
    },
    /// Creates a download that continues from resume data.
    CreateFromResumeData {
        /// The session the new task belongs to.
        session: String,
        /// The blob from a cancelled task.
        resume_data: String,
        /// A new absolute destination (absent: the original one).
        #[serde(default)]
        destination: Option<String>,
        /// Headers to add (resume data never holds secret headers).
        #[serde(default)]
        headers: Headers,
    },
    /// No new tasks in the session; when its tasks have completed, `session_invalidated`
    /// (URLSession's `finishTasksAndInvalidate`).
    FinishTasksAndInvalidate {
        /// The session.
        session: String,
    },
    /// Cancels the session's unfinished tasks, then `session_invalidated`
    /// (URLSession's `invalidateAndCancel`).
    InvalidateAndCancel {
        /// The session.
        session: String,
    },
    /// Aggregate state of a session's groups.
    ListGroups {
        /// The session.
        session: String,
    },
    /// Suspends every unfinished task of a group.
    SuspendGroup {
        /// The session.
        session: String,
        /// The group.
        group: String,
    },
    /// Resumes every suspended task of a group.
    ResumeGroup {
        /// The session.
        session: String,
        /// The group.
        group: String,
    },
    /// Cancels every unfinished task of a group.
    CancelGroup {
        /// The session.
        session: String,
        /// The group.
        group: String,
    },
    /// The daemon's status.
    Status,
    /// Every session the daemon knows, in id order.
    ListSessions,
    /// Stops the daemon as SIGTERM does (running transfers are checkpointed and wait for
    /// the next start), after answering `done` and closing this connection.
    Shutdown,
}

/// Successful answers.
// As for `ClientFrame`: an answer is built once and moved to its reader; boxing `Task`
// would only change the API of every client.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The session is attached to this connection.
    Attached {
        /// The session id.
        session: String,
        /// How many journaled events are about to be replayed.
        backlog: u64,
    },
    /// One task, as it is after the request.
    Task {
        /// The task.
        task: TaskInfo,
    },
    /// Tasks, in id order.
    Tasks {
        /// The tasks.
        tasks: Vec<TaskInfo>,
        /// When more tasks follow: pass this as `after` to get them.
        next: Option<TaskId>,
    },
    /// What `get_tasks` found for the first `answered` ids it was asked for.
    FoundTasks {
        /// The tasks that exist, in the order asked.
        tasks: Vec<TaskInfo>,
        /// The tasks that were removed (by `remove` or retention) within the retention
        /// period, in the order asked.
        removed: Vec<RemovedTask>,
        /// The ids with no task: never created, or removed longer ago than that.
        unknown: Vec<TaskId>,
        /// How many of the ids asked this answer covers, from the first.
        answered: u32,
    },
    /// Tasks created by `create_downloads`, in the order asked.
    Created {
        /// Their ids.
        ids: Vec<TaskId>,
    },
    /// The daemon's status.
    Status {
        /// Process id.
        pid: u32,
        /// Daemon version.
        version: String,
        /// Its `FERRY_HOME`.
        home: String,
        /// Task counts by state name (`suspended`, `waiting`, `transferring`, `succeeded`…).
        tasks: BTreeMap<String, u64>,
    },
    /// Groups, by name.
    Groups {
        /// The groups.
        groups: Vec<GroupInfo>,
    },
    /// One group, as it is after the request.
    Group {
        /// The group.
        group: GroupInfo,
    },
    /// Sessions, in id order.
    Sessions {
        /// The sessions.
        sessions: Vec<SessionInfo>,
    },
    /// The request was carried out; nothing to report.
    Done,
}

/// A group's aggregate state (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The session.
    pub session: String,
    /// The group's name.
    pub name: String,
    /// Tasks in the group.
    pub tasks: u64,
    /// Of which completed, in any way.
    pub completed: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Of which failed.
    pub failed: u64,
    /// Of which cancelled.
    pub cancelled: u64,
    /// Bytes received over all tasks.
    pub bytes_done: u64,
    /// Total size over all tasks, once every size is known.
    pub bytes_total: Option<u64>,
}

/// A session as `list_sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// The pid of the process attached to it, if one is (and the kernel told).
    #[serde(default)]
    pub attached_pid: Option<u32>,
    /// Its tasks (removed ones not counted).
    pub tasks: u64,
    /// Of which not completed.
    pub unfinished: u64,
    /// Journaled events not yet acknowledged.
    pub undelivered: u64,
    /// Being invalidated: it takes no new tasks until its tasks have completed.
    #[serde(default)]
    pub invalidating: bool,
    /// Terminated by the user (until the next attach).
    #[serde(default)]
    pub terminated: bool,
    /// The program the daemon runs to deliver its events.
    #[serde(default)]
    pub launch_command: Option<Vec<String>>,
}

/// A session's configuration (SPEC §4). Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// Transfers of this session running at once.
    pub max_concurrent: u32,
    /// Transfers to one host running at once, counted across the whole daemon
    /// (`httpMaximumConnectionsPerHost`).
    pub max_per_host: u32,
    /// Default priority of new tasks.
    pub priority: Priority,
    /// Seconds without a byte before a transient `request_timeout`.
    pub request_timeout_secs: u64,
    /// Seconds a task may take from its first start — retries, pauses and daemon restarts
    /// included — before it fails `timed_out`.
    pub resource_timeout_secs: u64,
    /// Headers sent with every request of the session.
    pub headers: Headers,
    /// Bytes per second for the whole session (absent: unlimited).
    pub rate_limit: Option<u64>,
    /// What to do when a destination exists.
    pub destination_conflict: Conflict,
    /// Keep undelivered events for absent clients (false: task states only).
    pub journal: bool,
    /// Tasks of one group running at once (absent: only the session's limit).
    pub group_max_concurrent: Option<u32>,
    /// Program and arguments the daemon runs when the session has undelivered events, no
    /// attached client and nothing waiting or running (with `FERRY_SESSION` and `FERRY_HOME`).
    pub launch_command: Option<Vec<String>>,
    /// Seconds before the launch command runs again if the events are still undelivered;
    /// doubles each time, up to an hour.
    pub launch_retry_secs: u64,
    /// How transient failures are retried.
    pub retry: RetryConfig,
    /// A host that cannot be reached (name resolution, connection or TLS set-up failed):
    /// wait and retry (`true`), or fail the task at once with `connection`.
    pub waits_for_connectivity: bool,
    /// `User-Agent` of the session's requests (absent: ferry's). A `User-Agent` in the
    /// session's or a task's headers wins.
    pub user_agent: Option<String>,
    /// Follow a redirect from `https` to `http` (refused with `insecure_redirect` unless set).
    pub allow_insecure_redirects: bool,
    /// Certificates besides the system's.
    pub tls: TlsConfig,
}

/// How a session retries transient failures (SPEC §4 `retry`): exponential backoff with
/// jitter from `initial_ms`, doubling up to `max_ms`; a server's `Retry-After` replaces the
/// computed delay (capped at `max_ms`). Attempts count again from zero once bytes flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Milliseconds before the first retry.
    pub initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub max_ms: u64,
    /// Failed attempts in a row after which the task fails (absent: retry until the resource
    /// timeout).
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            initial_ms: 1_000,
            max_ms: 600_000,
            max_attempts: None,
        }
    }
}

/// A session's TLS settings (SPEC §4): verification is always on; these add trust and an
/// identity. Paths are absolute. The daemon (as the same user) reads the files when the
/// session is attached and again when each transfer starts, so a renewed certificate is
/// picked up; an in-process session reads them once, when it is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Paths of PEM files of root certificates to trust besides the system's.
    pub extra_roots: Vec<String>,
    /// Path of a PEM file holding the client's private key and its certificate chain, sent
    /// when a server asks for one (mutual TLS).
    pub client_identity: Option<String>,
}

impl SessionConfig {
    /// Refuses numbers that could only make the session's tasks hang or fail: no slot, a
    /// retry policy that makes no sense. (Headers, the user agent and TLS files are checked
    /// by whoever sends the requests.)
    ///
    /// # Errors
    /// `invalid_request`, naming the option.
    pub fn check(&self) -> Result<(), ErrorInfo> {
        let invalid = |m: &str| Err(ErrorInfo::new("invalid_request", m));
        if self.max_concurrent == 0 || self.max_per_host == 0 {
            return invalid("max_concurrent and max_per_host must be at least 1");
        }
        let retry = &self.retry;
        if retry.initial_ms == 0 || retry.initial_ms > retry.max_ms {
            return invalid("retry.initial_ms must be at least 1 and at most retry.max_ms");
        }
        if retry.max_attempts == Some(0) {
            return invalid("retry.max_attempts must be at least 1 (or absent: no limit)");
        }
        let tls = &self.tls;
        let relative = tls
            .extra_roots
            .iter()
            .chain(&tls.client_identity)
            .find(|p| !std::path::Path::new(p).is_absolute());
        if let Some(path) = relative {
            return Err(ErrorInfo::new(
                "invalid_request",
                format!(
                    "tls: {path:?} is not an absolute path (the daemon's working folder is not the client's)"
                ),
            ));
        }
        Ok(())
    }

    /// The protocol revision this configuration needs ([`crate::PROTOCOL_REVISION`]): the
    /// one that added the newest option it sets to other than its default. An older daemon
    /// would ignore such an option, not refuse it.
    pub fn revision(&self) -> u32 {
        let default = SessionConfig::default();
        let revision_2 = self.retry != default.retry
            || self.waits_for_connectivity != default.waits_for_connectivity
            || self.user_agent != default.user_agent
            || self.allow_insecure_redirects != default.allow_insecure_redirects
            || self.tls != default.tls;
        if revision_2 { 2 } else { 0 }
    }
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            max_concurrent: 6,
            max_per_host: 6,
            priority: Priority::Normal,
            request_timeout_secs: 60,
            resource_timeout_secs: 7 * 24 * 3600,
            headers: Headers::default(),
            rate_limit: None,
            destination_conflict: Conflict::Rename,
            journal: true,
            group_max_concurrent: None,
            launch_command: None,
            launch_retry_secs: 30,
            retry: RetryConfig::default(),
            waits_for_connectivity: true,
            user_agent: None,
            allow_insecure_redirects: false,
            tls: TlsConfig::default(),
        }
    }
}

/// Priority classes, highest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Background work, and discretionary: it runs only when no task of a higher class is
    /// waiting.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal.
    High,
    /// What the user is waiting for.
    Foreground,
}

/// What to do when the destination exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// Save as `name (1).ext`.
    #[default]
    Rename,
    /// Replace it.
    Overwrite,
    /// Fail with `destination_exists`.
    Fail,
}

/// Request headers. `Debug` hides the values of `Authorization`, `Cookie` and
/// `Proxy-Authorization`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// These headers with `newer`'s replacing every value of a name it sets (names compare
    /// case-insensitively) — as a task's headers override its session's.
    pub fn overridden_by(mut self, newer: Headers) -> Headers {
        self.0
            .retain(|(name, _)| !newer.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
        self.0.extend(newer.0);
        self
    }

    /// Whether a header name carries a secret that must never be logged or echoed (a
    /// server's `Set-Cookie` included, as it may come in an upload's reply).
    pub fn is_secret(name: &str) -> bool {
        [
            "authorization",
            "cookie",
            "proxy-authorization",
            "set-cookie",
        ]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Headers::is_secret(k) { "***" } else { v };
                format!("{k}: {shown}")
            }))
            .finish()
    }
}

/// A download to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadRequest {
    /// The URL (`http` or `https`).
    pub url: String,
    /// Absolute path of the file to create; absent: a file in the session's inbox, named by
    /// the server, reported in `finished_downloading`.
    #[serde(default)]
    pub destination: Option<String>,
    /// Absolute path of a folder to save into under the name the server gives
    /// (`Content-Disposition`, else the URL's last segment), with the session's conflict
    /// policy; exclusive with `destination`.
    #[serde(default)]
    pub directory: Option<String>,
    /// Headers for this task, added to the session's.
    #[serde(default)]
    pub headers: Headers,
    /// Expected digest as `ALGO:HEX` (`md5`, `sha1`, `sha256`, `sha512`, `blake3`).
    #[serde(default)]
    pub checksum: Option<String>,
    /// Priority (absent: the session's default).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Free text returned with every event of the task (at most 4 KiB).
    #[serde(default)]
    pub tag: Option<String>,
    /// The group the task belongs to (1–256 bytes, no control characters).
    #[serde(default)]
    pub group: Option<String>,
    /// Connections to use at most (absent: the daemon's default, 8).
    #[serde(default)]
    pub connections: Option<u32>,
    /// Bytes per second for this task.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// Not started before this time (seconds since the Unix epoch).
    #[serde(default)]
    pub earliest_begin: Option<i64>,
    /// Start at once (true, the default) or stay `suspended` until `resume`.
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

/// An upload to create: a file sent as the request body, or a `multipart/form-data` form.
/// The server's reply body is saved in the session's inbox and named in `completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRequest {
    /// The URL (`http` or `https`).
    pub url: String,
    /// `put` or `post` (absent: `put` for a file, `post` for a form).
    #[serde(default)]
    pub method: Option<UploadMethod>,
    /// What to send.
    pub body: UploadBody,
    /// Headers for this task, added to the session's.
    #[serde(default)]
    pub headers: Headers,
    /// Priority (absent: the session's default).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Free text returned with every event of the task (at most 4 KiB).
    #[serde(default)]
    pub tag: Option<String>,
    /// The group the task belongs to (1–256 bytes, no control characters).
    #[serde(default)]
    pub group: Option<String>,
    /// Bytes per second for this task.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// Not started before this time (seconds since the Unix epoch).
    #[serde(default)]
    pub earliest_begin: Option<i64>,
    /// Start at once (true, the default) or stay `suspended` until `resume`.
    #[serde(default = "yes")]
    pub start: bool,
}

impl UploadRequest {
    /// The method used: the one asked, else `put` for a file and `post` for a form.
    pub fn effective_method(&self) -> UploadMethod {
        self.method.unwrap_or(match self.body {
            UploadBody::File { .. } => UploadMethod::Put,
            UploadBody::Multipart { .. } => UploadMethod::Post,
        })
    }
}

/// The HTTP method of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadMethod {
    /// `PUT`.
    Put,
    /// `POST`.
    Post,
}

/// What an upload sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UploadBody {
    /// The file's bytes are the body (`Content-Type: application/octet-stream` unless a
    /// header says otherwise).
    File {
        /// Absolute path of the file.
        path: String,
    },
    /// A `multipart/form-data` form: the text fields, then the files, in order.
    Multipart {
        /// Text fields.
        #[serde(default)]
        fields: Vec<FormField>,
        /// File fields.
        #[serde(default)]
        files: Vec<FormFile>,
    },
}

impl UploadBody {
    /// The files sent, in order.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            UploadBody::File { path } => vec![path.as_str()],
            UploadBody::Multipart { files, .. } => files.iter().map(|f| f.path.as_str()).collect(),
        }
    }
}

/// A text field of a multipart form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormField {
    /// The field's name (no `"` or control characters).
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A file field of a multipart form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormFile {
    /// The field's name (no `"` or control characters).
    pub name: String,
    /// Absolute path of the file.
    pub path: String,
    /// The file name announced to the server (absent: the path's last component).
    #[serde(default)]
    pub file_name: Option<String>,
    /// The part's `Content-Type` (absent: `application/octet-stream`).
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Whether a task downloads or uploads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A download (the default, also for daemons older than uploads).
    #[default]
    Download,
    /// An upload.
    Upload,
}

/// The server's answer to an upload: its status, its headers and the file in the inbox that
/// holds its body. The file stays until the `completed` event naming it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The response's status.
    pub status: u16,
    /// Its headers, in order (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The file holding the body.
    pub location: String,
    /// The body's length.
    pub bytes: u64,
}

/// A task as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Its id.
    pub id: TaskId,
    /// Its session.
    pub session: String,
    /// The URL asked for (the original request).
    pub url: String,
    /// The URL after redirects (the current request), once known.
    pub current_url: Option<String>,
    /// The destination asked for (absent: the inbox).
    pub destination: Option<String>,
    /// Where the finished file is, once it is.
    pub location: Option<String>,
    /// Its state.
    #[serde(flatten)]
    pub state: TaskState,
    /// Bytes received so far (as of the last checkpoint for tasks not running).
    pub bytes_done: u64,
    /// The size, once known.
    pub bytes_total: Option<u64>,
    /// The last error (also while retrying).
    pub error: Option<ErrorInfo>,
    /// The client's tag.
    pub tag: Option<String>,
    /// Its group.
    #[serde(default)]
    pub group: Option<String>,
    /// Its priority.
    pub priority: Priority,
    /// For a download cancelled with its bytes kept, or failed with bytes that were right but
    /// could not be placed (no space, destination): the blob to continue it from.
    #[serde(default)]
    pub resume_data: Option<String>,
    /// The current transfer rate of a running task (bytes over roughly the last 3 seconds);
    /// absent when it is not transferring.
    #[serde(default)]
    pub bytes_per_second: Option<u64>,
    /// Download or upload. For an upload, `bytes_done`/`bytes_total` count the request
    /// body sent, `destination` is absent and `location` is the reply's file.
    #[serde(default)]
    pub kind: TaskKind,
    /// For an upload the server answered (succeeded, or failed with a non-2xx status):
    /// the reply.
    #[serde(default)]
    pub reply: Option<Reply>,
}

/// A task's state (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Created but not started, or paused.
    Suspended,
    /// Started and not yet finished.
    Running {
        /// What it is doing.
        phase: RunPhase,
    },
    /// Finished, one way or another.
    Completed {
        /// How.
        outcome: OutcomeKind,
    },
}

impl TaskState {
    /// The state's one-word name: `suspended`, `waiting`, `connecting`, `transferring`,
    /// `retry_wait`, `succeeded`, `failed`, `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Suspended => "suspended",
            TaskState::Running { phase } => match phase {
                RunPhase::Waiting => "waiting",
                RunPhase::Connecting => "connecting",
                RunPhase::Transferring => "transferring",
                RunPhase::RetryWait => "retry_wait",
            },
            TaskState::Completed { outcome } => outcome.name(),
        }
    }

    /// The inverse of [`TaskState::name`].
    pub fn from_name(name: &str) -> Option<TaskState> {
        let running = |phase| Some(TaskState::Running { phase });
        let completed = |outcome| Some(TaskState::Completed { outcome });
        match name {
            "suspended" => Some(TaskState::Suspended),
            "waiting" => running(RunPhase::Waiting),
            "connecting" => running(RunPhase::Connecting),
            "transferring" => running(RunPhase::Transferring),
            "retry_wait" => running(RunPhase::RetryWait),
            "succeeded" => completed(OutcomeKind::Succeeded),
            "failed" => completed(OutcomeKind::Failed),
            "cancelled" => completed(OutcomeKind::Cancelled),
            _ => None,
        }
    }
}

/// What a running task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Queued: waiting for a free slot.
    Waiting,
    /// Sending the request.
    Connecting,
    /// Receiving bytes.
    Transferring,
    /// A transient error; the next attempt is scheduled.
    RetryWait,
}

/// What the daemon remembers of a removed task for a while (a tombstone), so that a client
/// following it learns how it ended instead of finding nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedTask {
    /// Its id.
    pub id: TaskId,
    /// The session it belonged to.
    pub session: String,
    /// How it had ended.
    pub outcome: OutcomeKind,
    /// When it was removed, in seconds since the Unix epoch.
    pub removed_at: i64,
}

/// When something `delay` from now is due, in milliseconds since the Unix epoch (the
/// `retrying` event's `at`).
pub fn due_in(delay: std::time::Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_add(delay).as_millis()).unwrap_or(u64::MAX)
}

impl Request {
    /// The protocol revision that added this request ([`crate::PROTOCOL_REVISION`]): a
    /// daemon of an earlier one does not know it and closes the connection.
    pub fn revision(&self) -> u32 {
        match self {
            Request::GetTasks { .. } | Request::SetRateLimit { .. } => 1,
            Request::Attach { config, .. } => config.revision(),
            _ => 0,
        }
    }
}

/// The most ids one `get_tasks` request may ask for.
pub const MAX_GET_TASKS: usize = 10_000;

/// Refuses a `get_tasks` that asks for more than [`MAX_GET_TASKS`] ids (`invalid_request`).
///
/// # Errors
/// When it does.
pub fn check_get_tasks(ids: &[TaskId]) -> Result<(), ErrorInfo> {
    if ids.len() <= MAX_GET_TASKS {
        return Ok(());
    }
    Err(ErrorInfo::new(
        "invalid_request",
        format!(
            "get_tasks asks for {} tasks; at most {MAX_GET_TASKS} per request",
            ids.len()
        ),
    ))
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The file is in place.
    Succeeded,
    /// A permanent error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl OutcomeKind {
    /// The name of the completed state it makes: `succeeded`, `failed`, `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Cancelled => "cancelled",
        }
    }
}

/// An error as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable snake-case code (`http_status`, `no_space`, `session_in_use`…).
    pub code: String,
    /// A sentence for people, with the cause chain.
    pub message: String,
    /// Whether trying again later may succeed.
    #[serde(default)]
    pub transient: bool,
    /// The HTTP status, for `http_status`.
    #[serde(default)]
    pub status: Option<u16>,
}

impl ErrorInfo {
    /// A permanent error with a code and a message.
    pub fn new(code: &str, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            code: code.to_owned(),
            message: message.into(),
            transient: false,
            status: None,
        }
    }
}

impl fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.code)
    }
}

/// An event with its address: the session, its sequence number (absent for progress, which
/// is not journaled), the task and the task's tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The session.
    pub session: String,
    /// Position in the session's journal; acknowledge it with `ack`.
    pub seq: Option<u64>,
    /// The task, for task events.
    pub task: Option<TaskId>,
    /// The task's tag.
    pub tag: Option<String>,
    /// What happened.
    pub event: Event,
}

/// Events (SPEC §7). Per task they come in the order listed; `completed` comes exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Bytes arrived — for an upload: were sent (at most 10 per second per task; not
    /// journaled).
    Progress {
        /// Bytes since the last progress event.
        written: u64,
        /// Bytes present (an upload: sent by this attempt) in total.
        total_written: u64,
        /// The size (an upload: the request body's length), if known.
        expected: Option<u64>,
    },
    /// A redirect was followed.
    Redirected {
        /// From.
        from: String,
        /// To.
        to: String,
        /// Its status.
        status: u16,
    },
    /// The transfer continues from `offset` (0: restarted from zero).
    ResumedAtOffset {
        /// Bytes kept.
        offset: u64,
        /// The size, if known.
        expected: Option<u64>,
    },
    /// A transient error; the next attempt comes after `delay_ms`.
    Retrying {
        /// Consecutive failed attempts.
        attempt: u32,
        /// Milliseconds until the next attempt, counted from when the event was made.
        delay_ms: u64,
        /// When the next attempt is due, in milliseconds since the Unix epoch — what still
        /// means something when the event is replayed later (absent from older daemons).
        #[serde(default)]
        at: Option<u64>,
        /// What failed.
        error: ErrorInfo,
    },
    /// The file is complete and verified at `location`. A file in the inbox stays until this
    /// event is acknowledged.
    FinishedDownloading {
        /// The file's path.
        location: String,
    },
    /// The task ended; always the task's last event.
    Completed {
        /// How.
        outcome: Outcome,
        /// The last response's status, when there was one.
        status: Option<u16>,
        /// For an upload the server answered: its reply (a non-2xx one with `failed`). The
        /// reply's file stays until this event is acknowledged.
        #[serde(default)]
        reply: Option<Reply>,
        /// For a download that succeeded: the headers of the response that brought its
        /// bytes, in order (lower-case names). Absent from daemons before revision 2.
        #[serde(default)]
        headers: Option<Vec<(String, String)>>,
    },
    /// Every task of a group has completed (after the last one's `completed`).
    GroupCompleted {
        /// The group.
        group: String,
        /// Tasks that succeeded.
        succeeded: u64,
        /// Tasks that failed.
        failed: u64,
        /// Tasks that were cancelled.
        cancelled: u64,
    },
    /// The session was invalidated and every task of it has completed; it takes new tasks
    /// again (as a new session with the same id).
    SessionInvalidated,
    /// All journaled events have been handed over after an attach.
    BacklogDelivered,
}

impl Event {
    /// Whether the event is written to the journal (everything but progress).
    pub fn is_journaled(&self) -> bool {
        !matches!(self, Event::Progress { .. })
    }
}

/// How a task ended, with the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The file is in place.
    Succeeded,
    /// A permanent error.
    Failed {
        /// The error.
        error: ErrorInfo,
        /// The blob to continue from, when the bytes were right and only placing them failed
        /// (`no_space`, `destination`, `destination_exists`): create a task from it once
        /// there is room, or with another destination. Absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_data: Option<String>,
    },
    /// Cancelled.
    Cancelled {
        /// Who or what cancelled it.
        reason: CancelReason,
        /// The blob to continue from, when the bytes were kept.
        #[serde(default)]
        resume_data: Option<String>,
    },
}

/// Why a task was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A client asked.
    Client,
    /// The user terminated the session.
    UserTerminated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_json_shape() {
        let hello = ClientFrame::Hello {
            protocol: 1,
            client: "t".into(),
        };
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            serde_json::json!({"frame": "hello", "protocol": 1, "client": "t"})
        );
        let req: ClientFrame = serde_json::from_value(serde_json::json!({
            "frame": "request", "id": 7,
            "request": {"type": "create_download", "session": "s",
                        "request": {"url": "http://h/f"}}
        }))
        .unwrap();
        match req {
            ClientFrame::Request {
                id: 7,
                request: Request::CreateDownload { request, .. },
            } => {
                assert!(request.start, "start defaults to true");
                assert_eq!(request.destination, None);
                assert_eq!(request.directory, None);
            }
            other => panic!("{other:?}"),
        }
        let event = ServerFrame::Event(EventFrame {
            session: "s".into(),
            seq: Some(3),
            task: Some(9),
            tag: None,
            event: Event::Completed {
                outcome: Outcome::Failed {
                    error: ErrorInfo::new("http_status", "404"),
                    resume_data: None,
                },
                status: Some(404),
                reply: None,
                headers: None,
            },
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["frame"], "event");
        assert_eq!(json["event"]["type"], "completed");
        assert_eq!(json["event"]["outcome"]["result"], "failed");
        // Absent unless the bytes were kept: a failure reads as it always did.
        assert!(json["event"]["outcome"].get("resume_data").is_none());
        assert_eq!(serde_json::from_value::<ServerFrame>(json).unwrap(), event);
    }

    #[test]
    fn newer_headers_replace_every_value_of_their_names() {
        let pairs = |p: &[(&str, &str)]| {
            Headers(p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect())
        };
        let kept = pairs(&[("X-Keep", "1"), ("Accept", "a"), ("accept", "b")]);
        let merged = kept.overridden_by(pairs(&[("ACCEPT", "c"), ("Authorization", "t")]));
        assert_eq!(
            merged,
            pairs(&[("X-Keep", "1"), ("ACCEPT", "c"), ("Authorization", "t")])
        );
    }

    #[test]
    fn later_additions_are_optional_and_have_the_documented_shape() {
        let req: Request =
            serde_json::from_value(serde_json::json!({"type": "list_sessions"})).unwrap();
        assert_eq!(req, Request::ListSessions);
        let req: Request = serde_json::from_value(serde_json::json!({"type": "shutdown"})).unwrap();
        assert_eq!(req, Request::Shutdown);
        let request: DownloadRequest =
            serde_json::from_value(serde_json::json!({"url": "http://h/f", "directory": "/tmp/d"}))
                .unwrap();
        assert_eq!(request.directory.as_deref(), Some("/tmp/d"));
        // A task from a daemon that does not report a rate.
        let task: TaskInfo = serde_json::from_value(serde_json::json!({
            "id": 1, "session": "s", "url": "http://h/f", "current_url": null,
            "destination": null, "location": null, "state": "suspended", "bytes_done": 0,
            "bytes_total": null, "error": null, "tag": null, "priority": "normal"
        }))
        .unwrap();
        assert_eq!(task.bytes_per_second, None);
        assert_eq!(task.kind, TaskKind::Download);
        assert_eq!(task.reply, None);
        let upload: Request = serde_json::from_value(serde_json::json!({
            "type": "create_upload", "session": "s",
            "request": {"url": "http://h/u", "body": {"type": "multipart",
                "fields": [{"name": "a", "value": "1"}],
                "files": [{"name": "f", "path": "/tmp/x"}]}}
        }))
        .unwrap();
        let Request::CreateUpload { request, .. } = upload else {
            panic!("{upload:?}")
        };
        assert!(request.start);
        assert_eq!(request.effective_method(), UploadMethod::Post);
        assert_eq!(request.body.paths(), ["/tmp/x"]);
        let raw: UploadRequest = serde_json::from_value(serde_json::json!({
            "url": "http://h/u", "body": {"type": "file", "path": "/tmp/y"}
        }))
        .unwrap();
        assert_eq!(raw.effective_method(), UploadMethod::Put);
        // A `completed` event from a daemon without uploads has no reply.
        let completed: Event = serde_json::from_value(serde_json::json!({
            "type": "completed", "outcome": {"result": "succeeded"}, "status": 200
        }))
        .unwrap();
        assert!(matches!(completed, Event::Completed { reply: None, .. }));
        let sessions = Response::Sessions {
            sessions: vec![SessionInfo {
                id: "s".into(),
                attached_pid: Some(42),
                tasks: 3,
                unfinished: 1,
                undelivered: 2,
                invalidating: false,
                terminated: false,
                launch_command: None,
            }],
        };
        let json = serde_json::to_value(&sessions).unwrap();
        assert_eq!(json["type"], "sessions");
        assert_eq!(json["sessions"][0]["attached_pid"], 42);
        assert_eq!(json["sessions"][0]["undelivered"], 2);
        assert_eq!(serde_json::from_value::<Response>(json).unwrap(), sessions);
    }

    #[test]
    fn task_state_names_round_trip_and_flatten() {
        for name in [
            "suspended",
            "waiting",
            "connecting",
            "transferring",
            "retry_wait",
            "succeeded",
            "failed",
            "cancelled",
        ] {
            assert_eq!(TaskState::from_name(name).unwrap().name(), name);
        }
        let json = serde_json::to_value(TaskState::Running {
            phase: RunPhase::RetryWait,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "running", "phase": "retry_wait"})
        );
    }

    #[test]
    fn debug_hides_secret_headers() {
        let h = Headers(vec![
            ("Authorization".into(), "Bearer s3cret".into()),
            ("X-Trace".into(), "visible".into()),
        ]);
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("visible"),
            "{shown}"
        );
    }
}
