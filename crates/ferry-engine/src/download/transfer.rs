//! The state machine of one download: attempts, retries, workers, checkpoints, finishing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures_util::future::try_join_all;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::past_end;
use super::request::{content_range, is_chunked, range_header};
use super::segments::SegmentMap;
use super::{
    Destination, DownloadSpec, Downloaded, Event, Failure, Observer, Redirect, resource_deadline,
};
use crate::checkpoint::{Checkpoint, Cursor, OPEN_END, Segment, Validators};
use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::dirsync::FolderSyncer;
use crate::error::{Error, ErrorKind};
use crate::filename;
use crate::progress::Progress;
use crate::retry::{RetryLater, parse_retry_after};
use crate::staging::{self, Staging};

/// How often the checkpoint ticker looks at the byte count (at most).
const CHECKPOINT_LOOK: Duration = Duration::from_millis(50);

/// What the transfer knows about the remote resource.
#[derive(Debug, Clone)]
pub(super) struct Resource {
    pub(super) total: Option<u64>,
    pub(super) validators: Validators,
    pub(super) current_url: Url,
    pub(super) file_name: Option<String>,
    /// Ranged requests work (a 206 was seen, or `Accept-Ranges: bytes` announced).
    pub(super) ranges: bool,
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

pub(super) struct Transfer<'a> {
    pub(super) client: &'a reqwest::Client,
    folders: &'a Arc<FolderSyncer>,
    pub(super) spec: &'a DownloadSpec,
    pub(super) url: Url,
    pub(super) progress: &'a Progress,
    pub(super) observer: &'a dyn Observer,
    pub(super) staging: Staging,
    pub(super) map: SegmentMap,
    pub(super) resource: Resource,
    pub(super) redirects: Vec<Redirect>,
    pub(super) last_response: Option<(u16, HeaderMap)>,
}

/// How an attempt's first request went.
enum Opening {
    /// A body to stream into the given segment.
    Body(reqwest::Response, Arc<Cursor>),
    /// Every byte is already there.
    Complete,
}

impl<'a> Transfer<'a> {
    pub(super) fn new(
        client: &'a reqwest::Client,
        folders: &'a Arc<FolderSyncer>,
        spec: &'a DownloadSpec,
        url: Url,
        progress: &'a Progress,
        observer: &'a dyn Observer,
        staging: Staging,
    ) -> Transfer<'a> {
        Transfer {
            client,
            folders,
            spec,
            resource: Resource::fresh(url.clone()),
            url,
            progress,
            observer,
            staging,
            map: SegmentMap::default(),
            redirects: Vec::new(),
            last_response: None,
        }
    }

    /// Takes over the caller's checkpoint if it still describes the staging file; otherwise
    /// starts from zero (never appends to the wrong bytes).
    pub(super) fn adopt_checkpoint(&mut self) {
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

    /// Syncs, then reports the checkpoint that is now durable (`None` if it is not).
    async fn emit_checkpoint(&self) -> Option<Checkpoint> {
        let checkpoint = self.checkpoint()?;
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "could not sync the staging file; checkpoint skipped");
            return None;
        }
        self.observer.on_event(Event::Checkpoint(&checkpoint));
        Some(checkpoint)
    }

    pub(super) async fn run(&mut self, cancel: &CancellationToken) -> Result<Downloaded, Failure> {
        let expired = resource_deadline(self.spec.resource_timeout);
        tokio::pin!(expired);
        let timed_out = || {
            Error::from(ErrorKind::TimedOut(
                self.spec.resource_timeout.unwrap_or_default(),
            ))
        };
        let ends_at = self.spec.resource_timeout.map(|t| Instant::now() + t);
        let mut failed_attempts = self.spec.failed_attempts;
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
            // Attempts count again from zero once bytes flow.
            if self.map.bytes() > before {
                failed_attempts = 0;
            }
            failed_attempts += 1;
            let Some(delay) = self.spec.retry.after_failure(failed_attempts, &error) else {
                return Err(self.fail(error).await);
            };
            if self.spec.hand_back_retries && past_end(delay, ends_at) {
                // The next attempt would come after the resource timeout.
                return Err(self.fail(timed_out()).await);
            }
            tracing::info!(error = %error, attempt = failed_attempts, ?delay, "retrying");
            self.observer.on_event(Event::Retrying {
                attempt: failed_attempts,
                delay,
                error: &error,
            });
            let checkpoint = self.emit_checkpoint().await;
            if self.spec.hand_back_retries {
                let retry = Some(RetryLater {
                    attempt: failed_attempts,
                    delay,
                });
                return Err(Failure {
                    error,
                    checkpoint,
                    retry,
                });
            }
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
        Failure {
            error,
            checkpoint,
            retry: None,
        }
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
        let segmented = self.spec.connections > 1
            && self.resource.ranges
            && self.resource.total.is_some()
            && self.resource.validators.if_range().is_some();
        let helpers = if segmented {
            self.spec.connections - 1
        } else {
            0
        };
        // One connection writing from byte 0 hashes its own chunks. Otherwise (segments, or
        // bytes kept from before) a follower hashes the file's gap-free prefix as it grows.
        let algorithm = self.spec.checksum.as_ref().map(|c| c.algorithm);
        let (inline, followed) = if !segmented && first.start == 0 && first.pos() == 0 {
            let inline = algorithm.map(|a| InlineHash {
                hasher: a.hasher(),
                upto: 0,
            });
            (inline, None)
        } else {
            (None, algorithm)
        };
        let this = &*self;
        let primary = this.worker(Some((response, first)), inline, &host);
        let others = (0..helpers).map(|_| this.worker(None, None, &host));
        let done = CancellationToken::new();
        let workers = async {
            let joined = futures_util::future::try_join(primary, try_join_all(others)).await;
            done.cancel();
            joined.map(|(hash, _)| hash)
        };
        let follower = async {
            match followed {
                Some(algorithm) => Some(this.follow_prefix(algorithm, &done).await),
                None => None,
            }
        };
        let workers = async {
            let (hash, followed) = futures_util::future::join(workers, follower).await;
            hash.map(|inline| inline.or(followed))
        };
        // Polled side by side with the workers, so a slow fdatasync never stalls the bytes.
        // A checkpoint is due once the interval has passed or `checkpoint_bytes` have arrived
        // since the last one: the byte count is looked at a few times per interval rather
        // than per chunk.
        let checkpoints = async {
            let interval = self.spec.checkpoint_interval;
            let mut ticker = tokio::time::interval(interval.min(CHECKPOINT_LOOK));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let (mut last_at, mut last_bytes) = (Instant::now(), self.map.bytes());
            loop {
                ticker.tick().await;
                let bytes = self.map.bytes();
                if last_at.elapsed() >= interval
                    || bytes.saturating_sub(last_bytes) >= self.spec.checkpoint_bytes
                {
                    self.emit_checkpoint().await;
                    (last_at, last_bytes) = (Instant::now(), bytes);
                }
            }
        };
        let hash = tokio::select! {
            r = workers => r?,
            never = checkpoints => never,
        };
        if self.map.is_complete() {
            Ok(hash)
        } else {
            // Every connection stopped with work left (a split that came too late).
            Err(ErrorKind::Interrupted { host }.into())
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
        self.staging.set_len(0)?;
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

    /// Hashes the staging file's gap-free prefix as the connections extend it, reading back
    /// from the page cache on the blocking pool, until `done`.
    async fn follow_prefix(&self, algorithm: Algorithm, done: &CancellationToken) -> InlineHash {
        /// Hash at least this much per read-back, so the follower is not a busy loop.
        const STEP: u64 = 1 << 20;
        let mut hash = InlineHash {
            hasher: algorithm.hasher(),
            upto: 0,
        };
        loop {
            let frontier = self.map.contiguous_prefix();
            if frontier < hash.upto + STEP {
                tokio::select! {
                    () = done.cancelled() => return hash,
                    () = tokio::time::sleep(std::time::Duration::from_millis(50)) => continue,
                }
            }
            let staging = self.staging.clone();
            let from = hash.upto;
            let hashed = tokio::task::spawn_blocking(move || {
                staging
                    .hash_range(&mut hash.hasher, from, frontier)
                    .map(|()| hash)
            })
            .await;
            match hashed {
                Ok(Ok(h)) => {
                    hash = h;
                    hash.upto = frontier;
                }
                // Not fatal: the final check hashes the whole file instead.
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    tracing::warn!(%reason, "hashing the prefix failed; hashing at the end");
                    return InlineHash {
                        hasher: algorithm.hasher(),
                        upto: 0,
                    };
                }
            }
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
                    retry: None,
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
        let target = match &self.spec.destination {
            Destination::File(path) => path.clone(),
            Destination::Folder(dir) => dir.join(
                self.resource
                    .file_name
                    .clone()
                    .unwrap_or_else(|| filename::choose(None, &self.resource.current_url)),
            ),
        };
        // Other files finishing now may share the folder's sync with this one: say it comes.
        let announced = self
            .folders
            .announce(target.parent().unwrap_or(Path::new(".")));
        let staging = self.staging.clone();
        let checksum = self.spec.checksum.clone();
        let conflict = self.spec.conflict;
        let folders = Arc::clone(self.folders);
        // One trip to the blocking pool: sync, verify, place (and the folder sync).
        let (digest, path) = blocking(move || {
            if staging.len()? != total {
                staging.set_len(total)?;
            }
            staging.sync_data()?;
            let digest = verify(&staging, checksum.as_ref(), inline, total)?;
            let path =
                staging::place(staging.path(), &target, conflict, &folders, Some(announced))?;
            Ok((digest, path))
        })
        .await?;
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
