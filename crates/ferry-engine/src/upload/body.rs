//! The request body of an upload: source files checked for changes, streamed from disk, and
//! pumped through the rate limits into the request.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{MultipartFile, UploadBody, invalid};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::rate::Limits;

/// Read size: large enough to keep per-chunk costs small, small enough for smooth progress.
const CHUNK: usize = 256 * 1024;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Checks what can be checked before any I/O: multipart names and content types.
pub(super) fn validate(body: &UploadBody) -> Result<(), Error> {
    let UploadBody::Multipart { fields, files } = body else {
        return Ok(());
    };
    let names = fields
        .iter()
        .map(|(name, _)| name)
        .chain(files.iter().map(|f| &f.field));
    for name in names {
        if name.is_empty() || name.chars().any(|c| c == '"' || c.is_control()) {
            return Err(invalid(format!(
                "multipart field name {name:?} is empty or contains a quote or a control character"
            )));
        }
    }
    for file in files {
        if let Some(ct) = &file.content_type
            && ct.parse::<http::HeaderValue>().is_err()
        {
            return Err(invalid(format!(
                "content type {ct:?} of multipart field {:?} is not a valid header value",
                file.field
            )));
        }
        // A line break in a part's header would let the name write headers of its own.
        let name = part_file_name(file);
        if name.chars().any(char::is_control) {
            return Err(invalid(format!(
                "file name {name:?} of multipart field {:?} contains a control character",
                file.field
            )));
        }
    }
    Ok(())
}

/// The `filename` a part announces: the one given, else the path's last component.
fn part_file_name(file: &MultipartFile) -> String {
    file.file_name.clone().unwrap_or_else(|| {
        file.path
            .file_name()
            .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned())
    })
}

/// What identifies one version of a source file: a change in any of these may mean other
/// bytes. The status change time (`ctime`) is there because a program can set the
/// modification time back after writing (`touch -r`, `rsync -t`), but not the ctime.
///
/// [`UploadBody::check`] returns one per file when an upload is created; kept (it is
/// serde-able) and given back as [`UploadSpec::sources`](super::UploadSpec::sources), it
/// makes every later run fail with `source_changed` if a file changed meanwhile — while the
/// task waited, was paused, or the daemon restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceIdentity {
    pub(super) len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    dev: u64,
    ino: u64,
}

pub(super) type Identity = SourceIdentity;

impl SourceIdentity {
    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// What differs from `before`, in words.
    fn change_since(&self, before: &Identity) -> Option<String> {
        if (self.dev, self.ino) != (before.dev, before.ino) {
            Some("it was replaced by another file".into())
        } else if self.len != before.len {
            Some(format!(
                "its size went from {} to {} bytes",
                before.len, self.len
            ))
        } else if self.modified != before.modified {
            Some("its modification time changed".into())
        } else if self.changed != before.changed {
            Some("it was written to or its attributes changed (ctime)".into())
        } else {
            None
        }
    }
}

fn changed(path: &Path, change: String) -> Error {
    ErrorKind::SourceChanged {
        path: path.to_owned(),
        change,
    }
    .into()
}

/// The source files of an upload with the identity each had at the first attempt.
#[derive(Debug)]
pub(super) struct Sources {
    files: Vec<(PathBuf, Identity)>,
}

impl Sources {
    /// Records the files' identities; a missing or unreadable file, or one that is not a
    /// regular file, is an `io` error naming it.
    /// With `expected` (the identities recorded when the upload was created), a file that
    /// is no longer that version fails with `source_changed`.
    pub(super) async fn record(
        paths: &[&Path],
        expected: Option<&[SourceIdentity]>,
    ) -> Result<Sources, Error> {
        let mut files = Vec::with_capacity(paths.len());
        for (index, &path) in paths.iter().enumerate() {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| Error::io("read", path, e))?;
            if !meta.is_file() {
                return Err(Error::io(
                    "upload",
                    path,
                    io::Error::other("it is not a regular file"),
                ));
            }
            let identity = Identity::of(&meta);
            if let Some(change) = expected
                .and_then(|e| e.get(index))
                .and_then(|before| identity.change_since(before))
            {
                return Err(changed(
                    path,
                    format!("{change} since the upload was created"),
                ));
            }
            // Readable now, so a later failure to open means something changed.
            tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::io("open", path, e))?;
            files.push((path.to_owned(), identity));
        }
        Ok(Sources { files })
    }

    /// The identity recorded for file number `index`.
    pub(super) fn identity(&self, index: usize) -> Result<Identity, Error> {
        self.files
            .get(index)
            .map(|(_, identity)| *identity)
            .ok_or_else(|| invalid(format!("no source file number {index}")))
    }

    /// Fails with `source_changed` if any file is not the one first seen.
    pub(super) async fn check(&self) -> Result<(), Error> {
        for (path, before) in &self.files {
            let now = match tokio::fs::metadata(path).await {
                Ok(meta) => Identity::of(&meta),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(changed(path, "it was removed".into()));
                }
                Err(e) => return Err(Error::io("read", path, e)),
            };
            if let Some(change) = now.change_since(before) {
                return Err(changed(path, change));
            }
        }
        Ok(())
    }

    /// Opens file number `index` and checks that the open file is the recorded version.
    pub(super) async fn open(&self, index: usize) -> Result<tokio::fs::File, Error> {
        let Some((path, before)) = self.files.get(index) else {
            return Err(invalid(format!("no source file number {index}")));
        };
        let file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(changed(path, "it was removed".into()));
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| Error::io("read", path, e))?;
        if let Some(change) = Identity::of(&meta).change_since(before) {
            return Err(changed(path, change));
        }
        Ok(file)
    }
}

/// Where a file stream leaves the engine's own error when it fails inside reqwest (which
/// only passes on a boxed copy), so the attempt reports `source_changed` rather than a
/// broken connection.
#[derive(Debug, Clone, Default)]
pub(super) struct ErrorSlot(Arc<Mutex<Option<Error>>>);

impl ErrorSlot {
    fn put(&self, error: Error) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(error);
    }

    pub(super) fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Reads one file from the start, checking it yields exactly its recorded length.
///
/// The last chunk is held back until the file is checked once more against the identity
/// recorded for the upload (no byte beyond the recorded length, the same size, modification
/// and status change times): a file changed while it was sent then never reaches the server
/// whole, so the server cannot take a mix of two versions for a complete upload.
struct Reader {
    file: tokio::fs::File,
    path: PathBuf,
    recorded: Identity,
    pos: u64,
}

impl Reader {
    async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        let len = self.recorded.len;
        if self.pos >= len {
            // An empty file: nothing held back, but it is checked all the same.
            if len == 0 && self.pos == 0 {
                self.pos = 1;
                self.check_unchanged().await?;
            }
            return Ok(None);
        }
        let want = usize::try_from(len - self.pos)
            .unwrap_or(usize::MAX)
            .min(CHUNK);
        let mut buf = BytesMut::with_capacity(want);
        let n = self
            .file
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::io("read", &self.path, e))?;
        if n == 0 {
            return Err(changed(
                &self.path,
                format!("it shrank to {} of {len} bytes while being sent", self.pos),
            ));
        }
        buf.truncate(want);
        self.pos += buf.len() as u64;
        if self.pos >= len {
            self.check_unchanged().await?;
        }
        Ok(Some(buf.freeze()))
    }

    /// Exactly the recorded length was read: a further byte, or another identity, mean the
    /// file changed while it was sent.
    async fn check_unchanged(&mut self) -> Result<(), Error> {
        let mut probe = [0u8; 1];
        let n = self
            .file
            .read(&mut probe)
            .await
            .map_err(|e| Error::io("read", &self.path, e))?;
        if n > 0 {
            return Err(changed(
                &self.path,
                format!(
                    "it grew beyond {} bytes while being sent",
                    self.recorded.len
                ),
            ));
        }
        let meta = self
            .file
            .metadata()
            .await
            .map_err(|e| Error::io("read", &self.path, e))?;
        match Identity::of(&meta).change_since(&self.recorded) {
            Some(change) => Err(changed(&self.path, format!("{change} while being sent"))),
            None => Ok(()),
        }
    }
}

/// The bytes of an opened source file as a stream; on failure the engine's error goes to
/// `slot` and the stream yields a copy of its message.
pub(super) fn file_stream(
    file: tokio::fs::File,
    path: PathBuf,
    recorded: Identity,
    slot: ErrorSlot,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let reader = Reader {
        file,
        path,
        recorded,
        pos: 0,
    };
    futures_util::stream::unfold(Some((reader, slot)), |state| async move {
        let (mut reader, slot) = state?;
        match reader.next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some((reader, slot)))),
            Ok(None) => None,
            Err(error) => {
                let copy = io::Error::other(error.to_string());
                slot.put(error);
                Some((Err(copy), None))
            }
        }
    })
}

/// Builds the multipart form over opened files. Every part has a known length, so reqwest
/// computes the body's `Content-Length`.
pub(super) fn form(
    fields: &[(String, String)],
    files: Vec<(&MultipartFile, tokio::fs::File, Identity)>,
    slot: &ErrorSlot,
) -> Result<reqwest::multipart::Form, Error> {
    // Names are validated (no quote, no control character), so they go out as written;
    // reqwest escapes quotes and backslashes in file names itself.
    let mut form = reqwest::multipart::Form::new().percent_encode_noop();
    for (name, value) in fields {
        form = form.text(name.clone(), value.clone());
    }
    for (spec, file, recorded) in files {
        let len = recorded.len;
        let stream = file_stream(file, spec.path.clone(), recorded, slot.clone());
        let content_type = spec
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        // Set as a header value (validated when the upload was checked), not parsed as a
        // MIME type: what was accepted then is sent as given.
        let value = http::HeaderValue::from_str(content_type).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidUpload(format!(
                    "content type {content_type:?} of multipart field {:?}",
                    spec.field
                )),
                e,
            )
        })?;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, value);
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
                .file_name(part_file_name(spec))
                .headers(headers);
        form = form.part(spec.field.clone(), part);
    }
    Ok(form)
}

/// The request body's side of the channel the pump feeds.
pub(super) fn channel_body(rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Moves the body from `source` into the request through `tx`, on the caller's task so the
/// chunks are counted into `progress` and pass the rate limits as they go. Returns the
/// bytes handed over; stops early (with `Ok`) when the request drops its body, because the
/// server answered or the connection broke — the request's own result says which.
pub(super) async fn pump(
    mut source: BoxStream<'static, Result<Bytes, BoxError>>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    limits: &Limits,
    progress: &Progress,
    timeout: Duration,
    slot: &ErrorSlot,
) -> Result<u64, Error> {
    let mut sent = 0u64;
    while let Some(item) = source.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                let error = slot.take().unwrap_or_else(|| {
                    Error::with_source(
                        ErrorKind::Io {
                            op: "read",
                            path: PathBuf::from("the upload body"),
                        },
                        e,
                    )
                });
                // Make the request fail rather than end short (best effort: dropping the
                // sender ends the body early, which the Content-Length also catches).
                let _ = tx.try_send(Err(Box::new(io::Error::other(error.to_string()))));
                return Err(error);
            }
        };
        let n = chunk.len();
        limits.acquire(n).await;
        match tokio::time::timeout(timeout, tx.send(Ok(chunk))).await {
            Err(_) => return Err(ErrorKind::RequestTimeout(timeout).into()),
            Ok(Err(_closed)) => return Ok(sent),
            Ok(Ok(())) => {}
        }
        sent += n as u64;
        progress.add(n as u64);
    }
    Ok(sent)
}
