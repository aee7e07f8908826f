//! One error type for everything the library can fail at.

use std::fmt;

use ferry_proto::ErrorInfo;

use crate::resume::ResumeData;

/// What went wrong with a request, a task or the connection to the daemon.
///
/// Inspect it with [`Error::kind`]; [`Error::code`] is the stable wire code for logs and
/// other languages. A cancelled download carries its [`Error::resume_data`] when its bytes
/// were kept, and so does a failed one whose bytes were right but could not be placed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    info: ErrorInfo,
    resume_data: Option<ResumeData>,
}

/// The kinds of [`Error`]. More may be added: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A URL, path, header, tag, group name, form field or option was rejected; the message
    /// says which.
    InvalidInput,
    /// The server answered with a status that is not a success; see [`Error::status`].
    Http,
    /// The network failed: refused connection, unknown host, reset, TLS, timeout.
    Network,
    /// The task ran out of its resource timeout.
    TimedOut,
    /// The downloaded bytes do not match the checksum asked for; nothing was placed.
    ChecksumMismatch,
    /// The destination exists (with [`Conflict::Fail`](crate::Conflict::Fail)), its folder
    /// is missing or not writable.
    Destination,
    /// The disk is full; the bytes so far are kept for resume.
    NoSpace,
    /// The task was cancelled (by the application, or by the user terminating the session).
    Cancelled,
    /// No such task, session or group.
    NotFound,
    /// The operation does not fit the task's state (e.g. suspending a completed task).
    InvalidState,
    /// Resume data that is corrupt, tampered with, foreign or already used.
    InvalidResumeData,
    /// Another process is attached to the session; the message names its pid.
    SessionInUse,
    /// The session was invalidated and takes no new tasks until that has finished, or
    /// another process took the session over.
    SessionClosed,
    /// The daemon could not be found, started or reached.
    Daemon,
    /// No daemon runs for the home, and it was not to be started
    /// ([`DaemonBuilder::start`](crate::DaemonBuilder::start)`(false)`); the message names
    /// the home.
    NotRunning,
    /// The connection to the daemon broke; the session reconnects by itself, so trying again
    /// usually succeeds.
    Disconnected,
    /// The operation does not exist for this kind of session (data tasks in background
    /// sessions).
    Unsupported,
    /// A local file operation failed; also an upload's source file that is missing, not a
    /// regular file or unreadable (the message names it).
    Io,
    /// An upload's source file changed — grew, shrank or was replaced — while it was being
    /// sent or between attempts. The server was not given a mix of versions; upload it
    /// again once the file is settled.
    SourceChanged,
    /// Anything else the daemon reported; see [`Error::code`]. Among them
    /// `reply_too_large`: an upload's server reply was longer than the library keeps.
    Other,
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable snake-case code of the failure (`http_status`, `checksum_mismatch`,
    /// `session_in_use`…), as in `docs/PROTOCOL.md`.
    pub fn code(&self) -> &str {
        &self.info.code
    }

    /// Whether trying again later may succeed without anything being changed.
    pub fn is_transient(&self) -> bool {
        self.info.transient
    }

    /// The HTTP status, for [`ErrorKind::Http`].
    pub fn status(&self) -> Option<u16> {
        self.info.status
    }

    /// For a download cancelled with its bytes kept, or failed with its bytes kept (no
    /// space, destination unusable): the blob to continue it from with
    /// [`Session::download_from_resume_data`](crate::Session::download_from_resume_data).
    pub fn resume_data(&self) -> Option<&ResumeData> {
        self.resume_data.as_ref()
    }

    pub(crate) fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Error {
        Error {
            kind,
            info: ErrorInfo::new(code, message),
            resume_data: None,
        }
    }

    pub(crate) fn transient(mut self) -> Error {
        self.info.transient = true;
        self
    }

    pub(crate) fn cancelled(resume_data: Option<ResumeData>, message: &str) -> Error {
        Error {
            resume_data,
            ..Error::new(ErrorKind::Cancelled, "cancelled", message)
        }
    }

    /// The error of a failed download whose bytes were kept (no space, destination).
    pub(crate) fn with_resume_data(mut self, resume_data: Option<ResumeData>) -> Error {
        self.resume_data = resume_data;
        self
    }

    pub(crate) fn disconnected(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Disconnected, "disconnected", message).transient()
    }
}

impl From<ErrorInfo> for Error {
    fn from(info: ErrorInfo) -> Error {
        Error {
            kind: kind_of(&info.code),
            info,
            resume_data: None,
        }
    }
}

/// Maps the wire codes of the daemon and the engine onto kinds.
fn kind_of(code: &str) -> ErrorKind {
    match code {
        "invalid_request" | "invalid_url" | "unsupported_scheme" | "config" | "bad_redirect"
        | "insecure_redirect" | "too_many_redirects" | "invalid_upload" => ErrorKind::InvalidInput,
        "http_status" => ErrorKind::Http,
        "connection" | "interrupted" | "tls" | "request_timeout" | "short_body"
        | "range_mismatch" => ErrorKind::Network,
        "timed_out" => ErrorKind::TimedOut,
        "checksum_mismatch" => ErrorKind::ChecksumMismatch,
        "destination" | "destination_exists" => ErrorKind::Destination,
        "no_space" => ErrorKind::NoSpace,
        "cancelled" => ErrorKind::Cancelled,
        "unknown_task" | "unknown_session" | "unknown_group" => ErrorKind::NotFound,
        "invalid_state" => ErrorKind::InvalidState,
        "invalid_resume_data" => ErrorKind::InvalidResumeData,
        "session_in_use" => ErrorKind::SessionInUse,
        "session_invalidated" | "session_taken_over" => ErrorKind::SessionClosed,
        "unsupported" => ErrorKind::Unsupported,
        "io" => ErrorKind::Io,
        "source_changed" => ErrorKind::SourceChanged,
        // `reply_too_large` is not a failed status (the server may have accepted the upload)
        // nor a network failure: it stays `Other`, told apart by its code.
        "disconnected" => ErrorKind::Disconnected,
        "daemon" | "unsupported_protocol" => ErrorKind::Daemon,
        "not_running" => ErrorKind::NotRunning,
        _ => ErrorKind::Other,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.info.message)?;
        if let Some(status) = self.info.status
            && !self.info.message.contains(&status.to_string())
        {
            write!(f, " (HTTP {status})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_map_to_kinds_and_keep_details() {
        let mut info = ErrorInfo::new("http_status", "GET http://h/f: 404 Not Found");
        info.status = Some(404);
        let e = Error::from(info);
        assert_eq!(e.kind(), ErrorKind::Http);
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.code(), "http_status");
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "GET http://h/f: 404 Not Found");

        let mut info = ErrorInfo::new("connection", "connection refused");
        info.transient = true;
        let e = Error::from(info);
        assert_eq!(e.kind(), ErrorKind::Network);
        assert!(e.is_transient());

        assert_eq!(
            Error::from(ErrorInfo::new("something_new", "?")).kind(),
            ErrorKind::Other
        );
    }

    #[test]
    fn upload_codes_map_to_kinds() {
        let kind = |code| Error::from(ErrorInfo::new(code, "?")).kind();
        assert_eq!(kind("source_changed"), ErrorKind::SourceChanged);
        assert_eq!(kind("invalid_upload"), ErrorKind::InvalidInput);
        assert_eq!(kind("reply_too_large"), ErrorKind::Other);
    }
}
