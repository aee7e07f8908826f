//! Uploads: a file sent as the request body, or a `multipart/form-data` form.

use std::path::PathBuf;
use std::time::SystemTime;

use ferry_proto::{
    FormField, FormFile, Headers, Priority, Request, UploadBody, UploadMethod, UploadRequest,
};

use crate::error::{Error, ErrorKind};
use crate::session::Session;
use crate::task::{Task, absolute_as, unix_secs};

/// An upload to configure, then [`start`](UploadBuilder::start) (running at once) or
/// [`create`](UploadBuilder::create) (suspended until [`Task::start`]). Made by
/// [`Session::upload`] (a file as the body) or [`Session::multipart`] (a form).
///
/// The server's reply is saved to the session's inbox and comes, with its status and
/// headers, in the task's [`Completed`](crate::EventKind::Completed) event
/// ([`Event::reply`](crate::Event::reply)) and in [`TaskInfo::reply`](crate::TaskInfo::reply)
/// — also when the status is not a success, which fails the task. The file stays until that
/// event is acknowledged: read or move it first.
#[derive(Debug, Clone)]
#[must_use = "an upload builder does nothing until it is started or created"]
pub struct UploadBuilder {
    session: Session,
    url: String,
    method: Option<UploadMethod>,
    body: Body,
    headers: Headers,
    priority: Option<Priority>,
    tag: Option<String>,
    group: Option<String>,
    rate_limit: Option<u64>,
    earliest_begin: Option<i64>,
}

/// What is sent, with paths as given (made absolute when the task is created).
#[derive(Debug, Clone)]
enum Body {
    /// One file as the body; `misuse` names a form field or file given to it by mistake.
    Raw {
        path: PathBuf,
        misuse: Option<String>,
    },
    Form {
        fields: Vec<FormField>,
        files: Vec<(FormFile, PathBuf)>,
    },
}

impl UploadBuilder {
    pub(crate) fn raw(session: Session, path: PathBuf, url: String) -> UploadBuilder {
        UploadBuilder::new(session, url, Body::Raw { path, misuse: None })
    }

    pub(crate) fn form(session: Session, url: String) -> UploadBuilder {
        let body = Body::Form {
            fields: Vec::new(),
            files: Vec::new(),
        };
        UploadBuilder::new(session, url, body)
    }

    fn new(session: Session, url: String, body: Body) -> UploadBuilder {
        UploadBuilder {
            session,
            url,
            method: None,
            body,
            headers: Headers::default(),
            priority: None,
            tag: None,
            group: None,
            rate_limit: None,
            earliest_begin: None,
        }
    }

    /// `PUT` or `POST` (default: `PUT` for a file, `POST` for a form).
    pub fn method(mut self, method: UploadMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A request header for this task, added to the session's. A raw upload is sent as
    /// `application/octet-stream` unless this sets `Content-Type`; a form's `Content-Type`
    /// is always `multipart/form-data`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.0.push((name.into(), value.into()));
        self
    }

    /// A text field of the form, sent before the files. Multipart only: on a raw upload,
    /// [`start`](Self::start) and [`create`](Self::create) fail with
    /// [`ErrorKind::InvalidInput`].
    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        match &mut self.body {
            Body::Form { fields, .. } => fields.push(FormField { name, value }),
            Body::Raw { misuse, .. } => {
                misuse.get_or_insert(format!("field {name:?}"));
            }
        }
        self
    }

    /// A file field of the form, announced with the file's own name as
    /// `application/octet-stream`. Multipart only, as [`field`](Self::field).
    pub fn file(self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.file_with(name, path, None, None)
    }

    /// A file field of the form with the file name announced to the server (default: the
    /// path's last component) and the part's `Content-Type` (default:
    /// `application/octet-stream`). Multipart only, as [`field`](Self::field).
    pub fn file_with(
        mut self,
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        file_name: Option<String>,
        content_type: Option<String>,
    ) -> Self {
        let name = name.into();
        match &mut self.body {
            Body::Form { files, .. } => {
                let file = FormFile {
                    name,
                    path: String::new(),
                    file_name,
                    content_type,
                };
                files.push((file, path.into()));
            }
            Body::Raw { misuse, .. } => {
                misuse.get_or_insert(format!("file field {name:?}"));
            }
        }
        self
    }

    /// The task's priority (default: the session's).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Free text (at most 4 KiB) returned with every event of the task.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// The group the task belongs to.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Bytes per second sent for this task.
    pub fn rate_limit(mut self, bytes_per_second: u64) -> Self {
        self.rate_limit = Some(bytes_per_second);
        self
    }

    /// Not started before this time.
    pub fn earliest_begin(mut self, at: SystemTime) -> Self {
        self.earliest_begin = Some(unix_secs(at));
        self
    }

    /// Creates the task and starts it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming what was wrong (URL, a form field on a raw upload,
    /// an empty form, a bad field name or header…); [`ErrorKind::Io`] naming a source file
    /// that is missing, not a regular file or unreadable — checked now, so a bad upload is
    /// refused before it is queued; [`ErrorKind::SessionClosed`] while the session is being
    /// invalidated.
    pub async fn start(self) -> Result<Task, Error> {
        self.create_task(true).await
    }

    /// Creates the task suspended; [`Task::start`] starts it.
    ///
    /// # Errors
    /// As [`UploadBuilder::start`].
    pub async fn create(self) -> Result<Task, Error> {
        self.create_task(false).await
    }

    async fn create_task(self, start: bool) -> Result<Task, Error> {
        let body = match self.body {
            Body::Raw {
                misuse: Some(what), ..
            } => {
                return Err(invalid(format!(
                    "a raw upload sends one file as the whole body and has no form fields \
                     ({what} given): use Session::multipart for a form"
                )));
            }
            Body::Raw { path, misuse: None } => UploadBody::File {
                path: absolute_as("upload file", &path)?,
            },
            Body::Form { fields, files } => {
                if fields.is_empty() && files.is_empty() {
                    return Err(invalid(
                        "a multipart upload needs at least one field or file",
                    ));
                }
                let files = files
                    .into_iter()
                    .map(|(file, path)| {
                        Ok(FormFile {
                            path: absolute_as("upload file", &path)?,
                            ..file
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                UploadBody::Multipart { fields, files }
            }
        };
        let request = UploadRequest {
            url: self.url,
            method: self.method,
            body,
            headers: self.headers,
            priority: self.priority,
            tag: self.tag,
            group: self.group,
            rate_limit: self.rate_limit,
            earliest_begin: self.earliest_begin,
            start,
        };
        let session = self.session;
        let request = Request::CreateUpload {
            session: session.id().to_owned(),
            request,
        };
        let info = session.call_for_task(request).await?;
        Ok(session.task(info.id))
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, "invalid_request", message)
}
