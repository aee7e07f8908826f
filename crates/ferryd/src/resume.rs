//! Resume data, version 1 (SPEC §8): what lets a cancelled download continue later, in this
//! daemon or after its restart, and nowhere else.
//!
//! A blob is the text `ferry-resume-v1.<payload>.<mac>`: `payload` is the hex of a JSON
//! [`Payload`], `mac` the hex of HMAC-SHA-256 over the payload's bytes with the daemon's
//! 32-byte key (`$FERRY_HOME/resume.key`, created on first use, mode 0600). The bytes live in
//! the resume area, `$FERRY_HOME/resume/<file.id>.part`, until a task is created from the blob
//! or the retention period (7 days unless configured) has passed since they were kept and no
//! task row or undelivered event of the daemon holds their blob any more (SPEC §6: never
//! purged while resume data that names them exists): the sweep ([`crate::retention`]) then
//! reclaims them ([`Keeper::reclaim`]); a file's modification time is set when it is kept,
//! and is its age.
//! A blob that is not of this form, is cut short, was altered or was made by another daemon
//! (another key), or whose file is gone or changed, is refused with `invalid_resume_data` and
//! a reason.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_proto::{DownloadRequest, ErrorInfo, Headers, without_url_password};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::home::Layout;

/// The format version this daemon writes; it reads this one and older ones.
pub const VERSION: u32 = 1;
const PREFIX: &str = "ferry-resume-v1.";
/// Bytes at the end of the file whose hash is kept, to notice a replaced file.
const TAIL: u64 = 64 * 1024;

/// What a resume blob holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Format version.
    pub version: u32,
    /// Task kind: `download`.
    pub kind: String,
    /// The original request, without secret headers.
    pub request: DownloadRequest,
    /// The engine's checkpoint: current URL, total, validators, segment map.
    pub checkpoint: ferry_engine::Checkpoint,
    /// The kept bytes in the resume area.
    pub file: KeptFile,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// The staging file kept in the resume area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFile {
    /// Random id; the file is `resume/<id>.part`.
    pub id: String,
    /// Its length.
    pub len: u64,
    /// SHA-256 of its last 64 KiB.
    pub tail_sha256: String,
}

fn invalid(reason: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("invalid_resume_data", reason)
}

/// How long kept bytes stay in the resume area unused, unless configured.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The daemon's resume-data key and area.
#[derive(Debug, Clone)]
pub struct Keeper {
    key: [u8; 32],
    area: PathBuf,
    retention: Duration,
}

impl Keeper {
    /// Loads the key (creating it on first use) and the resume area.
    ///
    /// # Errors
    /// When the key file cannot be read or created.
    pub fn open(layout: &Layout) -> anyhow::Result<Keeper> {
        use anyhow::Context as _;
        let area = layout.root.join("resume");
        std::fs::create_dir_all(&area)
            .with_context(|| format!("while creating {}", area.display()))?;
        let path = layout.root.join("resume.key");
        let key = match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a 32-byte key; remove it to make a new one (existing resume \
                     data then becomes invalid)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty())
                    .context("while drawing a resume-data key")?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("while creating {}", path.display()))?;
                std::io::Write::write_all(&mut file, &key)?;
                file.sync_all()?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("while reading {}", path.display())),
        };
        Ok(Keeper {
            key,
            area,
            retention: DEFAULT_RETENTION,
        })
    }

    /// The same keeper with another retention period.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Keeper {
        self.retention = retention;
        self
    }

    /// Deletes kept bytes kept longer ago than the retention period before `now`, except
    /// those whose file id is `in_use` (a task created from their blob has moved them out of
    /// the area). Returns how many files were deleted; a file that cannot be examined or
    /// deleted is logged and skipped.
    ///
    /// # Errors
    /// When the area cannot be listed.
    pub fn reclaim(&self, now: SystemTime, in_use: &HashSet<String>) -> std::io::Result<usize> {
        let mut reclaimed = 0;
        for entry in std::fs::read_dir(&self.area)? {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(area = %self.area.display(), error = %e, "cannot list the resume area");
                    continue;
                }
            };
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "part") {
                continue;
            }
            if path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|id| in_use.contains(id))
            {
                continue;
            }
            let kept_at = match entry.metadata().and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the age of kept bytes");
                    continue;
                }
            };
            // A clock set back makes a file look young: it is kept, not deleted early.
            let age = now.duration_since(kept_at).unwrap_or_default();
            if age < self.retention {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "reclaimed expired kept bytes");
                    reclaimed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot reclaim kept bytes");
                }
            }
        }
        Ok(reclaimed)
    }

    fn file(&self, id: &str) -> PathBuf {
        self.area.join(format!("{id}.part"))
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload);
        mac
    }

    /// Moves `staging` into the resume area and returns the blob describing it, with the kept
    /// file's path. The move is the last step: on an error the file is where it was.
    ///
    /// # Errors
    /// When the file cannot be read or moved.
    pub fn keep(
        &self,
        staging: &Path,
        request: &DownloadRequest,
        checkpoint: ferry_engine::Checkpoint,
    ) -> std::io::Result<(String, PathBuf)> {
        let mut id = [0u8; 16];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())?;
        let id = hex::encode(id);
        let kept = self.file(&id);
        // Its age in the area counts from now, not from its last write — set before it enters
        // the area, so no sweep ever sees it old.
        std::fs::File::options()
            .write(true)
            .open(staging)?
            .set_modified(SystemTime::now())?;
        let (len, tail_sha256) = tail_hash(staging)?;
        // No secrets in a blob a client may store anywhere (SPEC §14): no secret headers and
        // no password in a URL — the client gives them again to `create_from_resume_data`.
        let mut checkpoint = checkpoint;
        checkpoint.url = without_url_password(&checkpoint.url).into_owned();
        checkpoint.current_url = without_url_password(&checkpoint.current_url).into_owned();
        let mut request = request.clone();
        request.url = without_url_password(&request.url).into_owned();
        request.headers = Headers(
            request
                .headers
                .0
                .into_iter()
                .filter(|(k, _)| !Headers::is_secret(k))
                .collect(),
        );
        let payload = Payload {
            version: VERSION,
            kind: "download".into(),
            request,
            checkpoint,
            file: KeptFile {
                id,
                len,
                tail_sha256,
            },
            created_at: crate::store::now(),
        };
        let bytes = serde_json::to_vec(&payload).map_err(std::io::Error::other)?;
        let mac = self.mac(&bytes).finalize().into_bytes();
        let blob = format!("{PREFIX}{}.{}", hex::encode(&bytes), hex::encode(mac));
        std::fs::rename(staging, &kept)?;
        Ok((blob, kept))
    }

    /// Checks a blob and its file; returns the payload and the file's path.
    ///
    /// # Errors
    /// `invalid_resume_data`, saying whether the blob is foreign, altered, truncated, of an
    /// unknown version, or its bytes are gone or changed.
    pub fn open_blob(&self, blob: &str) -> Result<(Payload, PathBuf), ErrorInfo> {
        let payload = self.verify(blob)?;
        let path = self.file(&payload.file.id);
        let (len, tail) = tail_hash(&path).map_err(|_| {
            let age = crate::store::now().saturating_sub(payload.created_at);
            if u64::try_from(age).unwrap_or(0) >= self.retention.as_secs() {
                invalid(format!(
                    "the bytes this resume data names are gone: they expired (kept bytes not \
                     used within the retention period of {} are reclaimed; these were kept {} \
                     ago)",
                    human(self.retention.as_secs()),
                    human(u64::try_from(age).unwrap_or(0)),
                ))
            } else {
                invalid(
                    "the bytes this resume data names are gone (already used, or deleted when \
                     its task was removed)",
                )
            }
        })?;
        if len != payload.file.len || tail != payload.file.tail_sha256 {
            return Err(invalid("the bytes this resume data names have changed"));
        }
        Ok((payload, path))
    }

    /// The id of the kept file a blob of this daemon names (`None` for anything else).
    pub fn file_id(&self, blob: &str) -> Option<String> {
        self.verify(blob).ok().map(|payload| payload.file.id)
    }

    /// Checks a blob's form, authentication and version, and decodes its payload.
    fn verify(&self, blob: &str) -> Result<Payload, ErrorInfo> {
        let body = blob.trim().strip_prefix(PREFIX).ok_or_else(|| {
            if blob.trim().starts_with("ferry-resume-v") {
                invalid("resume data of an unsupported version")
            } else {
                invalid("not ferry resume data (it must start with \"ferry-resume-v1.\")")
            }
        })?;
        let (payload_hex, mac_hex) = body
            .split_once('.')
            .ok_or_else(|| invalid("resume data is truncated (no authentication code)"))?;
        let payload = hex::decode(payload_hex)
            .map_err(|_| invalid("resume data is damaged (its payload is not hex)"))?;
        let mac = hex::decode(mac_hex)
            .ok()
            .filter(|m| m.len() == 32)
            .ok_or_else(|| invalid("resume data is truncated (short authentication code)"))?;
        self.mac(&payload).verify_slice(&mac).map_err(|_| {
            invalid("resume data was altered or made by another ferryd (authentication failed)")
        })?;
        let payload: Payload = serde_json::from_slice(&payload)
            .map_err(|e| invalid(format!("resume data is unreadable: {e}")))?;
        if payload.version != VERSION || payload.kind != "download" {
            return Err(invalid(format!(
                "resume data of version {} kind {:?} is not supported",
                payload.version, payload.kind
            )));
        }
        if !payload.file.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("resume data names an invalid file"));
        }
        Ok(payload)
    }

    /// Deletes the kept bytes a blob names, so that the blob stops working. Nothing is
    /// deleted when the blob does not check out: bytes already taken by a task created from
    /// it are that task's now.
    ///
    /// # Errors
    /// When the file exists but cannot be deleted.
    pub fn discard(&self, blob: &str) -> std::io::Result<()> {
        let Ok((_, path)) = self.open_blob(blob) else {
            return Ok(());
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `90 s`, `3 h`, `7 d`: a duration for messages.
fn human(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s => format!("{s} s"),
    }
}

fn tail_hash(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok((len, hex::encode(Sha256::digest(&tail))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeper(dir: &Path) -> Keeper {
        Keeper::open(&Layout {
            root: dir.to_owned(),
        })
        .unwrap()
    }

    fn checkpoint() -> ferry_engine::Checkpoint {
        ferry_engine::Checkpoint {
            url: "http://h/f".into(),
            current_url: "http://h/f".into(),
            total: Some(10),
            validators: ferry_engine::Validators {
                etag: Some("\"e\"".into()),
                last_modified: None,
            },
            segments: vec![ferry_engine::Segment {
                start: 0,
                pos: 4,
                end: Some(10),
            }],
            file_name: None,
        }
    }

    fn request() -> DownloadRequest {
        serde_json::from_value(serde_json::json!({
            "url": "http://h/f",
            "headers": [["Authorization", "Bearer secret"], ["X-Keep", "yes"]]
        }))
        .unwrap()
    }

    #[test]
    fn keeps_no_password_written_into_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let k = keeper(dir.path());
        let staging = dir.path().join("s.part");
        std::fs::write(&staging, b"0123456789").unwrap();
        let mut request = request();
        request.url = "http://ann:pa55word@h/f".into();
        let mut cp = checkpoint();
        cp.url = request.url.clone();
        cp.current_url = "http://ann:pa55word@h/g".into();
        let (blob, _) = k.keep(&staging, &request, cp).unwrap();
        assert!(!blob.contains(&hex::encode("pa55word")));
        let (payload, _) = k.open_blob(&blob).unwrap();
        assert_eq!(payload.request.url, "http://ann@h/f");
        assert_eq!(
            (payload.checkpoint.url, payload.checkpoint.current_url),
            ("http://ann@h/f".to_owned(), "http://ann@h/g".to_owned())
        );
    }

    #[test]
    fn round_trips_without_secrets_and_rejects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let k = keeper(dir.path());
        let staging = dir.path().join("s.part");
        std::fs::write(&staging, b"0123456789").unwrap();
        let (blob, _) = k.keep(&staging, &request(), checkpoint()).unwrap();
        assert!(!staging.exists());
        assert!(!blob.contains(&hex::encode("secret")));
        let (payload, path) = k.open_blob(&blob).unwrap();
        assert_eq!(payload.checkpoint, checkpoint());
        assert_eq!(
            payload.request.headers.0,
            vec![("X-Keep".into(), "yes".into())]
        );
        assert_eq!(std::fs::read(path).unwrap(), b"0123456789");

        let reason = |b: &str| k.open_blob(b).unwrap_err().message;
        // One payload character changed.
        let mut tampered = blob.clone().into_bytes();
        let i = PREFIX.len() + 10;
        tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
        assert!(reason(std::str::from_utf8(&tampered).unwrap()).contains("altered"));
        assert!(reason(&blob[..blob.len() - 10]).contains("truncated"));
        assert!(reason(&blob[..PREFIX.len() + 20]).contains("truncated"));
        assert!(reason("hello").contains("not ferry resume data"));
        assert!(reason("ferry-resume-v9.00.00").contains("unsupported version"));
        // Another daemon's key.
        let other = tempfile::tempdir().unwrap();
        assert!(
            keeper(other.path())
                .open_blob(&blob)
                .unwrap_err()
                .message
                .contains("another ferryd")
        );
    }

    #[test]
    fn notices_a_changed_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let k = keeper(dir.path());
        let staging = dir.path().join("s.part");
        std::fs::write(&staging, b"0123456789").unwrap();
        let (blob, _) = k.keep(&staging, &request(), checkpoint()).unwrap();
        let (_, path) = k.open_blob(&blob).unwrap();
        std::fs::write(&path, b"0123456780").unwrap();
        assert!(k.open_blob(&blob).unwrap_err().message.contains("changed"));
        std::fs::remove_file(&path).unwrap();
        assert!(k.open_blob(&blob).unwrap_err().message.contains("gone"));
        // The key survives a restart.
        assert_eq!(keeper(dir.path()).key, k.key);
    }

    #[test]
    fn reclaims_bytes_kept_longer_than_the_retention_period() {
        let dir = tempfile::tempdir().unwrap();
        let k = keeper(dir.path()).with_retention(Duration::from_secs(60));
        let staging = dir.path().join("s.part");
        std::fs::write(&staging, b"0123456789").unwrap();
        let (blob, _) = k.keep(&staging, &request(), checkpoint()).unwrap();
        let (_, path) = k.open_blob(&blob).unwrap();
        let other = dir.path().join("resume").join("notes.txt");
        std::fs::write(&other, b"not kept bytes").unwrap();
        let now = SystemTime::now();
        let none = HashSet::new();
        assert_eq!(k.reclaim(now, &none).unwrap(), 0);
        assert!(path.exists());
        // Past the period, but a task or an event still holds the blob: kept.
        let in_use = HashSet::from([k.file_id(&blob).unwrap()]);
        assert_eq!(
            k.reclaim(now + Duration::from_secs(61), &in_use).unwrap(),
            0
        );
        assert!(path.exists());
        assert_eq!(k.reclaim(now + Duration::from_secs(61), &none).unwrap(), 1);
        assert!(!path.exists());
        assert!(other.exists(), "only kept bytes are reclaimed");
        // Within the period a missing file was used or removed; after it, it expired.
        assert!(!k.open_blob(&blob).unwrap_err().message.contains("expired"));
        let short = k.clone().with_retention(Duration::ZERO);
        let msg = short.open_blob(&blob).unwrap_err().message;
        assert!(msg.contains("expired"), "{msg}");
    }
}
