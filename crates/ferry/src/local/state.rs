//! The runtime's state: tasks, the event sequence, and what every part shares.
//!
//! One `std::sync::Mutex` guards all of it, and events are sent while it is held: a task's
//! state change and the event reporting it happen at once, so events leave in the order of
//! the changes, with `seq` numbers in that order. The lock is never held across an `.await`;
//! what is done under it is bookkeeping plus, at most, a rename or removal inside the
//! runtime's own folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ferry_engine::{Checkpoint, Engine, Progress, RateLimiter};
use ferry_proto::{
    CancelReason, DownloadRequest, ErrorInfo, Event, EventFrame, Outcome, OutcomeKind, Priority,
    Reply, RunPhase, SessionConfig, TaskId, TaskInfo, TaskKind, TaskState,
};
use tempfile::TempDir;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::resume::Keeper;
use super::validate::unknown_task;

pub(super) const WAITING: TaskState = TaskState::Running {
    phase: RunPhase::Waiting,
};
pub(super) const CONNECTING: TaskState = TaskState::Running {
    phase: RunPhase::Connecting,
};
pub(super) const TRANSFERRING: TaskState = TaskState::Running {
    phase: RunPhase::Transferring,
};
pub(super) const RETRY_WAIT: TaskState = TaskState::Running {
    phase: RunPhase::RetryWait,
};

/// Task ids come from one counter per process, so ids of different in-process sessions of
/// the same application never collide.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_id() -> TaskId {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The runtime's private folder (a `TempDir`) and its parts.
#[derive(Debug, Clone)]
pub(super) struct Folder {
    root: PathBuf,
}

impl Folder {
    pub(super) const PARTS: [&'static str; 5] = ["staging", "inbox", "resume", "data", "replies"];

    pub(super) fn new(root: &Path) -> Folder {
        Folder {
            root: root.to_owned(),
        }
    }

    /// A task's bytes while it is unfinished.
    pub(super) fn staging(&self, task: TaskId) -> PathBuf {
        self.root.join("staging").join(format!("{task}.part"))
    }

    /// Finished downloads without a destination, until their event is acknowledged.
    pub(super) fn inbox(&self) -> PathBuf {
        self.root.join("inbox")
    }

    /// Bytes of tasks cancelled with resume data.
    pub(super) fn resume(&self) -> PathBuf {
        self.root.join("resume")
    }

    /// An upload's server reply, until its `completed` is acknowledged. Its own folder, so
    /// no name a server gives a download in the inbox can meet it.
    pub(super) fn reply(&self, task: TaskId) -> PathBuf {
        self.root.join("replies").join(format!("{task}.reply"))
    }

    /// A data task's finished body, between the engine placing it and it being read.
    pub(super) fn data(&self, task: TaskId) -> PathBuf {
        self.root.join("data").join(task.to_string())
    }

    pub(super) fn part(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// What every part of the runtime shares; the scheduler loop and each running transfer hold
/// it in an `Arc`.
pub(super) struct Shared {
    pub(super) session: String,
    pub(super) config: SessionConfig,
    pub(super) engine: Engine,
    pub(super) folder: Folder,
    pub(super) keeper: Keeper,
    /// The session's `rate_limit`, shared by all its transfers.
    pub(super) session_limit: RateLimiter,
    /// Cancelled by `shutdown`: every transfer's token is a child of it.
    pub(super) shutdown: CancellationToken,
    /// Asks the scheduler loop to look for work.
    pub(super) wake: Notify,
    state: Mutex<State>,
    /// Deleted (with everything in it) at shutdown.
    temp: Mutex<Option<TempDir>>,
}

impl Shared {
    pub(super) fn new(
        session: String,
        config: SessionConfig,
        engine: Engine,
        temp: TempDir,
        keeper: Keeper,
        events: UnboundedSender<EventFrame>,
    ) -> Shared {
        Shared {
            folder: Folder::new(temp.path()),
            session_limit: RateLimiter::new(config.rate_limit.unwrap_or(0)),
            state: Mutex::new(State {
                tasks: BTreeMap::new(),
                journal: Journal {
                    session: session.clone(),
                    sender: events,
                    last_seq: 0,
                    inbox_files: Vec::new(),
                    closed: false,
                },
                invalidating: false,
            }),
            temp: Mutex::new(Some(temp)),
            session,
            config,
            engine,
            keeper,
            shutdown: CancellationToken::new(),
            wake: Notify::new(),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops everything: transfers are cancelled without events, and the folder (staging
    /// files, unacknowledged inbox files, kept resume bytes) is deleted. Idempotent.
    pub(super) fn close(&self) {
        self.shutdown.cancel();
        self.state().journal.closed = true;
        let temp = self
            .temp
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(temp) = temp {
            let path = temp.path().to_owned();
            if let Err(e) = temp.close() {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the session's folder");
            }
        }
    }

    pub(super) fn check_open(&self) -> Result<(), ErrorInfo> {
        if self.shutdown.is_cancelled() {
            Err(ErrorInfo::new(
                "session_invalidated",
                format!("the in-process session {} has been shut down", self.session),
            ))
        } else {
            Ok(())
        }
    }

    /// Completes task `id` as cancelled, with resume data when `keep` is asked, it is a
    /// download and `checkpoint` says there are bytes in its staging file; otherwise its bytes
    /// are deleted.
    pub(super) fn cancel_locked(
        &self,
        state: &mut State,
        id: TaskId,
        reason: CancelReason,
        keep: bool,
        checkpoint: Option<Checkpoint>,
    ) {
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        let resume_data = match checkpoint {
            Some(cp) if keep => self.keep_bytes(task, cp),
            _ => None,
        };
        remove_quietly(&self.folder.staging(id));
        task.checkpoint = None;
        task.info.resume_data.clone_from(&resume_data);
        state.complete(
            id,
            Outcome::Cancelled {
                reason,
                resume_data,
            },
            None,
        );
    }
}

impl Shared {
    /// Moves a download's bytes (its staging file, as `checkpoint` describes it) into the
    /// resume area and returns the blob to continue from; `None` for an upload, without
    /// bytes, or when they cannot be kept.
    pub(super) fn keep_bytes(&self, task: &mut Task, checkpoint: Checkpoint) -> Option<String> {
        let id = task.info.id;
        let staging = self.folder.staging(id);
        if !task.is_download() || checkpoint.bytes() == 0 || !staging.exists() {
            return None;
        }
        match self.keeper.keep(&staging, &task.request, checkpoint) {
            Ok((blob, kept)) => {
                task.kept = Some(kept);
                Some(blob)
            }
            Err(e) => {
                tracing::warn!(task = id, error = %e, "could not keep the bytes for resume data");
                None
            }
        }
    }
}

/// Removes a file that may not exist.
pub(super) fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a file");
    }
}

/// Everything under the lock.
pub(super) struct State {
    pub(super) tasks: BTreeMap<TaskId, Task>,
    pub(super) journal: Journal,
    /// `finish_tasks_and_invalidate` or `invalidate_and_cancel` is waiting for the last task.
    pub(super) invalidating: bool,
}

impl State {
    pub(super) fn task(&self, id: TaskId) -> Result<&Task, ErrorInfo> {
        self.tasks.get(&id).ok_or_else(|| unknown_task(id))
    }

    pub(super) fn task_mut(&mut self, id: TaskId) -> Result<&mut Task, ErrorInfo> {
        self.tasks.get_mut(&id).ok_or_else(|| unknown_task(id))
    }

    /// Sends a task's event (journaled ones get the next `seq`, which is returned).
    pub(super) fn emit(&mut self, id: TaskId, event: Event) -> Option<u64> {
        let tag = self.tasks.get(&id).and_then(|t| t.info.tag.clone());
        self.journal.send(Some(id), tag, event)
    }

    /// Moves task `id` to its end, sends `completed`, then what may follow it: the group's
    /// `group_completed` and the session's `session_invalidated`.
    pub(super) fn complete(&mut self, id: TaskId, outcome: Outcome, status: Option<u16>) {
        self.complete_with_reply(id, outcome, status, None, None);
    }

    /// [`State::complete`] with the response: an upload's reply goes in `completed` and the
    /// task's info, and its file is deleted when that event is acknowledged; a download's
    /// response headers go in `completed`.
    pub(super) fn complete_with_reply(
        &mut self,
        id: TaskId,
        outcome: Outcome,
        status: Option<u16>,
        reply: Option<Reply>,
        headers: Option<Vec<(String, String)>>,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.retry_due = None;
        if let Some(reply) = &reply {
            task.info.location = Some(reply.location.clone());
        }
        task.info.reply.clone_from(&reply);
        let kind = match &outcome {
            Outcome::Succeeded => OutcomeKind::Succeeded,
            Outcome::Failed { error, .. } => {
                task.info.error = Some(error.clone());
                OutcomeKind::Failed
            }
            Outcome::Cancelled { .. } => OutcomeKind::Cancelled,
        };
        task.info.state = TaskState::Completed { outcome: kind };
        task.run = None;
        task.done.cancel();
        let group = task.info.group.clone();
        let file = reply.as_ref().map(|r| PathBuf::from(&r.location));
        let seq = self.emit(
            id,
            Event::Completed {
                outcome,
                status,
                reply,
                headers,
            },
        );
        if let Some((seq, file)) = seq.zip(file) {
            self.journal.delete_when_acked(seq, file);
        }
        if let Some(group) = group {
            self.group_completion(&group);
        }
        self.invalidation_done();
    }

    /// `group_completed` once every task of `group` has completed.
    fn group_completion(&mut self, group: &str) {
        let (mut succeeded, mut failed, mut cancelled) = (0, 0, 0);
        for task in self.members(group) {
            match task.info.state {
                TaskState::Completed { outcome } => match outcome {
                    OutcomeKind::Succeeded => succeeded += 1,
                    OutcomeKind::Failed => failed += 1,
                    OutcomeKind::Cancelled => cancelled += 1,
                },
                _ => return,
            }
        }
        let event = Event::GroupCompleted {
            group: group.to_owned(),
            succeeded,
            failed,
            cancelled,
        };
        self.journal.send(None, None, event);
    }

    /// If the session is being invalidated and nothing is unfinished: `session_invalidated`,
    /// and the session takes tasks again.
    pub(super) fn invalidation_done(&mut self) {
        if self.invalidating && self.unfinished().next().is_none() {
            self.invalidating = false;
            self.journal.send(None, None, Event::SessionInvalidated);
        }
    }

    pub(super) fn members<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.info.group.as_deref() == Some(group))
    }

    pub(super) fn unfinished(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks
            .iter()
            .filter(|(_, t)| !t.is_completed())
            .map(|(id, _)| *id)
    }
}

/// The session's event stream: sequence numbers, and the inbox files waiting for their
/// event (`finished_downloading`, or an upload's `completed`) to be acknowledged.
pub(super) struct Journal {
    session: String,
    sender: UnboundedSender<EventFrame>,
    last_seq: u64,
    inbox_files: Vec<(u64, PathBuf)>,
    /// After shutdown nothing more is sent.
    closed: bool,
}

impl Journal {
    /// Sends an event; journaled ones (all but progress) get the next `seq`. A closed
    /// receiver is not an error: the application stopped listening.
    pub(super) fn send(
        &mut self,
        task: Option<TaskId>,
        tag: Option<String>,
        event: Event,
    ) -> Option<u64> {
        if self.closed {
            return None;
        }
        let seq = event.is_journaled().then(|| {
            self.last_seq += 1;
            self.last_seq
        });
        let _ = self.sender.send(EventFrame {
            session: self.session.clone(),
            seq,
            task,
            tag,
            event,
        });
        seq
    }

    /// Deletes `path` once the event `seq` is acknowledged.
    pub(super) fn delete_when_acked(&mut self, seq: u64, path: PathBuf) {
        self.inbox_files.push((seq, path));
    }

    /// Acknowledges events up to `seq` (clamped to the last one sent, so an ack cannot
    /// swallow later events) and returns the inbox files now to delete.
    pub(super) fn ack(&mut self, seq: u64) -> Vec<PathBuf> {
        let seq = seq.min(self.last_seq);
        let (done, waiting) = std::mem::take(&mut self.inbox_files)
            .into_iter()
            .partition(|(s, _)| *s <= seq);
        self.inbox_files = waiting;
        done.into_iter().map(|(_, path)| path).collect()
    }
}

/// What a task transfers, and into what.
#[derive(Debug)]
pub(super) enum Kind {
    /// A file: the destination, or the inbox.
    Download,
    /// Bytes in memory, handed out once by `take_data`.
    Data(Body),
    /// File(s) to the server; its reply into the runtime's replies folder.
    Upload(Box<Upload>),
}

/// What an upload sends, checked and in the engine's terms.
#[derive(Debug)]
pub(super) struct Upload {
    pub(super) method: ferry_engine::UploadMethod,
    pub(super) body: ferry_engine::UploadBody,
    /// The source files as they were when the task was created: every run checks them.
    pub(super) sources: Vec<ferry_engine::SourceIdentity>,
}

/// A data task's body.
#[derive(Debug)]
pub(super) enum Body {
    Pending,
    Ready(Vec<u8>),
    Taken,
}

/// One task.
pub(super) struct Task {
    /// What clients see; the live byte counts are added by [`Task::live_info`].
    pub(super) info: TaskInfo,
    /// The request; for an upload, only the options every kind of task has (URL, headers,
    /// priority, tag, group, rate limit, earliest begin), its body being in [`Kind::Upload`].
    pub(super) request: DownloadRequest,
    pub(super) kind: Kind,
    /// Where the bytes in the staging file stand, when there are any.
    pub(super) checkpoint: Option<Checkpoint>,
    /// The transfer, while the engine works on the task. Invariant: `Some` exactly while the
    /// state is `connecting`, `transferring`, or `retry_wait` without `retry_due`.
    pub(super) run: Option<Run>,
    /// When a task waiting out a retry without a run (its run handed the retry back, so
    /// that it holds no slot meanwhile) is due. Set only in `retry_wait`.
    pub(super) retry_due: Option<Instant>,
    /// Attempts that failed in a row so far, carried from one run to the next.
    pub(super) failed_attempts: u32,
    /// The resource timeout counts from here, pauses included.
    pub(super) first_start: Option<Instant>,
    /// The task's own `rate_limit` (no limit: rate 0), shared with its running transfer so
    /// that `set_rate_limit` changes it.
    pub(super) limit: RateLimiter,
    /// The bytes kept for its resume data.
    pub(super) kept: Option<PathBuf>,
    /// Cancelled when the task completes (`take_data` waits on it).
    pub(super) done: CancellationToken,
}

impl Task {
    pub(super) fn new(
        id: TaskId,
        session: &str,
        request: DownloadRequest,
        priority: Priority,
        kind: Kind,
    ) -> Task {
        let state = if request.start {
            WAITING
        } else {
            TaskState::Suspended
        };
        let task_kind = match kind {
            Kind::Upload(_) => TaskKind::Upload,
            Kind::Download | Kind::Data(_) => TaskKind::Download,
        };
        Task {
            info: TaskInfo {
                id,
                session: session.to_owned(),
                url: request.url.clone(),
                current_url: None,
                destination: request.destination.clone(),
                location: None,
                state,
                bytes_done: 0,
                bytes_total: None,
                error: None,
                tag: request.tag.clone(),
                group: request.group.clone(),
                priority,
                resume_data: None,
                bytes_per_second: None,
                kind: task_kind,
                reply: None,
            },
            limit: RateLimiter::new(request.rate_limit.unwrap_or(0)),
            request,
            kind,
            checkpoint: None,
            run: None,
            retry_due: None,
            failed_attempts: 0,
            first_start: None,
            kept: None,
            done: CancellationToken::new(),
        }
    }

    pub(super) fn is_download(&self) -> bool {
        matches!(self.kind, Kind::Download)
    }

    pub(super) fn is_data(&self) -> bool {
        matches!(self.kind, Kind::Data(_))
    }

    pub(super) fn is_completed(&self) -> bool {
        matches!(self.info.state, TaskState::Completed { .. })
    }

    /// Waiting out a retry without a run.
    pub(super) fn is_parked(&self) -> bool {
        self.retry_due.is_some() && self.info.state == RETRY_WAIT
    }

    /// Leaves a wait without a run for `state` (`waiting`, `suspended`).
    pub(super) fn unpark(&mut self, state: TaskState) {
        self.retry_due = None;
        self.info.state = state;
        self.info.error = None;
    }

    /// The task as clients see it, with a running transfer's live byte counts.
    pub(super) fn live_info(&self) -> TaskInfo {
        let mut info = self.info.clone();
        if let Some(run) = &self.run {
            let (received, expected) = (run.progress.received(), run.progress.expected());
            // Before the engine has looked at the checkpoint, its counters are still empty.
            if received > 0 || expected.is_some() {
                info.bytes_done = received;
                info.bytes_total = expected.or(info.bytes_total);
            }
            // As the daemon reports it: over the last seconds, while transferring.
            info.bytes_per_second = run
                .rate
                .rate(std::time::Instant::now(), received)
                .filter(|_| info.state == TRANSFERRING);
        }
        info
    }

    /// Sets the phase of a running task; the last error is cleared once it moves on.
    pub(super) fn set_phase(&mut self, state: TaskState, error: Option<ErrorInfo>) {
        if self.run.is_some() {
            self.info.state = state;
            self.info.error = error;
        }
    }
}

/// Why a running transfer is being stopped. The first reason given wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Suspended, bytes kept.
    Suspend,
    /// Paused for a task of a higher priority: it waits again, bytes kept.
    Preempt,
    /// Its URL changed: it waits again, bytes kept, and continues from the new URL.
    NewUrl,
    /// Cancelled; `keep`: with resume data.
    Cancel { reason: CancelReason, keep: bool },
}

/// A transfer the engine is working on.
pub(super) struct Run {
    pub(super) cancel: CancellationToken,
    pub(super) stop: Option<Stop>,
    pub(super) progress: Arc<Progress>,
    /// Cancelled once the run's end is recorded.
    pub(super) ended: CancellationToken,
    /// `host:port`, for `max_per_host`.
    pub(super) host: String,
    /// The URL it was started with: reports of a run whose task has a new URL are stale.
    pub(super) url: String,
    /// Samples of `progress` (at each progress report), for the transfer rate.
    pub(super) rate: ferry_engine::RateMeter,
}

impl Run {
    /// Asks the transfer to stop for `stop` and returns what to wait on for its end.
    pub(super) fn stop(&mut self, stop: Stop) -> CancellationToken {
        self.stop.get_or_insert(stop);
        self.cancel.cancel();
        self.ended.clone()
    }
}
