//! One download, from URL to placed file: attempts, retries, segments, verification.
//!
//! The life of a [`Transfer`]:
//! 1. an *attempt* sends the first request (a plain `GET`, or `Range` + `If-Range` when a
//!    checkpoint says bytes are already there), follows redirects itself, and reads the answer:
//!    `206` continues, `200` restarts from zero, anything else fails the attempt;
//! 2. the answer's body streams into its segment; when ranges work and the file is large,
//!    further connections claim unfinished segments or split the largest remaining one
//!    (an idle connection takes work from the slowest);
//! 3. a ticker syncs the staging file about once a [`DownloadSpec::checkpoint_interval`] and
//!    hands the caller a [`Checkpoint`] that is durable;
//! 4. a transient failure waits out the backoff (or `Retry-After`) and tries again from the
//!    segment map; a permanent one returns [`Failure`] with the last checkpoint;
//! 5. when every byte is there: sync, verify the checksum, and place the file atomically.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::future::try_join_all;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::checkpoint::{Checkpoint, Cursor, OPEN_END, Segment, Validators};
use crate::checksum::{Checksum, Hasher};
use crate::client::{self, ClientConfig};
use crate::error::{Error, ErrorKind};
use crate::filename;
use crate::progress::Progress;
use crate::rate::Limits;
use crate::retry::{RetryPolicy, parse_retry_after};
use crate::staging::{self, Conflict, Staging};

/// Redirects followed before `too_many_redirects` (SPEC §9).
pub const MAX_REDIRECTS: usize = 20;

/// Runs transfers; holds the HTTP client (and so the connection pool) they share.
#[derive(Debug, Clone)]
pub struct Engine {
    client: reqwest::Client,
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
    /// No byte for this long → transient `request_timeout`.
    pub request_timeout: Duration,
    /// The whole download, retries included, must end within this, or it fails `timed_out`.
    pub resource_timeout: Option<Duration>,
    /// Follow https → http redirects.
    pub allow_insecure_redirects: bool,
    /// How often to sync and emit a [`Checkpoint`].
    pub checkpoint_interval: Duration,
}

impl DownloadSpec {
    /// A spec with SPEC §4's defaults: one connection, request timeout 60 s, resource timeout
    /// 7 days, checkpoints every second, exponential retry from 1 s to 10 min.
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
            request_timeout: Duration::from_secs(60),
            resource_timeout: Some(Duration::from_secs(7 * 24 * 3600)),
            allow_insecure_redirects: false,
            checkpoint_interval: Duration::from_secs(1),
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
        })?;
        let staging = Staging::open(&spec.staging).map_err(|error| Failure {
            error,
            checkpoint: spec.checkpoint.clone(),
        })?;
        let mut transfer = Transfer {
            client: &self.client,
            spec,
            url: url.clone(),
            progress,
            observer,
            staging,
            map: SegmentMap::default(),
            resource: Resource::fresh(url),
            redirects: Vec::new(),
            last_response: None,
        };
        transfer.adopt_checkpoint();
        transfer.run(cancel).await
    }
}

fn parse_url(text: &str) -> Result<Url, Error> {
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

/// What the transfer knows about the remote resource.
#[derive(Debug, Clone)]
struct Resource {
    total: Option<u64>,
    validators: Validators,
    current_url: Url,
    file_name: Option<String>,
    /// Ranged requests work (a 206 was seen, or `Accept-Ranges: bytes` announced).
    ranges: bool,
}

impl Resource {
    fn fresh(url: Url) -> Resource {
        Resource {
            total: None,
            validators: Validators::default(),
            current_url: url,
            file_name: None,
            ranges: false,
        }
    }
}

/// The segments of the file and who works on them. Locked only when a connection claims or
/// splits a segment and when a checkpoint is taken, never per chunk.
#[derive(Debug, Default)]
struct SegmentMap {
    inner: Mutex<Vec<Slot>>,
}

#[derive(Debug)]
struct Slot {
    cursor: Arc<Cursor>,
    owned: bool,
}

impl SegmentMap {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A panic while holding the lock cannot leave the vector half-updated in a way that
        // matters: every mutation is a single push or field store.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, segments: &[Segment]) {
        *self.lock() = segments
            .iter()
            .map(|s| Slot {
                cursor: Cursor::new(s.start, s.pos, s.end.unwrap_or(OPEN_END)),
                owned: false,
            })
            .collect();
    }

    fn snapshot(&self) -> Vec<Segment> {
        let mut segments: Vec<Segment> = self.lock().iter().map(|s| s.cursor.snapshot()).collect();
        segments.sort_by_key(|s| s.start);
        segments
    }

    fn release_all(&self) {
        for slot in self.lock().iter_mut() {
            slot.owned = false;
        }
    }

    fn bytes(&self) -> u64 {
        self.snapshot().iter().map(|s| s.pos - s.start).sum()
    }

    fn is_complete(&self) -> bool {
        self.lock().iter().all(|s| s.cursor.remaining() == 0)
    }

    /// The first unfinished segment, claimed.
    fn claim_first(&self) -> Option<Arc<Cursor>> {
        let mut slots = self.lock();
        let slot = slots
            .iter_mut()
            .filter(|s| s.cursor.remaining() > 0)
            .min_by_key(|s| s.cursor.start)?;
        slot.owned = true;
        Some(slot.cursor.clone())
    }

    /// Work for an idle connection: an unclaimed unfinished segment, else the second half of
    /// the largest remaining one when that is at least `2 × min_segment`.
    fn claim_or_split(&self, min_segment: u64) -> Option<Arc<Cursor>> {
        let mut slots = self.lock();
        if let Some(slot) = slots
            .iter_mut()
            .find(|s| !s.owned && s.cursor.remaining() > 0)
        {
            slot.owned = true;
            return Some(slot.cursor.clone());
        }
        let victim = slots
            .iter()
            .filter(|s| s.owned && s.cursor.end() != OPEN_END)
            .max_by_key(|s| s.cursor.remaining())?
            .cursor
            .clone();
        let remaining = victim.remaining();
        if remaining < min_segment.saturating_mul(2) {
            return None;
        }
        let end = victim.end();
        // Split on a 64 KiB boundary: tidy ranges, and page-aligned writes.
        let mid = (victim.pos() + remaining / 2) & !0xFFFF;
        if mid <= victim.pos() || mid >= end {
            return None;
        }
        victim.end.store(mid, std::sync::atomic::Ordering::Release);
        let cursor = Cursor::new(mid, mid, end);
        slots.push(Slot {
            cursor: cursor.clone(),
            owned: true,
        });
        Some(cursor)
    }
}

struct Transfer<'a> {
    client: &'a reqwest::Client,
    spec: &'a DownloadSpec,
    url: Url,
    progress: &'a Progress,
    observer: &'a dyn Observer,
    staging: Staging,
    map: SegmentMap,
    resource: Resource,
    redirects: Vec<Redirect>,
    last_response: Option<(u16, HeaderMap)>,
}

/// How an attempt's first request went.
enum Opening {
    /// A body to stream into the given segment.
    Body(reqwest::Response, Arc<Cursor>),
    /// Every byte is already there.
    Complete,
}

impl<'a> Transfer<'a> {
    /// Takes over the caller's checkpoint if it still describes the staging file; otherwise
    /// starts from zero (never appends to the wrong bytes).
    fn adopt_checkpoint(&mut self) {
        let Some(cp) = &self.spec.checkpoint else {
            return;
        };
        let staging_len = self.staging.len().unwrap_or(0);
        // The URL may have changed (a signed URL renewed); the validators guard the bytes.
        let usable = cp.is_consistent()
            && cp.validators.if_range().is_some()
            && staging_len >= cp.high_water();
        if !usable {
            tracing::info!(
                staging_len,
                recorded = cp.high_water(),
                "checkpoint does not match the staging file; starting from zero"
            );
            return;
        }
        self.resource = Resource {
            total: cp.total,
            validators: cp.validators.clone(),
            current_url: Url::parse(&cp.current_url).unwrap_or_else(|_| self.url.clone()),
            file_name: cp.file_name.clone(),
            ranges: true,
        };
        self.map.set(&cp.segments);
        self.progress.reset(cp.bytes(), cp.total);
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        let segments = self.map.snapshot();
        if segments.is_empty() {
            return None;
        }
        Some(Checkpoint {
            url: self.spec.url.clone(),
            current_url: self.resource.current_url.to_string(),
            total: self.resource.total,
            validators: self.resource.validators.clone(),
            segments,
            file_name: self.resource.file_name.clone(),
        })
    }

    async fn sync(&self) -> Result<(), Error> {
        let staging = self.staging.clone();
        blocking(move || staging.sync_data()).await
    }

    /// Syncs, then reports the checkpoint that is now durable.
    async fn emit_checkpoint(&self) -> Option<Checkpoint> {
        let checkpoint = self.checkpoint()?;
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "could not sync the staging file; checkpoint skipped");
            return Some(checkpoint);
        }
        self.observer.on_event(Event::Checkpoint(&checkpoint));
        Some(checkpoint)
    }

    async fn run(&mut self, cancel: &CancellationToken) -> Result<Downloaded, Failure> {
        let deadline = self.spec.resource_timeout.map(|t| Instant::now() + t);
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let timed_out = || {
            Error::from(ErrorKind::TimedOut(
                self.spec.resource_timeout.unwrap_or_default(),
            ))
        };
        let mut failed_attempts = 0u32;
        loop {
            let before = self.map.bytes();
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => Err(ErrorKind::Cancelled.into()),
                () = &mut expired => Err(timed_out()),
                r = self.attempt() => r,
            };
            self.map.release_all();
            let error = match outcome {
                Ok(hasher) => return self.finish(hasher).await,
                Err(e) => e,
            };
            if !error.is_transient() {
                return Err(self.fail(error).await);
            }
            if self.map.bytes() > before {
                failed_attempts = 0;
            }
            failed_attempts += 1;
            if self
                .spec
                .retry
                .max_attempts
                .is_some_and(|max| failed_attempts >= max)
            {
                return Err(self.fail(error).await);
            }
            let delay = self.spec.retry.delay(failed_attempts, error.retry_after());
            tracing::info!(error = %error, attempt = failed_attempts, ?delay, "retrying");
            self.observer.on_event(Event::Retrying {
                attempt: failed_attempts,
                delay,
                error: &error,
            });
            self.emit_checkpoint().await;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(self.fail(ErrorKind::Cancelled.into()).await),
                () = &mut expired => return Err(self.fail(timed_out()).await),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn fail(&self, error: Error) -> Failure {
        let checkpoint = self.emit_checkpoint().await;
        Failure { error, checkpoint }
    }

    /// One attempt: open, stream every unfinished segment, return the inline hasher (if it
    /// saw the file from byte 0 to the end).
    async fn attempt(&mut self) -> Result<Option<InlineHash>, Error> {
        let (response, first) = match self.open().await? {
            Opening::Complete => return Ok(None),
            Opening::Body(response, cursor) => (response, cursor),
        };
        let host = self
            .resource
            .current_url
            .host_str()
            .unwrap_or("")
            .to_owned();
        let inline = self.spec.checksum.as_ref().and_then(|c| {
            (first.start == 0 && first.pos() == 0).then(|| InlineHash {
                hasher: c.algorithm.hasher(),
                upto: 0,
            })
        });
        let segmented = self.spec.connections > 1
            && self.resource.ranges
            && self.resource.total.is_some()
            && self.resource.validators.if_range().is_some();
        let helpers = if segmented {
            self.spec.connections - 1
        } else {
            0
        };
        let this = &*self;
        let primary = this.worker(Some((response, first)), inline, &host);
        let others = (0..helpers).map(|_| this.worker(None, None, &host));
        let workers = async move {
            let (hash, _) = futures_util::future::try_join(primary, try_join_all(others)).await?;
            Ok::<_, Error>(hash)
        };
        tokio::pin!(workers);
        let mut ticker = tokio::time::interval(self.spec.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                r = &mut workers => {
                    let hash = r?;
                    return if self.map.is_complete() {
                        Ok(hash)
                    } else {
                        // Every connection stopped with work left (a split that came too late).
                        Err(ErrorKind::Interrupted { host: host.clone() }.into())
                    };
                }
                _ = ticker.tick() => {
                    self.emit_checkpoint().await;
                }
            }
        }
    }

    /// Sends the attempt's first request and decides what its answer means.
    async fn open(&mut self) -> Result<Opening, Error> {
        let resuming = self.map.claim_first();
        if resuming.is_none() && self.map.bytes() > 0 {
            return Ok(Opening::Complete);
        }
        let validator = self.resource.validators.if_range().map(str::to_owned);
        let mut headers = HeaderMap::new();
        if let Some(cursor) = &resuming {
            headers.insert(header::RANGE, range_header(cursor.pos(), cursor.end()));
            if let Some(v) = validator
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                headers.insert(header::IF_RANGE, v);
            }
        }
        let url = self.url.clone();
        let response = self.send(&url, headers, true).await?;
        let status = response.status().as_u16();
        self.last_response = Some((status, response.headers().clone()));

        match status {
            206 => {
                let Some(cursor) = resuming else {
                    return Err(ErrorKind::RangeMismatch(
                        "a 206 answer to a request without Range".into(),
                    )
                    .into());
                };
                let range = content_range(response.headers()).ok_or_else(|| {
                    ErrorKind::RangeMismatch("206 without a valid Content-Range".into())
                })?;
                let fresh = Validators::from_headers(response.headers());
                let changed = fresh.etag.is_some() && fresh.etag != self.resource.validators.etag;
                if range.start != cursor.pos()
                    || self.resource.total.is_some_and(|t| Some(t) != range.total)
                    || changed
                {
                    self.restart_from_zero();
                    return Err(ErrorKind::RangeMismatch(format!(
                        "asked for bytes {}-, got {}-{}/{:?}",
                        cursor.pos(),
                        range.start,
                        range.end_inclusive,
                        range.total
                    ))
                    .into());
                }
                if self.resource.total.is_none() {
                    self.resource.total = range.total;
                }
                self.progress.reset(self.map.bytes(), self.resource.total);
                self.observer.on_event(Event::ResumedAtOffset {
                    offset: self.map.bytes(),
                    expected: self.resource.total,
                });
                Ok(Opening::Body(response, cursor))
            }
            200..=299 => {
                let had_bytes = self.map.bytes() > 0;
                self.start_fresh(&response)?;
                if had_bytes {
                    self.observer.on_event(Event::ResumedAtOffset {
                        offset: 0,
                        expected: self.resource.total,
                    });
                }
                let cursor = self
                    .map
                    .claim_first()
                    .unwrap_or_else(|| Cursor::new(0, 0, 0));
                Ok(Opening::Body(response, cursor))
            }
            416 => {
                self.restart_from_zero();
                Err(ErrorKind::RangeMismatch("the server refused the range (416)".into()).into())
            }
            code => {
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                Err(ErrorKind::HttpStatus { code, retry_after }.into())
            }
        }
    }

    /// Forgets every byte: the next attempt starts with a plain `GET`.
    fn restart_from_zero(&mut self) {
        self.map.set(&[]);
        self.resource.validators = Validators::default();
        self.resource.total = None;
        self.progress.reset(0, None);
    }

    /// A full (200) answer: the staging file starts over with this response's identity.
    fn start_fresh(&mut self, response: &reqwest::Response) -> Result<(), Error> {
        let headers = response.headers();
        let total = response.content_length().filter(|_| !is_chunked(headers));
        self.resource.total = total;
        self.resource.validators = Validators::from_headers(headers);
        self.resource.ranges = headers
            .get(header::ACCEPT_RANGES)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
        if matches!(self.spec.destination, Destination::Folder(_)) {
            let disposition = headers
                .get(header::CONTENT_DISPOSITION)
                .and_then(|v| v.to_str().ok());
            self.resource.file_name = Some(filename::choose(disposition, response.url()));
        }
        self.staging.truncate()?;
        if let Some(total) = total {
            self.staging.preallocate(total)?;
        }
        self.map.set(&[Segment {
            start: 0,
            pos: 0,
            end: total,
        }]);
        self.progress.reset(0, total);
        Ok(())
    }

    /// Sends a GET, following redirects by hand (SPEC §9).
    async fn send(
        &mut self,
        url: &Url,
        extra: HeaderMap,
        record: bool,
    ) -> Result<reqwest::Response, Error> {
        let mut headers = self.spec.headers.clone();
        headers.extend(extra);
        let mut current = url.clone();
        let mut visited = vec![current.clone()];
        loop {
            let request = self.client.get(current.clone()).headers(headers.clone());
            let response = tokio::time::timeout(self.spec.request_timeout, request.send())
                .await
                .map_err(|_| Error::from(ErrorKind::RequestTimeout(self.spec.request_timeout)))?
                .map_err(|e| classify(e, &current))?;
            let status = response.status();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok());
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let (true, Some(location)) = (is_redirect, location) else {
                if record {
                    self.resource.current_url = current;
                }
                return Ok(response);
            };
            let next = current.join(location).map_err(|e| ErrorKind::BadRedirect {
                from: current.to_string(),
                reason: format!("unparsable Location {location:?}: {e}"),
            })?;
            check_scheme(&next, next.as_str())?;
            if current.scheme() == "https"
                && next.scheme() == "http"
                && !self.spec.allow_insecure_redirects
            {
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
                for secret in [
                    header::AUTHORIZATION,
                    header::COOKIE,
                    header::PROXY_AUTHORIZATION,
                ] {
                    headers.remove(secret);
                }
            }
            let redirect = Redirect {
                from: current.clone(),
                to: next.clone(),
                status: status.as_u16(),
            };
            // Each attempt follows the chain again; report each hop once.
            if record && !self.redirects.contains(&redirect) {
                self.observer.on_event(Event::Redirected {
                    from: &redirect.from,
                    to: &redirect.to,
                    status: redirect.status,
                });
                self.redirects.push(redirect);
            }
            visited.push(next.clone());
            current = next;
        }
    }

    /// One connection's work: stream its first body (if any), then keep claiming or splitting
    /// segments until none is worth taking.
    async fn worker(
        &self,
        mut first: Option<(reqwest::Response, Arc<Cursor>)>,
        mut inline: Option<InlineHash>,
        host: &str,
    ) -> Result<Option<InlineHash>, Error> {
        loop {
            let (response, cursor) = match first.take() {
                Some(opened) => opened,
                None => {
                    let Some(cursor) = self.map.claim_or_split(self.spec.min_segment) else {
                        return Ok(inline);
                    };
                    let response = self.fetch_range(&cursor).await?;
                    (response, cursor)
                }
            };
            self.stream(response, &cursor, &mut inline, host).await?;
        }
    }

    /// A ranged request for the rest of `cursor`, checked to answer exactly that range of the
    /// same resource.
    async fn fetch_range(&self, cursor: &Cursor) -> Result<reqwest::Response, Error> {
        let mut request = self
            .client
            .get(self.resource.current_url.clone())
            .headers(self.spec.headers.clone())
            .header(header::RANGE, range_header(cursor.pos(), cursor.end()));
        if let Some(v) = self.resource.validators.if_range() {
            request = request.header(header::IF_RANGE, v);
        }
        let url = &self.resource.current_url;
        let response = tokio::time::timeout(self.spec.request_timeout, request.send())
            .await
            .map_err(|_| Error::from(ErrorKind::RequestTimeout(self.spec.request_timeout)))?
            .map_err(|e| classify(e, url))?;
        let status = response.status().as_u16();
        let range = content_range(response.headers());
        match (status, range) {
            (206, Some(r)) if r.start == cursor.pos() && r.total == self.resource.total => {
                Ok(response)
            }
            (206 | 200, _) => Err(ErrorKind::RangeMismatch(format!(
                "a segment request for bytes {}- got HTTP {status}: the resource changed",
                cursor.pos()
            ))
            .into()),
            (code, _) => Err(ErrorKind::HttpStatus {
                code,
                retry_after: None,
            }
            .into()),
        }
    }

    /// Writes a body into `cursor`'s range until the range is full or the body ends.
    async fn stream(
        &self,
        mut response: reqwest::Response,
        cursor: &Cursor,
        inline: &mut Option<InlineHash>,
        host: &str,
    ) -> Result<(), Error> {
        let timeout = self.spec.request_timeout;
        loop {
            let end = cursor.end();
            let pos = cursor.pos();
            if pos >= end {
                // Full (possibly because another connection took the rest): drop the body.
                return Ok(());
            }
            let chunk = tokio::time::timeout(timeout, response.chunk())
                .await
                .map_err(|_| Error::from(ErrorKind::RequestTimeout(timeout)))?
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Interrupted {
                            host: host.to_owned(),
                        },
                        e,
                    )
                })?;
            let Some(chunk) = chunk else {
                if end == OPEN_END {
                    // Size unknown until now: the body's end is the file's end.
                    cursor.end.store(pos, std::sync::atomic::Ordering::Release);
                    return Ok(());
                }
                return Err(ErrorKind::ShortBody {
                    expected: end,
                    received: pos,
                }
                .into());
            };
            let take = chunk
                .len()
                .min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            let data = &chunk[..take];
            self.spec.limits.acquire(take).await;
            self.staging.write_at(data, pos)?;
            if let Some(h) = inline.as_mut().filter(|h| h.upto == pos) {
                h.hasher.update(data);
                h.upto += take as u64;
            }
            cursor
                .pos
                .store(pos + take as u64, std::sync::atomic::Ordering::Release);
            self.progress.add(take as u64);
        }
    }

    /// Every byte is there: sync, verify, place.
    async fn finish(&mut self, inline: Option<InlineHash>) -> Result<Downloaded, Failure> {
        match self.finish_inner(inline).await {
            Ok(done) => Ok(done),
            Err(error) if matches!(error.kind(), ErrorKind::ChecksumMismatch { .. }) => {
                // The bytes are wrong: keeping them for a resume would only repeat the failure.
                let _ = std::fs::remove_file(self.staging.path());
                Err(Failure {
                    error,
                    checkpoint: None,
                })
            }
            Err(error) => Err(self.fail(error).await),
        }
    }

    async fn finish_inner(&mut self, inline: Option<InlineHash>) -> Result<Downloaded, Error> {
        let total = self
            .map
            .snapshot()
            .iter()
            .filter_map(|s| s.end)
            .max()
            .unwrap_or(0);
        self.resource.total = Some(total);
        let staging = self.staging.clone();
        let checksum = self.spec.checksum.clone();
        let digest = blocking(move || {
            if staging.len()? != total {
                staging_set_len(&staging, total)?;
            }
            staging.sync_data()?;
            verify(&staging, checksum.as_ref(), inline, total)
        })
        .await?;

        let target = match &self.spec.destination {
            Destination::File(path) => path.clone(),
            Destination::Folder(dir) => dir.join(
                self.resource
                    .file_name
                    .clone()
                    .unwrap_or_else(|| filename::choose(None, &self.resource.current_url)),
            ),
        };
        let source = self.staging.path().to_owned();
        let conflict = self.spec.conflict;
        let path = blocking(move || staging::place(&source, &target, conflict)).await?;
        let (status, headers) = self.last_response.take().unwrap_or_default();
        Ok(Downloaded {
            path,
            bytes: total,
            final_url: self.resource.current_url.clone(),
            redirects: std::mem::take(&mut self.redirects),
            status,
            headers,
            digest,
        })
    }
}

fn staging_set_len(staging: &Staging, len: u64) -> Result<(), Error> {
    // Preallocation may have reserved more than a body that turned out shorter.
    std::fs::OpenOptions::new()
        .write(true)
        .open(staging.path())
        .and_then(|f| f.set_len(len))
        .map_err(|e| Error::io("truncate", staging.path(), e))
}

/// A hasher fed in file order while the bytes are written; `upto` is how far it has seen.
struct InlineHash {
    hasher: Hasher,
    upto: u64,
}

/// Finishes the digest (reading back whatever the inline hasher did not see) and compares.
fn verify(
    staging: &Staging,
    checksum: Option<&Checksum>,
    inline: Option<InlineHash>,
    total: u64,
) -> Result<Option<String>, Error> {
    let Some(checksum) = checksum else {
        return Ok(None);
    };
    let (mut hasher, upto) = match inline {
        Some(h) => (h.hasher, h.upto),
        None => (checksum.algorithm.hasher(), 0),
    };
    staging.hash_range(&mut hasher, upto, total)?;
    let actual = hasher.finish_hex();
    if actual != checksum.expected {
        return Err(ErrorKind::ChecksumMismatch {
            algorithm: checksum.algorithm.name(),
            expected: checksum.expected.clone(),
            actual,
        }
        .into());
    }
    Ok(Some(actual))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Io {
                op: "run blocking file work for",
                path: PathBuf::from("staging"),
            },
            e,
        )
    })?
}

fn range_header(pos: u64, end: u64) -> HeaderValue {
    let text = if end == OPEN_END {
        format!("bytes={pos}-")
    } else {
        format!("bytes={pos}-{}", end - 1)
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("bytes=0-"))
}

fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// `Content-Range: bytes a-b/n` (n may be `*`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end_inclusive: u64,
    total: Option<u64>,
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    parse_content_range(value)
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end_inclusive: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end_inclusive && total.is_none_or(|t| end_inclusive < t)).then_some(ContentRange {
        start,
        end_inclusive,
        total,
    })
}

/// Maps a reqwest failure to an error kind: certificate problems are permanent, everything
/// else on the way to a response is a transient connection problem.
fn classify(err: reqwest::Error, url: &Url) -> Error {
    let host = url.host_str().unwrap_or("").to_owned();
    let kind = if is_tls_failure(&err) {
        ErrorKind::Tls { host }
    } else {
        ErrorKind::Connection { host }
    };
    Error::with_source(kind, err)
}

fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    // io::Error hides the error it wraps from source(): look inside.
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && is_tls_failure(inner)
    {
        return true;
    }
    err.source().is_some_and(is_tls_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            parse_content_range("bytes 10-19/100"),
            Some(ContentRange {
                start: 10,
                end_inclusive: 19,
                total: Some(100)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*").map(|r| r.total),
            Some(None)
        );
        assert_eq!(parse_content_range("bytes 20-10/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
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

    #[test]
    fn splits_the_largest_remaining_segment() {
        let map = SegmentMap::default();
        map.set(&[Segment {
            start: 0,
            pos: 0,
            end: Some(8 << 20),
        }]);
        let first = map.claim_first().unwrap();
        let second = map.claim_or_split(1 << 20).unwrap();
        assert_eq!(first.end(), 4 << 20);
        assert_eq!((second.start, second.end()), (4 << 20, 8 << 20));
        // The victim's work advances: it now has the most left, so it is split next.
        first
            .pos
            .store(1 << 20, std::sync::atomic::Ordering::Release);
        let third = map.claim_or_split(1 << 20).unwrap();
        assert_eq!(second.end(), 6 << 20);
        assert_eq!((third.start, third.end()), (6 << 20, 8 << 20));
        // Each remaining piece is now below 2 × min_segment.
        assert!(map.claim_or_split(2 << 20).is_none());
        let snapshot = map.snapshot();
        assert_eq!(snapshot.len(), 3);
        assert_eq!(
            snapshot.iter().map(|s| s.pos - s.start).sum::<u64>(),
            1 << 20
        );
        assert!(
            Checkpoint {
                url: String::new(),
                current_url: String::new(),
                total: Some(8 << 20),
                validators: Validators::default(),
                segments: snapshot,
                file_name: None
            }
            .is_consistent()
        );
    }
}
