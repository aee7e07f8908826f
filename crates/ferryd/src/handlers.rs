//! One function per request: validate, act, answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_proto::{
    CancelReason, DownloadRequest, ErrorInfo, Event, EventFrame, GroupInfo, Headers, OutcomeKind,
    RemovedTask, Request, Response, RunPhase, ServerFrame, SessionConfig, SessionInfo, TaskInfo,
    TaskState, UploadBody, UploadRequest,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use ferry_engine::SourceIdentity;

use crate::home::{Layout, valid_session_id};
use crate::hub::{ConnectionId, Hub};
use crate::resume::Keeper;
use crate::scheduler::{self, ControlError, GroupAction, Scheduler};
use crate::store::{NewTask, Store, StoreError, TaskRequest, TaskRow, sessions, tasks};

/// Longest tag accepted (SPEC §5).
const MAX_TAG_BYTES: usize = 4096;

/// What every handler may use.
pub struct Context {
    /// The store.
    pub store: Arc<Store>,
    /// Attachments.
    pub hub: Arc<Hub>,
    /// The scheduler.
    pub scheduler: Arc<Scheduler>,
    /// `FERRY_HOME`.
    pub layout: Layout,
    /// Resume data's key and area.
    pub keeper: Keeper,
    /// Cancelled when a client asks the daemon to stop (`shutdown`); `run` then stops as on
    /// SIGTERM.
    pub stop: CancellationToken,
}

/// The connection a request came on.
pub struct Peer {
    /// Its id.
    pub connection: ConnectionId,
    /// The client's pid, if the kernel told.
    pub pid: Option<i32>,
    /// Its outgoing queue.
    pub outbound: UnboundedSender<ServerFrame>,
}

/// Answers one request. `None` when the handler already queued its answer (attach, whose
/// response must precede the replayed events).
pub async fn handle(ctx: &Context, peer: &Peer, id: u64, request: Request) -> Option<ServerFrame> {
    let result = match request {
        Request::Attach {
            session,
            config,
            take_over,
        } => match attach(ctx, peer, id, session, config, take_over).await {
            Ok(()) => return None,
            Err(e) => Err(e),
        },
        Request::Detach { session } => {
            ctx.hub.detach(&session, peer.connection);
            Ok(Response::Done)
        }
        Request::Ack { session, seq } => ack(ctx, session, seq).await,
        Request::CreateDownload { session, request } => {
            create(ctx, session, TaskRequest::Download(request)).await
        }
        Request::CreateUpload { session, request } => {
            create(ctx, session, TaskRequest::Upload(request)).await
        }
        Request::ListTasks {
            session,
            after,
            limit,
        } => list(ctx, session, after, limit).await,
        Request::CreateDownloads { session, requests } => create_many(ctx, session, requests).await,
        Request::GetTask { task } => control(ctx, task, Ok(())).await,
        Request::GetTasks { tasks } => get_many(ctx, tasks).await,
        Request::SetPriority { task, priority } => {
            let done = ctx.scheduler.set_priority(task, priority).await;
            control(ctx, task, done).await
        }
        Request::SetRateLimit {
            task,
            session,
            bytes_per_second,
        } => set_rate_limit(ctx, task, session, bytes_per_second).await,
        Request::UpdateUrl { task, url } => match ferry_engine::parse_url(&url) {
            Ok(_) => control(ctx, task, ctx.scheduler.update_url(task, url).await).await,
            Err(e) => Err(scheduler::error_info(&e)),
        },
        Request::Remove { task, delete_file } => remove(ctx, task, delete_file).await,
        Request::Suspend { task } => control(ctx, task, ctx.scheduler.suspend(task).await).await,
        Request::Resume { task } => control(ctx, task, ctx.scheduler.resume(task).await).await,
        Request::Cancel { task } => {
            let done = ctx
                .scheduler
                .cancel(task, CancelReason::Client, false)
                .await;
            control(ctx, task, done).await
        }
        Request::CancelWithResumeData { task } => {
            let done = ctx.scheduler.cancel(task, CancelReason::Client, true).await;
            control(ctx, task, done).await
        }
        Request::Terminate { session } => terminate(ctx, session).await,
        Request::CreateFromResumeData {
            session,
            resume_data,
            destination,
            headers,
        } => from_resume_data(ctx, session, &resume_data, destination, headers).await,
        Request::FinishTasksAndInvalidate { session } => invalidate(ctx, session, false).await,
        Request::InvalidateAndCancel { session } => invalidate(ctx, session, true).await,
        Request::ListGroups { session } => list_groups(ctx, session).await,
        Request::SuspendGroup { session, group } => {
            group_control(ctx, session, group, GroupAction::Suspend).await
        }
        Request::ResumeGroup { session, group } => {
            group_control(ctx, session, group, GroupAction::Resume).await
        }
        Request::CancelGroup { session, group } => {
            group_control(ctx, session, group, GroupAction::Cancel).await
        }
        Request::Status => status(ctx).await,
        Request::ListSessions => list_sessions(ctx).await,
        // The connection answers, closes, then cancels `ctx.stop` (see `server`): the
        // answer is on the socket before the daemon stops.
        Request::Shutdown => Ok(Response::Done),
    };
    Some(match result {
        Ok(response) => ServerFrame::Response { id, response },
        Err(error) => ServerFrame::Error {
            id: Some(id),
            error,
        },
    })
}

fn internal(e: StoreError) -> ErrorInfo {
    tracing::error!(error = %e, "store failure while answering a request");
    ErrorInfo::new("internal", e.to_string())
}

fn check_session(session: &str) -> Result<(), ErrorInfo> {
    if valid_session_id(session) {
        Ok(())
    } else {
        Err(ErrorInfo::new(
            "invalid_request",
            format!(
                "session id {session:?} must be 1 to 128 letters, digits, '.', '_' or '-', \
                 not starting with '.'"
            ),
        ))
    }
}

async fn read<R: Send + 'static>(
    ctx: &Context,
    f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, ErrorInfo> {
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || store.read(f))
        .await
        .map_err(|e| ErrorInfo::new("internal", e.to_string()))?
        .map_err(internal)
}

async fn attach(
    ctx: &Context,
    peer: &Peer,
    id: u64,
    session: String,
    config: SessionConfig,
    take_over: bool,
) -> Result<(), ErrorInfo> {
    check_session(&session)?;
    check_config(&config)?;
    // The session's TLS files are read and parsed now, so that a bad one is refused here
    // rather than failing each task (and the engine is ready for its first run) — unless
    // the session already has these files configured: a client re-attaching after the
    // daemon restarted, while a certificate is being replaced, must not lose its session.
    if let Err(e) = ctx.scheduler.engine_for(&session, &config).await {
        let name = session.clone();
        let stored = ctx.store.read(move |c| sessions::config(c, &name));
        let unchanged = stored.is_ok_and(|s| s.is_some_and(|s| s.tls == config.tls));
        if !unchanged {
            return Err(ErrorInfo::new(
                "invalid_request",
                format!("tls: {}", e.message),
            ));
        }
        tracing::warn!(session, error = %e.message, "re-attached with TLS files that cannot be used now");
    }
    ctx.scheduler.configure_session(&session, &config);
    let (s, c) = (session.clone(), config);
    ctx.store
        .write(move |conn| {
            sessions::upsert(conn, &s, &c)?;
            Ok(((), Vec::new()))
        })
        .await
        .map_err(internal)?;
    // The backlog is read under the hub's lock (see `hub`), on this worker: a short read.
    let store = ctx.store.clone();
    let name = session.clone();
    tokio::task::block_in_place(|| {
        ctx.hub.attach(
            &session,
            peer.connection,
            peer.pid,
            peer.outbound.clone(),
            take_over,
            || {
                let backlog = store.read(|c| tasks::backlog(c, &name)).map_err(internal)?;
                let mut frames = vec![ServerFrame::Response {
                    id,
                    response: Response::Attached {
                        session: name.clone(),
                        backlog: backlog.len() as u64,
                    },
                }];
                let replayed = !backlog.is_empty();
                frames.extend(backlog.into_iter().map(ServerFrame::Event));
                if replayed {
                    frames.push(ServerFrame::Event(EventFrame {
                        session: name.clone(),
                        seq: None,
                        task: None,
                        tag: None,
                        event: Event::BacklogDelivered,
                    }));
                }
                Ok(frames)
            },
        )
    })?;
    // A snapshot of every running task's progress, after the backlog.
    for frame in ctx.scheduler.progress_snapshot(&session) {
        let _ = peer.outbound.send(ServerFrame::Event(frame));
    }
    Ok(())
}

/// Refuses a session configuration that could only make its tasks hang or fail: see
/// [`SessionConfig::check`], and headers or a user agent that cannot be sent.
fn check_config(config: &SessionConfig) -> Result<(), ErrorInfo> {
    config.check()?;
    crate::scheduler::session_headers(config).map(drop)
}

/// A store error of a request about a session: `unknown_session` when there is none.
fn session_error(e: StoreError) -> ErrorInfo {
    match e {
        StoreError::NotFound(m) => ErrorInfo::new("unknown_session", m),
        e => internal(e),
    }
}

async fn ack(ctx: &Context, session: String, seq: u64) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    acknowledge(&ctx.store, &ctx.layout, session, seq)
        .await
        .map_err(session_error)?;
    Ok(Response::Done)
}

/// Acknowledges `session`'s events through `seq` and deletes the inbox and reply files
/// they free.
///
/// Committed without an fsync: a crash of the machine may undo it, and the events then come
/// again (delivery is at least once; a crash of the daemon keeps it) — unless it frees a
/// file. That one is made durable before the file goes: an event that comes again must
/// still find its file.
async fn acknowledge(
    store: &Store,
    layout: &Layout,
    session: String,
    seq: u64,
) -> Result<(), StoreError> {
    // An inbox file has served its purpose once its event is acknowledged: a download's
    // with `finished_downloading`, an upload's reply with `completed`.
    let (inbox, replies) = (layout.root.join("inbox"), layout.replies());
    let frees = move |event: &Event| -> Option<PathBuf> {
        let location = match event {
            Event::FinishedDownloading { location } => location,
            Event::Completed {
                reply: Some(reply), ..
            } => &reply.location,
            _ => return None,
        };
        let location = Path::new(location);
        (location.starts_with(&inbox) || location.starts_with(&replies))
            .then(|| location.to_owned())
    };
    let (s, f) = (session.clone(), frees.clone());
    let relaxed = store
        .write_relaxed(move |c| tasks::acknowledge(c, &s, seq, |e| f(e).is_some()))
        .await?;
    let acked = match relaxed {
        Some(acked) => acked,
        None => {
            store
                .write(move |c| {
                    let acked = tasks::acknowledge(c, &session, seq, |_| false)?;
                    Ok((acked.unwrap_or_default(), Vec::new()))
                })
                .await?
        }
    };
    for location in acked.iter().filter_map(frees) {
        let _ = std::fs::remove_file(location);
    }
    Ok(())
}

/// Checks a request of either kind; for an upload, returns its files' identities.
fn validate_task(request: &TaskRequest) -> Result<Option<Vec<SourceIdentity>>, ErrorInfo> {
    match request {
        TaskRequest::Download(r) => validate(r).map(|()| None),
        TaskRequest::Upload(r) => validate_upload(r).map(Some),
    }
}

/// The checks of an upload, the source files included: they must exist and be readable
/// regular files now, so that a typo fails here rather than in a task that runs later.
/// Returns the files' identities: every run checks that they are still these versions.
fn validate_upload(request: &UploadRequest) -> Result<Vec<SourceIdentity>, ErrorInfo> {
    ferry_engine::parse_url(&request.url).map_err(|e| scheduler::error_info(&e))?;
    if let UploadBody::Multipart { fields, files } = &request.body
        && fields.is_empty()
        && files.is_empty()
    {
        return Err(ErrorInfo::new(
            "invalid_request",
            "a multipart upload needs at least one field or file",
        ));
    }
    for path in request.body.paths() {
        check_path("source file", path)?;
    }
    check_tag_and_group(request.tag.as_deref(), request.group.as_deref())?;
    scheduler::headers(request.headers.0.iter())?;
    scheduler::engine_body(&request.body)
        .check()
        .map_err(|e| scheduler::error_info(&e))
}

fn check_tag_and_group(tag: Option<&str>, group: Option<&str>) -> Result<(), ErrorInfo> {
    if tag.is_some_and(|t| t.len() > MAX_TAG_BYTES) {
        return Err(ErrorInfo::new(
            "invalid_request",
            format!("the tag is longer than {MAX_TAG_BYTES} bytes"),
        ));
    }
    if let Some(group) = group {
        check_group(group)?;
    }
    Ok(())
}

fn validate(request: &DownloadRequest) -> Result<(), ErrorInfo> {
    ferry_engine::parse_url(&request.url).map_err(|e| scheduler::error_info(&e))?;
    if let Some(dest) = &request.destination {
        check_path("destination", dest)?;
    }
    if let Some(dir) = &request.directory {
        check_path("directory", dir)?;
        if request.destination.is_some() {
            return Err(ErrorInfo::new(
                "invalid_request",
                "destination and directory exclude each other: give one of them",
            ));
        }
    }
    if let Some(checksum) = &request.checksum {
        checksum
            .parse::<ferry_engine::Checksum>()
            .map_err(|e| ErrorInfo::new("invalid_request", e))?;
    }
    check_tag_and_group(request.tag.as_deref(), request.group.as_deref())?;
    if request.connections.is_some_and(|c| !(1..=64).contains(&c)) {
        return Err(ErrorInfo::new(
            "invalid_request",
            "connections must be between 1 and 64",
        ));
    }
    scheduler::headers(request.headers.0.iter())?;
    Ok(())
}

/// A `destination` or `directory`: an absolute path without NUL bytes.
fn check_path(what: &str, path: &str) -> Result<(), ErrorInfo> {
    if !Path::new(path).is_absolute() {
        return Err(ErrorInfo::new(
            "invalid_request",
            format!("{what} {path:?} must be an absolute path"),
        ));
    }
    if path.contains('\0') {
        return Err(ErrorInfo::new(
            "invalid_request",
            format!("{what} {path:?} contains a NUL byte"),
        ));
    }
    Ok(())
}

async fn create(
    ctx: &Context,
    session: String,
    request: TaskRequest,
) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    let sources = validate_task(&request)?;
    let row = insert_tasks(ctx, session, vec![(request, sources)])
        .await?
        .pop()
        .ok_or_else(|| ErrorInfo::new("internal", "the task was not created"))?;
    Ok(Response::Task { task: row.info() })
}

/// Bulk enqueue: every request validated first, then all inserted in one transaction.
async fn create_many(
    ctx: &Context,
    session: String,
    requests: Vec<DownloadRequest>,
) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    for (i, request) in requests.iter().enumerate() {
        validate(request).map_err(|mut e| {
            e.message = format!("request {i}: {}", e.message);
            e
        })?;
    }
    let requests = requests
        .into_iter()
        .map(|r| (TaskRequest::Download(r), None))
        .collect();
    let rows = insert_tasks(ctx, session, requests).await?;
    Ok(Response::Created {
        ids: rows.iter().map(|r| r.id).collect(),
    })
}

/// Inserts validated requests (with an upload's source identities) into the session
/// (created if needed) in one transaction.
async fn insert_tasks(
    ctx: &Context,
    session: String,
    requests: Vec<(TaskRequest, Option<Vec<SourceIdentity>>)>,
) -> Result<Vec<TaskRow>, ErrorInfo> {
    let rows = ctx
        .store
        .write(move |c| {
            sessions::ensure(c, &session)?;
            refuse_if_invalidating(c, &session)?;
            let config = sessions::config(c, &session)?.unwrap_or_default();
            let mut rows = Vec::with_capacity(requests.len());
            for (request, sources) in requests {
                let task = NewTask {
                    priority: request.priority().unwrap_or(config.priority),
                    state: initial_state(request.start()),
                    session: session.clone(),
                    request,
                    sources,
                };
                rows.push(tasks::insert(c, &task)?);
            }
            Ok((rows, Vec::new()))
        })
        .await
        .map_err(creation_error)?;
    ctx.scheduler.wake();
    Ok(rows)
}

/// A new task waits to run, or stays suspended until `resume`.
fn initial_state(start: bool) -> TaskState {
    if start {
        TaskState::Running {
            phase: ferry_proto::RunPhase::Waiting,
        }
    } else {
        TaskState::Suspended
    }
}

fn live(ctx: &Context, mut info: TaskInfo) -> TaskInfo {
    if let Some(live) = ctx.scheduler.live_progress(info.id) {
        let connecting = TaskState::Running {
            phase: RunPhase::Connecting,
        };
        let transferring = TaskState::Running {
            phase: RunPhase::Transferring,
        };
        // The stored phase turns to transferring at the first checkpoint (about a second
        // in); bytes beyond the stored count show it earlier.
        if info.state == connecting && live.received > info.bytes_done {
            info.state = transferring;
        }
        info.bytes_done = live.received;
        info.bytes_total = live.expected.or(info.bytes_total);
        let transferring = info.state == transferring;
        info.bytes_per_second = live.bytes_per_second.filter(|_| transferring);
    }
    info
}

/// Largest page of `list_tasks`, and the bytes of task JSON a page may hold, so that it always
/// fits in a frame (a task with a 4 KiB tag and resume data is ~6 KiB).
const MAX_PAGE: u32 = 10_000;
const PAGE_BYTES: usize = ferry_proto::frame::MAX_FRAME_LEN - 64 * 1024;

async fn list(
    ctx: &Context,
    session: Option<String>,
    after: Option<u64>,
    limit: Option<u32>,
) -> Result<Response, ErrorInfo> {
    let limit = limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let rows = read(ctx, move |c| {
        tasks::page(c, session.as_deref(), after.unwrap_or(0), limit + 1)
    })
    .await?;
    let mut tasks = Vec::new();
    let mut bytes = 0;
    let mut next = None;
    for (i, row) in rows.iter().enumerate() {
        let info = live(ctx, row.info());
        let size = json_len(&info);
        // The first task always goes: a page without one would end the listing.
        if i == limit as usize || (i > 0 && bytes + size > PAGE_BYTES) {
            next = tasks.last().map(|t: &TaskInfo| t.id);
            break;
        }
        bytes += size;
        tasks.push(info);
    }
    Ok(Response::Tasks { tasks, next })
}

/// What `get_tasks` found for one id.
enum Found {
    Task(Box<TaskRow>),
    Removed(RemovedTask),
    Unknown(u64),
}

fn find(conn: &rusqlite::Connection, id: u64) -> Result<Found, StoreError> {
    Ok(match tasks::get(conn, id)? {
        Some(row) => Found::Task(Box::new(row)),
        None => tasks::removed(conn, id)?.map_or(Found::Unknown(id), Found::Removed),
    })
}

/// Tasks by id, each as `get_task` shows it, with the tombstones of removed ones: as many
/// of the ids, from the first, as fit in a frame — always at least one, so a client asking
/// again for the rest always gets on (a task too large for any frame is then refused with
/// `response_too_large`, as `get_task` would be).
async fn get_many(ctx: &Context, ids: Vec<u64>) -> Result<Response, ErrorInfo> {
    ferry_proto::check_get_tasks(&ids)?;
    // Only the ids that fit are read: a client following thousands of large tasks asks
    // again for the rest, and must not have every row read again each time.
    let found = read(ctx, move |c| {
        let mut found = Vec::new();
        let mut bytes = 0;
        for id in ids {
            let next = find(c, id)?;
            bytes += match &next {
                Found::Task(row) => json_len(&row.info()) + LIVE_MARGIN,
                Found::Removed(tombstone) => json_len(tombstone),
                Found::Unknown(_) => 21, // at most 20 digits and a comma
            };
            if !found.is_empty() && bytes > PAGE_BYTES {
                break;
            }
            found.push(next);
        }
        Ok(found)
    })
    .await?;
    let answered = u32::try_from(found.len()).unwrap_or(u32::MAX);
    let (mut tasks, mut removed, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for found in found {
        match found {
            Found::Task(row) => tasks.push(live(ctx, row.info())),
            Found::Removed(tombstone) => removed.push(tombstone),
            Found::Unknown(id) => unknown.push(id),
        }
    }
    Ok(Response::FoundTasks {
        tasks,
        removed,
        unknown,
        answered,
    })
}

/// What a running task's live state may add to its stored JSON: a longer phase name, byte
/// counts and a rate of up to 20 digits each.
const LIVE_MARGIN: usize = 64;

/// The length of a value's JSON, and one for the comma that separates it from the next.
fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len() + 1)
}

async fn control(
    ctx: &Context,
    task: u64,
    outcome: Result<(), ControlError>,
) -> Result<Response, ErrorInfo> {
    match outcome {
        Ok(()) => {}
        Err(ControlError::Refused(e)) => return Err(e),
        Err(ControlError::Store(e)) => return Err(internal(e)),
    }
    let found = read(ctx, move |c| find(c, task)).await?;
    match found {
        Found::Task(row) => Ok(Response::Task {
            task: live(ctx, row.info()),
        }),
        Found::Removed(tombstone) => Err(was_removed(&tombstone)),
        Found::Unknown(_) => Err(scheduler::unknown_task(task)),
    }
}

/// Still `unknown_task` for a removed task, saying what became of it.
fn was_removed(tombstone: &RemovedTask) -> ErrorInfo {
    ErrorInfo::new(
        "unknown_task",
        format!(
            "task {} was removed (it had {})",
            tombstone.id,
            tombstone.outcome.name()
        ),
    )
}

/// Forgets a completed task. Its files go first, so that a deletion that fails leaves the
/// task there to try again (a completed task's row changes no more). Its journal rows stay
/// until acknowledged: they carry what their delivery needs.
pub(crate) async fn remove(
    ctx: &Context,
    task: u64,
    delete_file: bool,
) -> Result<Response, ErrorInfo> {
    let row = match read(ctx, move |c| find(c, task)).await? {
        Found::Task(row) => row,
        Found::Removed(tombstone) => return Err(was_removed(&tombstone)),
        Found::Unknown(_) => return Err(scheduler::unknown_task(task)),
    };
    let TaskState::Completed { outcome } = row.state else {
        let mut e = scheduler::invalid_state(task, "remove", row.state);
        e.message.push_str("; cancel it first");
        return Err(e);
    };
    let delete = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ErrorInfo::new(
            "io",
            format!("cannot delete {} of task {task}: {e}", path.display()),
        )),
        _ => Ok(()),
    };
    // A staging file left behind (a crash between a run's end and its cleanup) is of no use
    // without the task.
    delete(&ctx.layout.staging(task))?;
    if delete_file {
        match (outcome, &row.location, &row.resume_data) {
            (OutcomeKind::Succeeded, Some(location), _) => delete(Path::new(location))?,
            // Resume data of a cancelled task, or of a failed one whose bytes were kept.
            (_, _, Some(blob)) => ctx.keeper.discard(blob).map_err(|e| {
                ErrorInfo::new(
                    "io",
                    format!("cannot delete the kept bytes of task {task}: {e}"),
                )
            })?,
            _ => {}
        }
    }
    // An upload's reply lives in the inbox: it goes with the task, unless an event still
    // to be acknowledged names it (the acknowledgement deletes it then).
    if let Some(reply) = &row.reply {
        let (session, id) = (row.session.clone(), row.id);
        let named = read(ctx, move |c| tasks::has_journaled(c, &session, id)).await?;
        if delete_file || !named {
            delete(Path::new(&reply.location))?;
        }
    }
    let removed = ctx
        .store
        .write(move |c| Ok((tasks::delete_completed(c, task)?, Vec::new())))
        .await
        .map_err(internal)?;
    if !removed {
        return Err(scheduler::unknown_task(task));
    }
    Ok(Response::Done)
}

/// Changes a task's, a session's or the daemon's bandwidth limit, for running transfers too.
async fn set_rate_limit(
    ctx: &Context,
    task: Option<u64>,
    session: Option<String>,
    bytes_per_second: Option<u64>,
) -> Result<Response, ErrorInfo> {
    let rate = bytes_per_second.filter(|r| *r > 0);
    match (task, session) {
        (Some(_), Some(_)) => Err(ErrorInfo::new(
            "invalid_request",
            "set_rate_limit names a task or a session, not both (neither: the whole daemon)",
        )),
        (Some(task), None) => {
            let done = ctx.scheduler.set_task_rate_limit(task, rate).await;
            control(ctx, task, done).await
        }
        (None, Some(session)) => {
            check_session(&session)?;
            let scheduler = ctx.scheduler.clone();
            ctx.store
                .write(move |c| {
                    let Some(mut config) = sessions::config(c, &session)? else {
                        return Err(StoreError::NotFound(format!(
                            "there is no session {session}"
                        )));
                    };
                    config.rate_limit = rate;
                    sessions::set_config(c, &session, &config)?;
                    // Here, in commit order with other changes of the session's limit.
                    scheduler.configure_session(&session, &config);
                    Ok(((), Vec::new()))
                })
                .await
                .map_err(session_error)?;
            Ok(Response::Done)
        }
        (None, None) => {
            ctx.scheduler.set_daemon_rate_limit(rate.unwrap_or(0));
            Ok(Response::Done)
        }
    }
}

async fn invalidate(ctx: &Context, session: String, cancel: bool) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    let name = session.clone();
    let unfinished = ctx
        .store
        .write(move |c| {
            if sessions::config(c, &name)?.is_none() {
                return Err(StoreError::NotFound(format!("there is no session {name}")));
            }
            tasks::start_invalidation(c, &name)?;
            let unfinished: Vec<u64> = tasks::list(c, Some(&name))?
                .into_iter()
                .filter(|t| !matches!(t.state, TaskState::Completed { .. }))
                .map(|t| t.id)
                .collect();
            // With nothing left to finish, the session is invalidated at once.
            let events = tasks::invalidation_done(c, &name)?.into_iter().collect();
            Ok((unfinished, events))
        })
        .await
        .map_err(session_error)?;
    if cancel {
        for task in unfinished {
            match ctx
                .scheduler
                .cancel(task, CancelReason::Client, false)
                .await
            {
                Ok(()) | Err(ControlError::Refused(_)) => {}
                Err(ControlError::Store(e)) => return Err(internal(e)),
            }
        }
    }
    Ok(Response::Done)
}

/// New tasks are refused while a session is being invalidated.
fn refuse_if_invalidating(c: &rusqlite::Connection, session: &str) -> Result<(), StoreError> {
    if tasks::is_invalidating(c, session)? {
        return Err(StoreError::NotFound(format!(
            "session {session} is being invalidated and takes no new tasks"
        )));
    }
    Ok(())
}

fn creation_error(e: StoreError) -> ErrorInfo {
    match e {
        StoreError::NotFound(m) => ErrorInfo::new("session_invalidated", m),
        e => internal(e),
    }
}

async fn terminate(ctx: &Context, session: String) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    let exists = {
        let name = session.clone();
        read(ctx, move |c| sessions::config(c, &name))
            .await?
            .is_some()
    };
    if !exists {
        return Err(ErrorInfo::new(
            "unknown_session",
            format!("there is no session {session}"),
        ));
    }
    ctx.scheduler.terminate(&session).await.map_err(internal)?;
    Ok(Response::Done)
}

async fn from_resume_data(
    ctx: &Context,
    session: String,
    blob: &str,
    destination: Option<String>,
    headers: Headers,
) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    let (payload, kept) = ctx.keeper.open_blob(blob)?;
    let mut request = payload.request;
    if destination.is_some() {
        request.destination = destination;
        request.directory = None;
    }
    // Credentials given again replace what the blob kept of the same name.
    request.headers = request.headers.overridden_by(headers);
    request.start = true;
    validate(&request)?;
    let layout = ctx.layout.clone();
    let checkpoint = payload.checkpoint;
    let row = ctx
        .store
        .write(move |c| {
            sessions::ensure(c, &session)?;
            refuse_if_invalidating(c, &session)?;
            let config = sessions::config(c, &session)?.unwrap_or_default();
            let row = tasks::insert(
                c,
                &NewTask {
                    priority: request.priority.unwrap_or(config.priority),
                    state: initial_state(true),
                    session,
                    request: TaskRequest::Download(request),
                    sources: None,
                },
            )?;
            // The kept bytes become the new task's staging file; the blob is now used up.
            std::fs::rename(&kept, layout.staging(row.id))
                .map_err(|e| StoreError::Unusable(format!("cannot take the kept bytes: {e}")))?;
            tasks::save_checkpoint(c, row.id, &checkpoint)?;
            Ok((tasks::get(c, row.id)?.unwrap_or(row), Vec::new()))
        })
        .await
        .map_err(creation_error)?;
    ctx.scheduler.wake();
    Ok(Response::Task { task: row.info() })
}

fn check_group(group: &str) -> Result<(), ErrorInfo> {
    if (1..=256).contains(&group.len()) && !group.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ErrorInfo::new(
            "invalid_request",
            format!("group name {group:?} must be 1 to 256 bytes without control characters"),
        ))
    }
}

/// Sums a group's tasks, with live bytes for running ones.
fn group_info(ctx: &Context, session: &str, name: &str, members: &[TaskRow]) -> GroupInfo {
    let mut info = GroupInfo {
        session: session.to_owned(),
        name: name.to_owned(),
        tasks: members.len() as u64,
        completed: 0,
        succeeded: 0,
        failed: 0,
        cancelled: 0,
        bytes_done: 0,
        bytes_total: Some(0),
    };
    for task in members {
        let t = live(ctx, task.info());
        if let TaskState::Completed { outcome } = t.state {
            info.completed += 1;
            match outcome {
                OutcomeKind::Succeeded => info.succeeded += 1,
                OutcomeKind::Failed => info.failed += 1,
                OutcomeKind::Cancelled => info.cancelled += 1,
            }
        }
        info.bytes_done += t.bytes_done;
        info.bytes_total = info.bytes_total.zip(t.bytes_total).map(|(a, b)| a + b);
    }
    info
}

async fn list_groups(ctx: &Context, session: String) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    let s = session.clone();
    let groups = read(ctx, move |c| {
        tasks::group_names(c, &s)?
            .into_iter()
            .map(|name| Ok((tasks::group(c, &s, &name)?, name)))
            .collect::<Result<Vec<_>, StoreError>>()
    })
    .await?;
    Ok(Response::Groups {
        groups: groups
            .iter()
            .map(|(members, name)| group_info(ctx, &session, name, members))
            .collect(),
    })
}

async fn group_control(
    ctx: &Context,
    session: String,
    group: String,
    action: GroupAction,
) -> Result<Response, ErrorInfo> {
    check_session(&session)?;
    check_group(&group)?;
    ctx.scheduler
        .control_group(&session, &group, action)
        .await
        .map_err(internal)?;
    let (s, g) = (session.clone(), group.clone());
    let members = read(ctx, move |c| tasks::group(c, &s, &g)).await?;
    if members.is_empty() {
        return Err(ErrorInfo::new(
            "unknown_group",
            format!("session {session} has no group {group:?}"),
        ));
    }
    Ok(Response::Group {
        group: group_info(ctx, &session, &group, &members),
    })
}

async fn status(ctx: &Context) -> Result<Response, ErrorInfo> {
    let counts = read(ctx, tasks::counts).await?;
    Ok(Response::Status {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        home: ctx.layout.root.display().to_string(),
        tasks: counts,
    })
}

async fn list_sessions(ctx: &Context) -> Result<Response, ErrorInfo> {
    let rows = read(ctx, sessions::summaries).await?;
    let attached = ctx.hub.attached_pids();
    let sessions = rows
        .into_iter()
        .map(|row| SessionInfo {
            attached_pid: attached
                .get(&row.id)
                .copied()
                .flatten()
                .and_then(|pid| u32::try_from(pid).ok()),
            id: row.id,
            tasks: row.tasks,
            unfinished: row.unfinished,
            undelivered: row.undelivered,
            invalidating: row.invalidating,
            terminated: row.terminated,
            launch_command: row.config.launch_command,
        })
        .collect();
    Ok(Response::Sessions { sessions })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acknowledgement that frees no file is committed without an fsync; one that frees an
    /// inbox file is durable before the file is deleted.
    #[tokio::test]
    async fn an_acknowledgement_is_durable_only_when_it_frees_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().to_owned(),
        };
        let store = Store::open(&layout.database(), Arc::new(Hub::default())).unwrap();
        let inbox = layout.inbox("s");
        std::fs::create_dir_all(&inbox).unwrap();
        let file = inbox.join("1-f");
        std::fs::write(&file, b"x").unwrap();
        let location = file.to_str().unwrap().to_owned();
        let journal = move |c: &rusqlite::Connection| {
            sessions::ensure(c, "s")?;
            let plain = Event::Redirected {
                from: "http://a/".into(),
                to: "http://b/".into(),
                status: 301,
            };
            tasks::journal_append(c, "s", Some(1), None, plain)?;
            let frees = Event::FinishedDownloading { location };
            tasks::journal_append(c, "s", Some(1), None, frees)?;
            Ok(((), Vec::new()))
        };
        store.write(journal).await.unwrap();
        let backlog = |store: &Store| store.read(|c| tasks::backlog(c, "s")).unwrap().len();

        let before = store.commit_counts();
        acknowledge(&store, &layout, "s".into(), 1).await.unwrap();
        let after = store.commit_counts();
        assert_eq!(
            (after.relaxed - before.relaxed, after.full - before.full),
            (1, 0),
            "an acknowledgement of a plain event needs no fsync"
        );
        assert_eq!(backlog(&store), 1);
        assert!(file.exists());

        let before = after;
        acknowledge(&store, &layout, "s".into(), 2).await.unwrap();
        let after = store.commit_counts();
        assert_eq!(
            after.full - before.full,
            1,
            "the acknowledgement that frees a file is durable"
        );
        assert_eq!(backlog(&store), 0);
        assert!(!file.exists(), "the inbox file goes once acknowledged");
        store.close();
    }
}
