//! Recording how a run ended, and cancellation with or without resume data.

use super::*;

impl Scheduler {
    /// Records how a run ended: state, checkpoint, files and events, in one transaction.
    pub(super) async fn record_end(
        &self,
        row: &TaskRow,
        result: Result<Downloaded, EndError>,
        stopped: Option<Stop>,
    ) {
        let (id, session) = (row.id, row.session.clone());
        let tag = row.request.tag().map(str::to_owned);
        let run_url = row.request.url().to_owned();
        let staging = self.layout.staging(id);
        let end = match result {
            Ok(done) => End::Succeeded(done),
            Err(EndError::Engine(failure)) => match (stopped, failure.error.kind()) {
                (Some(stop), ferry_engine::ErrorKind::Cancelled) => End::Stopped(stop, *failure),
                // A retry handed back as a stop came: a stop that would only have it wait
                // again lets it wait out the retry; the others decide.
                (None | Some(Stop::Preempt | Stop::Shutdown), _) if failure.retry.is_some() => {
                    End::Parked(*failure)
                }
                (Some(stop), _) if failure.retry.is_some() => End::Stopped(stop, *failure),
                // Bytes that are right but could not be placed are kept for resume data.
                _ => End::Failed(
                    failure
                        .checkpoint
                        .clone()
                        .filter(|_| failure.error.kind().keeps_bytes()),
                    error_info(&failure.error),
                ),
            },
            Err(EndError::Setup(error)) => End::Failed(None, error),
        };
        if let End::Stopped(Stop::Cancel { reason, keep }, failure) = end {
            let (keeper, path) = (self.keeper.clone(), staging.clone());
            let moves = KeptMoves::default();
            let order = Cancellation {
                keep,
                reason,
                checkpoint: failure.checkpoint,
                moves: moves.clone(),
            };
            let cancelled = self
                .store
                .write(move |c| cancel_job(c, &keeper, &path, id, &ACTIVE, order))
                .await;
            moves.settle(&cancelled);
            match cancelled {
                Ok(_) => {
                    let _ = std::fs::remove_file(staging);
                }
                Err(e) => {
                    tracing::error!(task = id, error = %e, "could not record a cancellation");
                }
            }
            return;
        }
        let remove_staging = matches!(&end, End::Failed(..));
        let (keeper, path) = (self.keeper.clone(), staging.clone());
        let request = row.request.download().cloned();
        let moves = KeptMoves::default();
        let moved = moves.clone();
        let written = self
            .store
            .write(move |c| {
                let tag = tag.as_deref();
                let mut events = Vec::new();
                match end {
                    End::Succeeded(done) => {
                        tasks::transition(c, id, &ACTIVE, succeeded(), None)?;
                        let location = done.path.to_string_lossy().into_owned();
                        tasks::set_finished(c, id, &location, done.bytes, done.final_url.as_str())?;
                        tasks::delete_checkpoint(c, id)?;
                        events.push(tasks::journal_append(
                            c,
                            &session,
                            Some(id),
                            tag,
                            Event::FinishedDownloading { location },
                        )?);
                        events.push(tasks::journal_append(
                            c,
                            &session,
                            Some(id),
                            tag,
                            Event::Completed {
                                outcome: Outcome::Succeeded,
                                status: Some(done.status),
                                reply: None,
                                headers: Some(ferry_engine::header_pairs(&done.headers)),
                            },
                        )?);
                        events.extend(tasks::after_completion(c, id)?);
                    }
                    End::Failed(kept, error) => {
                        tasks::transition(c, id, &ACTIVE, failed(), Some(&error))?;
                        tasks::delete_checkpoint(c, id)?;
                        let resume_data = match (kept, &request) {
                            (Some(cp), Some(request)) => {
                                keep_for_resume(c, &keeper, &path, id, request, cp, &moved)?
                            }
                            _ => None,
                        };
                        events.push(tasks::journal_append(
                            c,
                            &session,
                            Some(id),
                            tag,
                            Event::Completed {
                                status: error.status,
                                outcome: Outcome::Failed { error, resume_data },
                                reply: None,
                                headers: None,
                            },
                        )?);
                        events.extend(tasks::after_completion(c, id)?);
                    }
                    End::Stopped(stop, failure) => {
                        // Cancellations were handled above: this run pauses.
                        let to = match stop {
                            Stop::Shutdown | Stop::Preempt | Stop::Restart => WAITING,
                            _ => TaskState::Suspended,
                        };
                        tasks::transition(c, id, &ACTIVE, to, None)?;
                        keep_checkpoint(c, id, failure.checkpoint, &run_url)?;
                    }
                    End::Parked(failure) => {
                        park(c, id, failure.retry)?;
                        keep_checkpoint(c, id, failure.checkpoint, &run_url)?;
                    }
                }
                Ok(((), events))
            })
            .await;
        moves.settle(&written);
        match written {
            Ok(()) if remove_staging => {
                let _ = std::fs::remove_file(staging);
            }
            Ok(()) => {}
            // Nothing changed: the bytes stay for the run the task gets after a restart.
            Err(e) => tracing::error!(task = id, error = %e, "could not record the end of a task"),
        }
    }
}

/// Runs in the writer: the run of task `id` (in `retry_wait` since its `retrying` event)
/// handed back a retry: the task waits for it without a run, so its slot serves another task
/// meanwhile (a dead host must not block a queue), and is started again when it is due.
pub(super) fn park(
    c: &rusqlite::Connection,
    id: u64,
    retry: Option<ferry_engine::RetryLater>,
) -> Result<(), StoreError> {
    let parked = match retry {
        Some(retry) => {
            let due = i64::try_from(ferry_proto::due_in(retry.delay)).unwrap_or(i64::MAX);
            tasks::park(c, id, due, retry.attempt)?
        }
        None => false,
    };
    if !parked {
        // Not in `retry_wait` (never seen): rather than leave it active without a run, it
        // waits to run again.
        tasks::transition(c, id, &ACTIVE, WAITING, None)?;
    }
    Ok(())
}

/// Runs in the writer: keeps the checkpoint a paused run handed back (or forgets the one
/// stored, when it has none), for its next run.
fn keep_checkpoint(
    c: &rusqlite::Connection,
    id: u64,
    checkpoint: Option<ferry_engine::Checkpoint>,
    run_url: &str,
) -> Result<(), StoreError> {
    match checkpoint {
        Some(cp) => tasks::save_checkpoint(c, id, &cp)?,
        None => tasks::delete_checkpoint(c, id)?,
    }
    // Its URL was updated while it ran: the checkpoint just saved names the old one, and the
    // next run continues from the new one.
    if let Some(now) = tasks::get(c, id)?
        && now.request.url() != run_url
    {
        tasks::set_url(c, id, now.request.url())?;
    }
    Ok(())
}

/// How a task is to be cancelled.
pub(super) struct Cancellation {
    pub(super) keep: bool,
    pub(super) reason: CancelReason,
    pub(super) checkpoint: Option<ferry_engine::Checkpoint>,
    /// Where the kept bytes' move is recorded, to undo if the cancellation does not commit.
    pub(super) moves: KeptMoves,
}

/// The bytes a write job moved into the resume area. The move is made inside the job (so the
/// blob on the row names a file that exists); if the job's transaction does not commit, the
/// row and its checkpoint are rolled back and the bytes are moved back to staging, where that
/// checkpoint finds them.
#[derive(Clone, Default)]
pub(super) struct KeptMoves(Arc<Mutex<Vec<(PathBuf, PathBuf)>>>);

impl KeptMoves {
    pub(super) fn record(&self, kept: PathBuf, staging: PathBuf) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((kept, staging));
    }

    /// After the job: undoes its moves unless it committed.
    pub(super) fn settle<T, E>(&self, written: &Result<T, E>) {
        let moves = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        if written.is_ok() {
            return;
        }
        for (kept, staging) in moves {
            if let Err(e) = std::fs::rename(&kept, &staging) {
                tracing::warn!(file = %kept.display(), error = %e, "could not move kept bytes back to staging");
            }
        }
    }
}

/// Runs in the writer: completes task `id` as cancelled if it is in one of `from`, with resume
/// data when asked and there are bytes. Returns whether it moved, and its `completed` event.
pub(super) fn cancel_job(
    c: &rusqlite::Connection,
    keeper: &Keeper,
    staging: &std::path::Path,
    id: u64,
    from: &[TaskState],
    order: Cancellation,
) -> Result<(bool, Vec<EventFrame>), StoreError> {
    let Some(row) = tasks::get(c, id)? else {
        return Ok((false, Vec::new()));
    };
    if !tasks::transition(c, id, from, cancelled(), None)? {
        return Ok((false, Vec::new()));
    }
    tasks::delete_checkpoint(c, id)?;
    let resume_data = match (order.checkpoint, row.request.download()) {
        (Some(cp), Some(request)) if order.keep => {
            keep_for_resume(c, keeper, staging, id, request, cp, &order.moves)?
        }
        _ => None,
    };
    let event = tasks::journal_append(
        c,
        &row.session,
        Some(id),
        row.request.tag(),
        Event::Completed {
            outcome: Outcome::Cancelled {
                reason: order.reason,
                resume_data,
            },
            status: None,
            reply: None,
            headers: None,
        },
    )?;
    let mut events = vec![event];
    events.extend(tasks::after_completion(c, id)?);
    Ok((true, events))
}

/// Runs in the writer: moves task `id`'s bytes (`staging`, as `checkpoint` describes them)
/// into the resume area and records the blob on its row; `None` without bytes, or when they
/// cannot be kept (logged: the task still completes).
fn keep_for_resume(
    c: &rusqlite::Connection,
    keeper: &Keeper,
    staging: &std::path::Path,
    id: u64,
    request: &ferry_proto::DownloadRequest,
    checkpoint: ferry_engine::Checkpoint,
    moves: &KeptMoves,
) -> Result<Option<String>, StoreError> {
    if checkpoint.bytes() == 0 || !staging.exists() {
        return Ok(None);
    }
    match keeper.keep(staging, request, checkpoint) {
        Ok((blob, kept)) => {
            moves.record(kept, staging.to_owned());
            tasks::set_resume_data(c, id, &blob)?;
            Ok(Some(blob))
        }
        Err(e) => {
            tracing::warn!(task = id, error = %e, "could not keep the bytes for resume data");
            Ok(None)
        }
    }
}

/// Why a run produced no file.
pub(super) enum EndError {
    Engine(Box<Failure>),
    Setup(ErrorInfo),
}

enum End {
    Succeeded(Downloaded),
    Failed(Option<ferry_engine::Checkpoint>, ErrorInfo),
    Stopped(Stop, Failure),
    /// It waits out a retry without a run.
    Parked(Failure),
}
