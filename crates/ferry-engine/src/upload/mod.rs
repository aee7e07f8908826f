//! One upload, from file(s) on disk to the server's reply on disk: attempts, retries,
//! redirects, and the guarantee that the bytes sent are one version of the file.
//!
//! The life of an upload:
//! 1. the first attempt records each source file's identity (size, modification time,
//!    device and inode); a missing or unreadable file fails at once, naming it;
//! 2. every attempt first checks that identity again, opens the file(s), and streams the
//!    body from disk in 256 KiB chunks — `PUT`/`POST` of the raw file, or a
//!    `multipart/form-data` form whose text fields and files all have known lengths, so
//!    `Content-Length` is always sent. The chunks pass through the [`Limits`] and are
//!    counted into the [`Progress`] as they are handed to the connection;
//! 3. a file that grows, shrinks or is replaced while it is read, or between attempts,
//!    fails the upload with [`ErrorKind::SourceChanged`]: the server never gets a mix;
//! 4. `307` and `308` are followed by sending the body again (the files are re-opened and
//!    re-checked); `301`, `302` and `303` end the upload as a failure with that status,
//!    since re-sending the body as a `GET` is not what an upload means;
//! 5. the final response's body is written to [`UploadSpec::reply`] (at most
//!    [`UploadSpec::max_reply_bytes`]), and the files are checked once more;
//! 6. a transient failure (connection, timeout, `408`/`429`/`5xx`, classified as for
//!    downloads, `Retry-After` honoured) waits out the backoff and starts again from byte
//!    zero, announced by [`crate::Event::ResumedAtOffset`] with offset 0; anything else ends
//!    the upload. A non-2xx reply is a [`UploadFailure`] carrying
//!    the status, the headers and the reply file, which is kept.

mod attempt;
mod body;

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderMap;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::download::{Engine, Observer, Redirect, parse_url};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::rate::Limits;
use crate::retry::{RetryLater, RetryPolicy};
use attempt::Upload;
pub use body::SourceIdentity;

/// The longest server reply kept by default: 16 MiB.
pub const DEFAULT_MAX_REPLY_BYTES: u64 = 16 << 20;

/// The HTTP method of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadMethod {
    /// `PUT`: the body is the resource.
    #[default]
    Put,
    /// `POST`: the body is submitted to the resource.
    Post,
}

impl UploadMethod {
    fn as_reqwest(self) -> reqwest::Method {
        match self {
            UploadMethod::Put => reqwest::Method::PUT,
            UploadMethod::Post => reqwest::Method::POST,
        }
    }
}

/// What an upload sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadBody {
    /// The file's bytes as the whole body, with `Content-Type: application/octet-stream`
    /// unless [`UploadSpec::headers`] sets one.
    File(PathBuf),
    /// A `multipart/form-data` form (RFC 7578): the text fields first, then the files, in
    /// order. The engine sets `Content-Type` (with the boundary) itself; a `Content-Type`
    /// in [`UploadSpec::headers`] is ignored.
    Multipart {
        /// Text fields, `(name, value)`.
        fields: Vec<(String, String)>,
        /// File fields.
        files: Vec<MultipartFile>,
    },
}

impl UploadBody {
    /// The source files, in the order they are sent.
    pub fn paths(&self) -> Vec<&std::path::Path> {
        match self {
            UploadBody::File(path) => vec![path.as_path()],
            UploadBody::Multipart { files, .. } => files.iter().map(|f| f.path.as_path()).collect(),
        }
    }

    /// What can be checked before an upload is queued: multipart field names, file names
    /// and content types, and that every source file exists, is a regular file and can be
    /// opened. Returns each file's identity, in order, to keep as [`UploadSpec::sources`].
    ///
    /// # Errors
    /// `invalid_upload` for a bad name or content type; `io` naming a file that is missing,
    /// not a regular file, or unreadable.
    pub fn check(&self) -> Result<Vec<SourceIdentity>, Error> {
        body::validate(self)?;
        let mut identities = Vec::new();
        for path in self.paths() {
            let meta = std::fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
            if !meta.is_file() {
                return Err(Error::io(
                    "upload",
                    path,
                    std::io::Error::other("it is not a regular file"),
                ));
            }
            std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
            identities.push(SourceIdentity::of(&meta));
        }
        Ok(identities)
    }
}

/// One file of a multipart form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartFile {
    /// The form field name. It may not contain `"` or control characters.
    pub field: String,
    /// The file to send.
    pub path: PathBuf,
    /// The `filename` announced to the server; `None`: the last component of `path`.
    pub file_name: Option<String>,
    /// The part's `Content-Type`; `None`: `application/octet-stream`.
    pub content_type: Option<String>,
}

impl MultipartFile {
    /// A file field with the file's own name and `application/octet-stream`.
    pub fn new(field: impl Into<String>, path: impl Into<PathBuf>) -> MultipartFile {
        MultipartFile {
            field: field.into(),
            path: path.into(),
            file_name: None,
            content_type: None,
        }
    }
}

/// Everything one upload needs. Build it with [`UploadSpec::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    /// The URL (`http` or `https`).
    pub url: String,
    /// `PUT` or `POST`.
    pub method: UploadMethod,
    /// Extra request headers. `Content-Length` is always the engine's; `Authorization`,
    /// `Cookie` and `Proxy-Authorization` are dropped when a redirect leaves the origin.
    pub headers: HeaderMap,
    /// What to send.
    pub body: UploadBody,
    /// Where the server's reply body is written (created or truncated; its folder must
    /// exist). Kept after a non-2xx reply; removed when the upload ends without a reply.
    pub reply: PathBuf,
    /// A longer reply fails the upload with [`ErrorKind::ReplyTooLarge`].
    pub max_reply_bytes: u64,
    /// Bandwidth limits (per transfer and shared), applied to the request body.
    pub limits: Limits,
    /// Retry policy for transient failures. Every attempt sends the body from byte zero,
    /// so failed attempts are counted without the reset a download gets when bytes flow.
    pub retry: RetryPolicy,
    /// Attempts that failed in a row before this run (one that handed back a retry): the
    /// backoff and `max_attempts` go on from there.
    pub failed_attempts: u32,
    /// Hand a transient failure back ([`UploadFailure::retry`]) instead of sleeping until
    /// the next attempt; the `Retrying` event is still reported first.
    pub hand_back_retries: bool,
    /// The connection takes no body chunk, or the response (head or body chunk) does not
    /// come, for this long → transient `request_timeout`.
    pub request_timeout: Duration,
    /// The whole upload, retries included, must end within this, or it fails `timed_out`.
    pub resource_timeout: Option<Duration>,
    /// Follow https → http redirects.
    pub allow_insecure_redirects: bool,
    /// The source files' identities when the upload was created ([`UploadBody::check`]):
    /// a file that is another version at the first attempt fails with `source_changed`.
    /// `None`: the first attempt's view is the reference.
    pub sources: Option<Vec<SourceIdentity>>,
}

impl UploadSpec {
    /// A spec with the download defaults of SPEC §4 (request timeout 60 s, resource timeout
    /// 7 days, exponential retry from 1 s to 10 min), replies up to 16 MiB, and the method
    /// `PUT` for a raw file, `POST` for a multipart form.
    pub fn new(url: impl Into<String>, body: UploadBody, reply: PathBuf) -> UploadSpec {
        let method = match body {
            UploadBody::File(_) => UploadMethod::Put,
            UploadBody::Multipart { .. } => UploadMethod::Post,
        };
        UploadSpec {
            url: url.into(),
            method,
            headers: HeaderMap::new(),
            body,
            reply,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            limits: Limits::none(),
            retry: RetryPolicy::default(),
            failed_attempts: 0,
            hand_back_retries: false,
            request_timeout: Duration::from_secs(60),
            resource_timeout: Some(Duration::from_secs(7 * 24 * 3600)),
            allow_insecure_redirects: false,
            sources: None,
        }
    }
}

/// A finished upload: the server answered 2xx to the whole body.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The final response's status.
    pub status: u16,
    /// The final response's headers, in order (lower-case names; values decoded lossily).
    pub headers: Vec<(String, String)>,
    /// The file holding the reply body ([`UploadSpec::reply`]).
    pub reply: PathBuf,
    /// Length of the reply body.
    pub reply_bytes: u64,
    /// Request-body bytes sent by the successful attempt (for multipart, the framing
    /// included: the `Content-Length`).
    pub sent: u64,
    /// The URL that answered, after redirects.
    pub final_url: Url,
    /// Redirects followed (307/308), in order.
    pub redirects: Vec<Redirect>,
}

/// The server's answer to the last attempt of a failed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// Its status.
    pub status: u16,
    /// Its headers, in order (lower-case names; values decoded lossily).
    pub headers: Vec<(String, String)>,
    /// The file holding its body ([`UploadSpec::reply`]), kept for the caller to show.
    pub path: PathBuf,
    /// Length of its body.
    pub bytes: u64,
}

/// An upload that did not succeed: why, and what the server answered if it did.
#[derive(Debug)]
pub struct UploadFailure {
    /// What went wrong; [`ErrorKind::HttpStatus`] for a non-2xx reply.
    pub error: Error,
    /// The last attempt's complete reply: set for a non-2xx status, and for a 2xx whose
    /// source then turned out to have changed. `None` when no reply was read in full (the
    /// reply file is then removed).
    pub reply: Option<ServerReply>,
    /// Set when the error is transient and the spec asked to hand retries back: when to try
    /// again.
    pub retry: Option<RetryLater>,
}

impl UploadFailure {
    fn bare(error: Error) -> UploadFailure {
        UploadFailure {
            error,
            reply: None,
            retry: None,
        }
    }
}

impl std::fmt::Display for UploadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for UploadFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl Engine {
    /// Runs an upload to the end: a 2xx reply, a permanent failure, cancellation or resource
    /// timeout. Bytes sent go to `progress` (reset at each attempt, expected = the body's
    /// length), [`crate::Event::Redirected`] and [`crate::Event::Retrying`] to `observer`.
    ///
    /// The files are streamed from disk and never read into memory as a whole.
    ///
    /// # Errors
    /// An [`UploadFailure`] whose error says why (see [`ErrorKind`]): `http_status` with the
    /// reply kept for a non-2xx answer, `source_changed` when a file changed, `io` naming a
    /// missing or unreadable file, `cancelled` when `cancel` fires.
    ///
    /// # Cancel safety
    /// Cancelling via `cancel` ends the attempt, removes an incomplete reply file and
    /// returns [`ErrorKind::Cancelled`]. Dropping the future also stops the upload at once,
    /// but may leave a partial reply file.
    pub async fn upload(
        &self,
        spec: &UploadSpec,
        progress: &Progress,
        observer: &dyn Observer,
        cancel: &CancellationToken,
    ) -> Result<Uploaded, UploadFailure> {
        let url = parse_url(&spec.url).map_err(UploadFailure::bare)?;
        body::validate(&spec.body).map_err(UploadFailure::bare)?;
        Upload::new(&self.client, spec, url, progress, observer)
            .run(cancel)
            .await
    }
}

/// Builds the `InvalidUpload` error.
fn invalid(reason: String) -> Error {
    ErrorKind::InvalidUpload(reason).into()
}
