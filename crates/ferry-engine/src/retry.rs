//! When to try again: exponential backoff with jitter, and the server's `Retry-After`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How transient failures are retried (SPEC §4 `retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between two attempts (also caps a server's `Retry-After`).
    pub max: Duration,
    /// Consecutive failed attempts after which the task fails; `None`: until the resource
    /// timeout. Attempts count again from zero once bytes flow.
    pub max_attempts: Option<u32>,
    /// Retry when the host cannot be reached ([`crate::ErrorKind::Connection`] with
    /// `unreachable`: name resolution or connecting failed), without counting those attempts
    /// against `max_attempts`; `false` fails at once.
    #[serde(default = "waits_by_default")]
    pub waits_for_connectivity: bool,
}

fn waits_by_default() -> bool {
    true
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            max_attempts: None,
            waits_for_connectivity: true,
        }
    }
}

impl RetryPolicy {
    /// A policy from a session's settings in milliseconds (SPEC §4 `retry`,
    /// `waits_for_connectivity`).
    pub fn from_millis(
        initial_ms: u64,
        max_ms: u64,
        max_attempts: Option<u32>,
        waits_for_connectivity: bool,
    ) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            max_attempts,
            waits_for_connectivity,
        }
    }

    /// After failed attempt number `attempt` (1-based) with `error`: the delay before the next
    /// attempt, or `None` when the error is permanent, the host is unreachable and the policy
    /// does not wait for connectivity, or the attempts are used up.
    pub(crate) fn after_failure(&self, attempt: u32, error: &crate::Error) -> Option<Duration> {
        let unreachable = matches!(
            error.kind(),
            crate::ErrorKind::Connection {
                unreachable: true,
                ..
            }
        );
        if unreachable {
            // Waiting for connectivity is not failing: no attempt limit applies.
            return self
                .waits_for_connectivity
                .then(|| self.delay(attempt, None));
        }
        let exhausted = self.max_attempts.is_some_and(|max| attempt >= max);
        (error.is_transient() && !exhausted).then(|| self.delay(attempt, error.retry_after()))
    }

    /// The delay before retry number `attempt` (1-based): `initial × 2^(attempt-1)`, capped,
    /// then drawn uniformly from its upper half so that many clients do not retry in step.
    /// A server's `Retry-After` replaces the computed delay (capped at `max`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max);
        }
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// A transient failure handed back to the caller instead of being waited out in the run
/// (`hand_back_retries` of a download or upload spec): the caller frees what the run holds (a
/// concurrency slot) and runs the task again once `delay` has passed, with `attempt` as the
/// new run's `failed_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLater {
    /// Failed attempts in a row so far (the number of the `Retrying` event just reported).
    pub attempt: u32,
    /// How long to wait before the next attempt.
    pub delay: Duration,
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_failure_retries_transient_errors_until_the_attempts_are_used() {
        use crate::error::{Error, ErrorKind};
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        let status = |code| {
            Error::from(ErrorKind::HttpStatus {
                code,
                retry_after: None,
            })
        };
        assert!(policy.after_failure(1, &status(503)).is_some());
        assert!(policy.after_failure(2, &status(503)).is_some());
        assert_eq!(
            policy.after_failure(3, &status(503)),
            None,
            "attempts used up"
        );
        assert_eq!(policy.after_failure(1, &status(404)), None, "permanent");
        let unlimited = RetryPolicy {
            max_attempts: None,
            ..policy
        };
        assert!(unlimited.after_failure(1000, &status(503)).is_some());

        let unreachable = Error::from(ErrorKind::Connection {
            host: "example.com".into(),
            unreachable: true,
        });
        let broke = Error::from(ErrorKind::Connection {
            host: "example.com".into(),
            unreachable: false,
        });
        assert!(
            policy.after_failure(7, &unreachable).is_some(),
            "waiting for connectivity uses no attempt"
        );
        assert_eq!(policy.after_failure(3, &broke), None, "attempts used up");
        assert!(unlimited.after_failure(1, &unreachable).is_some());
        let no_wait = RetryPolicy {
            waits_for_connectivity: false,
            ..unlimited
        };
        assert_eq!(
            no_wait.after_failure(1, &unreachable),
            None,
            "an unreachable host fails at once"
        );
        assert!(
            no_wait.after_failure(1, &status(503)).is_some(),
            "others retry"
        );
        assert!(
            no_wait.after_failure(1, &broke).is_some(),
            "a broken connection too"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_attempts: None,
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let d1 = policy.delay(1, None);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d3 = policy.delay(3, None);
            assert!(d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4));
            let d20 = policy.delay(20, None);
            assert!(d20 >= Duration::from_secs(5) && d20 <= Duration::from_secs(10));
        }
        assert!(policy.delay(200, None) <= Duration::from_secs(10));
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
