//! Requests that act on existing tasks: suspend, resume, cancel, priority, URL, removal,
//! terminate, invalidation and groups.
//!
//! A request on a running task stops its transfer (see [`super::run`]) and waits until the
//! runner has recorded the end, then looks at the task again: if another stop won the race
//! (say a preemption), the task is now waiting and the request applies to it as such.

use std::path::PathBuf;

use ferry_proto::{
    CancelReason, ErrorInfo, GroupInfo, OutcomeKind, Priority, TaskId, TaskInfo, TaskState,
};
use tokio_util::sync::CancellationToken;

use super::state::{Shared, State, Stop, WAITING, remove_quietly};
use super::validate::{self, error_info, invalid_state};

/// What to do to a whole group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupAction {
    Suspend,
    Resume,
    Cancel,
}

/// One look at a task by a control request: done, or wait for its transfer to end.
enum Step {
    Done,
    Wait(CancellationToken),
}

impl Shared {
    /// Runs `step` under the lock until it is done, waiting for the transfer's end in
    /// between, and answers the task as it is then. `stopped` tells `step` that it already
    /// stopped a transfer.
    async fn control(
        &self,
        id: TaskId,
        mut step: impl FnMut(&Shared, &mut State, bool) -> Result<Step, ErrorInfo>,
    ) -> Result<TaskInfo, ErrorInfo> {
        let mut stopped = false;
        loop {
            let ended = {
                let mut state = self.state();
                match step(self, &mut state, stopped)? {
                    Step::Done => return Ok(state.task(id)?.live_info()),
                    Step::Wait(ended) => ended,
                }
            };
            ended.cancelled().await;
            stopped = true;
        }
    }

    /// Pauses a task, keeping its bytes.
    pub(super) async fn suspend(&self, id: TaskId) -> Result<TaskInfo, ErrorInfo> {
        self.control(id, |_, state, stopped| {
            let task = state.task_mut(id)?;
            match (task.info.state, task.run.as_mut()) {
                (TaskState::Completed { .. }, _) if !stopped => {
                    Err(invalid_state("suspend", id, task.info.state))
                }
                (_, Some(run)) => Ok(Step::Wait(run.stop(Stop::Suspend))),
                (WAITING, None) => {
                    task.info.state = TaskState::Suspended;
                    Ok(Step::Done)
                }
                // Waiting out a retry without a run (see `Task::retry_due`).
                (_, None) if task.retry_due.is_some() => {
                    task.retry_due = None;
                    task.info.state = TaskState::Suspended;
                    task.info.error = None;
                    Ok(Step::Done)
                }
                // Suspended already, or it completed while being stopped.
                _ => Ok(Step::Done),
            }
        })
        .await
    }

    /// Puts a suspended task back in the queue.
    pub(super) fn resume(&self, id: TaskId) -> Result<TaskInfo, ErrorInfo> {
        let mut state = self.state();
        let task = state.task_mut(id)?;
        match task.info.state {
            TaskState::Suspended => {
                task.info.state = WAITING;
                // Resumed by hand: the backoff starts afresh.
                task.failed_attempts = 0;
            }
            TaskState::Running { .. } => {}
            TaskState::Completed { .. } => {
                return Err(invalid_state("resume", id, task.info.state));
            }
        }
        let info = task.live_info();
        self.wake.notify_one();
        Ok(info)
    }

    /// Cancels a task; with `keep`, a download with bytes gets resume data.
    pub(super) async fn cancel(
        &self,
        id: TaskId,
        reason: CancelReason,
        keep: bool,
    ) -> Result<TaskInfo, ErrorInfo> {
        self.control(id, |shared, state, stopped| {
            let task = state.task_mut(id)?;
            match (task.info.state, task.run.as_mut()) {
                (TaskState::Completed { .. }, _) if stopped => Ok(Step::Done),
                (TaskState::Completed { .. }, _) => {
                    Err(invalid_state("cancel", id, task.info.state))
                }
                (_, Some(run)) => Ok(Step::Wait(run.stop(Stop::Cancel { reason, keep }))),
                (_, None) => {
                    let checkpoint = task.checkpoint.take();
                    shared.cancel_locked(state, id, reason, keep, checkpoint);
                    Ok(Step::Done)
                }
            }
        })
        .await
    }

    /// Changes an unfinished task's priority; the scheduler may then preempt.
    pub(super) fn set_priority(
        &self,
        id: TaskId,
        priority: Priority,
    ) -> Result<TaskInfo, ErrorInfo> {
        let mut state = self.state();
        let task = state.task_mut(id)?;
        if task.is_completed() {
            return Err(invalid_state("set the priority of", id, task.info.state));
        }
        task.info.priority = priority;
        let info = task.live_info();
        self.wake.notify_one();
        Ok(info)
    }

    /// Changes an unfinished task's own bandwidth limit, for its running transfer too.
    pub(super) fn set_rate_limit(
        &self,
        id: TaskId,
        bytes_per_second: u64,
    ) -> Result<TaskInfo, ErrorInfo> {
        let mut state = self.state();
        let task = state.task_mut(id)?;
        if let TaskState::Completed { .. } = task.info.state {
            return Err(invalid_state(
                "change the rate limit of",
                id,
                task.info.state,
            ));
        }
        task.request.rate_limit = Some(bytes_per_second).filter(|r| *r > 0);
        task.limit.set_rate(bytes_per_second);
        Ok(task.live_info())
    }

    /// Points an unfinished task at a new URL, keeping its bytes; a running transfer stops
    /// (keeping its checkpoint) and the scheduler continues it from the new URL, where the
    /// engine resumes with `If-Range` against the validators it had.
    pub(super) async fn update_url(&self, id: TaskId, url: String) -> Result<TaskInfo, ErrorInfo> {
        ferry_engine::parse_url(&url).map_err(|e| error_info(&e))?;
        let ended = {
            let mut state = self.state();
            let task = state.task_mut(id)?;
            if task.is_completed() {
                return Err(invalid_state("update the URL of", id, task.info.state));
            }
            task.request.url.clone_from(&url);
            task.info.url = url;
            task.info.current_url = None;
            // A fresh start: attempts count from zero, and a task waiting out a retry
            // (perhaps the old URL's) tries the new one now.
            task.failed_attempts = 0;
            if task.is_parked() {
                task.unpark(WAITING);
            }
            task.run.as_mut().map(|run| run.stop(Stop::NewUrl))
        };
        if let Some(ended) = ended {
            ended.cancelled().await;
        }
        self.wake.notify_one();
        Ok(self.state().task(id)?.live_info())
    }

    /// Forgets a completed task; with `delete_file`, also the file it placed or the bytes
    /// kept for its resume data. Bytes left in its staging file go in any case: nothing can
    /// continue from them any more.
    pub(super) fn remove(&self, id: TaskId, delete_file: bool) -> Result<(), ErrorInfo> {
        let task = {
            let mut state = self.state();
            let task = state.task(id)?;
            if !task.is_completed() {
                return Err(invalid_state("remove", id, task.info.state));
            }
            state.tasks.remove(&id)
        };
        remove_quietly(&self.folder.staging(id));
        if let Some(task) = task.filter(|_| delete_file) {
            let succeeded = task.info.state == completed(OutcomeKind::Succeeded);
            // An upload's reply goes whatever the outcome (a refusal keeps one too).
            let reply = task.info.reply.map(|r| PathBuf::from(r.location));
            let placed = task.info.location.filter(|_| succeeded).map(PathBuf::from);
            for path in placed.into_iter().chain(reply).chain(task.kept) {
                remove_quietly(&path);
            }
        }
        Ok(())
    }

    /// The user force-quits the session: every unfinished task completes `cancelled` with
    /// reason `user_terminated`, with resume data where it has bytes.
    pub(super) async fn terminate(&self) {
        let unfinished: Vec<TaskId> = self.state().unfinished().collect();
        for id in unfinished {
            // A task that completed meanwhile is refused; that is fine.
            let _ = self.cancel(id, CancelReason::UserTerminated, true).await;
        }
    }

    /// `finish_tasks_and_invalidate` (`cancel` false) or `invalidate_and_cancel`: no new
    /// tasks until the last one has completed, then `session_invalidated`.
    pub(super) async fn invalidate(&self, cancel: bool) {
        let unfinished: Vec<TaskId> = {
            let mut state = self.state();
            state.invalidating = true;
            let unfinished = state.unfinished().collect();
            // With nothing left to finish, the session is invalidated at once.
            state.invalidation_done();
            unfinished
        };
        if cancel {
            for id in unfinished {
                let _ = self.cancel(id, CancelReason::Client, false).await;
            }
        }
    }

    /// The session's groups, by name.
    pub(super) fn groups(&self) -> Vec<GroupInfo> {
        let state = self.state();
        let mut names: Vec<&str> = state
            .tasks
            .values()
            .filter_map(|t| t.info.group.as_deref())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| self.group_info(&state, name))
            .collect()
    }

    /// Applies `action` to every task of a group it fits, and answers the group after.
    pub(super) async fn control_group(
        &self,
        group: &str,
        action: GroupAction,
    ) -> Result<GroupInfo, ErrorInfo> {
        validate::group(group)?;
        let members: Vec<(TaskId, TaskState)> = self
            .state()
            .members(group)
            .map(|t| (t.info.id, t.info.state))
            .collect();
        if members.is_empty() {
            return Err(ErrorInfo::new(
                "unknown_group",
                format!("session {} has no group {group:?}", self.session),
            ));
        }
        for (id, state) in members {
            // Tasks in another state are left alone; a task that moved meanwhile is refused.
            let _ = match (action, state) {
                (_, TaskState::Completed { .. }) => continue,
                (GroupAction::Suspend, TaskState::Running { .. }) => self.suspend(id).await,
                (GroupAction::Resume, TaskState::Suspended) => self.resume(id),
                (GroupAction::Cancel, _) => self.cancel(id, CancelReason::Client, false).await,
                _ => continue,
            };
        }
        Ok(self.group_info(&self.state(), group))
    }

    /// Sums a group's tasks, with live bytes for running ones.
    fn group_info(&self, state: &State, name: &str) -> GroupInfo {
        let mut info = GroupInfo {
            session: self.session.clone(),
            name: name.to_owned(),
            tasks: 0,
            completed: 0,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            bytes_done: 0,
            bytes_total: Some(0),
        };
        for task in state.members(name) {
            let t = task.live_info();
            info.tasks += 1;
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
}

fn completed(outcome: OutcomeKind) -> TaskState {
    TaskState::Completed { outcome }
}
