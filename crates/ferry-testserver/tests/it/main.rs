//! End-to-end tests of the test server, through a real HTTP client.

// Tests fail by panicking; an unwrap is the assertion that the step worked.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_testserver::{RequestRecord, TestServer, content};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
};
use sha2::{Digest, Sha256};

/// A client that ignores proxy environment variables and does not follow redirects.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn header(resp: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> &str {
    resp.headers().get(name).unwrap().to_str().unwrap()
}

/// Reads a body until it ends or fails; returns the bytes received and whether it failed.
async fn read_until_error(mut resp: reqwest::Response) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => return (got, false),
            Err(_) => return (got, true),
        }
    }
}

fn last(server: &TestServer) -> RequestRecord {
    server.requests().pop().unwrap()
}

#[tokio::test]
async fn full_body_matches_content_and_is_accounted() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/bytes/1000003?seed=42"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, CONTENT_LENGTH), "1000003");
    assert_eq!(header(&resp, ACCEPT_RANGES), "bytes");
    assert_eq!(header(&resp, ETAG), "\"2a-1000003-g0\"");
    assert_eq!(
        header(&resp, LAST_MODIFIED),
        "Mon, 01 Jan 2024 00:00:00 GMT"
    );
    assert_eq!(header(&resp, "content-type"), "application/octet-stream");
    let body = resp.bytes().await.unwrap();
    assert!(body[..] == content(42, 0, 1_000_003)[..]);
    assert_ne!(content(42, 0, 64), content(43, 0, 64));

    let rec = last(&server);
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.uri, "/bytes/1000003?seed=42");
    assert_eq!(rec.path, "/bytes/1000003");
    assert_eq!(rec.query, "seed=42");
    assert_eq!(rec.status, 200);
    assert_eq!(rec.body_bytes_sent, 1_000_003);
    assert!(rec.header("Host").is_some());
    assert_eq!(server.bytes_sent(), 1_000_003);

    server.clear_log();
    assert!(server.requests().is_empty());
    assert_eq!(server.bytes_sent(), 0);
}

#[tokio::test]
async fn head_declares_length_without_body() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .head(server.url("/bytes/5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, CONTENT_LENGTH), "5000");
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(last(&server).body_bytes_sent, 0);
}

#[tokio::test]
async fn ranges() {
    let server = TestServer::start().unwrap();
    let c = client();
    let full = content(7, 0, 1000);
    let get = |range: &'static str| {
        c.get(server.url("/bytes/1000?seed=7"))
            .header(RANGE, range)
            .send()
    };

    let resp = get("bytes=10-19").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, CONTENT_RANGE), "bytes 10-19/1000");
    assert_eq!(header(&resp, CONTENT_LENGTH), "10");
    assert_eq!(resp.bytes().await.unwrap()[..], full[10..20]);

    let resp = get("bytes=990-").await.unwrap();
    assert_eq!(header(&resp, CONTENT_RANGE), "bytes 990-999/1000");
    assert_eq!(resp.bytes().await.unwrap()[..], full[990..]);

    let resp = get("bytes=-100").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, CONTENT_RANGE), "bytes 900-999/1000");
    assert_eq!(resp.bytes().await.unwrap()[..], full[900..]);

    let resp = get("bytes=1000-").await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, CONTENT_RANGE), "bytes */1000");

    for ignored in ["bytes=0-1,5-6", "bytes=9-2", "pages=1-2"] {
        let resp = get(ignored).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{ignored}");
        assert_eq!(resp.bytes().await.unwrap()[..], full[..]);
    }

    // Ranges are honoured with chunked encoding too.
    let resp = c
        .get(server.url("/bytes/1000?seed=7&chunked=1"))
        .header(RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.headers().get(CONTENT_LENGTH).is_none());
    assert_eq!(header(&resp, "transfer-encoding"), "chunked");
    assert_eq!(resp.bytes().await.unwrap()[..], full[100..200]);
}

#[tokio::test]
async fn ranges_disabled() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/bytes/1000?ranges=0"))
        .header(RANGE, "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(ACCEPT_RANGES).is_none());
    assert_eq!(resp.bytes().await.unwrap()[..], content(0, 0, 1000)[..]);
}

#[tokio::test]
async fn if_range() {
    let server = TestServer::start().unwrap();
    let c = client();
    let url = server.url("/bytes/1000?seed=3");
    let resp = c.get(&url).send().await.unwrap();
    let etag = header(&resp, ETAG).to_string();
    let last_modified = header(&resp, LAST_MODIFIED).to_string();

    let ranged = |validator: String| {
        c.get(&url)
            .header(RANGE, "bytes=500-")
            .header(IF_RANGE, validator)
            .send()
    };
    assert_eq!(
        ranged(etag.clone()).await.unwrap().status(),
        StatusCode::PARTIAL_CONTENT
    );
    assert_eq!(
        ranged(last_modified).await.unwrap().status(),
        StatusCode::PARTIAL_CONTENT
    );
    let resp = ranged("\"something-else\"".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap()[..], content(3, 0, 1000)[..]);
    let stale_date = "Sun, 31 Dec 2023 00:00:00 GMT".to_string();
    assert_eq!(ranged(stale_date).await.unwrap().status(), StatusCode::OK);

    // Weak validators never satisfy If-Range.
    let weak_url = server.url("/bytes/1000?seed=3&weak_etag=1");
    let resp = c.get(&weak_url).send().await.unwrap();
    let weak = header(&resp, ETAG).to_string();
    assert_eq!(weak, format!("W/{etag}"));
    let resp = c
        .get(&weak_url)
        .header(RANGE, "bytes=500-")
        .header(IF_RANGE, weak)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn validators_can_be_removed() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/bytes/10?etag=0&lastmod=0"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get(ETAG).is_none());
    assert!(resp.headers().get(LAST_MODIFIED).is_none());
}

#[tokio::test]
async fn generation_changes_versioned_resources() {
    let server = TestServer::start().unwrap();
    let c = client();
    let url = server.url("/bytes/4096?seed=9&versioned=1");

    let resp = c.get(&url).send().await.unwrap();
    let etag0 = header(&resp, ETAG).to_string();
    let lm0 = header(&resp, LAST_MODIFIED).to_string();
    assert_eq!(etag0, "\"9-4096-g0\"");
    assert_eq!(resp.bytes().await.unwrap()[..], content(9, 0, 4096)[..]);

    server.set_generation(3);
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(header(&resp, ETAG), "\"9-4096-g3\"");
    assert_eq!(
        header(&resp, LAST_MODIFIED),
        "Thu, 04 Jan 2024 00:00:00 GMT"
    );
    assert_ne!(header(&resp, LAST_MODIFIED), lm0);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body[..], content(9, 3, 4096)[..]);
    assert_ne!(body[..], content(9, 0, 4096)[..]);

    // A resume validated against the old ETag must restart with the new content.
    let resp = c
        .get(&url)
        .header(RANGE, "bytes=100-")
        .header(IF_RANGE, etag0)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap()[..], content(9, 3, 4096)[..]);

    // Unversioned resources ignore the generation.
    let resp = c.get(server.url("/bytes/64?seed=9")).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap()[..], content(9, 0, 64)[..]);
}

#[tokio::test]
async fn drop_after_truncates_and_is_accounted() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/bytes/2000000?seed=1&drop_after=700001"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, CONTENT_LENGTH), "2000000");
    let (got, failed) = read_until_error(resp).await;
    assert!(failed, "a truncated body must be an error, not a clean end");
    assert_eq!(got.len(), 700_001);
    assert_eq!(got[..], content(1, 0, 700_001)[..]);
    assert_eq!(last(&server).body_bytes_sent, 700_001);
    assert_eq!(server.bytes_sent(), 700_001);
}

#[tokio::test]
async fn drop_after_applies_to_ranged_and_chunked_responses() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/bytes/100000?drop_after=10&chunked=1"))
        .header(RANGE, "bytes=50000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let (got, failed) = read_until_error(resp).await;
    assert!(failed);
    assert_eq!(got[..], content(0, 0, 50_010)[50_000..]);
}

#[tokio::test]
async fn short_by_lies_about_the_length() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/bytes/300000?short_by=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, CONTENT_LENGTH), "300000");
    let (got, failed) = read_until_error(resp).await;
    assert!(failed);
    assert_eq!(got.len(), 299_000);
    assert_eq!(last(&server).body_bytes_sent, 299_000);
}

#[tokio::test]
async fn fail_times_then_success_with_status_and_retry_after() {
    let server = TestServer::start().unwrap();
    let c = client();
    let url = server.url("/bytes/100?status=503&retry_after=7&fail_times=2");
    for _ in 0..2 {
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&resp, RETRY_AFTER), "7");
        assert_eq!(resp.text().await.unwrap(), "error 503");
    }
    // The counters are server state: clearing the log does not reset them.
    server.clear_log();
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(RETRY_AFTER).is_none());
    assert_eq!(resp.bytes().await.unwrap()[..], content(0, 0, 100)[..]);
    assert_eq!(last(&server).status, 200);

    // Without fail_times the fault is permanent.
    for _ in 0..3 {
        let resp = c
            .get(server.url("/bytes/10?status=404"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    // Counting is per exact path+query: a different query has its own counter.
    let resp = c
        .get(server.url("/bytes/100?status=503&fail_times=2&retry_after=7"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn fail_times_with_drop_after() {
    let server = TestServer::start().unwrap();
    let c = client();
    let url = server.url("/bytes/100000?drop_after=10&fail_times=1");
    let (got, failed) = read_until_error(c.get(&url).send().await.unwrap()).await;
    assert!(failed);
    assert_eq!(got.len(), 10);
    let (got, failed) = read_until_error(c.get(&url).send().await.unwrap()).await;
    assert!(!failed);
    assert_eq!(got.len(), 100_000);
}

#[tokio::test]
async fn first_byte_delay() {
    let server = TestServer::start().unwrap();
    let started = Instant::now();
    let resp = client()
        .get(server.url("/bytes/10?first_byte_delay_ms=300"))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn rate_limits_and_counts_progress_live() {
    let server = TestServer::start().unwrap();
    let started = Instant::now();
    let mut resp = client()
        .get(server.url("/bytes/60000?rate=100000"))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    // The record is updated while the response is still streaming.
    let sent_so_far = last(&server).body_bytes_sent;
    assert!(sent_so_far >= first.len() as u64);
    assert!(sent_so_far < 60_000, "{sent_so_far}");
    let mut total = first.len();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, 60_000);
    // 60 kB at 100 kB/s, the first 5 kB chunk being free: at least 0.55 s.
    assert!(started.elapsed() >= Duration::from_millis(550));
}

#[tokio::test]
async fn redirects() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/redirect/2?to=%2Fbytes%2F10&code=307"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        header(&resp, LOCATION),
        "/redirect/1?to=%2Fbytes%2F10&code=307"
    );

    let resp = client()
        .get(server.url("/redirect/0?to=http%3A%2F%2Fexample.invalid%2Fx%3Fa%3Db&code=301"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(header(&resp, LOCATION), "http://example.invalid/x?a=b");

    // Followed by a real client, the chain ends at the target.
    let following = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = following
        .get(server.url("/redirect/3?to=%2Fbytes%2F10%3Fseed%3D2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap()[..], content(2, 0, 10)[..]);
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths[2..],
        [
            "/redirect/3",
            "/redirect/2",
            "/redirect/1",
            "/redirect/0",
            "/bytes/10"
        ]
    );
    assert!(server.requests()[2..6].iter().all(|r| r.status == 302));

    let err = following.get(server.url("/loop")).send().await.unwrap_err();
    assert!(err.is_redirect(), "{err}");
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/loop")
            .count()
            > 5
    );
}

#[tokio::test]
async fn content_disposition_variants() {
    let server = TestServer::start().unwrap();
    let c = client();
    let disposition = |query: &'static str| {
        let url = server.url(&format!("/bytes/1?{query}"));
        let c = c.clone();
        async move {
            let resp = c.get(url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{query}");
            resp.headers()
                .get(CONTENT_DISPOSITION)
                .map(|v| v.as_bytes().to_vec())
        }
    };

    assert_eq!(
        disposition("filename=..%2F..%2Fetc%2Fpasswd")
            .await
            .unwrap(),
        b"attachment; filename=\"../../etc/passwd\""
    );
    assert_eq!(
        disposition("filename=a%5Cb%09c").await.unwrap(),
        b"attachment; filename=\"a\\b\tc\""
    );
    assert_eq!(
        disposition("filename_star=%E2%82%AC%20rates.txt")
            .await
            .unwrap(),
        b"attachment; filename*=UTF-8''%E2%82%AC%20rates.txt"
    );
    assert_eq!(
        disposition("filename=plain.txt&filename_star=fancy%C3%A9.txt")
            .await
            .unwrap(),
        b"attachment; filename=\"plain.txt\"; filename*=UTF-8''fancy%C3%A9.txt"
    );
    assert_eq!(
        disposition("cd=inline%3B%20filename%3D%22%2Fabs%22")
            .await
            .unwrap(),
        b"inline; filename=\"/abs\""
    );
    assert_eq!(disposition("seed=1").await, None);

    // Controls other than tab cannot be carried in a header: refused loudly.
    let resp = c
        .get(server.url("/bytes/1?filename=a%0Ab"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn upload_is_stored() {
    let server = TestServer::start().unwrap();
    let data = content(5, 0, 300_000);
    let resp = client()
        .put(server.url("/upload/report.bin"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let summary: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(summary["name"], "report.bin");
    assert_eq!(summary["bytes"], 300_000);
    assert_eq!(summary["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(server.upload("report.bin").unwrap(), data);

    let resp = client()
        .post(server.url("/upload/other"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(server.upload("other").unwrap(), b"hi");
    assert_eq!(server.upload("missing"), None);
}

#[tokio::test]
async fn upload_faults_apply_the_first_k_times() {
    let server = TestServer::start().unwrap();
    let data = content(6, 0, 1_000_000);

    // status: the body is read, then the error is answered and nothing stored.
    let resp = client()
        .put(server.url("/upload/s?status=413"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.text().await.unwrap(), "error 413");
    assert_eq!(last(&server).body_bytes_received, 1_000_000);
    assert_eq!(server.upload("s"), None);

    // drop_after + fail_times=1: the first request is cut without an answer, the second
    // is stored.
    let url = server.url("/upload/d?drop_after=300000&fail_times=1&status=503");
    let first = client().put(&url).body(data.clone()).send().await;
    assert!(first.is_err(), "no answer to a dropped upload: {first:?}");
    let received = last(&server).body_bytes_received;
    assert!((300_000..1_000_000).contains(&received), "{received}");
    assert_eq!(server.upload("d"), None);
    let resp = client().put(&url).body(data.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(server.upload("d").unwrap(), data);
}

#[tokio::test]
async fn multipart_uploads_are_stored_per_part() {
    let server = TestServer::start().unwrap();
    let file = content(7, 0, 200_000);
    let form = reqwest::multipart::Form::new().text("title", "hello").part(
        "doc",
        reqwest::multipart::Part::bytes(file.clone())
            .file_name("a.bin")
            .mime_str("application/x-test")
            .unwrap(),
    );
    let resp = client()
        .post(server.url("/upload/form"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let summary: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let parts = summary["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["field"], "title");
    assert_eq!(parts[0]["file_name"], serde_json::Value::Null);
    assert_eq!(parts[1]["field"], "doc");
    assert_eq!(parts[1]["file_name"], "a.bin");
    assert_eq!(parts[1]["content_type"], "application/x-test");
    assert_eq!(parts[1]["bytes"], 200_000);
    assert_eq!(parts[1]["sha256"], hex::encode(Sha256::digest(&file)));
    assert_eq!(server.upload("form/title").unwrap(), b"hello");
    assert_eq!(server.upload("form/doc").unwrap(), file);

    let resp = client()
        .post(server.url("/upload/bad"))
        .header("content-type", "multipart/form-data; boundary=zz")
        .body("not a form")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(server.upload("bad"), None);
}

#[tokio::test]
async fn echo_and_not_found() {
    let server = TestServer::start().unwrap();
    let resp = client()
        .get(server.url("/echo"))
        .header("X-Ferry-Test", "yes")
        .send()
        .await
        .unwrap();
    let headers: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(headers["x-ferry-test"], "yes");
    assert!(headers["host"].is_string());

    for path in ["/", "/nope", "/bytes/abc", "/bytes/10/extra"] {
        let resp = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let resp = client()
        .get(server.url("/bytes/1?seed=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn absolute_form_requests_are_served_and_recorded() {
    let server = TestServer::start().unwrap();
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(server.url("")).unwrap())
        .build()
        .unwrap();
    let resp = via_proxy
        .get("http://unreachable.invalid/bytes/10?seed=4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap()[..], content(4, 0, 10)[..]);
    let rec = last(&server);
    assert_eq!(rec.uri, "http://unreachable.invalid/bytes/10?seed=4");
    assert_eq!(rec.path, "/bytes/10");
    assert_eq!(rec.query, "seed=4");
    assert_eq!(rec.header("host"), Some("unreachable.invalid"));
}

#[tokio::test]
async fn tls_needs_the_certificate() {
    let server = TestServer::start_tls().unwrap();
    assert!(server.url("/x").starts_with("https://127.0.0.1:"));
    let pem = server.cert_pem().unwrap();
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = trusting
        .get(server.url("/bytes/100000?seed=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap()[..], content(8, 0, 100_000)[..]);
    let by_name = format!("https://localhost:{}/bytes/10", server.addr().port());
    assert_eq!(
        trusting.get(by_name).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Injected aborts work over TLS too.
    let resp = trusting
        .get(server.url("/bytes/100000?drop_after=1234"))
        .send()
        .await
        .unwrap();
    let (got, failed) = read_until_error(resp).await;
    assert!(failed);
    assert_eq!(got.len(), 1234);

    let untrusting = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(
        untrusting
            .get(server.url("/bytes/10"))
            .send()
            .await
            .is_err()
    );
    assert!(TestServer::start().unwrap().cert_pem().is_none());
}

#[test]
fn works_without_a_runtime_and_stops_on_drop() {
    let server = TestServer::start().unwrap();
    let addr = server.addr();
    assert!(addr.ip().is_loopback());
    std::net::TcpStream::connect(addr).unwrap();
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err());
}
