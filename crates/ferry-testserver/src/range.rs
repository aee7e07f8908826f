//! `Range` and `If-Range` evaluation for a single resource of known length.
//!
//! Deliberately strict and small: the server is a test oracle, so anything it does not
//! understand (multi-range, garbage) degrades to a full 200, which is what RFC 9110
//! allows and what a robust client must cope with.

/// What to do with a request's `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeOutcome {
    /// No usable range: send the whole representation with 200.
    Full,
    /// Send bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// Syntactically valid but outside the resource: 416.
    Unsatisfiable,
}

/// Evaluates a `Range` header value against a resource of `len` bytes.
pub(crate) fn evaluate_range(header: &str, len: u64) -> RangeOutcome {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Full;
    };
    // Multi-range responses (multipart/byteranges) are out of scope; ignoring the
    // header is always permitted.
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let (first, last) = (first.trim(), last.trim());

    if first.is_empty() {
        // Suffix range: the final `n` bytes.
        let Some(suffix) = parse_num(last) else {
            return RangeOutcome::Full;
        };
        if suffix == 0 || len == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        let start = len.saturating_sub(suffix);
        return RangeOutcome::Partial {
            start,
            end: len - 1,
        };
    }

    let Some(start) = parse_num(first) else {
        return RangeOutcome::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_num(last) {
            Some(end) if end >= start => Some(end),
            // `a-b` with b < a is invalid syntax, hence ignored rather than 416.
            _ => return RangeOutcome::Full,
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    RangeOutcome::Partial { start, end }
}

/// Digits only: `u64::from_str` would also accept a leading '+'.
fn parse_num(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether an `If-Range` value still designates the current representation.
///
/// `strong_etag` is the current ETag only if it is strong (weak validators never match
/// If-Range); `last_modified` the exact Last-Modified string currently sent, if any.
/// Comparison is exact string equality: a client must echo what it was given.
pub(crate) fn if_range_matches(
    value: &str,
    strong_etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    let value = value.trim();
    if value.starts_with("W/") {
        return false;
    }
    if value.starts_with('"') {
        return strong_etag == Some(value);
    }
    last_modified == Some(value)
}

#[cfg(test)]
mod tests {
    use super::RangeOutcome::*;
    use super::*;

    #[test]
    fn closed_and_open_ranges() {
        assert_eq!(
            evaluate_range("bytes=0-9", 100),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            evaluate_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            evaluate_range("bytes=90-1000", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            evaluate_range(" bytes= 5 - 5 ", 100),
            Partial { start: 5, end: 5 }
        );
    }

    #[test]
    fn suffix_ranges() {
        assert_eq!(
            evaluate_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            evaluate_range("bytes=-1000", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(evaluate_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(evaluate_range("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(evaluate_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(evaluate_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(evaluate_range("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for h in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=12",
            "0-1",
        ] {
            assert_eq!(evaluate_range(h, 100), Full, "{h}");
        }
    }

    #[test]
    fn if_range() {
        let lm = "Mon, 01 Jan 2024 00:00:00 GMT";
        assert!(if_range_matches("\"a-1-g0\"", Some("\"a-1-g0\""), Some(lm)));
        assert!(!if_range_matches(
            "\"a-1-g1\"",
            Some("\"a-1-g0\""),
            Some(lm)
        ));
        assert!(!if_range_matches(
            "W/\"a-1-g0\"",
            Some("\"a-1-g0\""),
            Some(lm)
        ));
        assert!(!if_range_matches("\"a-1-g0\"", None, Some(lm)));
        assert!(if_range_matches(lm, Some("\"x\""), Some(lm)));
        assert!(!if_range_matches(lm, Some("\"x\""), None));
        assert!(!if_range_matches(
            "Tue, 02 Jan 2024 00:00:00 GMT",
            None,
            Some(lm)
        ));
    }
}
