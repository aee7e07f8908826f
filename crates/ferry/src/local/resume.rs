//! Resume data of in-process sessions.
//!
//! A blob is `ferry-local-resume-v1.<hex of payload JSON>.<hex of HMAC-SHA-256>`, the
//! daemon's layout under another prefix. The differences are the point:
//!
//! - the key is 32 random bytes drawn when the runtime starts and never written anywhere,
//!   and the kept bytes live in the runtime's temporary folder. So a blob is valid **only in
//!   the runtime (process and session) that made it**: another process, another in-process
//!   session, or this one after it was shut down refuses it as made elsewhere. Work that must
//!   survive the process belongs in a background session, whose resume data the daemon keeps.
//! - a daemon's blob (`ferry-resume-v1.`) is recognised and refused with a pointer to
//!   background sessions, since only the daemon holds its key and its bytes.
//!
//! Secret headers are left out of the payload, as the daemon does: an application may log
//! or store the blob, and `create_from_resume_data` takes the headers again.

use std::path::{Path, PathBuf};

use ferry_proto::{DownloadRequest, ErrorInfo, Headers, without_url_password};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "ferry-local-resume-v1.";
const DAEMON_PREFIX: &str = "ferry-resume-v";
const VERSION: u32 = 1;

/// What a blob holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Payload {
    version: u32,
    kind: String,
    /// The original request, without secret headers.
    pub(super) request: DownloadRequest,
    /// The engine's checkpoint of the kept bytes.
    pub(super) checkpoint: ferry_engine::Checkpoint,
    file: KeptFile,
}

/// The staging file kept in the runtime's resume folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptFile {
    /// Random hex id; the file is `<area>/<id>.part`.
    id: String,
    len: u64,
}

/// The runtime's resume-data key and folder.
pub(super) struct Keeper {
    key: [u8; 32],
    area: PathBuf,
}

impl std::fmt::Debug for Keeper {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("area", &self.area)
            .finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("invalid_resume_data", reason)
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    Ok(bytes)
}

impl Keeper {
    /// A keeper with a fresh random key, keeping bytes in `area` (which must exist).
    pub(super) fn new(area: PathBuf) -> std::io::Result<Keeper> {
        Ok(Keeper {
            key: random_bytes()?,
            area,
        })
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload);
        mac
    }

    /// Moves `staging` into the resume folder and returns the blob describing it, with the
    /// kept file's path.
    ///
    /// # Errors
    /// When the file cannot be moved or measured.
    pub(super) fn keep(
        &self,
        staging: &Path,
        request: &DownloadRequest,
        checkpoint: ferry_engine::Checkpoint,
    ) -> std::io::Result<(String, PathBuf)> {
        let id = hex::encode(random_bytes::<16>()?);
        let kept = self.area.join(format!("{id}.part"));
        std::fs::rename(staging, &kept)?;
        let len = std::fs::metadata(&kept)?.len();
        // No secrets in a blob the application may log or store: no secret headers, no
        // password in a URL (the daemon's blobs are made the same way).
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
            file: KeptFile { id, len },
        };
        let bytes = serde_json::to_vec(&payload).map_err(std::io::Error::other)?;
        let mac = self.mac(&bytes).finalize().into_bytes();
        let blob = format!("{PREFIX}{}.{}", hex::encode(&bytes), hex::encode(mac));
        Ok((blob, kept))
    }

    /// Checks a blob and its bytes; returns the payload and the kept file's path.
    ///
    /// # Errors
    /// `invalid_resume_data`, saying whether the blob is a daemon's, not resume data,
    /// truncated, altered or made by another runtime, or whether its bytes are gone.
    pub(super) fn open(&self, blob: &str) -> Result<(Payload, PathBuf), ErrorInfo> {
        let blob = blob.trim();
        let body = blob.strip_prefix(PREFIX).ok_or_else(|| {
            if blob.starts_with(DAEMON_PREFIX) {
                invalid(
                    "this resume data was made by a ferryd daemon; continue it in a \
                     background session",
                )
            } else {
                invalid(format!(
                    "not resume data of an in-process session (it must start with {PREFIX:?})"
                ))
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
            invalid(
                "resume data was altered, or made by another process or in-process session \
                 (authentication failed); in-process resume data is valid only in the \
                 session that made it",
            )
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
        let path = self.area.join(format!("{}.part", payload.file.id));
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == payload.file.len => Ok((payload, path)),
            Ok(_) => Err(invalid("the bytes this resume data names have changed")),
            Err(_) => Err(invalid(
                "the bytes this resume data names are gone (already used, or removed)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn keeps_no_password_written_into_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = Keeper::new(dir.path().to_owned()).unwrap();
        let staging = dir.path().join("s.part");
        std::fs::write(&staging, b"0123").unwrap();
        let request: DownloadRequest =
            serde_json::from_value(serde_json::json!({"url": "http://ann:pa55word@h/f"})).unwrap();
        let mut cp = checkpoint();
        cp.url.clone_from(&request.url);
        cp.current_url = "http://ann:pa55word@h/g".into();
        let (blob, _) = keeper.keep(&staging, &request, cp).unwrap();
        assert!(!blob.contains(&hex::encode("pa55word")));
        let (payload, _) = keeper.open(&blob).unwrap();
        assert_eq!(payload.request.url, "http://ann@h/f");
        assert_eq!(payload.checkpoint.current_url, "http://ann@h/g");
    }

    #[test]
    fn round_trips_without_secrets_and_refuses_other_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = Keeper::new(dir.path().to_owned()).unwrap();
        let staging = dir.path().join("s.part");
        std::fs::write(&staging, b"0123").unwrap();
        let request: DownloadRequest = serde_json::from_value(serde_json::json!({
            "url": "http://h/f",
            "headers": [["Authorization", "Bearer secret"], ["X-Keep", "yes"]]
        }))
        .unwrap();
        let (blob, kept) = keeper.keep(&staging, &request, checkpoint()).unwrap();
        assert!(!staging.exists() && kept.exists());
        let (payload, path) = keeper.open(&blob).unwrap();
        assert_eq!((payload.checkpoint, path), (checkpoint(), kept));
        assert_eq!(
            payload.request.headers.0,
            vec![("X-Keep".to_owned(), "yes".to_owned())]
        );

        let reason = |b: &str| keeper.open(b).unwrap_err().message;
        assert!(reason("ferry-resume-v1.00.00").contains("ferryd daemon"));
        assert!(reason("hello").contains("not resume data"));
        assert!(reason(&blob[..blob.len() - 4]).contains("truncated"));
        let other = Keeper::new(dir.path().to_owned()).unwrap();
        assert!(other.open(&blob).unwrap_err().message.contains("another"));
    }
}
