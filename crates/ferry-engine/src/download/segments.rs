//! The segment map: which byte ranges exist, how far each got, which connection owns it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::checkpoint::{Cursor, OPEN_END, Segment};

/// The segments of the file and who works on them. Locked only when a connection claims or
/// splits a segment and when a checkpoint is taken, never per chunk.
#[derive(Debug, Default)]
pub(super) struct SegmentMap {
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

    pub(super) fn set(&self, segments: &[Segment]) {
        *self.lock() = segments
            .iter()
            .map(|s| Slot {
                cursor: Cursor::new(s.start, s.pos, s.end.unwrap_or(OPEN_END)),
                owned: false,
            })
            .collect();
    }

    pub(super) fn snapshot(&self) -> Vec<Segment> {
        let mut segments: Vec<Segment> = self.lock().iter().map(|s| s.cursor.snapshot()).collect();
        segments.sort_by_key(|s| s.start);
        segments
    }

    pub(super) fn release_all(&self) {
        for slot in self.lock().iter_mut() {
            slot.owned = false;
        }
    }

    /// How far the file is complete without a gap from byte 0.
    pub(super) fn contiguous_prefix(&self) -> u64 {
        let mut frontier = 0;
        for segment in self.snapshot() {
            if segment.start > frontier {
                break;
            }
            frontier = frontier.max(segment.pos);
            if segment.pos < segment.end.unwrap_or(u64::MAX) {
                break;
            }
        }
        frontier
    }

    pub(super) fn bytes(&self) -> u64 {
        self.snapshot().iter().map(|s| s.pos - s.start).sum()
    }

    pub(super) fn is_complete(&self) -> bool {
        self.lock().iter().all(|s| s.cursor.remaining() == 0)
    }

    /// The first unfinished segment, claimed.
    pub(super) fn claim_first(&self) -> Option<Arc<Cursor>> {
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
    pub(super) fn claim_or_split(&self, min_segment: u64) -> Option<Arc<Cursor>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, Validators};

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
        assert_eq!(map.contiguous_prefix(), 1 << 20);
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
