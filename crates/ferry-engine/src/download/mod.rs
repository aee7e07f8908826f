//! One download, from URL to placed file: attempts, retries, segments, verification.
//!
//! The life of a [`Transfer`]:
//! 1. an *attempt* sends the first request (a plain `GET`, or `Range` + `If-Range` when a
//!    checkpoint says bytes are already there), follows redirects itself, and reads the answer:
//!    `206` continues, `200` restarts from zero, anything else fails the attempt;
//! 2. the answer's body streams into its segment; when ranges work and the file is large,
//!    further connections claim unfinished segments or split the largest remaining one
//!    (an idle connection takes work from the slowest);
//! 3. a ticker syncs the staging file about once a [`DownloadSpec::checkpoint_interval`], or
//!    sooner once [`DownloadSpec::checkpoint_bytes`] new bytes are there, and hands the
//!    caller a [`Checkpoint`] that is durable;
//! 4. a transient failure waits out the backoff (or `Retry-After`) and tries again from the
//!    segment map; a permanent one returns [`Failure`] with the last checkpoint;
//! 5. when every byte is there: sync, verify the checksum, and place the file atomically.

pub(crate) mod request;
mod segments;
mod transfer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::checkpoint::Checkpoint;
use crate::checksum::Checksum;
use crate::client::{self, ClientConfig};
use crate::dirsync::FolderSyncer;
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::rate::Limits;
use crate::retry::{RetryLater, RetryPolicy};
use crate::staging::{Conflict, Staging};
use transfer::Transfer;

/// Redirects followed before `too_many_redirects` (SPEC §9).
pub const MAX_REDIRECTS: usize = 20;

/// Runs transfers; holds the HTTP client (and so the connection pool) they share.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) client: reqwest::Client,
    /// Shares folder syncs among files placed into one folder at once.
    folders: Arc<FolderSyncer>,
}

/// Where the finished file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Exactly this path.
    File(PathBuf),
    /// This folder, under the name the server proposes (`Content-Disposition`, else the URL
    /// path), sanitised.
    Folder(PathBuf),
}

/// Everything one download needs. Build it with [`DownloadSpec::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    /// The URL (`http` or `https`).
    pub url: String,
    /// Extra request headers. `Authorization` and `Cookie` are dropped when a redirect
    /// leaves the origin.
    pub headers: HeaderMap,
    /// The staging file the bytes are written to until the file is complete.
    pub staging: PathBuf,
    /// Where the finished file goes.
    pub destination: Destination,
    /// What to do if the destination exists.
    pub conflict: Conflict,
    /// An integrity check; a mismatch fails the download and nothing is placed.
    pub checksum: Option<Checksum>,
    /// Connections to use at most (1: no segmentation).
    pub connections: usize,
    /// Segments are not split below this size.
    pub min_segment: u64,
    /// Resume from here.
    pub checkpoint: Option<Checkpoint>,
    /// Bandwidth limits (per transfer and shared).
    pub limits: Limits,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Attempts that failed in a row before this run (one that handed back a retry): the
    /// backoff and `max_attempts` go on from there.
    pub failed_attempts: u32,
    /// Hand a transient failure back ([`Failure::retry`]) instead of sleeping until the next
    /// attempt; the `Retrying` event and a checkpoint are still reported first.
    pub hand_back_retries: bool,
    /// No byte for this long → transient `request_timeout`.
    pub request_timeout: Duration,
    /// The whole download, retries included, must end within this, or it fails `timed_out`.
    pub resource_timeout: Option<Duration>,
    /// Follow https → http redirects.
    pub allow_insecure_redirects: bool,
    /// How often to sync and emit a [`Checkpoint`]…
    pub checkpoint_interval: Duration,
    /// …or after how many new bytes, whichever comes first (a crash then loses at most
    /// about this much of a fast transfer).
    pub checkpoint_bytes: u64,
}

/// The default [`DownloadSpec::checkpoint_bytes`]: 16 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 16 << 20;

impl DownloadSpec {
    /// A spec with SPEC §4's defaults: one connection, request timeout 60 s, resource timeout
    /// 7 days, checkpoints every second or 16 MiB, exponential retry from 1 s to 10 min.
    pub fn new(url: impl Into<String>, staging: PathBuf, destination: Destination) -> DownloadSpec {
        DownloadSpec {
            url: url.into(),
            headers: HeaderMap::new(),
            staging,
            destination,
            conflict: Conflict::default(),
            checksum: None,
            connections: 1,
            min_segment: 1 << 20,
            checkpoint: None,
            limits: Limits::none(),
            retry: RetryPolicy::default(),
            failed_attempts: 0,
            hand_back_retries: false,
            request_timeout: Duration::from_secs(60),
            resource_timeout: Some(Duration::from_secs(7 * 24 * 3600)),
            allow_insecure_redirects: false,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

/// Something that happened during a download, for the caller to report or persist.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A redirect was followed.
    Redirected {
        /// Where it came from.
        from: &'a Url,
        /// Where it led.
        to: &'a Url,
        /// The redirect status.
        status: u16,
    },
    /// An attempt continues from bytes already there (`offset` 0: a restart from zero
    /// after the resource changed or ranges were refused).
    ResumedAtOffset {
        /// Bytes kept.
        offset: u64,
        /// Total size, if known.
        expected: Option<u64>,
    },
    /// A transient failure; the next attempt starts after `delay`.
    Retrying {
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// Wait before the next one.
        delay: Duration,
        /// What failed.
        error: &'a Error,
    },
    /// The staging file is synced up to this checkpoint: persist it to resume later.
    Checkpoint(&'a Checkpoint),
}

/// Receives [`Event`]s. Closures `Fn(Event)` implement it; `()` ignores everything.
pub trait Observer: Send + Sync {
    /// Called on the download's task; keep it short.
    fn on_event(&self, event: Event<'_>);
}

impl Observer for () {
    fn on_event(&self, _: Event<'_>) {}
}

impl<F: Fn(Event<'_>) + Send + Sync> Observer for F {
    fn on_event(&self, event: Event<'_>) {
        self(event)
    }
}

/// A redirect that was followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// From.
    pub from: Url,
    /// To.
    pub to: Url,
    /// Status (301, 302, 303, 307, 308).
    pub status: u16,
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Where the file was placed.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The URL after redirects.
    pub final_url: Url,
    /// Redirects followed, in order.
    pub redirects: Vec<Redirect>,
    /// Status of the last response.
    pub status: u16,
    /// Headers of the last response.
    pub headers: HeaderMap,
    /// The verified digest, when a checksum was asked for.
    pub digest: Option<String>,
}

/// A download that ended without a file: why, and where to resume from.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: Error,
    /// The last durable checkpoint (`None` when nothing worth keeping was written, or the
    /// bytes were discarded, e.g. after a checksum mismatch).
    pub checkpoint: Option<Checkpoint>,
    /// Set when the error is transient and the spec asked to hand retries back: when to try
    /// again.
    pub retry: Option<RetryLater>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl Engine {
    /// An engine with its own client and connection pool.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for an unusable proxy URL or root certificate.
    pub fn new(config: &ClientConfig) -> Result<Engine, Error> {
        Ok(Engine {
            client: client::build(config)?,
            folders: Arc::default(),
        })
    }

    /// An engine with its own client built from `config` (e.g. a session's TLS material),
    /// sharing this one's folder syncs.
    ///
    /// # Errors
    /// As [`Engine::new`], and for an unusable client identity.
    pub fn with_client(&self, config: &ClientConfig) -> Result<Engine, Error> {
        Ok(Engine {
            client: client::build(config)?,
            folders: self.folders.clone(),
        })
    }

    /// Runs a download to the end: placed file, permanent failure, cancellation or resource
    /// timeout. Progress goes to `progress`, events to `observer`.
    ///
    /// # Errors
    /// A [`Failure`] whose error says why (see [`ErrorKind`]) and which carries the
    /// checkpoint to resume from. Cancelling via `cancel` yields [`ErrorKind::Cancelled`].
    pub async fn download(
        &self,
        spec: &DownloadSpec,
        progress: &Progress,
        observer: &dyn Observer,
        cancel: &CancellationToken,
    ) -> Result<Downloaded, Failure> {
        let url = parse_url(&spec.url).map_err(|error| Failure {
            error,
            checkpoint: spec.checkpoint.clone(),
            retry: None,
        })?;
        let staging = Staging::open(&spec.staging).map_err(|error| Failure {
            error,
            checkpoint: spec.checkpoint.clone(),
            retry: None,
        })?;
        let mut transfer = Transfer::new(
            &self.client,
            &self.folders,
            spec,
            url,
            progress,
            observer,
            staging,
        );
        transfer.adopt_checkpoint();
        transfer.run(cancel).await
    }
}

/// Parses and checks a URL as a download would: `http`/`https` with a host.
///
/// # Errors
/// [`ErrorKind::InvalidUrl`] or [`ErrorKind::UnsupportedScheme`], naming the URL.
pub fn parse_url(text: &str) -> Result<Url, Error> {
    let url = Url::parse(text.trim()).map_err(|e| ErrorKind::InvalidUrl {
        url: text.to_owned(),
        reason: e.to_string(),
    })?;
    check_scheme(&url, text)?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ErrorKind::InvalidUrl {
            url: text.to_owned(),
            reason: "it has no host".into(),
        }
        .into());
    }
    Ok(url)
}

/// The target of a redirect from `current` to `location`, checked as SPEC §9 asks (a URL
/// of an allowed scheme, no `https` → `http` unless allowed, no loop, at most
/// [`MAX_REDIRECTS`] hops after `visited`), with the secret headers dropped from `headers`
/// when it leaves `current`'s origin. Downloads and uploads follow redirects with it.
pub(crate) fn redirect_target(
    current: &Url,
    location: &str,
    visited: &[Url],
    allow_insecure: bool,
    headers: &mut HeaderMap,
) -> Result<Url, Error> {
    let next = current.join(location).map_err(|e| ErrorKind::BadRedirect {
        from: current.to_string(),
        reason: format!("unparsable Location {location:?}: {e}"),
    })?;
    check_scheme(&next, next.as_str())?;
    if current.scheme() == "https" && next.scheme() == "http" && !allow_insecure {
        return Err(ErrorKind::InsecureRedirect {
            from: current.to_string(),
            to: next.to_string(),
        }
        .into());
    }
    if visited.len() > MAX_REDIRECTS || visited.contains(&next) {
        return Err(ErrorKind::TooManyRedirects {
            limit: MAX_REDIRECTS,
            last: next.to_string(),
        }
        .into());
    }
    if next.origin() != current.origin() {
        drop_credentials(headers);
    }
    Ok(next)
}

/// The headers of a request: the session's, with the task's replacing every value of a name
/// it sets (SPEC §4: headers "per session, overridable per task"); a name repeated within one
/// of them keeps all its values.
pub fn layered_headers(mut session: HeaderMap, task: HeaderMap) -> HeaderMap {
    for name in task.keys() {
        session.remove(name);
    }
    for (name, value) in &task {
        session.append(name.clone(), value.clone());
    }
    session
}

/// Response headers as pairs, in order: lower-case names, values decoded lossily.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// Adds `User-Agent: agent` to `headers` unless they have one (which then wins).
///
/// # Errors
/// [`ErrorKind::Config`] when `agent` is not a valid header value.
pub fn add_user_agent(headers: &mut HeaderMap, agent: &str) -> Result<(), Error> {
    let value = http::HeaderValue::from_str(agent).map_err(|_| {
        ErrorKind::Config(format!(
            "user_agent {agent:?} is not a valid header value (control characters?)"
        ))
    })?;
    headers.entry(http::header::USER_AGENT).or_insert(value);
    Ok(())
}

/// Removes the headers that carry credentials: they are never sent to another origin than
/// the one they were given for (SPEC §9).
pub(crate) fn drop_credentials(headers: &mut HeaderMap) {
    for secret in [
        http::header::AUTHORIZATION,
        http::header::COOKIE,
        http::header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(secret);
    }
}

/// Resolves when a transfer's resource timeout, counted from now, has passed (never without
/// one).
pub(crate) async fn resource_deadline(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// Whether an attempt `delay` from now would come at or after the resource timeout's end
/// (`ends_at`): a run that would hand back its retry fails `timed_out` instead, as a run
/// waiting in place would at that end.
pub(crate) fn past_end(delay: Duration, ends_at: Option<tokio::time::Instant>) -> bool {
    ends_at.is_some_and(|end| delay >= end.saturating_duration_since(tokio::time::Instant::now()))
}

fn check_scheme(url: &Url, text: &str) -> Result<(), Error> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(ErrorKind::UnsupportedScheme {
            scheme: other.to_owned(),
            url: text.to_owned(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_headers_replace_the_sessions_of_the_same_name() {
        let map = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, http::HeaderValue::from_static(v));
            }
            m
        };
        let session = map(&[
            ("authorization", "Bearer s"),
            ("x-app", "1"),
            ("accept", "a"),
        ]);
        let task = map(&[
            ("authorization", "Bearer t"),
            ("accept", "b"),
            ("accept", "c"),
        ]);
        let merged = layered_headers(session, task);
        let all = |name| {
            merged
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("authorization"), ["Bearer t"]);
        assert_eq!(all("accept"), ["b", "c"]);
        assert_eq!(all("x-app"), ["1"]);
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        let err = parse_url("ftp://example.com/x").unwrap_err();
        assert_eq!(err.kind().code(), "unsupported_scheme");
        assert!(err.to_string().contains("ftp"));
        let err = parse_url("not a url").unwrap_err();
        assert_eq!(err.kind().code(), "invalid_url");
        assert!(err.to_string().contains("not a url"));
    }
}
