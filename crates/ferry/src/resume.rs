//! Resume data: the opaque blob a cancelled download continues from.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// An opaque, versioned, authenticated blob from a download cancelled with its bytes kept
/// (SPEC §8). Store it as bytes ([`ResumeData::as_bytes`]) and hand it back with
/// [`ResumeData::from_bytes`]; the daemon checks it and refuses anything tampered with.
///
/// Blobs of background sessions stay valid across restarts of the application and of the
/// daemon (in the same `FERRY_HOME`); blobs of in-process sessions only within the session
/// that made them.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeData(String);

impl ResumeData {
    /// The blob's bytes, to store.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A blob read back from storage. Only its shape is checked here; its authenticity is
    /// checked when a download is created from it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidResumeData`] when the bytes are not text as ferry writes it.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<ResumeData, Error> {
        let text = String::from_utf8(bytes.into()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidResumeData,
                "invalid_resume_data",
                "resume data must be ASCII text as ferry wrote it, and these bytes are not UTF-8",
            )
        })?;
        if text.is_empty() || !text.is_ascii() || text.chars().any(|c| c.is_ascii_control()) {
            return Err(Error::new(
                ErrorKind::InvalidResumeData,
                "invalid_resume_data",
                "resume data must be printable ASCII as ferry wrote it",
            ));
        }
        Ok(ResumeData(text))
    }

    pub(crate) fn from_wire(blob: String) -> ResumeData {
        ResumeData(blob)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Shows the length only: the blob names files and URLs that need not end up in logs.
impl fmt::Debug for ResumeData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResumeData({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_garbage_is_refused() {
        let blob = ResumeData::from_wire("ferry-resume-v1.abcd.ef01".into());
        let back = ResumeData::from_bytes(blob.as_bytes()).unwrap();
        assert_eq!(back, blob);
        for bad in [&b""[..], b"\xff\xfe", b"line\nbreak"] {
            let e = ResumeData::from_bytes(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidResumeData, "{bad:?}");
        }
    }
}
