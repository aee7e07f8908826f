//! What the engine reports while a task runs, written through the store in order.

use super::*;

/// Writes the engine's reports while a task runs, in order, through the store's writer.
pub(super) struct TaskObserver {
    pub(super) store: Arc<Store>,
    pub(super) task: u64,
    pub(super) session: String,
    pub(super) tag: Option<String>,
}

impl ferry_engine::Observer for TaskObserver {
    fn on_event(&self, event: ferry_engine::Event<'_>) {
        let (task, session, tag) = (self.task, self.session.clone(), self.tag.clone());
        match event {
            ferry_engine::Event::Checkpoint(cp) => {
                let cp = cp.clone();
                // Relaxed: no event; a crash that loses it resumes from the checkpoint before,
                // which claims fewer bytes of the same staging file.
                self.store.write_detached_relaxed(move |c| {
                    // Only while the task is still this run's: a late checkpoint must not
                    // touch a task that ended.
                    let active = tasks::get(c, task)?.is_some_and(|t| ACTIVE.contains(&t.state));
                    if active {
                        tasks::transition(c, task, &[CONNECTING], TRANSFERRING, None)?;
                        tasks::save_checkpoint(c, task, &cp)?;
                    }
                    Ok(())
                });
            }
            other => {
                let (event, state) = match other {
                    ferry_engine::Event::Redirected { from, to, status } => (
                        Event::Redirected {
                            from: from.to_string(),
                            to: to.to_string(),
                            status,
                        },
                        None,
                    ),
                    ferry_engine::Event::ResumedAtOffset { offset, expected } => (
                        Event::ResumedAtOffset { offset, expected },
                        Some((TRANSFERRING, None)),
                    ),
                    ferry_engine::Event::Retrying {
                        attempt,
                        delay,
                        error,
                    } => {
                        let info = error_info(error);
                        (
                            Event::Retrying {
                                attempt,
                                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                                at: Some(ferry_proto::due_in(delay)),
                                error: info.clone(),
                            },
                            Some((RETRY_WAIT, Some(info))),
                        )
                    }
                    _ => return,
                };
                self.store.write_detached(move |c| {
                    if let Some((to, error)) = state {
                        tasks::transition(c, task, &ACTIVE, to, error.as_ref())?;
                    }
                    Ok(vec![tasks::journal_append(
                        c,
                        &session,
                        Some(task),
                        tag.as_deref(),
                        event,
                    )?])
                });
            }
        }
    }
}
