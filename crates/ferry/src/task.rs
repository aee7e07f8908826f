//! Tasks: builders that create them and handles that control them.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_proto::{DownloadRequest, Priority, Request, TaskId, TaskInfo};

use crate::error::{Error, ErrorKind};
use crate::resume::ResumeData;
use crate::session::Session;

/// A handle to one task of a session. Cheap to clone; it holds the session open.
///
/// Dropping a handle changes nothing: the task goes on, and [`Session::task`] or
/// [`Session::tasks`] give a handle again. Stopping a task takes [`Task::cancel`].
#[derive(Debug, Clone)]
pub struct Task {
    session: Session,
    id: TaskId,
}

impl Task {
    pub(crate) fn new(session: Session, id: TaskId) -> Task {
        Task { session, id }
    }

    /// The task's id: unique in its daemon (or in-process session), never reused.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The task's state now: URLs, destination and location, bytes, error, resume data.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the task does not exist (or was removed).
    pub async fn info(&self) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::GetTask { task: self.id })
            .await
    }

    /// Starts a suspended task, or continues a paused one (URLSession's `resume()`).
    /// Starting a task that runs already is not an error.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it has completed.
    pub async fn start(&self) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::Resume { task: self.id })
            .await
    }

    /// Pauses the task, keeping its bytes; [`Task::start`] continues it. An upload keeps
    /// nothing: it sends its body from the first byte again when started.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it has completed.
    pub async fn suspend(&self) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::Suspend { task: self.id })
            .await
    }

    /// Cancels the task and deletes its bytes; it completes `cancelled`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it has completed already.
    pub async fn cancel(&self) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::Cancel { task: self.id })
            .await
    }

    /// Cancels a download keeping its bytes, and returns the resume data to continue it
    /// from later ([`Session::download_from_resume_data`]); `None` when no byte had arrived,
    /// and always for an upload (which has nothing to continue from: it is cancelled).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it has completed already.
    pub async fn cancel_with_resume_data(&self) -> Result<Option<ResumeData>, Error> {
        let info = self
            .session
            .call_for_task(Request::CancelWithResumeData { task: self.id })
            .await?;
        Ok(info.resume_data.map(ResumeData::from_wire))
    }

    /// Changes the task's priority; a task raised above a running one may take its place.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it has completed.
    pub async fn set_priority(&self, priority: Priority) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::SetPriority {
                task: self.id,
                priority,
            })
            .await
    }

    /// Changes the task's own bandwidth limit, in bytes per second (`None`: no limit of its
    /// own), also while it transfers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it has completed.
    pub async fn set_rate_limit(&self, bytes_per_second: Option<u64>) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::SetRateLimit {
                task: Some(self.id),
                session: None,
                bytes_per_second,
            })
            .await
    }

    /// Points the download at a new URL (a signed URL expired), keeping its bytes: it
    /// continues from the new URL if the resource's validators still match, and restarts
    /// from zero otherwise.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad URL; [`ErrorKind::InvalidState`] when the task
    /// has completed.
    pub async fn update_url(&self, url: impl Into<String>) -> Result<TaskInfo, Error> {
        self.session
            .call_for_task(Request::UpdateUrl {
                task: self.id,
                url: url.into(),
            })
            .await
    }

    /// Forgets a completed task. With `delete_file`, also deletes what it left: the placed
    /// file of a download that succeeded, or the kept bytes of one cancelled (or failed) with
    /// resume data (which then stops working). Events not yet taken are still delivered.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when the task has not completed: cancel it first.
    pub async fn remove(&self, delete_file: bool) -> Result<(), Error> {
        self.session
            .call_done(Request::Remove {
                task: self.id,
                delete_file,
            })
            .await
    }

    /// For a data task: waits until it completes and takes the response body.
    ///
    /// # Errors
    /// The task's failure ([`ErrorKind::Http`], [`ErrorKind::Network`]…),
    /// [`ErrorKind::Cancelled`], or [`ErrorKind::Unsupported`] in a background session.
    pub async fn data(&self) -> Result<Vec<u8>, Error> {
        let runtime = self.session.local().ok_or_else(data_unsupported)?;
        runtime.take_data(self.id).await.map_err(Error::from)
    }
}

fn data_unsupported() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "unsupported",
        "data tasks exist only in in-process sessions: use a download in a background session",
    )
}

/// Makes a destination absolute against the current folder (the daemon has another one).
pub(crate) fn absolute(path: &Path) -> Result<String, Error> {
    absolute_as("destination", path)
}

/// Makes a path absolute against the current folder; `what` names it in errors.
pub(crate) fn absolute_as(what: &str, path: &Path) -> Result<String, Error> {
    let path = std::path::absolute(path).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            "invalid_request",
            format!("{what} {}: {e}", path.display()),
        )
    })?;
    path.into_os_string().into_string().map_err(|p| {
        Error::new(
            ErrorKind::InvalidInput,
            "invalid_request",
            format!("{what} {p:?} is not valid UTF-8"),
        )
    })
}

/// A time as seconds since the Unix epoch (0 before it), as the protocol has it.
pub(crate) fn unix_secs(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A folder to save into: absolute already (it is not resolved against this process's
/// current folder, unlike a destination).
fn absolute_folder(path: &Path) -> Result<String, Error> {
    let invalid = |message: String| Error::new(ErrorKind::InvalidInput, "invalid_request", message);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "directory {} must be an absolute path",
            path.display()
        )));
    }
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("directory {path:?} is not valid UTF-8")))
}

/// The options downloads and data tasks share.
#[derive(Debug, Clone)]
struct Options {
    session: Session,
    request: DownloadRequest,
    destination: Option<PathBuf>,
    directory: Option<PathBuf>,
}

impl Options {
    fn new(session: Session, url: String) -> Options {
        Options {
            session,
            request: DownloadRequest {
                url,
                destination: None,
                directory: None,
                headers: Default::default(),
                checksum: None,
                priority: None,
                tag: None,
                group: None,
                connections: None,
                rate_limit: None,
                earliest_begin: None,
                start: true,
            },
            destination: None,
            directory: None,
        }
    }

    fn into_request(self, start: bool) -> Result<(Session, DownloadRequest), Error> {
        let mut request = self.request;
        request.start = start;
        request.destination = self.destination.as_deref().map(absolute).transpose()?;
        request.directory = self.directory.as_deref().map(absolute_folder).transpose()?;
        Ok((self.session, request))
    }
}

macro_rules! shared_options {
    ($builder:ident) => {
        impl $builder {
            /// A request header for this task, added to the session's.
            pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
                self.options
                    .request
                    .headers
                    .0
                    .push((name.into(), value.into()));
                self
            }

            /// The expected digest as `ALGO:HEX` (`md5`, `sha1`, `sha256`, `sha512`,
            /// `blake3`); a mismatch fails the task and nothing is delivered.
            pub fn checksum(mut self, checksum: impl Into<String>) -> Self {
                self.options.request.checksum = Some(checksum.into());
                self
            }

            /// The task's priority (default: the session's).
            pub fn priority(mut self, priority: Priority) -> Self {
                self.options.request.priority = Some(priority);
                self
            }

            /// Free text (at most 4 KiB) returned with every event of the task.
            pub fn tag(mut self, tag: impl Into<String>) -> Self {
                self.options.request.tag = Some(tag.into());
                self
            }

            /// The group the task belongs to.
            pub fn group(mut self, group: impl Into<String>) -> Self {
                self.options.request.group = Some(group.into());
                self
            }

            /// Not started before this time.
            pub fn earliest_begin(mut self, at: SystemTime) -> Self {
                self.options.request.earliest_begin = Some(unix_secs(at));
                self
            }

            /// Bytes per second for this task.
            pub fn rate_limit(mut self, bytes_per_second: u64) -> Self {
                self.options.request.rate_limit = Some(bytes_per_second);
                self
            }

            /// Connections to use at most (1–64; default 8 for servers with ranges).
            pub fn connections(mut self, connections: u32) -> Self {
                self.options.request.connections = Some(connections);
                self
            }
        }
    };
}

/// A download to configure, then [`start`](DownloadBuilder::start) (running at once) or
/// [`create`](DownloadBuilder::create) (suspended until [`Task::start`]).
#[derive(Debug, Clone)]
#[must_use = "a download builder does nothing until it is started or created"]
pub struct DownloadBuilder {
    options: Options,
}

shared_options!(DownloadBuilder);

impl DownloadBuilder {
    pub(crate) fn new(session: Session, url: String) -> DownloadBuilder {
        DownloadBuilder {
            options: Options::new(session, url),
        }
    }

    /// Where the file goes (made absolute here). Without one, the file waits in the
    /// session's inbox and its path comes in the
    /// [`FinishedDownloading`](crate::EventKind::FinishedDownloading) event: move it before
    /// the event is acknowledged.
    pub fn destination(mut self, path: impl Into<PathBuf>) -> DownloadBuilder {
        self.options.destination = Some(path.into());
        self
    }

    /// Saves into this folder (created if missing) under the name the server gives — its
    /// `Content-Disposition`, else the URL's last segment — with the session's
    /// [conflict policy](crate::SessionBuilder::destination_conflict); the path comes in the
    /// [`FinishedDownloading`](crate::EventKind::FinishedDownloading) event and
    /// [`TaskInfo::location`]. The path must be absolute, and excludes
    /// [`destination`](DownloadBuilder::destination): otherwise [`start`](Self::start) and
    /// [`create`](Self::create) fail with [`ErrorKind::InvalidInput`].
    pub fn directory(mut self, path: impl Into<PathBuf>) -> DownloadBuilder {
        self.options.directory = Some(path.into());
        self
    }

    /// Creates the task and starts it (URLSession's `downloadTask(with:)` then `resume()`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming what was wrong (URL, destination, checksum…);
    /// [`ErrorKind::SessionClosed`] while the session is being invalidated.
    pub async fn start(self) -> Result<Task, Error> {
        self.create_task(true).await
    }

    /// Creates the task suspended; [`Task::start`] starts it.
    ///
    /// # Errors
    /// As [`DownloadBuilder::start`].
    pub async fn create(self) -> Result<Task, Error> {
        self.create_task(false).await
    }

    async fn create_task(self, start: bool) -> Result<Task, Error> {
        let (session, request) = self.options.into_request(start)?;
        let request = Request::CreateDownload {
            session: session.id().to_owned(),
            request,
        };
        let info = session.call_for_task(request).await?;
        Ok(session.task(info.id))
    }

    /// The request it makes, started, for bulk creation.
    pub(crate) fn into_started_request(self) -> Result<DownloadRequest, Error> {
        self.options.into_request(true).map(|(_, request)| request)
    }
}

/// A data task (URL → bytes in memory) to configure, then
/// [`start`](DataBuilder::start) or [`fetch`](DataBuilder::fetch). In-process sessions only.
#[derive(Debug, Clone)]
#[must_use = "a data task builder does nothing until it is started"]
pub struct DataBuilder {
    options: Options,
}

shared_options!(DataBuilder);

impl DataBuilder {
    pub(crate) fn new(session: Session, url: String) -> DataBuilder {
        DataBuilder {
            options: Options::new(session, url),
        }
    }

    /// Creates the task and starts it; [`Task::data`] waits for the body.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] in a background session; [`ErrorKind::InvalidInput`] for
    /// a bad URL or option.
    pub async fn start(self) -> Result<Task, Error> {
        let (session, request) = self.options.into_request(true)?;
        let runtime = session.local().ok_or_else(data_unsupported)?;
        let info = runtime.create_data(request).await?;
        Ok(session.task(info.id))
    }

    /// Starts the task and waits for its body.
    ///
    /// # Errors
    /// As [`DataBuilder::start`] and [`Task::data`].
    pub async fn fetch(self) -> Result<Vec<u8>, Error> {
        self.start().await?.data().await
    }
}
