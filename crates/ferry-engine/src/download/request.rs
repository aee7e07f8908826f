//! Talking HTTP: requests with redirects followed by hand, ranges, error classification.

use ::http::HeaderMap;
use ::http::header::{self, HeaderValue};
use url::Url;

use super::transfer::Transfer;
use super::{Event, Redirect, drop_credentials, redirect_target};
use crate::checkpoint::{Cursor, OPEN_END};
use crate::error::{Error, ErrorKind};

impl Transfer<'_> {
    /// Sends a GET, following redirects by hand (SPEC §9).
    pub(super) async fn send(
        &mut self,
        url: &Url,
        extra: HeaderMap,
        record: bool,
    ) -> Result<reqwest::Response, Error> {
        let mut headers = self.spec.headers.clone();
        headers.extend(extra);
        let mut current = url.clone();
        let mut visited = vec![current.clone()];
        loop {
            let request = self.client.get(current.clone()).headers(headers.clone());
            let response = tokio::time::timeout(self.spec.request_timeout, request.send())
                .await
                .map_err(|_| Error::from(ErrorKind::RequestTimeout(self.spec.request_timeout)))?
                .map_err(|e| classify(e, &current))?;
            let status = response.status();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok());
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let (true, Some(location)) = (is_redirect, location) else {
                if record {
                    self.resource.current_url = current;
                }
                return Ok(response);
            };
            let next = redirect_target(
                &current,
                location,
                &visited,
                self.spec.allow_insecure_redirects,
                &mut headers,
            )?;
            let redirect = Redirect {
                from: current.clone(),
                to: next.clone(),
                status: status.as_u16(),
            };
            // Each attempt follows the chain again; report each hop once.
            if record && !self.redirects.contains(&redirect) {
                self.observer.on_event(Event::Redirected {
                    from: &redirect.from,
                    to: &redirect.to,
                    status: redirect.status,
                });
                self.redirects.push(redirect);
            }
            visited.push(next.clone());
            current = next;
        }
    }

    /// A ranged request for the rest of `cursor`, checked to answer exactly that range of the
    /// same resource.
    pub(super) async fn fetch_range(&self, cursor: &Cursor) -> Result<reqwest::Response, Error> {
        // Straight to where the first request's redirects ended: the credentials only if
        // that is still the origin they were given for.
        let mut headers = self.spec.headers.clone();
        if self.resource.current_url.origin() != self.url.origin() {
            drop_credentials(&mut headers);
        }
        let mut request = self
            .client
            .get(self.resource.current_url.clone())
            .headers(headers)
            .header(header::RANGE, range_header(cursor.pos(), cursor.end()));
        if let Some(v) = self.resource.validators.if_range() {
            request = request.header(header::IF_RANGE, v);
        }
        let url = &self.resource.current_url;
        let response = tokio::time::timeout(self.spec.request_timeout, request.send())
            .await
            .map_err(|_| Error::from(ErrorKind::RequestTimeout(self.spec.request_timeout)))?
            .map_err(|e| classify(e, url))?;
        let status = response.status().as_u16();
        let range = content_range(response.headers());
        match (status, range) {
            (206, Some(r)) if r.start == cursor.pos() && r.total == self.resource.total => {
                Ok(response)
            }
            (206 | 200, _) => Err(ErrorKind::RangeMismatch(format!(
                "a segment request for bytes {}- got HTTP {status}: the resource changed",
                cursor.pos()
            ))
            .into()),
            (code, _) => Err(ErrorKind::HttpStatus {
                code,
                retry_after: None,
            }
            .into()),
        }
    }
}

pub(super) fn range_header(pos: u64, end: u64) -> HeaderValue {
    let text = if end == OPEN_END {
        format!("bytes={pos}-")
    } else {
        format!("bytes={pos}-{}", end - 1)
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("bytes=0-"))
}

pub(super) fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// `Content-Range: bytes a-b/n` (n may be `*`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub(super) start: u64,
    pub(super) end_inclusive: u64,
    pub(super) total: Option<u64>,
}

pub(super) fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    parse_content_range(value)
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end_inclusive: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end_inclusive && total.is_none_or(|t| end_inclusive < t)).then_some(ContentRange {
        start,
        end_inclusive,
        total,
    })
}

/// Maps a reqwest failure to an error kind: certificate problems are permanent, everything
/// else on the way to a response is a transient connection problem.
pub(crate) fn classify(err: reqwest::Error, url: &Url) -> Error {
    let host = url.host_str().unwrap_or("").to_owned();
    let kind = if is_tls_failure(&err) {
        ErrorKind::Tls { host }
    } else {
        let unreachable = err.is_connect();
        ErrorKind::Connection { host, unreachable }
    };
    Error::with_source(kind, err)
}

fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    // io::Error hides the error it wraps from source(): look inside.
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && is_tls_failure(inner)
    {
        return true;
    }
    err.source().is_some_and(is_tls_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            parse_content_range("bytes 10-19/100"),
            Some(ContentRange {
                start: 10,
                end_inclusive: 19,
                total: Some(100)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*").map(|r| r.total),
            Some(None)
        );
        assert_eq!(parse_content_range("bytes 20-10/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
