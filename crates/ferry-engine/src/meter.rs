//! A transfer's rate: bytes over roughly the last few seconds, from samples of its progress
//! counter taken whenever it is looked at (the daemon's progress loop does, 4 per second; an
//! in-process session's at each progress report).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(3);
/// Samples closer together than this are not kept (bounds the ring to ~30 samples).
const SPACING: Duration = Duration::from_millis(100);
/// A rate over less time than this says little: none is reported yet.
const SHORTEST: Duration = Duration::from_millis(500);

/// A ring of `(when, bytes received)` samples of one transfer.
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    /// Records that `received` bytes were there at `now`.
    pub fn record(&mut self, now: Instant, received: u64) {
        // The counter went back (a restart from zero): older samples mean nothing now.
        if self.samples.back().is_some_and(|&(_, b)| b > received) {
            self.samples.clear();
        }
        match self.samples.back() {
            Some(&(t, _)) if now.saturating_duration_since(t) < SPACING => {}
            _ => self.samples.push_back((now, received)),
        }
        // Keep one sample at or before the window's start, so the span covers the window.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The rate in bytes per second from the oldest sample kept to `received` at `now`, once
    /// that spans enough time; `None` before, or when the counter went back since.
    pub fn rate(&self, now: Instant, received: u64) -> Option<u64> {
        let &(since, before) = self.samples.front()?;
        if self.samples.back().is_some_and(|&(_, b)| b > received) {
            return None;
        }
        let elapsed = now.saturating_duration_since(since);
        if elapsed < SHORTEST {
            return None;
        }
        let bytes = received.saturating_sub(before) as f64;
        Some((bytes / elapsed.as_secs_f64()).round() as u64)
    }

    /// Records `received` at `now` and answers the rate.
    pub fn sample(&mut self, now: Instant, received: u64) -> Option<u64> {
        self.record(now, received);
        self.rate(now, received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_rate_over_the_last_seconds() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut r = RateMeter::default();
        assert_eq!(r.sample(at(0), 0), None, "one sample is no rate");
        assert_eq!(r.sample(at(250), 250), None, "too short a span");
        // 1000 bytes per second for 10 s, sampled 4 times a second.
        for i in 2..=40 {
            r.record(at(i * 250), i * 250);
        }
        assert_eq!(r.sample(at(10_000), 10_000), Some(1000));
        assert!(r.samples.len() <= 16, "old samples are dropped");
        // Then 4000 bytes per second: after the window, only the new rate counts.
        for i in 1..=16 {
            r.record(at(10_000 + i * 250), 10_000 + i * 1000);
        }
        assert_eq!(r.sample(at(14_000), 26_000), Some(4000));
        // Stalled: the rate falls to zero.
        assert_eq!(r.sample(at(20_000), 26_000), Some(0));
        // Restarted from zero: the old samples are forgotten.
        assert_eq!(r.sample(at(20_100), 10), None);
        // Asking without recording: no rate for a counter that went back.
        assert_eq!(r.rate(at(21_000), 5), None);
        assert_eq!(r.rate(at(20_700), 610), Some(1000));
    }
}
