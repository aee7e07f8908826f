//! One transfer on the engine (a download, data task or upload): its reports while it runs,
//! and recording how it ended.
//!
//! Stopping a running transfer (suspend, cancel, `update_url`, preemption) records why in
//! [`Run::stop`](super::state::Run) and cancels its token; the engine answers `Cancelled`
//! with a synced checkpoint, and this runner — the only place that records a run's end —
//! turns that into the state the stop asked for. Whoever stopped it waits for `ended`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{
    DownloadSpec, Downloaded, ErrorKind, Failure, Progress, UploadFailure, UploadSpec, Uploaded,
};
use ferry_proto::{Event, Outcome, Reply, TaskId, TaskState};
use tokio_util::sync::CancellationToken;

use super::state::{
    Body, Kind, RETRY_WAIT, Shared, State, Stop, TRANSFERRING, Task, WAITING, remove_quietly,
};
use super::validate::error_info;

/// Progress events at most this often per task (≤ 10 per second).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The parts of a [`Run`](super::state::Run) its runner needs.
pub(super) struct Handles {
    pub(super) cancel: CancellationToken,
    pub(super) progress: Arc<Progress>,
    pub(super) ended: CancellationToken,
    /// A data task: the body is read into memory.
    pub(super) data: bool,
}

/// A finished transfer: the placed file, and for a data task its bytes.
struct Finished {
    done: Downloaded,
    body: Option<Vec<u8>>,
}

/// What the engine is to do.
pub(super) enum Spec {
    /// A download or data task.
    Download(Box<DownloadSpec>),
    /// An upload.
    Upload(Box<UploadSpec>),
}

/// Runs the transfer to its end, sending coalesced progress meanwhile, then records the end.
pub(super) async fn drive(shared: Arc<Shared>, id: TaskId, spec: Spec, run: Handles) {
    match spec {
        Spec::Download(spec) => download(&shared, id, *spec, &run).await,
        Spec::Upload(spec) => upload(&shared, id, *spec, &run).await,
    }
    run.ended.cancel();
    shared.wake.notify_one();
}

/// Polls `transfer` to its end, reporting progress at most every [`PROGRESS_EVERY`].
async fn with_progress<F: Future>(
    shared: &Shared,
    id: TaskId,
    progress: &Progress,
    reported: &mut u64,
    transfer: F,
) -> F::Output {
    tokio::pin!(transfer);
    let start = tokio::time::Instant::now() + PROGRESS_EVERY;
    let mut tick = tokio::time::interval_at(start, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut transfer => break result,
            _ = tick.tick() => shared.report_progress(id, progress, reported),
        }
    }
}

async fn download(shared: &Shared, id: TaskId, spec: DownloadSpec, run: &Handles) {
    let observer = TaskObserver { shared, id };
    // `written` counts this run's bytes: those kept from an earlier run were reported then.
    let mut reported = spec.checkpoint.as_ref().map_or(0, |cp| cp.bytes());
    let transfer = shared
        .engine
        .download(&spec, &run.progress, &observer, &run.cancel);
    let result = with_progress(shared, id, &run.progress, &mut reported, transfer).await;
    let result = match result {
        Ok(done) => {
            // The last bytes, before `finished_downloading`.
            shared.report_progress(id, &run.progress, &mut reported);
            read_body(run.data, done).await
        }
        Err(failure) => Err(failure),
    };
    shared.record_end(id, result, &spec.staging);
}

/// An upload: every run sends from byte zero, so progress counts from zero too.
async fn upload(shared: &Shared, id: TaskId, spec: UploadSpec, run: &Handles) {
    let observer = TaskObserver { shared, id };
    let mut reported = 0;
    let transfer = shared
        .engine
        .upload(&spec, &run.progress, &observer, &run.cancel);
    let result = with_progress(shared, id, &run.progress, &mut reported, transfer).await;
    if result.is_ok() {
        // The last bytes, before `completed`.
        shared.report_progress(id, &run.progress, &mut reported);
    }
    shared.record_upload_end(id, result, &spec.reply);
}

/// A data task's body is downloaded by the engine like any file, into the runtime's folder,
/// then read into memory and the file deleted: one code path for both kinds of task, at the
/// cost of a copy through the page cache.
async fn read_body(data: bool, done: Downloaded) -> Result<Finished, Failure> {
    if !data {
        return Ok(Finished { done, body: None });
    }
    let read = tokio::fs::read(&done.path).await;
    let path = done.path.clone();
    let _ = tokio::task::spawn_blocking(move || remove_quietly(&path)).await;
    match read {
        Ok(body) => Ok(Finished {
            done,
            body: Some(body),
        }),
        Err(e) => Err(Failure {
            error: ferry_engine::Error::with_source(
                ErrorKind::Io {
                    op: "read",
                    path: done.path,
                },
                e,
            ),
            checkpoint: None,
            retry: None,
        }),
    }
}

impl Shared {
    /// Sends a progress event when bytes arrived since the last one; the first bytes move
    /// the task to `transferring`.
    fn report_progress(&self, id: TaskId, progress: &Progress, reported: &mut u64) {
        let now = progress.received();
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        // Sampled also when nothing moved, so a stalled transfer's rate falls to zero.
        if let Some(run) = &mut task.run {
            run.rate.record(std::time::Instant::now(), now);
        }
        if now == *reported {
            return;
        }
        if task.info.state != TRANSFERRING {
            task.set_phase(TRANSFERRING, None);
        }
        let event = Event::Progress {
            written: now.saturating_sub(*reported),
            total_written: now,
            expected: progress.expected(),
        };
        state.emit(id, event);
        *reported = now;
    }

    /// Records how a run ended, with its events: the file placed, a failure, or the state a
    /// stop asked for. After shutdown nothing is recorded: the session is gone.
    fn record_end(&self, id: TaskId, result: Result<Finished, Failure>, staging: &Path) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        let stop = task.run.take().and_then(|r| r.stop);
        match result {
            Ok(finished) => record_success(&mut state, &self.folder.inbox(), id, finished),
            // A stop decides, also over a retry handed back as it came.
            Err(failure) => match (stop, stopped_run(&failure.error, failure.retry)) {
                // A preemption would only have it wait again: it waits out the retry.
                (None | Some(Stop::Preempt), _) if failure.retry.is_some() => {
                    park(task, failure.retry);
                    keep_checkpoint(task, failure.checkpoint);
                }
                (Some(Stop::Cancel { reason, keep }), true) => {
                    self.cancel_locked(&mut state, id, reason, keep, failure.checkpoint);
                }
                (Some(stop), true) => pause(task, stop, failure),
                _ => self.record_failure(&mut state, id, failure, staging),
            },
        }
    }

    /// Records how an upload's run ended: the reply with `completed` (also for a failure the
    /// server answered), a failure, or the state a stop asked for. A stopped upload keeps
    /// nothing: it starts again from byte zero, and a cancelled one has no resume data.
    fn record_upload_end(
        &self,
        id: TaskId,
        result: Result<Uploaded, UploadFailure>,
        reply_path: &Path,
    ) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        let stop = task.run.take().and_then(|r| r.stop);
        let failure = match result {
            Ok(done) => {
                task.info.bytes_done = done.sent;
                task.info.bytes_total = Some(done.sent);
                task.info.current_url = Some(done.final_url.to_string());
                let reply = Reply {
                    status: done.status,
                    headers: done.headers,
                    location: done.reply.to_string_lossy().into_owned(),
                    bytes: done.reply_bytes,
                };
                let status = Some(done.status);
                state.complete_with_reply(id, Outcome::Succeeded, status, Some(reply), None);
                return;
            }
            Err(failure) => failure,
        };
        match (stop, stopped_run(&failure.error, failure.retry)) {
            (None | Some(Stop::Preempt), _) if failure.retry.is_some() => {
                // The next run sends from byte zero, and no event names this reply.
                park(task, failure.retry);
                task.info.bytes_done = 0;
                remove_quietly(reply_path);
            }
            (Some(Stop::Cancel { reason, keep }), true) => {
                self.cancel_locked(&mut state, id, reason, keep, None);
                remove_quietly(reply_path);
            }
            (Some(stop), true) => {
                task.info.state = if stop == Stop::Suspend {
                    TaskState::Suspended
                } else {
                    WAITING
                };
                task.info.bytes_done = 0;
                remove_quietly(reply_path);
            }
            _ => {
                let error = error_info(&failure.error);
                let reply = failure.reply.map(|r| Reply {
                    status: r.status,
                    headers: r.headers,
                    location: r.path.to_string_lossy().into_owned(),
                    bytes: r.bytes,
                });
                if reply.is_none() {
                    remove_quietly(reply_path);
                }
                let status = error.status.or(reply.as_ref().map(|r| r.status));
                let failed = Outcome::Failed {
                    error,
                    resume_data: None,
                };
                state.complete_with_reply(id, failed, status, reply, None);
            }
        }
    }

    /// The engine's reports, as events and phase changes.
    fn observe(&self, id: TaskId, event: ferry_engine::Event<'_>) {
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        // Reports of a run whose task has moved to a new URL do not describe its URL.
        let current = task.run.as_ref().is_some_and(|r| r.url == task.request.url);
        let event = match event {
            ferry_engine::Event::Checkpoint(cp) => {
                if current {
                    task.info.bytes_total = cp.total.or(task.info.bytes_total);
                    task.info.current_url = Some(cp.current_url.clone());
                    task.checkpoint = Some(cp.clone());
                }
                return;
            }
            ferry_engine::Event::Redirected { from, to, status } => {
                if current {
                    task.info.current_url = Some(to.to_string());
                }
                Event::Redirected {
                    from: from.to_string(),
                    to: to.to_string(),
                    status,
                }
            }
            ferry_engine::Event::ResumedAtOffset { offset, expected } => {
                task.set_phase(TRANSFERRING, None);
                Event::ResumedAtOffset { offset, expected }
            }
            ferry_engine::Event::Retrying {
                attempt,
                delay,
                error,
            } => {
                let error = error_info(error);
                task.set_phase(RETRY_WAIT, Some(error.clone()));
                Event::Retrying {
                    attempt,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    at: Some(ferry_proto::due_in(delay)),
                    error,
                }
            }
            _ => return,
        };
        state.emit(id, event);
    }
}

/// Whether a run that ended with `error` (and `retry`) ended for a stop, if one was asked:
/// it was cancelled, or it handed a retry back as the stop came.
fn stopped_run(error: &ferry_engine::Error, retry: Option<ferry_engine::RetryLater>) -> bool {
    matches!(error.kind(), ErrorKind::Cancelled) || retry.is_some()
}

/// A stopped run that is not a cancellation: the task keeps its bytes and waits (preempted,
/// or its URL changed) or is suspended.
fn pause(task: &mut Task, stop: Stop, failure: Failure) {
    task.info.state = if stop == Stop::Suspend {
        TaskState::Suspended
    } else {
        WAITING
    };
    keep_checkpoint(task, failure.checkpoint);
}

/// The checkpoint a paused run handed back, for the next run.
fn keep_checkpoint(task: &mut Task, checkpoint: Option<ferry_engine::Checkpoint>) {
    if let Some(cp) = &checkpoint {
        task.info.bytes_done = cp.bytes();
        task.info.bytes_total = cp.total.or(task.info.bytes_total);
    }
    task.checkpoint = checkpoint;
}

/// The run (its task in `retry_wait` since the `retrying` event) handed back a retry: the
/// task waits for it without a run, so that its slot serves another task meanwhile (a dead
/// host must not block the queue), and is started again when it is due.
fn park(task: &mut Task, retry: Option<ferry_engine::RetryLater>) {
    let Some(retry) = retry else { return };
    task.info.state = RETRY_WAIT;
    task.failed_attempts = retry.attempt;
    task.retry_due = Some(std::time::Instant::now() + retry.delay);
}

impl Shared {
    /// A failed run: bytes that were right but could not be placed (no space, destination)
    /// go to the resume area, with the blob in the `completed` event, as in the daemon.
    fn record_failure(&self, state: &mut State, id: TaskId, failure: Failure, staging: &Path) {
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        let error = error_info(&failure.error);
        let resume_data = match failure.checkpoint {
            Some(cp) if failure.error.kind().keeps_bytes() => self.keep_bytes(task, cp),
            _ => None,
        };
        task.checkpoint = None;
        remove_quietly(staging);
        task.info.resume_data.clone_from(&resume_data);
        let status = error.status;
        state.complete(id, Outcome::Failed { error, resume_data }, status);
    }
}

fn record_success(state: &mut State, inbox: &Path, id: TaskId, finished: Finished) {
    let Finished { done, body } = finished;
    let Some(task) = state.tasks.get_mut(&id) else {
        return;
    };
    task.checkpoint = None;
    task.info.bytes_done = done.bytes;
    task.info.bytes_total = Some(done.bytes);
    task.info.current_url = Some(done.final_url.to_string());
    match &mut task.kind {
        Kind::Data(slot) => *slot = Body::Ready(body.unwrap_or_default()),
        // Uploads end in `record_upload_end`.
        Kind::Upload(_) => {}
        Kind::Download => {
            let location = done.path.to_string_lossy().into_owned();
            task.info.location = Some(location.clone());
            let seq = state.emit(id, Event::FinishedDownloading { location });
            // A file in the runtime's inbox lives until its event is acknowledged.
            if let Some(seq) = seq
                && done.path.starts_with(inbox)
            {
                state.journal.delete_when_acked(seq, done.path.clone());
            }
        }
    }
    let headers = Some(ferry_engine::header_pairs(&done.headers));
    state.complete_with_reply(id, Outcome::Succeeded, Some(done.status), None, headers);
}

/// Hands the engine's reports for task `id` to the runtime.
struct TaskObserver<'a> {
    shared: &'a Shared,
    id: TaskId,
}

impl ferry_engine::Observer for TaskObserver<'_> {
    fn on_event(&self, event: ferry_engine::Event<'_>) {
        self.shared.observe(self.id, event);
    }
}
