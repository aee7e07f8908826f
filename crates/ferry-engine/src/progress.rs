//! Live progress of one transfer, readable from any thread without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

const UNKNOWN: u64 = u64::MAX;

/// Counters the engine updates per chunk with one atomic add; observers poll them at their
/// own pace (a progress bar, the daemon's coalesced `progress` events).
#[derive(Debug)]
pub struct Progress {
    received: AtomicU64,
    expected: AtomicU64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            received: AtomicU64::new(0),
            expected: AtomicU64::new(UNKNOWN),
        }
    }
}

impl Progress {
    /// Bytes of the file present in the staging file, including any resumed offset; for an
    /// upload, bytes of the request body sent in the current attempt.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The file's size, once known; for an upload, the request body's length.
    pub fn expected(&self) -> Option<u64> {
        match self.expected.load(Ordering::Relaxed) {
            UNKNOWN => None,
            n => Some(n),
        }
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn reset(&self, received: u64, expected: Option<u64>) {
        self.received.store(received, Ordering::Relaxed);
        self.expected
            .store(expected.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }
}
