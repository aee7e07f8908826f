//! Control requests: suspend, resume, cancel, terminate, priority and URL changes, and the
//! same for groups.

use super::end::{Cancellation, KeptMoves, cancel_job};
use super::*;

impl Scheduler {
    /// Pauses a task, keeping its bytes.
    pub async fn suspend(&self, task: u64) -> Result<(), ControlError> {
        // A run that ended as the stop came may have parked (waiting out a retry) instead
        // of pausing: the write after it suspends the task then. A task the scheduler
        // starts meanwhile (again) is caught on the next pass.
        let mut stopped = false;
        for _ in 0..3 {
            if let Some(finished) = self.stop_running(task, Stop::Suspend) {
                finished.cancelled().await;
                stopped = true;
            }
            let moved = self
                .store
                .write(move |c| {
                    let moved = tasks::transition(c, task, &[WAITING], TaskState::Suspended, None)?
                        || tasks::unpark(c, task, TaskState::Suspended)?;
                    Ok((moved, Vec::new()))
                })
                .await?;
            if moved || (stopped && !self.running().contains_key(&task)) {
                return Ok(());
            }
            if !self.running().contains_key(&task) {
                return self.refuse_unless(false, task, "suspend", &[TaskState::Suspended]);
            }
        }
        self.refuse_unless(false, task, "suspend", &[TaskState::Suspended])
    }

    /// Starts or continues a suspended task.
    pub async fn resume(&self, task: u64) -> Result<(), ControlError> {
        let moved = self
            .store
            .write(move |c| {
                let moved = tasks::transition(c, task, &[TaskState::Suspended], WAITING, None)?;
                if moved {
                    // Resumed by hand: the backoff starts afresh.
                    tasks::forget_failed_attempts(c, task)?;
                }
                Ok((moved, Vec::new()))
            })
            .await?;
        self.wake();
        let mut already = ACTIVE.to_vec();
        already.push(WAITING);
        self.refuse_unless(moved, task, "resume", &already)
    }

    /// Cancels a task. With `keep`, a download with bytes gets resume data (its staging file
    /// moves to the resume area); otherwise its bytes are deleted.
    pub async fn cancel(
        &self,
        task: u64,
        reason: CancelReason,
        keep: bool,
    ) -> Result<(), ControlError> {
        let moved = self.cancel_now(task, reason, keep).await?;
        self.refuse_unless(moved, task, "cancel", &[])
    }

    /// Cancels the task wherever it is; false if it had already completed (or is unknown).
    async fn cancel_now(
        &self,
        task: u64,
        reason: CancelReason,
        keep: bool,
    ) -> Result<bool, StoreError> {
        // A task the scheduler starts meanwhile (again) is caught on the next pass; one whose
        // run ended as the stop came and parked (waiting out a retry) by the write after it.
        let mut stopped = false;
        for _ in 0..3 {
            if let Some(finished) = self.stop_running(task, Stop::Cancel { reason, keep }) {
                finished.cancelled().await;
                stopped = true;
            }
            let (keeper, staging) = (self.keeper.clone(), self.layout.staging(task));
            let moves = KeptMoves::default();
            let undo = moves.clone();
            let moved = self
                .store
                .write(move |c| {
                    // In `retry_wait` with its run not yet ended: the stop above handles it.
                    if tasks::get(c, task)?
                        .is_some_and(|row| row.state == RETRY_WAIT && row.retry_at.is_none())
                    {
                        return Ok((false, Vec::new()));
                    }
                    let checkpoint = tasks::checkpoint(c, task)?;
                    let order = Cancellation {
                        keep,
                        reason,
                        checkpoint,
                        moves: undo,
                    };
                    cancel_job(
                        c,
                        &keeper,
                        &staging,
                        task,
                        &[WAITING, TaskState::Suspended, RETRY_WAIT],
                        order,
                    )
                })
                .await;
            moves.settle(&moved);
            let moved = moved?;
            if moved {
                let _ = std::fs::remove_file(self.layout.staging(task));
                // An upload stopped after a failed attempt may have left its reply.
                super::upload::discard_reply(&self.layout.reply(task));
                return Ok(true);
            }
            if !self.running().contains_key(&task) {
                return Ok(stopped);
            }
        }
        Ok(stopped)
    }

    /// Changes an unfinished task's priority and has the loop look again at once: a waiting
    /// task raised above a running one may preempt it, a running one lowered below a waiting
    /// one may be preempted.
    pub async fn set_priority(
        self: &Arc<Self>,
        task: u64,
        priority: Priority,
    ) -> Result<(), ControlError> {
        let this = self.clone();
        self.store
            .write(move |c| {
                let checked = unfinished(c, task, "change the priority of")?;
                if checked.is_ok() {
                    tasks::set_priority(c, task, priority)?;
                    // Here, in commit order: a run starting meanwhile reads its priority in
                    // its own transaction (see `start`), before or after this one.
                    if let Some(r) = this.running().get_mut(&task) {
                        r.priority = priority;
                    }
                }
                Ok((checked, Vec::new()))
            })
            .await?
            .map_err(ControlError::Refused)?;
        self.wake();
        Ok(())
    }

    /// Changes an unfinished task's own bandwidth limit, for its running transfer too.
    pub async fn set_task_rate_limit(
        self: &Arc<Self>,
        task: u64,
        bytes_per_second: Option<u64>,
    ) -> Result<(), ControlError> {
        let this = self.clone();
        self.store
            .write(move |c| {
                let checked = unfinished(c, task, "change the rate limit of")?;
                if checked.is_ok() {
                    tasks::set_rate_limit(c, task, bytes_per_second)?;
                    // In commit order, as for the priority: a run starting meanwhile reads
                    // the limit in its own transaction, before or after this one.
                    if let Some(r) = this.running().get(&task) {
                        r.limit.set_rate(bytes_per_second.unwrap_or(0));
                    }
                }
                Ok((checked, Vec::new()))
            })
            .await?
            .map_err(ControlError::Refused)?;
        Ok(())
    }

    /// Points an unfinished download at a new URL. A task with a run in progress is stopped
    /// with its checkpoint and waits again, so it continues from the new URL: the engine asks
    /// for the rest with `If-Range` against the validators of the bytes it has, and starts
    /// over if they no longer match.
    pub async fn update_url(&self, task: u64, url: String) -> Result<(), ControlError> {
        // A new URL is a fresh start: its attempts count from zero, and a task waiting out a
        // retry (perhaps the old URL's) tries the new one now.
        let fresh = move |c: &rusqlite::Connection| {
            tasks::forget_failed_attempts(c, task)?;
            tasks::unpark(c, task, WAITING)
        };
        let (state, unparked) = self
            .store
            .write(move |c| {
                let state = match unfinished(c, task, "update the URL of")? {
                    Ok(state) => state,
                    Err(refused) => return Ok((Err(refused), Vec::new())),
                };
                tasks::set_url(c, task, &url)?;
                Ok((Ok((state, fresh(c)?)), Vec::new()))
            })
            .await?
            .map_err(ControlError::Refused)?;
        // A run started before that commit has the old URL; one started after has the new.
        // The stopped run's end points its checkpoint at the new URL (see `record_end`).
        if !unparked
            && ACTIVE.contains(&state)
            && let Some(finished) = self.stop_running(task, Stop::Restart)
        {
            finished.cancelled().await;
            // It may have parked as the stop came (see `suspend`).
            self.store
                .write(move |c| Ok((fresh(c)?, Vec::new())))
                .await?;
        }
        self.wake();
        Ok(())
    }

    /// The user force-quits a session (SPEC §6): every unfinished task completes `cancelled`
    /// with reason `user_terminated`, keeping resume data where there are bytes.
    pub async fn terminate(&self, session: &str) -> Result<usize, StoreError> {
        let name = session.to_owned();
        let unfinished = self
            .store
            .write(move |c| {
                tasks::mark_terminated(c, &name)?;
                let ids: Vec<u64> = tasks::list(c, Some(&name))?
                    .into_iter()
                    .filter(|t| !matches!(t.state, TaskState::Completed { .. }))
                    .map(|t| t.id)
                    .collect();
                Ok((ids, Vec::new()))
            })
            .await?;
        let mut cancelled = 0;
        for task in unfinished {
            if self
                .cancel_now(task, CancelReason::UserTerminated, true)
                .await?
            {
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    /// Applies `action` to every task of a group it fits; tasks in another state are left.
    pub async fn control_group(
        &self,
        session: &str,
        group: &str,
        action: GroupAction,
    ) -> Result<(), StoreError> {
        let (s, g) = (session.to_owned(), group.to_owned());
        let members = self.store.read(move |c| tasks::group(c, &s, &g))?;
        for task in members {
            let done = match (action, task.state) {
                (_, TaskState::Completed { .. }) => continue,
                (GroupAction::Suspend, TaskState::Running { .. }) => self.suspend(task.id).await,
                (GroupAction::Resume, TaskState::Suspended) => self.resume(task.id).await,
                (GroupAction::Cancel, _) => self.cancel(task.id, CancelReason::Client, false).await,
                _ => continue,
            };
            match done {
                Ok(()) | Err(ControlError::Refused(_)) => {}
                Err(ControlError::Store(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn stop_running(&self, task: u64, stop: Stop) -> Option<CancellationToken> {
        let running = self.running();
        let r = running.get(&task)?;
        set_stop(&r.stop, stop);
        r.cancel.cancel();
        Some(r.finished.clone())
    }

    /// Turns "the conditional update matched nothing" into the right answer: fine if the task
    /// is already where it was asked to go, else unknown task or wrong state.
    fn refuse_unless(
        &self,
        moved: bool,
        task: u64,
        verb: &str,
        already_fine: &[TaskState],
    ) -> Result<(), ControlError> {
        if moved {
            return Ok(());
        }
        let row = self.store.read(|c| tasks::get(c, task))?;
        match row {
            None => Err(ControlError::Refused(unknown_task(task))),
            Some(row) if already_fine.contains(&row.state) => Ok(()),
            Some(row) => Err(ControlError::Refused(invalid_state(task, verb, row.state))),
        }
    }
}

/// The state of task `task` if it has not completed; else why `verb` does not apply to it.
fn unfinished(
    c: &rusqlite::Connection,
    task: u64,
    verb: &str,
) -> Result<Result<TaskState, ErrorInfo>, StoreError> {
    Ok(match tasks::get(c, task)? {
        None => Err(unknown_task(task)),
        Some(row) if matches!(row.state, TaskState::Completed { .. }) => {
            Err(invalid_state(task, verb, row.state))
        }
        Some(row) => Ok(row.state),
    })
}

/// The answer for a task id that does not exist (or no longer does).
pub fn unknown_task(task: u64) -> ErrorInfo {
    ErrorInfo::new("unknown_task", format!("there is no task {task}"))
}

/// The answer for a request that does not fit the task's state.
pub fn invalid_state(task: u64, verb: &str, state: TaskState) -> ErrorInfo {
    ErrorInfo::new(
        "invalid_state",
        format!("cannot {verb} task {task}: it is {}", state.name()),
    )
}

/// What to do to a whole group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAction {
    /// Suspend its unfinished tasks.
    Suspend,
    /// Resume its suspended tasks.
    Resume,
    /// Cancel its unfinished tasks.
    Cancel,
}
