//! Bandwidth limits: a lock-free token bucket shared by any number of transfers.
//!
//! The bucket is a GCRA ("virtual scheduling"): one atomic holds the theoretical arrival time
//! of the next byte. Taking `n` bytes pushes it forward by `n / rate`; whoever pushes it past
//! now plus the burst allowance sleeps off the difference. So the hot path is one load when
//! unlimited and one compare-and-swap when limited: no lock, no allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

/// A bandwidth limit in bytes per second; clones share one bucket. Rate 0 means unlimited.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rate: AtomicU64,
    /// Woken when the rate changes (see `wait_out`).
    changed: Notify,
    /// Nanoseconds after `epoch` at which the bucket is next empty.
    tat: AtomicU64,
    epoch: Instant,
}

/// How far ahead of the schedule a sender may run: a tenth of a second of traffic.
const BURST: Duration = Duration::from_millis(100);

/// Sleeps for `wait`, or until the limiter that set it changes its rate: a transfer waiting out
/// its share at the old rate stops waiting (that chunk goes unpaced) instead of sleeping on at
/// a rate that no longer holds — at a few bytes per second that sleep would last minutes.
async fn wait_out(wait: Duration, changed: Notified<'_>) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = changed => {}
    }
}

impl RateLimiter {
    /// A limiter at `bytes_per_second` (0: unlimited).
    pub fn new(bytes_per_second: u64) -> RateLimiter {
        RateLimiter {
            inner: Arc::new(Inner {
                rate: AtomicU64::new(bytes_per_second),
                changed: Notify::new(),
                tat: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// An unlimited limiter (whose rate can be set later).
    pub fn unlimited() -> RateLimiter {
        RateLimiter::new(0)
    }

    /// The current rate in bytes per second (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.inner.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate; takes effect for every transfer sharing this limiter at once, also
    /// one waiting out its share at the old rate. Setting the same rate again changes nothing.
    pub fn set_rate(&self, bytes_per_second: u64) {
        if self.inner.rate.swap(bytes_per_second, Ordering::Relaxed) == bytes_per_second {
            return;
        }
        // Forget debt run up under the old rate, so a raised limit applies immediately.
        self.inner.tat.store(self.now_nanos(), Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Accounts for `bytes` and returns how long the caller must wait to stay within the rate.
    pub fn reserve(&self, bytes: usize) -> Duration {
        let rate = self.rate();
        if rate == 0 {
            return Duration::ZERO;
        }
        let cost = (bytes as u128 * 1_000_000_000 / rate as u128).min(u64::MAX as u128) as u64;
        let now = self.now_nanos();
        let burst = BURST.as_nanos() as u64;
        let mut tat = self.inner.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(cost);
            match self.inner.tat.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let ahead = new_tat.saturating_sub(now);
                    return Duration::from_nanos(ahead.saturating_sub(burst));
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Accounts for `bytes` and sleeps as long as the rate requires (less if the rate
    /// changes meanwhile).
    pub async fn acquire(&self, bytes: usize) {
        // Registered before the reservation: a change right after it still wakes the wait.
        let changed = self.inner.changed.notified();
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            wait_out(wait, changed).await;
        }
    }
}

/// Every limit a transfer is subject to: its own and any shared ones.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    limiters: Vec<RateLimiter>,
}

impl Limits {
    /// No limits.
    pub fn none() -> Limits {
        Limits::default()
    }

    /// Adds a limiter (per transfer, per session, daemon-wide…).
    pub fn with(mut self, limiter: RateLimiter) -> Limits {
        self.limiters.push(limiter);
        self
    }

    /// Accounts `bytes` against every limiter and waits for the strictest (less if that one's
    /// rate changes meanwhile: only the strictest decides how long the wait is; a change made
    /// between the reservation and the wait's start is caught at the next chunk).
    pub async fn acquire(&self, bytes: usize) {
        let strictest = self
            .limiters
            .iter()
            .map(|l| (l.reserve(bytes), l))
            .max_by_key(|(wait, _)| *wait);
        if let Some((wait, limiter)) = strictest
            && !wait.is_zero()
        {
            wait_out(wait, limiter.inner.changed.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer waiting out its share at the old rate stops waiting when the rate changes:
    /// 1,000 bytes at 1 B/s would keep it 1,000 s.
    #[tokio::test(start_paused = true)]
    async fn a_rate_change_ends_a_wait_at_the_old_rate() {
        let limiter = RateLimiter::new(1);
        let limits = Limits::none().with(limiter.clone());
        let start = Instant::now();
        let waiting = tokio::spawn(async move { limits.acquire(1_000).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The same rate again (every attach sets its session's) changes nothing.
        limiter.set_rate(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        limiter.set_rate(0);
        waiting.await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_over_time() {
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        for _ in 0..50 {
            limiter.acquire(100_000).await;
        }
        // 5 MB at 1 MB/s, less the 100 ms burst allowance.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(4_900), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(5_000), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shared_limiter_splits_the_rate() {
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        l.acquire(50_000).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // 4 × 500 kB through one 1 MB/s bucket.
        assert!(start.elapsed() >= Duration::from_millis(1_900));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_changes_apply_while_running() {
        let limiter = RateLimiter::new(100_000);
        limiter.acquire(100_000).await;
        limiter.set_rate(0);
        let start = Instant::now();
        limiter.acquire(10_000_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.set_rate(10_000_000);
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire(1_000_000).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(900));
        assert!(start.elapsed() <= Duration::from_millis(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_wait_for_the_strictest() {
        let limits = Limits::none()
            .with(RateLimiter::new(10_000_000))
            .with(RateLimiter::new(1_000_000));
        let start = Instant::now();
        for _ in 0..20 {
            limits.acquire(100_000).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(1_900));
    }
}
