//! Request routing, the endpoints, and fault injection. The parameters are documented
//! on the crate; a malformed value is answered with 400 so that a typo in a test fails
//! loudly instead of silently testing nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};

use crate::body::{Meter, ResponseBody, Shaping};
use crate::content::effective_seed;
use crate::multipart;
use crate::range::{RangeOutcome, evaluate_range, if_range_matches};
use crate::server::ConnCtl;
use crate::{LiveRecord, Shared, lock};

/// Last-Modified of every resource at generation 0: 2024-01-01T00:00:00Z.
const BASE_LAST_MODIFIED_SECS: u64 = 1_704_067_200;

/// Handles one request: records it, routes it, and applies the head delay.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnCtl>,
) -> Result<Response<ResponseBody>, Aborted> {
    let record = Arc::new(LiveRecord {
        version: format!("{:?}", req.version()),
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), v)
            })
            .collect(),
        status: Default::default(),
        body_bytes_sent: Default::default(),
        body_bytes_received: Default::default(),
    });
    // Logged on arrival so that a test can observe requests whose response is delayed.
    shared.push_record(Arc::clone(&record));

    let meter = Meter {
        record: Arc::clone(&record),
        shared: Arc::clone(&shared),
        conn,
    };
    let reply = match route(req, &shared, &meter).await {
        Ok(reply) => reply,
        Err(msg) => Reply::now(text(StatusCode::BAD_REQUEST, msg, &meter)),
    };
    if reply.abort {
        return Err(Aborted);
    }
    record
        .status
        .store(reply.response.status().as_u16(), Ordering::Relaxed);
    if let Some(delay) = reply.head_delay {
        tokio::time::sleep(delay).await;
    }
    Ok(reply.response)
}

/// An injected abort: the connection is closed without an answer.
#[derive(Debug)]
pub(crate) struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ferry-testserver: injected connection abort")
    }
}

impl std::error::Error for Aborted {}

struct Reply {
    response: Response<ResponseBody>,
    /// Delay before the response head is sent (`first_byte_delay_ms`).
    head_delay: Option<Duration>,
    /// Close the connection instead of answering (`drop_after` on an upload).
    abort: bool,
}

impl Reply {
    fn now(response: Response<ResponseBody>) -> Self {
        Self {
            response,
            head_delay: None,
            abort: false,
        }
    }
}

/// A malformed request or query, answered with 400 and this message.
type BadRequest = String;

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    meter: &Meter,
) -> Result<Reply, BadRequest> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["bytes", n], &Method::GET | &Method::HEAD) => match parse_u64(n) {
            Some(n) => bytes_resource(&req, n, shared, meter),
            None => Ok(Reply::now(not_found(meter))),
        },
        (["bytes", _], _) => Ok(Reply::now(method_not_allowed("GET, HEAD", meter))),
        (["redirect", k], _) => match parse_u64(k) {
            Some(k) => redirect(&req, k, meter),
            None => Ok(Reply::now(not_found(meter))),
        },
        (["loop"], _) => Ok(Reply::now(redirect_response(
            StatusCode::FOUND,
            HeaderValue::from_static("/loop"),
            meter,
        ))),
        (["echo"], _) => Ok(Reply::now(echo(&req, meter))),
        (["upload", name], &Method::PUT | &Method::POST) => {
            let name = String::from_utf8_lossy(&percent_decode_str(name).collect::<Vec<u8>>())
                .into_owned();
            upload(req, name, shared, meter).await
        }
        (["upload", _], _) => Ok(Reply::now(method_not_allowed("PUT, POST", meter))),
        _ => Ok(Reply::now(not_found(meter))),
    }
}

/// The parameters of `/bytes/<n>`.
struct BytesParams {
    seed: u64,
    ranges: bool,
    bad_range: bool,
    etag: bool,
    lastmod: bool,
    weak_etag: bool,
    versioned: bool,
    rate: Option<u64>,
    drop_after: Option<u64>,
    short_by: Option<u64>,
    chunked: bool,
    first_byte_delay_ms: Option<u64>,
    status: Option<StatusCode>,
    retry_after: Option<u64>,
    fail_times: Option<u64>,
    disposition: Option<Vec<u8>>,
}

impl BytesParams {
    fn parse(q: &Query<'_>) -> Result<Self, String> {
        let status = status_param(q)?;
        let rate = q.num("rate")?;
        if rate == Some(0) {
            return Err("rate must be positive".into());
        }

        let disposition = if let Some(raw) = q.decoded("cd") {
            Some(raw)
        } else {
            let mut v = Vec::new();
            if let Some(name) = q.decoded("filename") {
                v.extend_from_slice(b"attachment; filename=\"");
                v.extend_from_slice(&name);
                v.push(b'"');
            }
            if let Some(star) = q.get("filename_star") {
                if v.is_empty() {
                    v.extend_from_slice(b"attachment");
                }
                v.extend_from_slice(b"; filename*=UTF-8''");
                v.extend_from_slice(star.as_bytes());
            }
            (!v.is_empty()).then_some(v)
        };

        Ok(Self {
            seed: q.num("seed")?.unwrap_or(0),
            ranges: q.flag("ranges")?.unwrap_or(true),
            bad_range: q.flag("bad_range")?.unwrap_or(false),
            etag: q.flag("etag")?.unwrap_or(true),
            lastmod: q.flag("lastmod")?.unwrap_or(true),
            weak_etag: q.flag("weak_etag")?.unwrap_or(false),
            versioned: q.flag("versioned")?.unwrap_or(false),
            rate,
            drop_after: q.num("drop_after")?,
            short_by: q.num("short_by")?,
            chunked: q.flag("chunked")?.unwrap_or(false),
            first_byte_delay_ms: q.num("first_byte_delay_ms")?,
            status,
            retry_after: q.num("retry_after")?,
            fail_times: q.num("fail_times")?,
            disposition,
        })
    }
}

fn bytes_resource(
    req: &Request<Incoming>,
    len: u64,
    shared: &Shared,
    meter: &Meter,
) -> Result<Reply, BadRequest> {
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let p = BytesParams::parse(&query)?;

    let faults = faults_apply(req, shared, p.fail_times);
    let head_delay = p
        .first_byte_delay_ms
        .filter(|_| faults)
        .map(Duration::from_millis);

    if let (true, Some(status)) = (faults, p.status) {
        let mut resp = text(status, format!("error {}", status.as_u16()), meter);
        if let Some(secs) = p.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return Ok(Reply {
            response: resp,
            head_delay,
            abort: false,
        });
    }

    let generation = if p.versioned {
        shared.generation.load(Ordering::Relaxed)
    } else {
        0
    };
    let etag_value = format!("\"{:x}-{len}-g{generation}\"", p.seed);
    let strong_etag = (p.etag && !p.weak_etag).then_some(etag_value.as_str());
    let last_modified = p.lastmod.then(|| {
        let secs = BASE_LAST_MODIFIED_SECS.saturating_add(generation.saturating_mul(86_400));
        let time = UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .unwrap_or(UNIX_EPOCH);
        httpdate::fmt_http_date(time)
    });

    let outcome = if p.ranges {
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        let if_range = req.headers().get(header::IF_RANGE).map(|v| v.to_str());
        match (range, if_range) {
            (None, _) => RangeOutcome::Full,
            // An unreadable If-Range cannot match anything.
            (Some(_), Some(Err(_))) => RangeOutcome::Full,
            (Some(_), Some(Ok(v)))
                if !if_range_matches(v, strong_etag, last_modified.as_deref()) =>
            {
                RangeOutcome::Full
            }
            (Some(range), _) => evaluate_range(range, len),
        }
    } else {
        RangeOutcome::Full
    };

    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if p.ranges {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if p.etag {
        let etag = if p.weak_etag {
            format!("W/{etag_value}")
        } else {
            etag_value.clone()
        };
        headers.insert(header::ETAG, header_value(&etag)?);
    }
    if let Some(lm) = &last_modified {
        headers.insert(header::LAST_MODIFIED, header_value(lm)?);
    }
    if let Some(cd) = &p.disposition {
        // CR, LF, NUL and other controls cannot travel in an HTTP/1.1 header (and a
        // client's parser would reject the whole response), so refuse loudly.
        let value = HeaderValue::from_bytes(cd).map_err(|_| {
            "Content-Disposition value contains control characters, which cannot be sent \
             in a header; percent-encode them in filename_star instead"
                .to_string()
        })?;
        headers.insert(header::CONTENT_DISPOSITION, value);
    }

    let (status, start, body_len) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0, len),
        RangeOutcome::Partial { start, end } => {
            // A broken server: it answers from the beginning whatever start was asked for
            // (and says so in Content-Range, which a client must check).
            let start = if p.bad_range { 0 } else { start };
            let content_range = format!("bytes {start}-{end}/{len}");
            headers.insert(header::CONTENT_RANGE, header_value(&content_range)?);
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeOutcome::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{len}"))?,
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            let response = response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                ResponseBody::empty(meter.clone()),
            );
            return Ok(Reply {
                response,
                head_delay,
                abort: false,
            });
        }
    };

    if !p.chunked {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    let body = if req.method() == Method::HEAD {
        ResponseBody::empty(meter.clone())
    } else {
        let short = p
            .short_by
            .filter(|&s| s > 0)
            .map(|s| body_len.saturating_sub(s));
        let stop_at = match (p.drop_after, short) {
            _ if !faults => None,
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        };
        let shaping = Shaping {
            stop_at,
            rate: p.rate,
            chunked: p.chunked,
        };
        ResponseBody::content(
            effective_seed(p.seed, generation),
            start,
            body_len,
            shaping,
            meter.clone(),
        )
    };
    Ok(Reply {
        response: response(status, headers, body),
        head_delay,
        abort: false,
    })
}

/// The `status` parameter.
fn status_param(q: &Query<'_>) -> Result<Option<StatusCode>, BadRequest> {
    match q.num("status")? {
        Some(code) => Ok(Some(
            u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("bad status {code}"))?,
        )),
        None => Ok(None),
    }
}

/// Whether this request's faults apply: always without `fail_times`, else only for the
/// first `k` requests with this exact path+query (counted here).
fn faults_apply<B>(req: &Request<B>, shared: &Shared, fail_times: Option<u64>) -> bool {
    let Some(k) = fail_times else {
        return true;
    };
    // Keyed on path+query only, so the same resource fetched via a proxy (absolute-form)
    // shares the counter with direct fetches.
    let key = req.uri().path_and_query().map_or_else(
        || req.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let mut counts = lock(&shared.fail_counts);
    let seen = counts.entry(key).or_insert(0);
    *seen += 1;
    *seen <= k
}

fn header_value(s: &str) -> Result<HeaderValue, BadRequest> {
    HeaderValue::from_str(s).map_err(|_| format!("not a valid header value: {s:?}"))
}

fn response(status: StatusCode, headers: HeaderMap, body: ResponseBody) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn redirect(req: &Request<Incoming>, k: u64, meter: &Meter) -> Result<Reply, BadRequest> {
    let raw_query = req.uri().query().unwrap_or("");
    let query = Query::parse(raw_query);
    let code = match query.num("code") {
        Ok(None) => StatusCode::FOUND,
        Ok(Some(c @ (301 | 302 | 303 | 307 | 308))) => {
            StatusCode::from_u16(c as u16).unwrap_or(StatusCode::FOUND)
        }
        Ok(Some(c)) => return Err(format!("bad redirect code {c}")),
        Err(e) => return Err(e),
    };
    let location = if k > 0 {
        let sep = if raw_query.is_empty() { "" } else { "?" };
        HeaderValue::from_str(&format!("/redirect/{}{sep}{raw_query}", k - 1))
    } else {
        match query.decoded("to") {
            Some(to) => HeaderValue::from_bytes(&to),
            None => return Err("missing `to`".into()),
        }
    };
    match location {
        Ok(location) => Ok(Reply::now(redirect_response(code, location, meter))),
        Err(_) => Err("`to` is not a valid header value".into()),
    }
}

fn redirect_response(
    code: StatusCode,
    location: HeaderValue,
    meter: &Meter,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty(meter.clone()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

fn echo(req: &Request<Incoming>, meter: &Meter) -> Response<ResponseBody> {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // Repeated headers are combined the way RFC 9110 allows for list values.
        match map.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_string(), value.into());
            }
        }
    }
    json(StatusCode::OK, serde_json::Value::Object(map), meter)
}

async fn upload(
    req: Request<Incoming>,
    name: String,
    shared: &Shared,
    meter: &Meter,
) -> Result<Reply, BadRequest> {
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let status = status_param(&query)?;
    let retry_after = query.num("retry_after")?;
    let drop_after = query.num("drop_after")?;
    let fail_times = query.num("fail_times")?;
    let faults = faults_apply(&req, shared, fail_times);
    let drop_after = drop_after.filter(|_| faults);
    let aborted = || Reply {
        abort: true,
        ..Reply::now(not_found(meter))
    };
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary);

    if drop_after == Some(0) {
        return Ok(aborted());
    }
    let mut body = req.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            // The client went away or sent a broken body; it will not read this anyway.
            Err(e) => {
                return Ok(Reply::now(text(
                    StatusCode::BAD_REQUEST,
                    format!("reading body: {e}"),
                    meter,
                )));
            }
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        meter
            .record
            .body_bytes_received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        data.extend_from_slice(&chunk);
        if drop_after.is_some_and(|d| data.len() as u64 >= d) {
            return Ok(aborted());
        }
    }

    if let (true, Some(status)) = (faults, status) {
        let mut resp = text(status, format!("error {}", status.as_u16()), meter);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return Ok(Reply::now(resp));
    }

    let mut summary = serde_json::json!({
        "name": name,
        "bytes": data.len(),
        "sha256": hex::encode(Sha256::digest(&data)),
    });
    if let Some(boundary) = boundary {
        let parts = multipart::parse(&data, &boundary)
            .map_err(|e| format!("malformed multipart/form-data body: {e}"))?;
        let mut listed = Vec::with_capacity(parts.len());
        let mut uploads = lock(&shared.uploads);
        for part in parts {
            listed.push(serde_json::json!({
                "field": part.field,
                "file_name": part.file_name,
                "content_type": part.content_type,
                "bytes": part.data.len(),
                "sha256": hex::encode(Sha256::digest(part.data)),
            }));
            uploads.insert(format!("{name}/{}", part.field), part.data.to_vec());
        }
        summary["parts"] = listed.into();
    }
    lock(&shared.uploads).insert(name, data);
    Ok(Reply::now(json(StatusCode::CREATED, summary, meter)))
}

fn not_found(meter: &Meter) -> Response<ResponseBody> {
    text(StatusCode::NOT_FOUND, "not found".into(), meter)
}

fn method_not_allowed(allow: &'static str, meter: &Meter) -> Response<ResponseBody> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed".into(),
        meter,
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn text(status: StatusCode, body: String, meter: &Meter) -> Response<ResponseBody> {
    fixed(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(body),
        meter,
    )
}

fn json(status: StatusCode, value: serde_json::Value, meter: &Meter) -> Response<ResponseBody> {
    fixed(
        status,
        "application/json",
        Bytes::from(value.to_string()),
        meter,
    )
}

fn fixed(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    meter: &Meter,
) -> Response<ResponseBody> {
    let len = body.len();
    let mut resp = Response::new(ResponseBody::fixed(body, meter.clone()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// A raw query string split into `key=value` pairs, values still percent-encoded.
struct Query<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Query<'a> {
    fn parse(raw: &'a str) -> Self {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        Self { pairs }
    }

    /// The raw value of the last occurrence of `key`.
    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// Percent-decoded bytes. '+' is kept literally: tests must be able to put a '+'
    /// in a file name, and they control the encoding.
    fn decoded(&self, key: &str) -> Option<Vec<u8>> {
        self.get(key).map(|v| percent_decode_str(v).collect())
    }

    fn num(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_u64(v)
                .map(Some)
                .ok_or_else(|| format!("bad value for {key}: {v:?}")),
        }
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some("1" | "true") => Ok(Some(true)),
            Some("0" | "false") => Ok(Some(false)),
            Some(v) => Err(format!("bad value for {key}: {v:?}")),
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
