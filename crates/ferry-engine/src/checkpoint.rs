//! What a caller persists to resume a transfer later: bytes, validators and the segment map.
//!
//! The engine knows nothing of databases: it hands out [`Checkpoint`] values (serde-able) and
//! takes one back in [`crate::DownloadSpec::checkpoint`]. A checkpoint is only emitted after
//! the staging file has been synced up to it, so a crash right after persisting it loses
//! nothing it claims.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Resource identity: a resumed range request is only valid if these still match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The strong `ETag` (weak ones cannot validate a range and are not kept).
    pub etag: Option<String>,
    /// `Last-Modified`, as sent.
    pub last_modified: Option<String>,
}

impl Validators {
    /// The value for `If-Range`: the strong ETag, else Last-Modified.
    pub fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }

    /// Reads validators from response headers; weak ETags are dropped.
    pub fn from_headers(headers: &http::HeaderMap) -> Validators {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        Validators {
            etag: text(http::header::ETAG)
                .filter(|e| !e.starts_with("W/"))
                .map(str::to_owned),
            last_modified: text(http::header::LAST_MODIFIED).map(str::to_owned),
        }
    }
}

/// One byte range of the file and how far it has been written: `[start, pos)` is done,
/// `[pos, end)` is still to fetch. `end` is `None` when the size is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// First byte of the range.
    pub start: u64,
    /// Next byte to write.
    pub pos: u64,
    /// One past the last byte, if known.
    pub end: Option<u64>,
}

/// A resumable snapshot of a download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The URL the transfer was asked for.
    pub url: String,
    /// Where the last attempt ended up after redirects.
    pub current_url: String,
    /// The file's size, if known.
    pub total: Option<u64>,
    /// Validators of the bytes already written.
    pub validators: Validators,
    /// The segment map; a single segment for one-connection transfers.
    pub segments: Vec<Segment>,
    /// The file name chosen from the response, when saving into a folder.
    pub file_name: Option<String>,
}

impl Checkpoint {
    /// Bytes already in the staging file.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.pos - s.start).sum()
    }

    /// The furthest byte any segment has written: the staging file must be at least this long.
    pub fn high_water(&self) -> u64 {
        self.segments.iter().map(|s| s.pos).max().unwrap_or(0)
    }

    /// Whether a checkpoint read back from storage is self-consistent.
    pub fn is_consistent(&self) -> bool {
        let mut ranges: Vec<_> = self.segments.iter().collect();
        ranges.sort_by_key(|s| s.start);
        let ordered = ranges.iter().all(|s| {
            s.start <= s.pos
                && s.end
                    .is_none_or(|e| s.pos <= e && self.total.is_none_or(|t| e <= t))
        });
        let disjoint = ranges
            .windows(2)
            .all(|w| w[0].end.is_some_and(|e| e <= w[1].start));
        ordered && disjoint
    }
}

/// A segment being worked on. Only its owner advances `pos`; a stealer may lower `end`
/// (under the map's lock), so the owner re-reads `end` before each write.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub start: u64,
    pub pos: AtomicU64,
    pub end: AtomicU64,
}

/// `end` of a segment whose size is unknown.
pub(crate) const OPEN_END: u64 = u64::MAX;

impl Cursor {
    pub fn new(start: u64, pos: u64, end: u64) -> Arc<Cursor> {
        Arc::new(Cursor {
            start,
            pos: AtomicU64::new(pos),
            end: AtomicU64::new(end),
        })
    }

    pub fn pos(&self) -> u64 {
        self.pos.load(Ordering::Acquire)
    }

    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub fn remaining(&self) -> u64 {
        self.end().saturating_sub(self.pos())
    }

    pub fn snapshot(&self) -> Segment {
        let end = self.end();
        Segment {
            start: self.start,
            // A write racing a steal may run past the new end; the bytes there are the same
            // resource's, but the stealer owns them now.
            pos: self.pos().min(end),
            end: (end != OPEN_END).then_some(end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, pos: u64, end: u64) -> Segment {
        Segment {
            start,
            pos,
            end: Some(end),
        }
    }

    fn checkpoint(segments: Vec<Segment>) -> Checkpoint {
        Checkpoint {
            url: "http://h/f".into(),
            current_url: "http://h/f".into(),
            total: Some(100),
            validators: Validators::default(),
            segments,
            file_name: None,
        }
    }

    #[test]
    fn counts_bytes_and_high_water() {
        let cp = checkpoint(vec![seg(0, 30, 50), seg(50, 60, 100)]);
        assert_eq!(cp.bytes(), 40);
        assert_eq!(cp.high_water(), 60);
        assert!(cp.is_consistent());
    }

    #[test]
    fn rejects_overlapping_or_inverted_segments() {
        assert!(!checkpoint(vec![seg(0, 30, 60), seg(50, 60, 100)]).is_consistent());
        assert!(!checkpoint(vec![seg(0, 70, 50)]).is_consistent());
        assert!(!checkpoint(vec![seg(0, 10, 150)]).is_consistent());
    }

    #[test]
    fn if_range_prefers_the_etag() {
        let mut v = Validators {
            etag: Some("\"e\"".into()),
            last_modified: Some("Mon, 01 Jan 2024 00:00:00 GMT".into()),
        };
        assert_eq!(v.if_range(), Some("\"e\""));
        v.etag = None;
        assert!(v.if_range().unwrap().starts_with("Mon"));
    }
}
