//! Upload runs: the engine's spec from the stored request, and how a run's end is recorded.
//!
//! An upload has no checkpoint: every run sends the body from byte zero, so pausing it
//! (suspend, shutdown, preemption) only moves it back to `suspended` or `waiting`, and drops
//! whatever reply an earlier attempt left. The server's final reply is written to
//! `replies/<id>.reply` (a folder of its own: no name a server gives an inbox download can
//! meet it), synced, and named in the task's row and its `completed` event; it stays until
//! that event is acknowledged (or, in a session without a journal, until the task is
//! removed). A reply file nothing names any more is removed by the retention sweep.

use std::path::{Path, PathBuf};

use ferry_engine::{MultipartFile, ServerReply, UploadFailure, UploadSpec, Uploaded};
use ferry_proto::{Reply, UploadMethod, UploadRequest};

use super::end::{Cancellation, KeptMoves, cancel_job};
use super::*;

/// The engine's form of an upload's body.
pub fn engine_body(body: &ferry_proto::UploadBody) -> ferry_engine::UploadBody {
    match body {
        ferry_proto::UploadBody::File { path } => ferry_engine::UploadBody::File(path.into()),
        ferry_proto::UploadBody::Multipart { fields, files } => {
            ferry_engine::UploadBody::Multipart {
                fields: fields
                    .iter()
                    .map(|f| (f.name.clone(), f.value.clone()))
                    .collect(),
                files: files
                    .iter()
                    .map(|f| MultipartFile {
                        field: f.name.clone(),
                        path: PathBuf::from(&f.path),
                        file_name: f.file_name.clone(),
                        content_type: f.content_type.clone(),
                    })
                    .collect(),
            }
        }
    }
}

/// The reply as clients see it.
fn reply_info(status: u16, headers: Vec<(String, String)>, path: &Path, bytes: u64) -> Reply {
    Reply {
        status,
        headers,
        location: path.to_string_lossy().into_owned(),
        bytes,
    }
}

/// Makes a reply file and its name in its folder durable before an event announces it.
async fn sync_reply(path: PathBuf) {
    let synced = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path)?.sync_all()?;
        match path.parent() {
            Some(folder) => std::fs::File::open(folder)?.sync_all(),
            None => Ok(()),
        }
    })
    .await;
    if let Ok(Err(e)) = synced {
        tracing::warn!(error = %e, "could not sync an upload's reply");
    }
}

/// Removes what an attempt left of a reply that no event will name.
pub(super) fn discard_reply(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, path = %path.display(), "could not remove a reply"),
    }
}

impl Scheduler {
    pub(super) fn upload_spec(
        &self,
        row: &TaskRow,
        request: &UploadRequest,
        config: &SessionConfig,
        spent_secs: u64,
    ) -> Result<UploadSpec, ErrorInfo> {
        let mut spec = UploadSpec::new(
            &request.url,
            engine_body(&request.body),
            self.layout.reply(row.id),
        );
        spec.method = match request.effective_method() {
            UploadMethod::Put => ferry_engine::UploadMethod::Put,
            UploadMethod::Post => ferry_engine::UploadMethod::Post,
        };
        spec.headers = ferry_engine::layered_headers(
            session_headers(config)?,
            headers(request.headers.0.iter())?,
        );
        spec.retry = retry_policy(config);
        spec.allow_insecure_redirects = config.allow_insecure_redirects;
        spec.limits = self.limits(row.id, &row.session);
        spec.request_timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let left = config.resource_timeout_secs.saturating_sub(spent_secs);
        spec.resource_timeout = Some(Duration::from_secs(left).max(Duration::from_millis(1)));
        spec.sources = row.sources.clone();
        spec.failed_attempts = row.failed_attempts;
        // A task waiting out a retry gives its slot back (see `end::park`).
        spec.hand_back_retries = true;
        Ok(spec)
    }

    /// Records how an upload run ended: state, reply and events, in one transaction.
    pub(super) async fn record_upload_end(
        &self,
        row: &TaskRow,
        result: Result<Uploaded, UploadFailure>,
        stopped: Option<Stop>,
    ) {
        let (id, session) = (row.id, row.session.clone());
        let tag = row.request.tag().map(str::to_owned);
        let end = match result {
            Ok(done) => UploadEnd::Succeeded(done),
            Err(failure) => match (stopped, failure.error.kind()) {
                (Some(stop), ferry_engine::ErrorKind::Cancelled) => UploadEnd::Stopped(stop),
                // A retry handed back as a stop came: a stop that would only have it wait
                // again lets it wait out the retry; the others decide.
                (None | Some(Stop::Preempt | Stop::Shutdown), _) if failure.retry.is_some() => {
                    UploadEnd::Parked(failure.retry)
                }
                (Some(stop), _) if failure.retry.is_some() => UploadEnd::Stopped(stop),
                _ => UploadEnd::Failed(failure),
            },
        };
        match &end {
            UploadEnd::Succeeded(done) => sync_reply(done.reply.clone()).await,
            UploadEnd::Failed(UploadFailure {
                reply: Some(reply), ..
            }) => sync_reply(reply.path.clone()).await,
            // A stopped run's reply (an earlier attempt's 503, say) is nobody's: the next
            // run starts over, and a cancelled task names no reply.
            UploadEnd::Stopped(_) | UploadEnd::Parked(_) => discard_reply(&self.layout.reply(id)),
            UploadEnd::Failed(_) => {}
        }
        let keeper = self.keeper.clone();
        let staging = self.layout.staging(id);
        let written = self
            .store
            .write(move |c| {
                let tag = tag.as_deref();
                let mut events = Vec::new();
                match end {
                    UploadEnd::Succeeded(done) => {
                        let reply =
                            reply_info(done.status, done.headers, &done.reply, done.reply_bytes);
                        tasks::transition(c, id, &ACTIVE, succeeded(), None)?;
                        let url = done.final_url.as_str();
                        tasks::set_uploaded(c, id, Some(done.sent), Some(url), Some(&reply))?;
                        events.push(tasks::journal_append(
                            c,
                            &session,
                            Some(id),
                            tag,
                            Event::Completed {
                                outcome: Outcome::Succeeded,
                                status: Some(done.status),
                                reply: Some(reply),
                                headers: None,
                            },
                        )?);
                        events.extend(tasks::after_completion(c, id)?);
                    }
                    UploadEnd::Failed(failure) => {
                        let error = error_info(&failure.error);
                        let reply = failure.reply.map(
                            |ServerReply {
                                 status,
                                 headers,
                                 path,
                                 bytes,
                             }| {
                                reply_info(status, headers, &path, bytes)
                            },
                        );
                        tasks::transition(c, id, &ACTIVE, failed(), Some(&error))?;
                        tasks::set_uploaded(c, id, None, None, reply.as_ref())?;
                        events.push(tasks::journal_append(
                            c,
                            &session,
                            Some(id),
                            tag,
                            Event::Completed {
                                status: reply.as_ref().map(|r| r.status).or(error.status),
                                outcome: Outcome::Failed {
                                    error,
                                    resume_data: None,
                                },
                                reply,
                                headers: None,
                            },
                        )?);
                        events.extend(tasks::after_completion(c, id)?);
                    }
                    UploadEnd::Stopped(Stop::Cancel { reason, keep }) => {
                        // Nothing to keep: an upload starts from zero whatever happens.
                        let order = Cancellation {
                            keep,
                            reason,
                            checkpoint: None,
                            moves: KeptMoves::default(),
                        };
                        return cancel_job(c, &keeper, &staging, id, &ACTIVE, order)
                            .map(|(_, events)| ((), events));
                    }
                    UploadEnd::Stopped(stop) => {
                        let to = match stop {
                            Stop::Shutdown | Stop::Preempt | Stop::Restart => WAITING,
                            _ => TaskState::Suspended,
                        };
                        tasks::transition(c, id, &ACTIVE, to, None)?;
                    }
                    UploadEnd::Parked(retry) => super::end::park(c, id, retry)?,
                }
                Ok(((), events))
            })
            .await;
        if let Err(e) = written {
            tracing::error!(task = id, error = %e, "could not record the end of an upload");
        }
    }
}

enum UploadEnd {
    Succeeded(Uploaded),
    Failed(UploadFailure),
    Stopped(Stop),
    /// It waits out a retry without a run.
    Parked(Option<ferry_engine::RetryLater>),
}
