//! Task rows, checkpoints and the journal. Plain functions over a connection: the writer
//! calls the mutating ones inside its transaction, the reader the others.

use std::collections::BTreeMap;

use ferry_proto::{
    DownloadRequest, ErrorInfo, Event, EventFrame, Headers, OutcomeKind, Priority, RemovedTask,
    Reply, TaskInfo, TaskKind, TaskState, UploadRequest,
};
use rusqlite::{Connection, OptionalExtension, Row};

use super::{StoreError, now, sessions};

/// What a task was asked to do: the client's request, of its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRequest {
    /// A download.
    Download(DownloadRequest),
    /// An upload.
    Upload(UploadRequest),
}

impl TaskRequest {
    /// Download or upload.
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskRequest::Download(_) => TaskKind::Download,
            TaskRequest::Upload(_) => TaskKind::Upload,
        }
    }

    /// The URL asked for.
    pub fn url(&self) -> &str {
        match self {
            TaskRequest::Download(r) => &r.url,
            TaskRequest::Upload(r) => &r.url,
        }
    }

    /// Sets the request's own bandwidth limit.
    pub fn set_rate_limit(&mut self, bytes_per_second: Option<u64>) {
        match self {
            TaskRequest::Download(r) => r.rate_limit = bytes_per_second,
            TaskRequest::Upload(r) => r.rate_limit = bytes_per_second,
        }
    }

    /// Points the request at another URL.
    pub fn set_url(&mut self, url: &str) {
        match self {
            TaskRequest::Download(r) => url.clone_into(&mut r.url),
            TaskRequest::Upload(r) => url.clone_into(&mut r.url),
        }
    }

    /// The client's tag.
    pub fn tag(&self) -> Option<&str> {
        match self {
            TaskRequest::Download(r) => r.tag.as_deref(),
            TaskRequest::Upload(r) => r.tag.as_deref(),
        }
    }

    /// The group.
    pub fn group(&self) -> Option<&str> {
        match self {
            TaskRequest::Download(r) => r.group.as_deref(),
            TaskRequest::Upload(r) => r.group.as_deref(),
        }
    }

    /// The task's own headers.
    pub fn headers(&self) -> &Headers {
        match self {
            TaskRequest::Download(r) => &r.headers,
            TaskRequest::Upload(r) => &r.headers,
        }
    }

    /// The priority asked for.
    pub fn priority(&self) -> Option<Priority> {
        match self {
            TaskRequest::Download(r) => r.priority,
            TaskRequest::Upload(r) => r.priority,
        }
    }

    /// Not before this time (seconds since the epoch).
    pub fn earliest_begin(&self) -> Option<i64> {
        match self {
            TaskRequest::Download(r) => r.earliest_begin,
            TaskRequest::Upload(r) => r.earliest_begin,
        }
    }

    /// The task's own rate limit.
    pub fn rate_limit(&self) -> Option<u64> {
        match self {
            TaskRequest::Download(r) => r.rate_limit,
            TaskRequest::Upload(r) => r.rate_limit,
        }
    }

    /// Whether it starts at once.
    pub fn start(&self) -> bool {
        match self {
            TaskRequest::Download(r) => r.start,
            TaskRequest::Upload(r) => r.start,
        }
    }

    /// The download request, for a download.
    pub fn download(&self) -> Option<&DownloadRequest> {
        match self {
            TaskRequest::Download(r) => Some(r),
            TaskRequest::Upload(_) => None,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            TaskRequest::Download(_) => "download",
            TaskRequest::Upload(_) => "upload",
        }
    }

    fn to_json(&self) -> Result<String, serde_json::Error> {
        match self {
            TaskRequest::Download(r) => serde_json::to_string(r),
            TaskRequest::Upload(r) => serde_json::to_string(r),
        }
    }

    fn from_json(kind: &str, json: &str) -> Result<TaskRequest, StoreError> {
        match kind {
            "download" => Ok(TaskRequest::Download(serde_json::from_str(json)?)),
            "upload" => Ok(TaskRequest::Upload(serde_json::from_str(json)?)),
            other => Err(StoreError::NotFound(format!("unknown task kind {other:?}"))),
        }
    }
}

/// A task to insert.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its session (must exist).
    pub session: String,
    /// What to do.
    pub request: TaskRequest,
    /// An upload's source files as they were when it was created.
    pub sources: Option<Vec<ferry_engine::SourceIdentity>>,
    /// Its priority.
    pub priority: Priority,
    /// `suspended` or `waiting`.
    pub state: TaskState,
}

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRow {
    /// Id.
    pub id: u64,
    /// Session.
    pub session: String,
    /// The original request.
    pub request: TaskRequest,
    /// Priority.
    pub priority: Priority,
    /// State.
    pub state: TaskState,
    /// Last error.
    pub error: Option<ErrorInfo>,
    /// Bytes as of the last checkpoint.
    pub bytes_done: u64,
    /// Size, if known.
    pub bytes_total: Option<u64>,
    /// URL after redirects.
    pub current_url: Option<String>,
    /// Where the finished file is.
    pub location: Option<String>,
    /// Resume data of a task cancelled with its bytes kept.
    pub resume_data: Option<String>,
    /// The server's answer to an upload.
    pub reply: Option<Reply>,
    /// An upload's source files as they were when it was created.
    pub sources: Option<Vec<ferry_engine::SourceIdentity>>,
    /// When a task waiting out a retry (parked in `retry_wait`, no run) is due, unix ms.
    pub retry_at: Option<i64>,
    /// Attempts that failed in a row so far (carried from one run to the next).
    pub failed_attempts: u32,
}

impl TaskRow {
    /// The wire view.
    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id,
            session: self.session.clone(),
            url: self.request.url().to_owned(),
            current_url: self.current_url.clone(),
            destination: self.request.download().and_then(|r| r.destination.clone()),
            location: self.location.clone(),
            state: self.state,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            error: self.error.clone(),
            tag: self.request.tag().map(str::to_owned),
            group: self.request.group().map(str::to_owned),
            priority: self.priority,
            resume_data: self.resume_data.clone(),
            bytes_per_second: None,
            kind: self.request.kind(),
            reply: self.reply.clone(),
        }
    }
}

const COLUMNS: &str = "id, session, request, priority, state, error, bytes_done, bytes_total, current_url, location, \
     resume_data, kind, reply, sources, retry_at, failed_attempts";

fn priority_rank(p: Priority) -> i64 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Foreground => 3,
    }
}

fn priority_of(rank: i64) -> Priority {
    match rank {
        0 => Priority::Low,
        2 => Priority::High,
        3 => Priority::Foreground,
        _ => Priority::Normal,
    }
}

/// `execute` through the connection's statement cache: these run for every task and event.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the statement cache.
fn row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<(TaskRowRaw, String, Option<String>)> {
    // Text columns whose JSON is decoded after the row is read.
    Ok((
        TaskRowRaw {
            id: row.get::<_, i64>(0)? as u64,
            session: row.get(1)?,
            priority: row.get(3)?,
            state: row.get(4)?,
            bytes_done: row.get::<_, i64>(6)? as u64,
            bytes_total: row.get::<_, Option<i64>>(7)?.map(|n| n as u64),
            current_url: row.get(8)?,
            location: row.get(9)?,
            resume_data: row.get(10)?,
            kind: row.get(11)?,
            reply: row.get(12)?,
            sources: row.get(13)?,
            retry_at: row.get(14)?,
            failed_attempts: u32::try_from(row.get::<_, i64>(15)?).unwrap_or(u32::MAX),
        },
        row.get(2)?,
        row.get(5)?,
    ))
}

struct TaskRowRaw {
    id: u64,
    session: String,
    priority: i64,
    state: String,
    bytes_done: u64,
    bytes_total: Option<u64>,
    current_url: Option<String>,
    location: Option<String>,
    resume_data: Option<String>,
    kind: String,
    reply: Option<String>,
    sources: Option<String>,
    retry_at: Option<i64>,
    failed_attempts: u32,
}

fn decode(
    (raw, request, error): (TaskRowRaw, String, Option<String>),
) -> Result<TaskRow, StoreError> {
    let state = TaskState::from_name(&raw.state)
        .ok_or_else(|| StoreError::NotFound(format!("task {} has unknown state", raw.id)))?;
    Ok(TaskRow {
        id: raw.id,
        session: raw.session,
        request: TaskRequest::from_json(&raw.kind, &request)?,
        priority: priority_of(raw.priority),
        state,
        error: error.map(|e| serde_json::from_str(&e)).transpose()?,
        bytes_done: raw.bytes_done,
        bytes_total: raw.bytes_total,
        current_url: raw.current_url,
        location: raw.location,
        resume_data: raw.resume_data,
        reply: raw.reply.map(|r| serde_json::from_str(&r)).transpose()?,
        sources: raw.sources.map(|s| serde_json::from_str(&s)).transpose()?,
        retry_at: raw.retry_at,
        failed_attempts: raw.failed_attempts,
    })
}

fn query(
    conn: &Connection,
    sql_tail: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<TaskRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks {sql_tail}"))?;
    let rows = stmt.query_map(params, from_row)?;
    rows.map(|r| decode(r?)).collect()
}

/// Inserts a task; its id is new and never reused.
pub fn insert(conn: &Connection, task: &NewTask) -> Result<TaskRow, StoreError> {
    let t = now();
    exec(
        conn,
        "INSERT INTO tasks (session, request, priority, state, grp, created_at, updated_at, kind, \
         sources) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
        (
            &task.session,
            task.request.to_json()?,
            priority_rank(task.priority),
            task.state.name(),
            task.request.group(),
            t,
            task.request.kind_name(),
            task.sources
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        ),
    )?;
    let id = conn.last_insert_rowid() as u64;
    get(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("task {id} vanished")))
}

/// One task.
pub fn get(conn: &Connection, id: u64) -> Result<Option<TaskRow>, StoreError> {
    Ok(query(conn, "WHERE id = ?1", [to_i64(id)])?.pop())
}

/// Tasks of a session, or all, in id order.
pub fn list(conn: &Connection, session: Option<&str>) -> Result<Vec<TaskRow>, StoreError> {
    page(conn, session, 0, u32::MAX)
}

/// Up to `limit` tasks with ids above `after`, of a session or all, in id order.
pub fn page(
    conn: &Connection,
    session: Option<&str>,
    after: u64,
    limit: u32,
) -> Result<Vec<TaskRow>, StoreError> {
    let (after, limit) = (to_i64(after), i64::from(limit));
    match session {
        Some(s) => query(
            conn,
            "WHERE session = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            (s, after, limit),
        ),
        None => query(conn, "WHERE id > ?1 ORDER BY id LIMIT ?2", (after, limit)),
    }
}

/// A session's next waiting tasks, highest priority first, then oldest.
pub fn waiting(conn: &Connection, session: &str, limit: usize) -> Result<Vec<TaskRow>, StoreError> {
    query(
        conn,
        "WHERE session = ?1 AND state = 'waiting' ORDER BY priority DESC, id LIMIT ?2",
        (session, to_i64(limit as u64)),
    )
}

/// The next tasks of `session` waiting out a retry without a run (parked) that are due at
/// `now_ms`, in scheduling order: tasks not due yet cannot hide due ones.
pub fn parked_due(
    conn: &Connection,
    session: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<TaskRow>, StoreError> {
    query(
        conn,
        "WHERE session = ?1 AND retry_at IS NOT NULL AND retry_at <= ?2 \
         AND state = 'retry_wait' ORDER BY priority DESC, id LIMIT ?3",
        (session, now_ms, to_i64(limit as u64)),
    )
}

/// When the first and the next after `now_ms` of all tasks waiting out a retry without a run
/// are due (one look at the small `tasks_parked` index; both absent when none waits so).
pub fn retries_due(
    conn: &Connection,
    now_ms: i64,
) -> Result<(Option<i64>, Option<i64>), StoreError> {
    Ok(row(
        conn,
        "SELECT MIN(retry_at), MIN(CASE WHEN retry_at > ?1 THEN retry_at END) FROM tasks \
         WHERE retry_at IS NOT NULL",
        [now_ms],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// A run handed back a retry: the task (in `retry_wait` since the `retrying` event) waits
/// without a run until `retry_at` (unix ms), with `failed_attempts` so far. Returns whether
/// it was still in `retry_wait`.
pub fn park(
    conn: &Connection,
    id: u64,
    retry_at: i64,
    failed_attempts: u32,
) -> Result<bool, StoreError> {
    let changed = exec(
        conn,
        "UPDATE tasks SET retry_at = ?2, failed_attempts = ?3 \
         WHERE id = ?1 AND state = 'retry_wait'",
        (to_i64(id), retry_at, i64::from(failed_attempts)),
    )?;
    Ok(changed == 1)
}

/// Moves a parked task (see [`park`]) to `to`. Returns whether it was parked: a task in
/// `retry_wait` whose run has not ended yet is not.
pub fn unpark(conn: &Connection, id: u64, to: TaskState) -> Result<bool, StoreError> {
    let changed = exec(
        conn,
        "UPDATE tasks SET state = ?2, error = NULL, retry_at = NULL, updated_at = ?3 \
         WHERE id = ?1 AND state = 'retry_wait' AND retry_at IS NOT NULL",
        (to_i64(id), to.name(), now()),
    )?;
    Ok(changed == 1)
}

/// Forgets the attempts that failed so far (a user's resume starts the backoff afresh).
pub fn forget_failed_attempts(conn: &Connection, id: u64) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE tasks SET failed_attempts = 0 WHERE id = ?1",
        [to_i64(id)],
    )?;
    Ok(())
}

/// Moves a task to `to` only if its state is one of `from` (a stale caller cannot overwrite
/// a newer state). Returns whether it moved. Any move ends a wait without a run
/// (`retry_at` is cleared): only [`park`] sets it.
pub fn transition(
    conn: &Connection,
    id: u64,
    from: &[TaskState],
    to: TaskState,
    error: Option<&ErrorInfo>,
) -> Result<bool, StoreError> {
    let names: Vec<&str> = from.iter().map(|s| s.name()).collect();
    // A task's completion is stamped once, for retention.
    let completed = if matches!(to, TaskState::Completed { .. }) {
        "?3"
    } else {
        "NULL"
    };
    let sql = format!(
        "UPDATE tasks SET state = ?1, error = ?2, updated_at = ?3, completed_at = {completed}, \
         retry_at = NULL WHERE id = ?4 AND state IN ({})",
        (0..names.len())
            .map(|i| format!("?{}", i + 5))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let error = error.map(serde_json::to_string).transpose()?;
    let mut params: Vec<Box<dyn rusqlite::ToSql>> = vec![
        Box::new(to.name()),
        Box::new(error),
        Box::new(now()),
        Box::new(to_i64(id)),
    ];
    params.extend(
        names
            .into_iter()
            .map(|n| Box::new(n) as Box<dyn rusqlite::ToSql>),
    );
    let changed = exec(conn, &sql, rusqlite::params_from_iter(params))?;
    Ok(changed == 1)
}

/// Marks the task started (the first time only) and returns when it first started.
pub fn mark_started(conn: &Connection, id: u64) -> Result<i64, StoreError> {
    Ok(row(
        conn,
        "UPDATE tasks SET started_at = COALESCE(started_at, ?2) WHERE id = ?1 \
         RETURNING started_at",
        (to_i64(id), now()),
        |r| r.get(0),
    )?)
}

/// Stores the engine's checkpoint and the byte counts it implies.
pub fn save_checkpoint(
    conn: &Connection,
    id: u64,
    checkpoint: &ferry_engine::Checkpoint,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO checkpoints (task, checkpoint) VALUES (?1, ?2) \
         ON CONFLICT(task) DO UPDATE SET checkpoint = excluded.checkpoint",
        (to_i64(id), serde_json::to_string(checkpoint)?),
    )?;
    exec(
        conn,
        "UPDATE tasks SET bytes_done = ?2, bytes_total = ?3, current_url = ?4 WHERE id = ?1",
        (
            to_i64(id),
            to_i64(checkpoint.bytes()),
            checkpoint.total.map(to_i64),
            &checkpoint.current_url,
        ),
    )?;
    Ok(())
}

/// The task's checkpoint, if it has one.
pub fn checkpoint(
    conn: &Connection,
    id: u64,
) -> Result<Option<ferry_engine::Checkpoint>, StoreError> {
    let text: Option<String> = row(
        conn,
        "SELECT checkpoint FROM checkpoints WHERE task = ?1",
        [to_i64(id)],
        |r| r.get(0),
    )
    .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// Forgets the checkpoint (the bytes are gone or placed).
pub fn delete_checkpoint(conn: &Connection, id: u64) -> Result<(), StoreError> {
    exec(
        conn,
        "DELETE FROM checkpoints WHERE task = ?1",
        [to_i64(id)],
    )?;
    Ok(())
}

/// Records where the finished file is and its size.
pub fn set_finished(
    conn: &Connection,
    id: u64,
    location: &str,
    bytes: u64,
    current_url: &str,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE tasks SET location = ?2, bytes_done = ?3, bytes_total = ?3, current_url = ?4 \
         WHERE id = ?1",
        (to_i64(id), location, to_i64(bytes), current_url),
    )?;
    Ok(())
}

/// Records an upload's end: the bytes sent (when it succeeded), the URL that answered, and
/// the reply (also `location`), if the server answered.
pub fn set_uploaded(
    conn: &Connection,
    id: u64,
    sent: Option<u64>,
    current_url: Option<&str>,
    reply: Option<&Reply>,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE tasks SET bytes_done = COALESCE(?2, bytes_done), \
         bytes_total = COALESCE(?2, bytes_total), current_url = COALESCE(?3, current_url), \
         location = ?4, reply = ?5 WHERE id = ?1",
        (
            to_i64(id),
            sent.map(to_i64),
            current_url,
            reply.map(|r| r.location.as_str()),
            reply.map(serde_json::to_string).transpose()?,
        ),
    )?;
    Ok(())
}

/// Whether upload `id`'s reply file may still be needed: the task is unfinished (a run may be
/// writing it), its row names a reply, or an event of it awaits acknowledgement.
pub fn reply_in_use(conn: &Connection, id: u64) -> Result<bool, StoreError> {
    Ok(row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND (reply IS NOT NULL \
             OR state NOT IN ('succeeded', 'failed', 'cancelled'))) \
         OR EXISTS (SELECT 1 FROM journal WHERE task = ?1)",
        [to_i64(id)],
        |r| r.get(0),
    )?)
}

/// Whether the session's journal still holds an event of the task.
pub fn has_journaled(conn: &Connection, session: &str, id: u64) -> Result<bool, StoreError> {
    Ok(row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM journal WHERE session = ?1 AND task = ?2)",
        (session, to_i64(id)),
        |r| r.get(0),
    )?)
}

/// The tasks of a group, in id order.
pub fn group(conn: &Connection, session: &str, group: &str) -> Result<Vec<TaskRow>, StoreError> {
    query(
        conn,
        "WHERE session = ?1 AND grp = ?2 ORDER BY id",
        (session, group),
    )
}

/// The names of a session's groups.
pub fn group_names(conn: &Connection, session: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT grp FROM tasks WHERE session = ?1 AND grp IS NOT NULL ORDER BY grp",
    )?;
    let names = stmt.query_map([session], |r| r.get(0))?;
    Ok(names.collect::<Result<_, _>>()?)
}

/// After task `id` completed: if it was the last unfinished task of its group, the group's
/// `group_completed` event, journaled in the same transaction.
pub fn group_completion(conn: &Connection, id: u64) -> Result<Option<EventFrame>, StoreError> {
    match get(conn, id)? {
        Some(row) => completion_of_group(conn, &row),
        None => Ok(None),
    }
}

/// [`group_completion`] for the task's row as read in this transaction.
fn completion_of_group(conn: &Connection, row: &TaskRow) -> Result<Option<EventFrame>, StoreError> {
    let Some(name) = row.request.group() else {
        return Ok(None);
    };
    let members = group(conn, &row.session, name)?;
    let count = |k: OutcomeKind| {
        members
            .iter()
            .filter(|t| t.state == TaskState::Completed { outcome: k })
            .count() as u64
    };
    let (succeeded, failed, cancelled) = (
        count(OutcomeKind::Succeeded),
        count(OutcomeKind::Failed),
        count(OutcomeKind::Cancelled),
    );
    if succeeded + failed + cancelled < members.len() as u64 {
        return Ok(None);
    }
    let event = Event::GroupCompleted {
        group: name.to_owned(),
        succeeded,
        failed,
        cancelled,
    };
    Ok(Some(journal_append(conn, &row.session, None, None, event)?))
}

/// Starts invalidating a session: it takes no new tasks until its last task completes.
pub fn start_invalidation(conn: &Connection, session: &str) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE sessions SET invalidating = 1 WHERE id = ?1",
        [session],
    )?;
    Ok(())
}

/// Whether the session is being invalidated.
pub fn is_invalidating(conn: &Connection, session: &str) -> Result<bool, StoreError> {
    let flag: Option<i64> = row(
        conn,
        "SELECT invalidating FROM sessions WHERE id = ?1",
        [session],
        |r| r.get(0),
    )
    .optional()?;
    Ok(flag == Some(1))
}

/// If the session is being invalidated and has no unfinished task left: ends the
/// invalidation and returns its `session_invalidated` event, journaled in this transaction.
pub fn invalidation_done(
    conn: &Connection,
    session: &str,
) -> Result<Option<EventFrame>, StoreError> {
    if !is_invalidating(conn, session)? {
        return Ok(None);
    }
    let unfinished: i64 = row(
        conn,
        "SELECT COUNT(*) FROM tasks WHERE session = ?1 \
         AND state NOT IN ('succeeded', 'failed', 'cancelled')",
        [session],
        |r| r.get(0),
    )?;
    if unfinished > 0 {
        return Ok(None);
    }
    exec(
        conn,
        "UPDATE sessions SET invalidating = 0 WHERE id = ?1",
        [session],
    )?;
    Ok(Some(journal_append(
        conn,
        session,
        None,
        None,
        Event::SessionInvalidated,
    )?))
}

/// The events that may follow a task's completion: its group's, then its session's.
pub fn after_completion(conn: &Connection, id: u64) -> Result<Vec<EventFrame>, StoreError> {
    // One read of the row serves both (it runs for every completion, on the writer).
    let Some(row) = get(conn, id)? else {
        return Ok(Vec::new());
    };
    let mut events: Vec<EventFrame> = completion_of_group(conn, &row)?.into_iter().collect();
    events.extend(invalidation_done(conn, &row.session)?);
    Ok(events)
}

/// Changes the task's priority.
pub fn set_priority(conn: &Connection, id: u64, priority: Priority) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE tasks SET priority = ?2, updated_at = ?3 WHERE id = ?1",
        (to_i64(id), priority_rank(priority), now()),
    )?;
    Ok(())
}

/// Sets the task's own bandwidth limit (in its stored request).
pub fn set_rate_limit(
    conn: &Connection,
    id: u64,
    bytes_per_second: Option<u64>,
) -> Result<(), StoreError> {
    let Some(mut task) = get(conn, id)? else {
        return Err(StoreError::NotFound(format!("there is no task {id}")));
    };
    task.request.set_rate_limit(bytes_per_second);
    exec(
        conn,
        "UPDATE tasks SET request = ?2, updated_at = ?3 WHERE id = ?1",
        (to_i64(id), task.request.to_json()?, now()),
    )?;
    Ok(())
}

/// Points the task at a new URL: the request's `url` and its checkpoint's (the bytes stay,
/// guarded by the checkpoint's validators); no current URL until the new one is requested.
pub fn set_url(conn: &Connection, id: u64, url: &str) -> Result<(), StoreError> {
    let Some(mut task) = get(conn, id)? else {
        return Err(StoreError::NotFound(format!("there is no task {id}")));
    };
    task.request.set_url(url);
    exec(
        conn,
        "UPDATE tasks SET request = ?2, current_url = NULL, updated_at = ?3 WHERE id = ?1",
        (to_i64(id), task.request.to_json()?, now()),
    )?;
    if let Some(mut cp) = checkpoint(conn, id)? {
        url.clone_into(&mut cp.url);
        url.clone_into(&mut cp.current_url);
        exec(
            conn,
            "UPDATE checkpoints SET checkpoint = ?2 WHERE task = ?1",
            (to_i64(id), serde_json::to_string(&cp)?),
        )?;
    }
    Ok(())
}

/// Deletes a completed task's row and checkpoint, leaving its tombstone; false if there is
/// no such task. Its journal rows stay: they do not reference the row, and go when
/// acknowledged.
pub fn delete_completed(conn: &Connection, id: u64) -> Result<bool, StoreError> {
    let Some(row) = get(conn, id)? else {
        return Ok(false);
    };
    if !matches!(row.state, TaskState::Completed { .. }) {
        return Ok(false);
    }
    delete_checkpoint(conn, id)?;
    exec(conn, "DELETE FROM tasks WHERE id = ?1", [to_i64(id)])?;
    exec(
        conn,
        "INSERT OR REPLACE INTO removed_tasks (id, session, state, removed_at) \
         VALUES (?1, ?2, ?3, ?4)",
        (to_i64(id), &row.session, row.state.name(), now()),
    )?;
    Ok(true)
}

/// The tombstone of a removed task, if it is still kept.
pub fn removed(conn: &Connection, id: u64) -> Result<Option<RemovedTask>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT session, state, removed_at FROM removed_tasks WHERE id = ?1")?;
    let found = stmt
        .query_row([to_i64(id)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    let Some((session, state, removed_at)) = found else {
        return Ok(None);
    };
    let Some(TaskState::Completed { outcome }) = TaskState::from_name(&state) else {
        return Err(StoreError::NotFound(format!(
            "the tombstone of task {id} has an unknown state {state:?}"
        )));
    };
    Ok(Some(RemovedTask {
        id,
        session,
        outcome,
        removed_at,
    }))
}

/// Forgets the tombstones of tasks removed before `before` (seconds since the epoch); how
/// many.
pub fn forget_removed(conn: &Connection, before: i64) -> Result<usize, StoreError> {
    Ok(exec(
        conn,
        "DELETE FROM removed_tasks WHERE removed_at < ?1",
        [before],
    )?)
}

/// Completed tasks that completed before `before` (seconds since the epoch) and have no
/// unacknowledged journal event, in id order: what retention forgets.
pub fn expired_completed(conn: &Connection, before: i64) -> Result<Vec<u64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.id FROM tasks t \
         WHERE t.state IN ('succeeded', 'failed', 'cancelled') \
           AND t.completed_at IS NOT NULL AND t.completed_at < ?1 \
           AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.session = t.session AND j.task = t.id) \
         ORDER BY t.id",
    )?;
    let ids = stmt.query_map([before], |r| r.get::<_, i64>(0))?;
    ids.map(|id| Ok(id? as u64)).collect()
}

/// Every blob of resume data the daemon still holds: on task rows, and in `completed` events
/// not yet acknowledged — the kept bytes they name are in use.
pub fn held_resume_data(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut blobs = Vec::new();
    let mut rows =
        conn.prepare_cached("SELECT resume_data FROM tasks WHERE resume_data IS NOT NULL")?;
    for blob in rows.query_map([], |r| r.get::<_, String>(0))? {
        blobs.push(blob?);
    }
    let mut events =
        conn.prepare_cached("SELECT event FROM journal WHERE event LIKE '%\"resume_data\":\"%'")?;
    for event in events.query_map([], |r| r.get::<_, String>(0))? {
        // Read as plain JSON: an event this version cannot decode still holds its blob.
        let event: serde_json::Value = serde_json::from_str(&event?)?;
        if let Some(blob) = event["outcome"]["resume_data"].as_str() {
            blobs.push(blob.to_owned());
        }
    }
    Ok(blobs)
}

/// Records a cancelled task's resume data.
pub fn set_resume_data(conn: &Connection, id: u64, blob: &str) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE tasks SET resume_data = ?2 WHERE id = ?1",
        (to_i64(id), blob),
    )?;
    Ok(())
}

/// Marks the session as terminated by the user (its launch command is not run).
pub fn mark_terminated(conn: &Connection, session: &str) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE sessions SET terminated_at = ?2 WHERE id = ?1",
        (session, now()),
    )?;
    Ok(())
}

/// Task counts by state name.
pub fn counts(conn: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Appends an event to the session's journal (when the session keeps one) and returns it
/// addressed, for publishing after the commit.
pub fn journal_append(
    conn: &Connection,
    session: &str,
    task: Option<u64>,
    tag: Option<&str>,
    event: Event,
) -> Result<EventFrame, StoreError> {
    let keeps_journal = sessions::config(conn, session)?.is_none_or(|c| c.journal);
    let seq = if keeps_journal {
        let seq: i64 = row(
            conn,
            "UPDATE sessions SET next_seq = next_seq + 1 WHERE id = ?1 RETURNING next_seq - 1",
            [session],
            |r| r.get(0),
        )?;
        exec(
            conn,
            "INSERT INTO journal (session, seq, task, tag, event) VALUES (?1, ?2, ?3, ?4, ?5)",
            (
                session,
                seq,
                task.map(to_i64),
                tag,
                serde_json::to_string(&event)?,
            ),
        )?;
        Some(seq as u64)
    } else {
        None
    };
    Ok(EventFrame {
        session: session.to_owned(),
        seq,
        task,
        tag: tag.map(str::to_owned),
        event,
    })
}

/// The session's unacknowledged events, in order. Each row is self-contained (it carries its
/// task's tag), so the events of a removed task are still delivered.
pub fn backlog(conn: &Connection, session: &str) -> Result<Vec<EventFrame>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, task, event, tag FROM journal \
         WHERE session = ?1 AND seq > (SELECT acked_seq FROM sessions WHERE id = ?1) \
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([session], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, task, event, tag) = row?;
        out.push(EventFrame {
            session: session.to_owned(),
            seq: Some(seq as u64),
            task: task.map(|t| t as u64),
            tag,
            event: serde_json::from_str(&event)?,
        });
    }
    Ok(out)
}

/// Acknowledges events up to `seq`: deletes them and returns them (the caller removes the
/// inbox and reply files they free) — unless one of them matches `unless`: then nothing is
/// written and the answer is `None`.
pub fn acknowledge(
    conn: &Connection,
    session: &str,
    seq: u64,
    unless: impl Fn(&Event) -> bool,
) -> Result<Option<Vec<Event>>, StoreError> {
    // Never past what was handed out: an ack from the future must not swallow later events.
    let issued: i64 = row(
        conn,
        "SELECT next_seq - 1 FROM sessions WHERE id = ?1",
        [session],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no session {session}")))?;
    let seq = to_i64(seq).min(issued);
    let mut stmt =
        conn.prepare_cached("SELECT event FROM journal WHERE session = ?1 AND seq <= ?2")?;
    let events = stmt
        .query_map((session, seq), |r| r.get::<_, String>(0))?
        .map(|e| Ok(serde_json::from_str(&e?)?))
        .collect::<Result<Vec<Event>, StoreError>>()?;
    if events.iter().any(unless) {
        return Ok(None);
    }
    exec(
        conn,
        "DELETE FROM journal WHERE session = ?1 AND seq <= ?2",
        (session, seq),
    )?;
    exec(
        conn,
        "UPDATE sessions SET acked_seq = MAX(acked_seq, ?2) WHERE id = ?1",
        (session, seq),
    )?;
    Ok(Some(events))
}
