//! Background and in-process HTTP transfers for Linux applications: what iOS gives apps with
//! background `URLSession`s, over the per-user `ferryd` daemon.
//!
//! A [`Session`] is a named set of tasks with one configuration. In a **background**
//! session the daemon owns the transfers: they go on when your process exits, crashes or is
//! killed, and survive a restart of the daemon or the machine. When your program comes back
//! it opens the session by the same id and receives, in order, every event it missed. An
//! **in-process** session has the same API with the transfers running inside your process
//! (URLSession's default session); they end with it.
//!
//! The library speaks the daemon's documented protocol (`docs/PROTOCOL.md`) over its Unix
//! socket and starts `ferryd` when none runs (found via `FERRY_DAEMON`, next to your
//! program, or on `PATH`).
//!
//! # Downloading a file and waiting for it
//! ```
//! # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
//! # let server = ferry_testserver::TestServer::start().unwrap();
//! # let url = server.url("/bytes/65536");
//! # let dir = tempfile::tempdir().unwrap();
//! use ferry::{EventKind, Session};
//!
//! let session = Session::in_process().open().await?;
//! let mut events = session.events()?;
//! let task = session
//!     .download(&url)
//!     .destination(dir.path().join("file.bin"))
//!     .start()
//!     .await?;
//! while let Some(event) = events.recv().await {
//!     let event = event?;
//!     if event.task_id() == Some(task.id())
//!         && let Some(result) = event.result()
//!     {
//!         result?; // the file is in place
//!         break;
//!     }
//! }
//! assert_eq!(std::fs::metadata(dir.path().join("file.bin")).unwrap().len(), 65536);
//! # Ok(()) }
//! ```
//!
//! # Uploading a file
//! [`Session::upload`] sends a file as the request body (`PUT` unless
//! [`method`](UploadBuilder::method) says otherwise); [`Session::multipart`] sends a form of
//! [fields](UploadBuilder::field) and [files](UploadBuilder::file) (`POST`). The files are
//! checked when the task is created and streamed from disk; one that changes while it is
//! sent fails the task with [`ErrorKind::SourceChanged`] rather than sending a mix. The
//! server's reply — status, headers and a file holding the body, also for a status that
//! failed the task — comes in the [`Completed`](EventKind::Completed) event
//! ([`Event::reply`]) and in [`TaskInfo::reply`]; the file is deleted once that event is
//! acknowledged, so read or move it first.
//! ```
//! # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
//! # let server = ferry_testserver::TestServer::start().unwrap();
//! # let url = server.url("/upload/report");
//! # let dir = tempfile::tempdir().unwrap();
//! # let file = dir.path().join("report.pdf");
//! # std::fs::write(&file, b"%PDF-1.7").unwrap();
//! use ferry::Session;
//!
//! let session = Session::in_process().open().await?;
//! let mut events = session.events()?;
//! let task = session
//!     .upload(&file, &url)
//!     .header("content-type", "application/pdf")
//!     .start()
//!     .await?;
//! while let Some(event) = events.recv().await {
//!     let event = event?;
//!     if event.task_id() == Some(task.id())
//!         && let Some(result) = event.result()
//!     {
//!         let reply = event.reply().expect("the server answered");
//!         let body = std::fs::read_to_string(&reply.location).unwrap();
//!         result?; // a 2xx status
//!         assert_eq!(reply.status, 201);
//!         assert!(body.contains("sha256"));
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Surviving the application: background sessions
//! Open the session by id, with a [launch command](SessionBuilder::launch_command) if the
//! daemon should run your program again when the tasks are done. Start the tasks and exit;
//! on the next run, the events that happened in between arrive first, then
//! [`BacklogDelivered`](EventKind::BacklogDelivered) (URLSession's
//! `urlSessionDidFinishEvents`); acknowledge with [`Events::ack_backlog`] once handled.
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
//! use ferry::{EventKind, Session};
//!
//! let session = Session::background("com.example.updater")
//!     .launch_command(["/usr/bin/example-updater", "--collect"])
//!     .open()
//!     .await?;
//! let mut events = session.events()?;
//! if session.tasks().await?.is_empty() {
//!     session
//!         .download("https://example.com/update.tar")
//!         .checksum("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
//!         .tag("update")
//!         .start()
//!         .await?;
//!     return Ok(()); // the daemon downloads on; we are run again when it is done
//! }
//! while let Some(event) = events.recv().await {
//!     let event = event?;
//!     match event.kind() {
//!         EventKind::FinishedDownloading { location } => {
//!             // A file without a destination waits in the inbox: move it now.
//!             std::fs::rename(location, "/var/lib/example/update.tar").ok();
//!         }
//!         EventKind::BacklogDelivered => {
//!             events.ack_backlog().await?;
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Pausing, cancelling and resuming later
//! [`Task::suspend`] keeps the bytes and [`Task::start`] continues. [`Task::cancel`]
//! deletes them; [`Task::cancel_with_resume_data`] keeps them and returns [`ResumeData`]
//! to store and hand to [`Session::download_from_resume_data`] later — also after the
//! application and the daemon restarted.
//! ```
//! # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
//! # let server = ferry_testserver::TestServer::start().unwrap();
//! # let url = server.url("/bytes/4000000?rate=4000000");
//! # let dir = tempfile::tempdir().unwrap();
//! use ferry::Session;
//!
//! let session = Session::in_process().open().await?;
//! let task = session.download(&url).destination(dir.path().join("big")).start().await?;
//! while task.info().await?.bytes_done == 0 {
//!     tokio::task::yield_now().await;
//! }
//! let blob = task.cancel_with_resume_data().await?.expect("bytes arrived");
//! let stored = blob.as_bytes().to_vec();
//!
//! let again = ferry::ResumeData::from_bytes(stored)?;
//! let task = session.download_from_resume_data(&again).await?;
//! # let _ = task;
//! # Ok(()) }
//! ```
//!
//! # Many files, then something: groups
//! ```
//! # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
//! # let server = ferry_testserver::TestServer::start().unwrap();
//! # let dir = tempfile::tempdir().unwrap();
//! use ferry::{EventKind, Session};
//!
//! let session = Session::in_process().max_concurrent(4).open().await?;
//! let mut events = session.events()?;
//! let album = session.group("album");
//! for i in 0..8 {
//!     album
//!         .download(server.url(&format!("/bytes/1000?seed={i}")))
//!         .destination(dir.path().join(format!("{i}.jpg")))
//!         .start()
//!         .await?;
//! }
//! while let Some(event) = events.recv().await {
//!     if let EventKind::GroupCompleted { succeeded, .. } = event?.kind() {
//!         assert_eq!(*succeeded, 8); // every file is in place
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Data tasks
//! In-process sessions also fetch a body into memory:
//! ```
//! # #[tokio::main] async fn main() -> Result<(), ferry::Error> {
//! # let server = ferry_testserver::TestServer::start().unwrap();
//! let session = ferry::Session::in_process().open().await?;
//! let body = session.data(server.url("/bytes/100")).fetch().await?;
//! assert_eq!(body.len(), 100);
//! # Ok(()) }
//! ```
//!
//! # The daemon itself
//! [`Daemon`] is a handle to `ferryd` that belongs to no session: its [status](Daemon::status),
//! every [session](Daemon::sessions) and [task](Daemon::tasks), and
//! [`shutdown`](Daemon::shutdown). With [`DaemonBuilder::start`]`(false)` it only looks:
//! opening fails with [`ErrorKind::NotRunning`] when no daemon runs.
//!
//! # Errors
//! Every fallible call returns [`Error`]: [`Error::kind`] says what went wrong,
//! [`Error::is_transient`] whether trying again may help, [`Error::status`] the HTTP status
//! of a failed task, [`Error::resume_data`] the blob of a cancelled download (or of one that
//! failed with its bytes kept: no space, destination unusable). A task's own
//! failure reaches you in its [`Completed`](EventKind::Completed) event
//! ([`Event::result`]) and in [`TaskInfo::error`].
//!
//! # Dropping versus cancelling
//! Nothing stops a task but [`Task::cancel`], [`Group::cancel`], [`Session::terminate`] or
//! [`Session::invalidate_and_cancel`]. Dropping a [`Task`] or [`Group`] handle does nothing.
//! Dropping the last handle of a background session closes its connection: the daemon
//! detaches it, the tasks go on and their events wait for the next attach. Dropping the
//! last handle of an in-process session cancels its transfers: they cannot outlive it.
#![deny(missing_docs)]

mod daemon;
mod daemon_handle;
mod error;
mod event;
mod group;
mod local;
mod resume;
mod session;
mod task;
mod upload;

pub use daemon_handle::{Daemon, DaemonBuilder, DaemonStatus, FoundTasks};
pub use error::{Error, ErrorKind};
pub use event::{Event, EventKind, Events};
pub use ferry_proto::{
    CancelReason, Conflict, ErrorInfo, FormField, FormFile, GroupInfo, Headers, Outcome,
    OutcomeKind, Priority, RemovedTask, Reply, RunPhase, SessionConfig, SessionInfo, TaskId,
    TaskInfo, TaskKind, TaskState, UploadMethod, hide_url_password, hide_url_passwords,
};
pub use futures_util::Stream;
pub use group::Group;
pub use resume::ResumeData;
pub use session::{Session, SessionBuilder};
pub use task::{DataBuilder, DownloadBuilder, Task};
pub use upload::UploadBuilder;
