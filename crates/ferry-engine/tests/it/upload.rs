//! Uploads: raw and multipart bodies, replies, retries, changed and missing files,
//! redirects, cancellation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{
    Event, Limits, MultipartFile, Progress, RateLimiter, RetryPolicy, UploadBody, UploadFailure,
    UploadMethod, UploadSpec, Uploaded,
};
use tokio_util::sync::CancellationToken;

use crate::fixture::{Env, Recorder, Seen, content, sha256_hex, wait_until};

impl Env {
    /// Writes `data` to `name` in the test folder.
    fn source(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    fn reply_path(&self) -> PathBuf {
        self.dir.path().join("reply.body")
    }

    /// An upload spec to `path_query` with quick retries.
    fn upload_spec(&self, path_query: &str, body: UploadBody) -> UploadSpec {
        let mut spec = UploadSpec::new(self.server.url(path_query), body, self.reply_path());
        spec.retry = RetryPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_attempts: Some(5),
            ..RetryPolicy::default()
        };
        spec.request_timeout = Duration::from_secs(10);
        spec
    }

    async fn upload(&self, spec: &UploadSpec) -> (Result<Uploaded, UploadFailure>, Recorder) {
        let recorder = Recorder::default();
        let result = self
            .engine
            .upload(
                spec,
                &Progress::default(),
                &recorder,
                &CancellationToken::new(),
            )
            .await;
        (result, recorder)
    }

    fn upload_requests(&self) -> Vec<ferry_testserver::RequestRecord> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/upload/"))
            .collect()
    }
}

fn reply_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_put_and_post_arrive_intact_with_content_length() {
    let env = Env::new();
    let data = content(7, 3 * 1024 * 1024 + 17);
    let file = env.source("data.bin", &data);
    for (method, name) in [
        (UploadMethod::Put, "put.bin"),
        (UploadMethod::Post, "post.bin"),
    ] {
        let mut spec = env.upload_spec(&format!("/upload/{name}"), UploadBody::File(file.clone()));
        spec.method = method;
        let progress = Progress::default();
        let done = env
            .engine
            .upload(&spec, &progress, &(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(done.status, 201);
        assert_eq!(done.sent, data.len() as u64);
        assert_eq!(env.server.upload(name).unwrap(), data);
        assert_eq!(progress.received(), data.len() as u64);
        assert_eq!(progress.expected(), Some(data.len() as u64));
        let reply = reply_json(&done.reply);
        assert_eq!(reply["sha256"], sha256_hex(&data));
        assert_eq!(
            done.reply_bytes,
            std::fs::metadata(&done.reply).unwrap().len()
        );
        assert!(
            done.headers
                .iter()
                .any(|(n, v)| n == "content-type" && v == "application/json")
        );
        let request = env.upload_requests().pop().unwrap();
        let expected_method = if method == UploadMethod::Put {
            "PUT"
        } else {
            "POST"
        };
        assert_eq!(request.method, expected_method);
        let length = data.len().to_string();
        assert_eq!(request.header("content-length"), Some(length.as_str()));
        assert_eq!(request.header("transfer-encoding"), None);
        assert_eq!(
            request.header("content-type"),
            Some("application/octet-stream")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_header_is_kept_and_an_empty_file_is_sent() {
    let env = Env::new();
    let file = env.source("empty.txt", b"");
    let mut spec = env.upload_spec("/upload/empty", UploadBody::File(file));
    spec.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    let (result, _) = env.upload(&spec).await;
    assert_eq!(result.unwrap().sent, 0);
    assert_eq!(env.server.upload("empty").unwrap(), b"");
    let request = env.upload_requests().pop().unwrap();
    assert_eq!(request.header("content-type"), Some("text/plain"));
    assert_eq!(request.header("content-length"), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_fields_and_files_arrive_intact_per_part() {
    let env = Env::new();
    let one = content(1, 700_000);
    let two = content(2, 123_457);
    let files = vec![
        MultipartFile {
            content_type: Some("image/png".into()),
            ..MultipartFile::new("photo", env.source("one.bin", &one))
        },
        MultipartFile {
            file_name: Some("report \"final\".txt".into()),
            ..MultipartFile::new("report", env.source("two.bin", &two))
        },
    ];
    let fields = vec![
        ("title".to_owned(), "Holiday 2024 — ünïcode".to_owned()),
        ("note".to_owned(), "line one\r\nline two".to_owned()),
    ];
    let spec = env.upload_spec(
        "/upload/form",
        UploadBody::Multipart {
            fields: fields.clone(),
            files,
        },
    );
    assert_eq!(spec.method, UploadMethod::Post);
    let progress = Progress::default();
    let done = env
        .engine
        .upload(&spec, &progress, &(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(env.server.upload("form/photo").unwrap(), one);
    assert_eq!(env.server.upload("form/report").unwrap(), two);
    assert_eq!(
        env.server.upload("form/title").unwrap(),
        fields[0].1.as_bytes()
    );
    assert_eq!(
        env.server.upload("form/note").unwrap(),
        fields[1].1.as_bytes()
    );

    let reply = reply_json(&done.reply);
    let parts = reply["parts"].as_array().unwrap();
    let names: Vec<_> = parts.iter().map(|p| p["field"].as_str().unwrap()).collect();
    assert_eq!(names, ["title", "note", "photo", "report"]);
    assert_eq!(parts[2]["sha256"], sha256_hex(&one));
    assert_eq!(parts[2]["file_name"], "one.bin");
    assert_eq!(parts[2]["content_type"], "image/png");
    assert_eq!(parts[3]["sha256"], sha256_hex(&two));
    assert_eq!(parts[3]["file_name"], "report \"final\".txt");
    assert_eq!(parts[3]["content_type"], "application/octet-stream");

    let request = env.upload_requests().pop().unwrap();
    let body_len = reply["bytes"].as_u64().unwrap();
    assert_eq!(
        request.header("content-length"),
        Some(body_len.to_string().as_str())
    );
    assert!(
        request
            .header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    assert_eq!(done.sent, body_len);
    assert_eq!(progress.received(), body_len);
    assert_eq!(progress.expected(), Some(body_len));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_multipart_field_name_is_refused_before_sending() {
    let env = Env::new();
    let spec = env.upload_spec(
        "/upload/x",
        UploadBody::Multipart {
            fields: vec![("a\"b".into(), "v".into())],
            files: vec![],
        },
    );
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(failure.error.kind().code(), "invalid_upload");
    assert!(env.upload_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_fails_at_once_and_keeps_the_reply() {
    let env = Env::new();
    let file = env.source("big.bin", &content(3, 100_000));
    let spec = env.upload_spec("/upload/big?status=413", UploadBody::File(file));
    let (result, recorder) = env.upload(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "http_status");
    assert_eq!(failure.error.status(), Some(413));
    assert!(!failure.error.is_transient());
    let reply = failure.reply.unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.path, env.reply_path());
    assert_eq!(std::fs::read(&reply.path).unwrap(), b"error 413");
    assert_eq!(reply.bytes, 9);
    assert!(reply.headers.iter().any(|(n, _)| n == "content-type"));
    assert_eq!(env.upload_requests().len(), 1, "413 is not retried");
    assert!(recorder.events().is_empty());
    assert_eq!(env.server.upload("big"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_retried_from_zero() {
    let env = Env::new();
    let data = content(4, 2 * 1024 * 1024);
    let file = env.source("data.bin", &data);
    let spec = env.upload_spec(
        "/upload/dropped?drop_after=500000&fail_times=1",
        UploadBody::File(file),
    );
    let (result, recorder) = env.upload(&spec).await;
    let done = result.unwrap();
    assert_eq!(done.status, 201);
    assert_eq!(env.server.upload("dropped").unwrap(), data);
    let requests = env.upload_requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].body_bytes_received >= 500_000);
    assert!(requests[0].body_bytes_received < data.len() as u64);
    assert_eq!(requests[1].body_bytes_received, data.len() as u64);
    let retries: Vec<_> = recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e, Seen::Retrying { .. }))
        .collect();
    assert_eq!(retries.len(), 1);
    assert!(matches!(
        retries[0],
        Seen::Retrying {
            attempt: 1,
            code: "connection" | "interrupted" | "request_timeout",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_retried_honouring_retry_after() {
    let env = Env::new();
    let data = content(5, 50_000);
    let file = env.source("data.bin", &data);
    let spec = env.upload_spec(
        "/upload/busy?status=503&retry_after=1&fail_times=2",
        UploadBody::File(file),
    );
    let (result, recorder) = env.upload(&spec).await;
    let done = result.unwrap();
    assert_eq!(done.status, 201);
    assert_eq!(env.server.upload("busy").unwrap(), data);
    assert_eq!(reply_json(&done.reply)["bytes"], 50_000);
    assert_eq!(
        recorder.events(),
        vec![
            Seen::Retrying {
                attempt: 1,
                delay: Duration::from_millis(200),
                code: "http_status"
            },
            // Each new attempt is announced as a restart from byte zero.
            Seen::ResumedAtOffset {
                offset: 0,
                expected: Some(50_000)
            },
            Seen::Retrying {
                attempt: 2,
                delay: Duration::from_millis(200),
                code: "http_status"
            },
            Seen::ResumedAtOffset {
                offset: 0,
                expected: Some(50_000)
            },
        ]
    );
    assert_eq!(env.upload_requests().len(), 3);
}

/// With `hand_back_retries` a 5xx ends the run with when to try again; the next run says it
/// sends from zero again, and its attempts count on from the first run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_back_retry_ends_the_run_and_the_next_run_sends_again() {
    let env = Env::new();
    let data = content(5, 50_000);
    let file = env.source("data.bin", &data);
    let mut spec = env.upload_spec(
        "/upload/later?status=503&retry_after=1&fail_times=1",
        UploadBody::File(file),
    );
    spec.hand_back_retries = true;
    let (result, recorder) = env.upload(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.status(), Some(503));
    let retry = failure.retry.expect("a 503 is handed back");
    assert_eq!(
        (retry.attempt, retry.delay),
        (1, Duration::from_millis(200))
    );
    assert_eq!(
        env.upload_requests().len(),
        1,
        "no second attempt in the run"
    );
    assert_eq!(
        recorder.events(),
        vec![Seen::Retrying {
            attempt: 1,
            delay: Duration::from_millis(200),
            code: "http_status"
        }]
    );

    spec.failed_attempts = retry.attempt;
    let (result, recorder) = env.upload(&spec).await;
    assert_eq!(result.unwrap().status, 201);
    assert_eq!(env.server.upload("later").unwrap(), data);
    assert_eq!(
        recorder.events(),
        vec![Seen::ResumedAtOffset {
            offset: 0,
            expected: Some(50_000)
        }]
    );

    let mut spec = env.upload_spec(
        "/upload/gone?status=502",
        UploadBody::File(env.source("g", b"x")),
    );
    spec.hand_back_retries = true;
    spec.failed_attempts = 4;
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(
        failure.retry, None,
        "the fifth attempt was the policy's last"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_5xx_fails_after_max_attempts_with_the_last_reply() {
    let env = Env::new();
    let file = env.source("data.bin", &content(5, 1000));
    let spec = env.upload_spec("/upload/down?status=502", UploadBody::File(file));
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(failure.error.status(), Some(502));
    assert_eq!(env.upload_requests().len(), 5);
    let reply = failure.reply.unwrap();
    assert_eq!(std::fs::read(reply.path).unwrap(), b"error 502");
}

/// An observer that changes the source file when the first retry is announced.
struct ChangeOnRetry {
    path: PathBuf,
    change: fn(&std::path::Path),
}

impl ferry_engine::Observer for ChangeOnRetry {
    fn on_event(&self, event: Event<'_>) {
        if let Event::Retrying { attempt: 1, .. } = event {
            (self.change)(&self.path);
        }
    }
}

/// A change made to the source file between attempts.
type Change = fn(&std::path::Path);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_between_attempts_fails_with_source_changed() {
    let env = Env::new();
    let cases: [(&str, Change, &str); 2] = [
        (
            "append",
            |p| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(b"more").unwrap();
            },
            "size went from 100000 to 100004 bytes",
        ),
        (
            "remove",
            |p| std::fs::remove_file(p).unwrap(),
            "it was removed",
        ),
    ];
    for (name, change, words) in cases {
        let file = env.source(&format!("{name}.bin"), &content(6, 100_000));
        let spec = env.upload_spec(
            &format!("/upload/{name}?status=503&fail_times=1"),
            UploadBody::File(file.clone()),
        );
        let observer = ChangeOnRetry {
            path: file.clone(),
            change,
        };
        let failure = env
            .engine
            .upload(
                &spec,
                &Progress::default(),
                &observer,
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(failure.error.kind().code(), "source_changed", "{name}");
        assert!(!failure.error.is_transient());
        let message = failure.error.to_string();
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains(words), "{message}");
        assert!(failure.reply.is_none());
        assert!(!env.reply_path().exists(), "the stale 503 reply is removed");
        assert_eq!(env.server.upload(name), None);
    }
}

/// Runs `spec` at 2 MiB/s, calling `change` once `after` bytes have been sent, and returns
/// the upload's failure (it must fail: the file changed while it was sent).
async fn upload_changing(
    env: &Env,
    mut spec: UploadSpec,
    after: u64,
    change: impl FnOnce() + Send + 'static,
) -> UploadFailure {
    spec.limits = Limits::none().with(RateLimiter::new(2 * 1024 * 1024));
    let progress = Arc::new(Progress::default());
    let changer = {
        let progress = progress.clone();
        tokio::spawn(async move {
            wait_until(|| progress.received() >= after).await;
            change();
        })
    };
    let failure = env
        .engine
        .upload(&spec, &progress, &(), &CancellationToken::new())
        .await
        .unwrap_err();
    changer.await.unwrap();
    failure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_while_it_is_sent_fails_with_source_changed() {
    let env = Env::new();
    let data = content(8, 2 * 1024 * 1024);
    let file = env.source("shrinking.bin", &data);
    let spec = env.upload_spec("/upload/shrinking", UploadBody::File(file.clone()));
    let failure = upload_changing(&env, spec, 300_000, move || {
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(1_500_000).unwrap();
    })
    .await;
    assert_eq!(failure.error.kind().code(), "source_changed");
    assert!(
        failure.error.to_string().contains("shrank"),
        "{}",
        failure.error
    );
    assert_eq!(env.server.upload("shrinking"), None, "no mix was stored");
}

/// A file rewritten in place (same size) or appended to while it is sent: the last chunk
/// is held back until the file is checked, so the server never gets the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_or_grown_while_sent_never_reaches_the_server_whole() {
    let env = Env::new();
    for (name, change, says) in [("rewritten", 0u8, "ctime"), ("grown", 1u8, "grew")] {
        let data = content(9, 1024 * 1024);
        let file = env.source(name, &data);
        let spec = env.upload_spec(&format!("/upload/{name}"), UploadBody::File(file.clone()));
        let failure = upload_changing(&env, spec, 100_000, move || {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            if change == 0 {
                // The tail, not read yet, gets other bytes; the size stays, and the
                // modification time is set back as `touch -r` would: only the ctime tells.
                let mtime = f.metadata().unwrap().modified().unwrap();
                f.seek(SeekFrom::Start(900_000)).unwrap();
                f.write_all(&[0xAB; 1000]).unwrap();
                f.set_modified(mtime).unwrap();
            } else {
                f.seek(SeekFrom::End(0)).unwrap();
                f.write_all(b"more").unwrap();
            }
        })
        .await;
        assert_eq!(failure.error.kind().code(), "source_changed", "{name}");
        assert!(
            failure.error.to_string().contains(says),
            "{name}: {}",
            failure.error
        );
        assert!(env.server.upload(name).is_none(), "{name}: nothing stored");
    }
}

/// In a form, a later file rewritten while an earlier one is being sent is checked against
/// the identity recorded when the attempt began, not against what it is when its turn comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_form_file_changed_before_its_turn_fails_the_upload() {
    let env = Env::new();
    let first = env.source("first.bin", &content(10, 1024 * 1024));
    let second = env.source("second.bin", &content(11, 100_000));
    let body = UploadBody::Multipart {
        fields: vec![],
        files: vec![
            MultipartFile::new("first", first),
            MultipartFile::new("second", second.clone()),
        ],
    };
    let spec = env.upload_spec("/upload/pair", body);
    let failure = upload_changing(&env, spec, 100_000, move || {
        std::fs::write(&second, content(12, 100_000)).unwrap();
    })
    .await;
    assert_eq!(failure.error.kind().code(), "source_changed");
    assert!(
        failure.error.to_string().contains("second.bin"),
        "{}",
        failure.error
    );
    assert!(env.server.upload("pair").is_none(), "nothing stored");
}

/// A file name with a line break would write part headers of its own: refused up front,
/// as is a content type that is not a header value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_file_names_and_types_that_break_headers_are_refused() {
    let env = Env::new();
    let file = env.source("ok.bin", b"data");
    let mut named = MultipartFile::new("f", file.clone());
    named.file_name = Some("a\r\nX-Evil: 1".into());
    let body = UploadBody::Multipart {
        fields: vec![],
        files: vec![named],
    };
    assert_eq!(body.check().unwrap_err().kind().code(), "invalid_upload");
    let mut typed = MultipartFile::new("f", file);
    typed.content_type = Some("text/plain\nX: y".into());
    let body = UploadBody::Multipart {
        fields: vec![],
        files: vec![typed],
    };
    let failure = env
        .upload(&env.upload_spec("/upload/t", body))
        .await
        .0
        .unwrap_err();
    assert_eq!(failure.error.kind().code(), "invalid_upload");
    assert!(env.upload_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_a_clear_error_naming_it() {
    let env = Env::new();
    let missing = env.dir.path().join("nope.bin");
    let spec = env.upload_spec("/upload/nope", UploadBody::File(missing.clone()));
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(failure.error.kind().code(), "io");
    assert!(!failure.error.is_transient());
    let chain = ferry_engine::display_chain(&failure);
    assert!(chain.contains(&missing.display().to_string()), "{chain}");
    assert!(chain.contains("No such file"), "{chain}");
    assert!(env.upload_requests().is_empty());

    let spec = env.upload_spec(
        "/upload/nope",
        UploadBody::Multipart {
            fields: vec![],
            files: vec![MultipartFile::new("f", missing.clone())],
        },
    );
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(failure.error.kind().code(), "io");
    assert!(failure.error.to_string().contains("nope.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_throttled_upload_stops_it() {
    let env = Env::new();
    let file = env.source("slow.bin", &content(9, 4 * 1024 * 1024));
    let mut spec = env.upload_spec("/upload/slow", UploadBody::File(file));
    spec.limits = Limits::none().with(RateLimiter::new(512 * 1024));
    let progress = Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    let watcher = {
        let (progress, cancel) = (progress.clone(), cancel.clone());
        tokio::spawn(async move {
            wait_until(|| progress.received() >= 256 * 1024).await;
            cancel.cancel();
        })
    };
    let started = tokio::time::Instant::now();
    let failure = env
        .engine
        .upload(&spec, &progress, &(), &cancel)
        .await
        .unwrap_err();
    watcher.await.unwrap();
    assert_eq!(failure.error.kind().code(), "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at once"
    );
    assert!(progress.received() < 4 * 1024 * 1024);
    assert_eq!(env.server.upload("slow"), None);
    assert!(!env.reply_path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_307_resend_the_body_and_303_ends_the_upload() {
    let env = Env::new();
    let data = content(10, 300_000);
    let file = env.source("data.bin", &data);
    let target = percent_encode(&env.server.url("/upload/moved"));
    let spec = env.upload_spec(
        &format!("/redirect/1?code=307&to={target}"),
        UploadBody::File(file.clone()),
    );
    let (result, recorder) = env.upload(&spec).await;
    let done = result.unwrap();
    assert_eq!(env.server.upload("moved").unwrap(), data);
    assert_eq!(done.redirects.len(), 2);
    assert_eq!(done.final_url.path(), "/upload/moved");
    assert_eq!(
        recorder
            .events()
            .iter()
            .filter(|e| matches!(e, Seen::Redirected { status: 307, .. }))
            .count(),
        2
    );
    let uploads = env.upload_requests();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].method, "PUT", "307 keeps the method");

    let spec = env.upload_spec(
        &format!("/redirect/0?code=303&to={target}"),
        UploadBody::File(file),
    );
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(failure.error.status(), Some(303));
    let reply = failure.reply.unwrap();
    assert!(reply.headers.iter().any(|(n, _)| n == "location"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_limit_fails() {
    let env = Env::new();
    let file = env.source("data.bin", b"hello");
    let mut spec = env.upload_spec("/upload/small", UploadBody::File(file));
    spec.max_reply_bytes = 10;
    let failure = env.upload(&spec).await.0.unwrap_err();
    assert_eq!(failure.error.kind().code(), "reply_too_large");
    assert!(failure.reply.is_none());
    assert!(!env.reply_path().exists());
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
