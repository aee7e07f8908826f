//! Groups: tasks with a common name, aggregate progress and one completion (SPEC §12).

use std::path::PathBuf;

use ferry_proto::{GroupInfo, Request, Response, TaskInfo};

use crate::error::{Error, ErrorKind};
use crate::session::{Session, unexpected};
use crate::task::{DownloadBuilder, Task};
use crate::upload::UploadBuilder;

/// A handle to a group of a session. The group exists while it has tasks; when the last
/// one completes, a [`GroupCompleted`](crate::EventKind::GroupCompleted) event follows.
/// Create a group's downloads together ([`Session::start_downloads`] with
/// [`Group::download`] builders): a task added after the others have completed makes the
/// group complete again.
#[derive(Debug, Clone)]
pub struct Group {
    session: Session,
    name: String,
}

impl Group {
    pub(crate) fn new(session: Session, name: String) -> Group {
        Group { session, name }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A download in this group.
    pub fn download(&self, url: impl Into<String>) -> DownloadBuilder {
        self.session.download(url).group(self.name.clone())
    }

    /// A raw upload of `file` in this group ([`Session::upload`]).
    pub fn upload(&self, file: impl Into<PathBuf>, url: impl Into<String>) -> UploadBuilder {
        self.session.upload(file, url).group(self.name.clone())
    }

    /// A multipart upload in this group ([`Session::multipart`]).
    pub fn multipart(&self, url: impl Into<String>) -> UploadBuilder {
        self.session.multipart(url).group(self.name.clone())
    }

    /// Aggregate progress: task counts by outcome, bytes received and expected.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the group has no task.
    pub async fn progress(&self) -> Result<GroupInfo, Error> {
        self.session
            .groups()
            .await?
            .into_iter()
            .find(|g| g.name == self.name)
            .ok_or_else(|| self.unknown())
    }

    /// The group's tasks with their state now.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn tasks(&self) -> Result<Vec<(Task, TaskInfo)>, Error> {
        let mut tasks = self.session.tasks().await?;
        tasks.retain(|(_, info)| info.group.as_deref() == Some(self.name.as_str()));
        Ok(tasks)
    }

    /// Pauses every unfinished task of the group.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the group has no task.
    pub async fn suspend(&self) -> Result<GroupInfo, Error> {
        self.control(Request::SuspendGroup {
            session: self.session.id().to_owned(),
            group: self.name.clone(),
        })
        .await
    }

    /// Continues every suspended task of the group.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the group has no task.
    pub async fn resume(&self) -> Result<GroupInfo, Error> {
        self.control(Request::ResumeGroup {
            session: self.session.id().to_owned(),
            group: self.name.clone(),
        })
        .await
    }

    /// Cancels every unfinished task of the group.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the group has no task.
    pub async fn cancel(&self) -> Result<GroupInfo, Error> {
        self.control(Request::CancelGroup {
            session: self.session.id().to_owned(),
            group: self.name.clone(),
        })
        .await
    }

    async fn control(&self, request: Request) -> Result<GroupInfo, Error> {
        match self.session.call(request).await? {
            Response::Group { group } => Ok(group),
            _ => Err(unexpected("a group request")),
        }
    }

    fn unknown(&self) -> Error {
        Error::new(
            ErrorKind::NotFound,
            "unknown_group",
            format!("session {} has no group {:?}", self.session.id(), self.name),
        )
    }
}
