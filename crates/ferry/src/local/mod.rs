//! In-process sessions: the engine runs inside the client process (URLSession's default
//! session). The runtime answers the same protocol requests the daemon answers, for one
//! session, so everything above it is shared with background sessions.
//!
//! What differs from the daemon, because nothing outlives the process:
//! - there is no journal: events go straight to the channel given to [`Runtime::new`], with
//!   `seq` numbers 1, 2, 3… as the daemon's journal would number them; `attach` answers a
//!   backlog of 0 and `backlog_delivered` never comes;
//! - files of downloads without a destination, staging files and the bytes of resume data
//!   live in a temporary folder the runtime owns and deletes at [`Runtime::shutdown`] (or
//!   drop). A `finished_downloading` file there is deleted when its event is acknowledged,
//!   as the daemon does with its inbox: move it away first. So is an upload's reply file
//!   (in its own `replies` folder), when its `completed` is acknowledged;
//! - resume data is valid only in the runtime that made it (see [`resume`]);
//! - task ids are unique in the process; `status` reports the process and `home`
//!   `"in-process"`; the configuration is the one given to `new` (`attach` does not change
//!   it), and `max_per_host` counts this session's transfers only;
//! - data tasks ([`Runtime::create_data`]) keep a body in memory;
//! - uploads run as downloads do (states, limits, priorities, groups); a stopped upload
//!   keeps nothing and sends from byte zero when it runs again;
//! - `bytes_per_second` is not reported; `list_sessions` and `shutdown` are `unsupported`.
//!
//! Layout: `state` (tasks, events, the lock), `schedule` (the loop that starts tasks),
//! `run` (one transfer on the engine and how it ends), `control` (requests on existing
//! tasks), `resume` (resume data), `validate` (the daemon's checks on requests).

mod control;
mod resume;
mod run;
mod schedule;
mod state;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_engine::{ClientConfig, Engine};
use ferry_proto::{
    CancelReason, DownloadRequest, ErrorInfo, EventFrame, Headers, OutcomeKind, Request, Response,
    SessionConfig, TaskId, TaskInfo, TaskState, UploadRequest,
};
use tokio::sync::mpsc::UnboundedSender;

use control::GroupAction;
use resume::Keeper;
use state::{Body, Folder, Kind, Shared, Task, next_id, remove_quietly};
use validate::invalid;

/// Largest page of `list_tasks` (the daemon's).
const MAX_PAGE: u32 = 10_000;

/// One in-process session's tasks and transfers. Dropping it is [`Runtime::shutdown`].
pub(crate) struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// A runtime for session `session`; its events go to `events`, in the daemon's order.
    /// Must be called inside a tokio runtime: it spawns the scheduling loop.
    ///
    /// # Errors
    /// `invalid_request` for a bad session id, `config` for an unusable client
    /// configuration, `internal` without a tokio runtime or when the temporary folder cannot
    /// be made.
    pub(crate) fn new(
        session: String,
        config: SessionConfig,
        client: &ClientConfig,
        events: UnboundedSender<EventFrame>,
    ) -> Result<Runtime, ErrorInfo> {
        validate::session_id(&session)?;
        config.check()?;
        validate::session_headers(&config)?;
        let client = validate::session_client(&config, client)?;
        let tokio = tokio::runtime::Handle::try_current().map_err(|_| {
            ErrorInfo::new(
                "internal",
                "an in-process session must be created inside a tokio runtime",
            )
        })?;
        let engine = Engine::new(&client).map_err(|e| {
            let info = validate::error_info(&e);
            // The session's own TLS material is bad input, as the daemon's attach says.
            if config.tls == ferry_proto::TlsConfig::default() {
                info
            } else {
                ErrorInfo::new("invalid_request", format!("tls: {}", info.message))
            }
        })?;
        let folder_error = |e: std::io::Error| {
            ErrorInfo::new(
                "internal",
                format!("cannot make the session's temporary folder: {e}"),
            )
        };
        let temp = tempfile::Builder::new()
            .prefix("ferry-session-")
            .tempdir()
            .map_err(folder_error)?;
        let folder = Folder::new(temp.path());
        for part in Folder::PARTS {
            std::fs::create_dir(folder.part(part)).map_err(folder_error)?;
        }
        let keeper = Keeper::new(folder.resume()).map_err(folder_error)?;
        let shared = Arc::new(Shared::new(session, config, engine, temp, keeper, events));
        tokio.spawn(schedule::run_loop(shared.clone()));
        Ok(Runtime { shared })
    }

    /// Answers a request as the daemon would for this session.
    ///
    /// # Errors
    /// The daemon's error for the request; `invalid_request` when it names another session;
    /// `session_invalidated` after shutdown.
    pub(crate) async fn handle(&self, request: Request) -> Result<Response, ErrorInfo> {
        let s = &self.shared;
        s.check_open()?;
        let task = |task| Ok(Response::Task { task });
        match request {
            Request::Attach { session, .. } => {
                self.ours(&session)?;
                Ok(Response::Attached {
                    session,
                    backlog: 0,
                })
            }
            Request::Detach { session } => self.ours(&session).map(|()| Response::Done),
            Request::Ack { session, seq } => {
                self.ours(&session)?;
                self.ack(seq);
                Ok(Response::Done)
            }
            Request::CreateDownload { session, request } => {
                self.ours(&session)?;
                validate::request(&request)?;
                let mut created = self.insert(vec![(request, Kind::Download)])?;
                created.pop().map_or_else(
                    || Err(ErrorInfo::new("internal", "no task was created")),
                    task,
                )
            }
            Request::CreateUpload { session, request } => {
                self.ours(&session)?;
                let upload = validate::upload(&request)?;
                let options = upload_options(request);
                let mut created = self.insert(vec![(options, Kind::Upload(Box::new(upload)))])?;
                created.pop().map_or_else(
                    || Err(ErrorInfo::new("internal", "no task was created")),
                    task,
                )
            }
            Request::CreateDownloads { session, requests } => {
                self.ours(&session)?;
                for (i, request) in requests.iter().enumerate() {
                    validate::request(request).map_err(|mut e| {
                        e.message = format!("request {i}: {}", e.message);
                        e
                    })?;
                }
                let requests = requests.into_iter().map(|r| (r, Kind::Download)).collect();
                let ids = self.insert(requests)?.iter().map(|t| t.id).collect();
                Ok(Response::Created { ids })
            }
            Request::ListTasks {
                session,
                after,
                limit,
            } => {
                if let Some(session) = session {
                    self.ours(&session)?;
                }
                Ok(self.list(after, limit))
            }
            Request::GetTask { task: id } => task(s.state().task(id)?.live_info()),
            Request::GetTasks { tasks: ids } => {
                ferry_proto::check_get_tasks(&ids)?;
                // No tombstones here: the session's own process removed the task.
                let state = s.state();
                let (mut tasks, mut unknown) = (Vec::new(), Vec::new());
                for &id in &ids {
                    match state.tasks.get(&id) {
                        Some(t) => tasks.push(t.live_info()),
                        None => unknown.push(id),
                    }
                }
                Ok(Response::FoundTasks {
                    tasks,
                    removed: Vec::new(),
                    unknown,
                    answered: u32::try_from(ids.len()).unwrap_or(u32::MAX),
                })
            }
            Request::SetPriority { task: id, priority } => task(s.set_priority(id, priority)?),
            Request::SetRateLimit {
                task: id,
                session,
                bytes_per_second,
            } => {
                let rate = bytes_per_second.unwrap_or(0);
                match (id, session) {
                    (Some(_), Some(_)) => Err(ErrorInfo::new(
                        "invalid_request",
                        "set_rate_limit names a task or a session, not both",
                    )),
                    (Some(id), None) => task(s.set_rate_limit(id, rate)?),
                    (None, Some(session)) => {
                        self.ours(&session)?;
                        s.session_limit.set_rate(rate);
                        Ok(Response::Done)
                    }
                    (None, None) => Err(ErrorInfo::new(
                        "unsupported",
                        "an in-process session has no daemon: set_rate_limit needs its task or \
                         its session",
                    )),
                }
            }
            Request::UpdateUrl { task: id, url } => task(s.update_url(id, url).await?),
            Request::Remove { task, delete_file } => {
                s.remove(task, delete_file).map(|()| Response::Done)
            }
            Request::Suspend { task: id } => task(s.suspend(id).await?),
            Request::Resume { task: id } => task(s.resume(id)?),
            Request::Cancel { task: id } => task(s.cancel(id, CancelReason::Client, false).await?),
            Request::CancelWithResumeData { task: id } => {
                task(s.cancel(id, CancelReason::Client, true).await?)
            }
            Request::Terminate { session } => {
                self.ours(&session)?;
                s.terminate().await;
                Ok(Response::Done)
            }
            Request::CreateFromResumeData {
                session,
                resume_data,
                destination,
                headers,
            } => {
                self.ours(&session)?;
                task(self.create_from_resume_data(&resume_data, destination, headers)?)
            }
            Request::FinishTasksAndInvalidate { session } => {
                self.ours(&session)?;
                s.invalidate(false).await;
                Ok(Response::Done)
            }
            Request::InvalidateAndCancel { session } => {
                self.ours(&session)?;
                s.invalidate(true).await;
                Ok(Response::Done)
            }
            Request::ListGroups { session } => {
                self.ours(&session)?;
                Ok(Response::Groups { groups: s.groups() })
            }
            Request::SuspendGroup { session, group } => {
                self.group(&session, &group, GroupAction::Suspend).await
            }
            Request::ResumeGroup { session, group } => {
                self.group(&session, &group, GroupAction::Resume).await
            }
            Request::CancelGroup { session, group } => {
                self.group(&session, &group, GroupAction::Cancel).await
            }
            Request::Status => Ok(self.status()),
            Request::ListSessions | Request::Shutdown => Err(ErrorInfo::new(
                "unsupported",
                "list_sessions and shutdown are daemon requests; an in-process session has no daemon",
            )),
        }
    }

    /// Creates a data task: the response body is kept in memory. It takes a download's
    /// options; `destination` and `directory` are ignored.
    ///
    /// # Errors
    /// As `create_download`.
    pub(crate) async fn create_data(
        &self,
        request: DownloadRequest,
    ) -> Result<TaskInfo, ErrorInfo> {
        self.shared.check_open()?;
        let request = DownloadRequest {
            destination: None,
            directory: None,
            ..request
        };
        validate::request(&request)?;
        self.insert(vec![(request, Kind::Data(Body::Pending))])?
            .pop()
            .ok_or_else(|| ErrorInfo::new("internal", "no task was created"))
    }

    /// Waits for a data task to complete and takes its body (once).
    ///
    /// # Errors
    /// `unknown_task`; `invalid_request` for a download; `invalid_state` when the body was
    /// already taken; the task's error when it failed, `cancelled` when it was cancelled;
    /// `session_invalidated` when the runtime shuts down meanwhile.
    pub(crate) async fn take_data(&self, task: TaskId) -> Result<Vec<u8>, ErrorInfo> {
        loop {
            let done = {
                let mut state = self.shared.state();
                let t = state.task_mut(task)?;
                if let Some(result) = take_body(t) {
                    return result;
                }
                t.done.clone()
            };
            tokio::select! {
                () = done.cancelled() => {}
                () = self.shared.shutdown.cancelled() => self.shared.check_open()?,
            }
        }
    }

    /// Stops every transfer (the session is gone): no more events, and the temporary folder
    /// with everything still in it is deleted. Later requests answer `session_invalidated`.
    pub(crate) fn shutdown(&self) {
        self.shared.close();
    }

    fn ours(&self, session: &str) -> Result<(), ErrorInfo> {
        if session == self.shared.session {
            Ok(())
        } else {
            Err(invalid(format!(
                "this in-process session is {}, not {session}",
                self.shared.session
            )))
        }
    }

    /// Adds validated tasks, all or none (none while the session is being invalidated).
    fn insert(&self, requests: Vec<(DownloadRequest, Kind)>) -> Result<Vec<TaskInfo>, ErrorInfo> {
        let s = &self.shared;
        let mut state = s.state();
        refuse_if_invalidating(s, state.invalidating)?;
        let mut created = Vec::with_capacity(requests.len());
        for (request, kind) in requests {
            let id = next_id();
            let priority = request.priority.unwrap_or(s.config.priority);
            let task = Task::new(id, &s.session, request, priority, kind);
            created.push(task.live_info());
            state.tasks.insert(id, task);
        }
        s.wake.notify_one();
        Ok(created)
    }

    /// A new running task that continues from the bytes a blob names; the blob is used up.
    fn create_from_resume_data(
        &self,
        blob: &str,
        destination: Option<String>,
        headers: Headers,
    ) -> Result<TaskInfo, ErrorInfo> {
        let s = &self.shared;
        let (payload, kept) = s.keeper.open(blob)?;
        let mut request = payload.request;
        if destination.is_some() {
            request.destination = destination;
            request.directory = None;
        }
        // Credentials given again replace what the blob kept of the same name.
        request.headers = request.headers.overridden_by(headers);
        request.start = true;
        validate::request(&request)?;
        let mut state = s.state();
        refuse_if_invalidating(s, state.invalidating)?;
        let id = next_id();
        // The kept bytes become the new task's staging file.
        std::fs::rename(&kept, s.folder.staging(id))
            .map_err(|e| ErrorInfo::new("internal", format!("cannot take the kept bytes: {e}")))?;
        let priority = request.priority.unwrap_or(s.config.priority);
        let mut task = Task::new(id, &s.session, request, priority, Kind::Download);
        task.info.bytes_done = payload.checkpoint.bytes();
        task.info.bytes_total = payload.checkpoint.total;
        task.checkpoint = Some(payload.checkpoint);
        let info = task.live_info();
        state.tasks.insert(id, task);
        s.wake.notify_one();
        Ok(info)
    }

    fn ack(&self, seq: u64) {
        let files = self.shared.state().journal.ack(seq);
        for file in files {
            remove_quietly(&file);
        }
    }

    /// A page of tasks in id order, as the daemon pages them.
    fn list(&self, after: Option<TaskId>, limit: Option<u32>) -> Response {
        let limit = limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE) as usize;
        let state = self.shared.state();
        let mut page = state
            .tasks
            .range(after.unwrap_or(0).saturating_add(1)..)
            .map(|(_, t)| t.live_info());
        let tasks: Vec<TaskInfo> = page.by_ref().take(limit).collect();
        let next = match page.next() {
            Some(_) => tasks.last().map(|t| t.id),
            None => None,
        };
        Response::Tasks { tasks, next }
    }

    async fn group(
        &self,
        session: &str,
        group: &str,
        action: GroupAction,
    ) -> Result<Response, ErrorInfo> {
        self.ours(session)?;
        let group = self.shared.control_group(group, action).await?;
        Ok(Response::Group { group })
    }

    fn status(&self) -> Response {
        let mut tasks = BTreeMap::new();
        for task in self.shared.state().tasks.values() {
            *tasks.entry(task.info.state.name().to_owned()).or_insert(0) += 1;
        }
        Response::Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            home: "in-process".to_owned(),
            tasks,
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// The options of an upload that every kind of task has, as the task's request; what it
/// sends is kept apart, in [`Kind::Upload`].
fn upload_options(request: UploadRequest) -> DownloadRequest {
    DownloadRequest {
        url: request.url,
        destination: None,
        directory: None,
        headers: request.headers,
        checksum: None,
        priority: request.priority,
        tag: request.tag,
        group: request.group,
        connections: None,
        rate_limit: request.rate_limit,
        earliest_begin: request.earliest_begin,
        start: request.start,
    }
}

fn refuse_if_invalidating(shared: &Shared, invalidating: bool) -> Result<(), ErrorInfo> {
    if invalidating {
        Err(ErrorInfo::new(
            "session_invalidated",
            format!(
                "session {} is being invalidated and takes no new tasks",
                shared.session
            ),
        ))
    } else {
        Ok(())
    }
}

/// A data task's result once it has completed: the body (once), or why there is none.
fn take_body(task: &mut Task) -> Option<Result<Vec<u8>, ErrorInfo>> {
    let id = task.info.id;
    let Kind::Data(body) = &mut task.kind else {
        return Some(Err(invalid(format!(
            "task {id} is a {}, not a data task",
            if task.is_download() {
                "download"
            } else {
                "upload"
            }
        ))));
    };
    let TaskState::Completed { outcome } = task.info.state else {
        return None;
    };
    Some(match (outcome, std::mem::replace(body, Body::Taken)) {
        (_, Body::Ready(bytes)) => Ok(bytes),
        (OutcomeKind::Succeeded, _) => Err(ErrorInfo::new(
            "invalid_state",
            format!("the body of data task {id} was already taken"),
        )),
        (OutcomeKind::Failed, _) => Err(task
            .info
            .error
            .clone()
            .unwrap_or_else(|| ErrorInfo::new("internal", format!("task {id} failed")))),
        (OutcomeKind::Cancelled, _) => Err(ErrorInfo::new(
            "cancelled",
            format!("task {id} was cancelled"),
        )),
    })
}
