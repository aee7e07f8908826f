//! The engine's error type: what went wrong, and whether trying again can help.

use std::path::PathBuf;
use std::time::Duration;

/// Why a transfer attempt or a whole transfer failed.
///
/// [`ErrorKind::code`] gives the stable snake-case name used in events and on the wire
/// (SPEC §9/§15); [`Error::is_transient`] says whether the engine retries it.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    kind: ErrorKind,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The kinds of failure, with the context a person needs to act on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The URL could not be parsed or lacks a host.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A scheme other than `http` or `https`.
    #[error("unsupported scheme {scheme:?} in {url:?}: only http and https are supported")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
        /// The URL as given.
        url: String,
    },
    /// Name resolution, connection or TLS set-up failed, or the connection broke.
    #[error("connection to {host} failed")]
    Connection {
        /// The host that could not be reached.
        host: String,
        /// No connection could be made at all (name resolution, connecting): the host is
        /// unreachable — as opposed to a connection that was made and then broke or stalled
        /// before the response.
        unreachable: bool,
    },
    /// The connection broke in the middle of a response body.
    #[error("the connection to {host} broke mid-transfer")]
    Interrupted {
        /// The host the body came from.
        host: String,
    },
    /// The server's certificate was not trusted, or the TLS handshake failed.
    #[error("TLS with {host} failed (certificate not trusted or handshake refused)")]
    Tls {
        /// The host.
        host: String,
    },
    /// No byte arrived for the request timeout.
    #[error("no data received for {0:?}")]
    RequestTimeout(Duration),
    /// The whole task, retries included, took longer than the resource timeout.
    #[error("the transfer did not finish within {0:?}")]
    TimedOut(Duration),
    /// The server answered with a non-2xx status.
    #[error("the server answered HTTP {code}")]
    HttpStatus {
        /// The status code.
        code: u16,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// More than the allowed number of redirects, or a redirect loop.
    #[error("too many redirects (limit {limit}); last location {last}")]
    TooManyRedirects {
        /// The redirect limit.
        limit: usize,
        /// The location that would have been followed next.
        last: String,
    },
    /// A redirect from https to http, which is refused unless allowed.
    #[error("refused redirect from {from} to insecure {to}")]
    InsecureRedirect {
        /// Where the redirect came from.
        from: String,
        /// Where it pointed.
        to: String,
    },
    /// A redirect without a usable `Location`.
    #[error("bad redirect from {from}: {reason}")]
    BadRedirect {
        /// Where the redirect came from.
        from: String,
        /// What was wrong.
        reason: String,
    },
    /// The body ended before the announced length.
    #[error("the body ended after {received} of {expected} bytes")]
    ShortBody {
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The server answered a range request with a different range, or changed size.
    #[error("the server sent an unexpected range: {0}")]
    RangeMismatch(String),
    /// The content did not match the checksum the task asked for.
    #[error("checksum mismatch ({algorithm}): expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// Algorithm name, e.g. `sha256`.
        algorithm: &'static str,
        /// Expected digest, lower-case hex.
        expected: String,
        /// Computed digest, lower-case hex.
        actual: String,
    },
    /// The disk (or a file size limit) is full; the bytes so far are kept.
    #[error("no space left while writing {path}")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// The destination exists and the conflict policy is `fail`.
    #[error("destination {0} already exists")]
    DestinationExists(PathBuf),
    /// The destination folder is missing or not usable.
    #[error("destination folder {path} is not usable: {reason}")]
    Destination {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("could not {op} {path}")]
    Io {
        /// The operation, as a verb phrase ("open", "write to", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// TLS or client configuration is unusable (bad certificate, bad proxy URL).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The caller cancelled the transfer.
    #[error("cancelled")]
    Cancelled,
    /// A file being uploaded changed (size, modification time, or replaced) since the
    /// upload's first attempt or while it was sent; nothing mixing old and new bytes is sent.
    #[error("the upload's source file {path} changed: {change}")]
    SourceChanged {
        /// The file.
        path: PathBuf,
        /// What changed, in words.
        change: String,
    },
    /// The server's reply to an upload was longer than the upload allows.
    #[error("the server's reply is longer than the {limit}-byte limit")]
    ReplyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The upload cannot be sent as described (a bad multipart field name or content type).
    #[error("invalid upload: {0}")]
    InvalidUpload(String),
}

impl ErrorKind {
    /// The stable name of this kind, as used in events and on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::InvalidUrl { .. } => "invalid_url",
            ErrorKind::UnsupportedScheme { .. } => "unsupported_scheme",
            ErrorKind::Connection { .. } => "connection",
            ErrorKind::Interrupted { .. } => "interrupted",
            ErrorKind::Tls { .. } => "tls",
            ErrorKind::RequestTimeout(_) => "request_timeout",
            ErrorKind::TimedOut(_) => "timed_out",
            ErrorKind::HttpStatus { .. } => "http_status",
            ErrorKind::TooManyRedirects { .. } => "too_many_redirects",
            ErrorKind::InsecureRedirect { .. } => "insecure_redirect",
            ErrorKind::BadRedirect { .. } => "bad_redirect",
            ErrorKind::ShortBody { .. } => "short_body",
            ErrorKind::RangeMismatch(_) => "range_mismatch",
            ErrorKind::ChecksumMismatch { .. } => "checksum_mismatch",
            ErrorKind::NoSpace { .. } => "no_space",
            ErrorKind::DestinationExists(_) => "destination_exists",
            ErrorKind::Destination { .. } => "destination",
            ErrorKind::Io { .. } => "io",
            ErrorKind::Config(_) => "config",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::SourceChanged { .. } => "source_changed",
            ErrorKind::ReplyTooLarge { .. } => "reply_too_large",
            ErrorKind::InvalidUpload(_) => "invalid_upload",
        }
    }

    /// Whether trying again later can succeed without anyone changing anything (SPEC §9).
    pub fn is_transient(&self) -> bool {
        match self {
            ErrorKind::Connection { .. }
            | ErrorKind::Interrupted { .. }
            | ErrorKind::RequestTimeout(_)
            | ErrorKind::ShortBody { .. }
            | ErrorKind::RangeMismatch(_) => true,
            ErrorKind::HttpStatus { code, .. } => {
                matches!(code, 408 | 429 | 500 | 502 | 503 | 504)
            }
            _ => false,
        }
    }

    /// Whether the bytes fetched are right and only where to put them failed (a full disk, a
    /// destination folder missing or not writable, a destination that exists): worth keeping,
    /// so the task can continue from them elsewhere or later (SPEC §15).
    pub fn keeps_bytes(&self) -> bool {
        matches!(
            self,
            ErrorKind::NoSpace { .. }
                | ErrorKind::DestinationExists(_)
                | ErrorKind::Destination { .. }
        )
    }
}

impl Error {
    /// An error of this kind with an underlying cause.
    pub fn with_source(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// See [`ErrorKind::is_transient`].
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// The HTTP status, for [`ErrorKind::HttpStatus`].
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            ErrorKind::HttpStatus { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The delay the server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::HttpStatus { retry_after, .. } => retry_after,
            _ => None,
        }
    }

    /// An I/O failure on `path`; a full disk or a file-size limit becomes [`ErrorKind::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Error {
        let path = path.into();
        let no_space = matches!(
            err.raw_os_error(),
            Some(libc_errno::ENOSPC) | Some(libc_errno::EDQUOT) | Some(libc_errno::EFBIG)
        );
        let kind = if no_space {
            ErrorKind::NoSpace { path }
        } else {
            ErrorKind::Io { op, path }
        };
        Error::with_source(kind, err)
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error { kind, source: None }
    }
}

/// The errno values the engine classifies, from rustix so no libc dependency is needed.
mod libc_errno {
    pub const ENOSPC: i32 = rustix::io::Errno::NOSPC.raw_os_error();
    pub const EDQUOT: i32 = rustix::io::Errno::DQUOT.raw_os_error();
    pub const EFBIG: i32 = rustix::io::Errno::FBIG.raw_os_error();
}

/// The full chain of causes, for logs and command-line output.
pub fn display_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
