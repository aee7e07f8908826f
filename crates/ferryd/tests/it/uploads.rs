//! Upload tasks: raw and multipart, the reply in the inbox, failures, and crashes of the
//! client and of the daemon.

use std::path::Path;
use std::process::{Command, Stdio};

use ferry_proto::{
    ErrorInfo, Event, FormField, FormFile, Outcome, OutcomeKind, TaskKind, TaskState, UploadBody,
    UploadMethod,
};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Client, Daemon, file_body, upload, wait_completed, wait_until};

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn json_of(path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sha256(data: &[u8]) -> String {
    let mut h = ferry_engine::Algorithm::Sha256.hasher();
    h.update(data);
    h.finish_hex()
}

/// An upload finishes with no client attached; on attach its `completed` arrives with the
/// reply (status, headers, file in the inbox), and the reply file goes once acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_completes_unattended_and_its_reply_waits_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let data = content(41, 0, 300_000);
    let source = dir.path().join("photo.jpg");
    write(&source, &data);
    let mut c = daemon.client().await;
    let mut request = upload(server.url("/upload/photo"), file_body(&source));
    request.tag = Some("t-1".into());
    let created = c.create_upload("com.example.up", request).await.unwrap();
    assert_eq!(created.kind, TaskKind::Upload);
    assert_eq!(created.destination, None);
    let done = wait_completed(&mut c, created.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        },
        "{done:?}"
    );
    assert!(
        server.upload("photo").unwrap() == data,
        "the server holds other bytes"
    );
    let put = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/upload/photo")
        .unwrap();
    assert_eq!(put.method, "PUT");
    assert_eq!(done.bytes_done, data.len() as u64);
    let reply = done.reply.clone().expect("the reply is on the task");
    assert_eq!(reply.status, 201);
    assert_eq!(done.location.as_deref(), Some(reply.location.as_str()));
    // Replies have a folder of their own: no inbox download can take their name.
    assert_eq!(
        Path::new(&reply.location),
        daemon.home.join(format!("replies/{}.reply", created.id))
    );
    assert_eq!(json_of(&reply.location)["sha256"], sha256(&data));
    assert_eq!(
        reply.bytes,
        std::fs::metadata(&reply.location).unwrap().len()
    );
    assert!(
        reply.headers.iter().any(|(k, _)| k == "content-type"),
        "{reply:?}"
    );

    assert_eq!(c.attach("com.example.up").await.unwrap(), 1);
    let completed = c.next_journaled().await;
    assert_eq!(completed.task, Some(created.id));
    assert_eq!(completed.tag.as_deref(), Some("t-1"));
    match &completed.event {
        Event::Completed {
            outcome: Outcome::Succeeded,
            status: Some(201),
            reply: Some(r),
            headers: None,
        } => assert_eq!(r, &reply),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.next_journaled().await.event, Event::BacklogDelivered);
    assert!(
        Path::new(&reply.location).exists(),
        "kept until acknowledged"
    );
    c.ack("com.example.up", completed.seq.unwrap()).await;
    assert!(
        !Path::new(&reply.location).exists(),
        "gone once acknowledged"
    );
}

/// A 413 fails the task with the server's reply kept and named in `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_fails_with_the_reply_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let source = dir.path().join("big.iso");
    write(&source, &content(42, 0, 100_000));
    let mut c = daemon.client().await;
    c.attach("s").await.unwrap();
    let mut request = upload(server.url("/upload/big?status=413"), file_body(&source));
    request.method = Some(UploadMethod::Post);
    let task = c.create_upload("s", request).await.unwrap();
    let done = wait_completed(&mut c, task.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Failed
        }
    );
    let error = done.error.clone().unwrap();
    assert_eq!(
        (error.code.as_str(), error.status),
        ("http_status", Some(413))
    );
    let reply = done
        .reply
        .clone()
        .expect("the failed task carries the reply");
    assert_eq!(reply.status, 413);
    assert_eq!(
        std::fs::read_to_string(&reply.location).unwrap(),
        "error 413"
    );
    assert!(server.upload("big").is_none(), "the server stored nothing");
    assert!(server.requests().iter().any(|r| r.method == "POST"));
    let completed = c.next_journaled().await;
    match completed.event {
        Event::Completed {
            outcome: Outcome::Failed { error, .. },
            status: Some(413),
            reply: Some(r),
            headers: None,
        } => {
            assert_eq!(error.code, "http_status");
            assert_eq!(r, reply);
        }
        other => panic!("{other:?}"),
    }
    // Removing the task after the acknowledgement leaves nothing behind in the inbox.
    c.ack("s", completed.seq.unwrap()).await;
    assert!(!Path::new(&reply.location).exists());
}

/// A form with a text field and two files arrives intact, part by part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_with_several_files_arrives_intact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let (a, b) = (content(43, 0, 200_000), content(44, 0, 70_001));
    let (pa, pb) = (dir.path().join("a.bin"), dir.path().join("b.txt"));
    write(&pa, &a);
    write(&pb, &b);
    let body = UploadBody::Multipart {
        fields: vec![FormField {
            name: "title".into(),
            value: "holiday".into(),
        }],
        files: vec![
            FormFile {
                name: "first".into(),
                path: pa.display().to_string(),
                file_name: None,
                content_type: None,
            },
            FormFile {
                name: "second".into(),
                path: pb.display().to_string(),
                file_name: Some("notes.txt".into()),
                content_type: Some("text/plain".into()),
            },
        ],
    };
    let mut c = daemon.client().await;
    let task = c
        .create_upload("s", upload(server.url("/upload/form"), body))
        .await
        .unwrap();
    let done = wait_completed(&mut c, task.id).await;
    assert!(done.error.is_none(), "{done:?}");
    assert!(
        server.upload("form/first").unwrap() == a,
        "the server holds other bytes"
    );
    assert!(
        server.upload("form/second").unwrap() == b,
        "the server holds other bytes"
    );
    assert_eq!(server.upload("form/title").unwrap(), b"holiday");
    let reply = json_of(&done.reply.unwrap().location);
    let parts = reply["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1]["sha256"], sha256(&a));
    assert_eq!(parts[1]["file_name"], "a.bin");
    assert_eq!(parts[2]["sha256"], sha256(&b));
    assert_eq!(parts[2]["file_name"], "notes.txt");
    assert_eq!(parts[2]["content_type"], "text/plain");
    assert!(server.requests().iter().any(|r| r.method == "POST"));
}

/// A source file that changes while it is sent fails the task with `source_changed`,
/// naming the file; the server stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_the_upload_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let source = dir.path().join("log.txt");
    write(&source, &content(45, 0, 1_000_000));
    let mut c = daemon.client().await;
    let mut request = upload(server.url("/upload/log"), file_body(&source));
    request.rate_limit = Some(200_000);
    let task = c.create_upload("s", request).await.unwrap();
    daemon.wait_for_bytes(task.id, 0).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&source)
            .unwrap();
        f.write_all(b"one more line\n").unwrap();
    }
    let done = wait_completed(&mut c, task.id).await;
    let error = done.error.clone().expect("it failed");
    assert_eq!(error.code, "source_changed", "{error:?}");
    assert!(error.message.contains("log.txt"), "{}", error.message);
    assert!(!error.transient);
    assert!(server.upload("log").is_none(), "the server stored nothing");
    assert_eq!(done.reply, None);
}

/// Bad upload requests are refused with a message naming the problem, create nothing, and
/// leave the connection working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upload_requests_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let url = "http://127.0.0.1:9/upload/x".to_owned();
    let refused = |e: Result<_, ErrorInfo>| e.expect_err("refused");

    let missing = dir.path().join("nope.bin");
    let e = refused(
        c.create_upload("s", upload(url.clone(), file_body(&missing)))
            .await,
    );
    assert_eq!(e.code, "io");
    assert!(e.message.contains("nope.bin"), "{}", e.message);

    let e = refused(
        c.create_upload(
            "s",
            upload(
                url.clone(),
                UploadBody::File {
                    path: "rel/x.bin".into(),
                },
            ),
        )
        .await,
    );
    assert_eq!(e.code, "invalid_request");
    assert!(e.message.contains("absolute"), "{}", e.message);

    let e = refused(
        c.create_upload("s", upload(url.clone(), file_body(dir.path())))
            .await,
    );
    assert!(e.message.contains("not a regular file"), "{}", e.message);

    let empty = UploadBody::Multipart {
        fields: vec![],
        files: vec![],
    };
    let e = refused(c.create_upload("s", upload(url.clone(), empty)).await);
    assert!(e.message.contains("at least one"), "{}", e.message);

    let quoted = UploadBody::Multipart {
        fields: vec![FormField {
            name: "a\"b".into(),
            value: "v".into(),
        }],
        files: vec![],
    };
    let e = refused(c.create_upload("s", upload(url.clone(), quoted)).await);
    assert_eq!(e.code, "invalid_upload");

    let source = dir.path().join("ok.bin");
    write(&source, b"ok");
    let e = refused(
        c.create_upload("s", upload("ftp://h/x".into(), file_body(&source)))
            .await,
    );
    assert!(e.message.contains("ftp"), "{}", e.message);

    assert!(c.tasks(None).await.is_empty(), "nothing was created");
}

/// SIGKILL the daemon mid-upload: after the restart the upload is sent again from zero,
/// and the server ends with exactly the file's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_mid_upload_sends_it_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let data = content(46, 0, 1_500_000);
    let source = dir.path().join("video.mp4");
    write(&source, &data);
    let mut c = daemon.client().await;
    let mut request = upload(server.url("/upload/video"), file_body(&source));
    request.rate_limit = Some(1_000_000);
    let task = c.create_upload("s", request).await.unwrap();
    daemon.wait_for_bytes(task.id, 200_000).await;
    daemon.kill9();
    drop(c);

    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    let done = wait_completed(&mut c, task.id).await;
    assert!(done.error.is_none(), "{done:?}");
    assert!(
        server.upload("video").unwrap() == data,
        "the server holds other bytes"
    );
    let attempts: Vec<u64> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/upload/video")
        .map(|r| r.body_bytes_received)
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts[0] < data.len() as u64, "{attempts:?}");
    assert_eq!(attempts[1], data.len() as u64);
}

/// Suspending a running upload and resuming it sends the file again from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_upload_starts_again_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let data = content(47, 0, 600_000);
    let source = dir.path().join("doc.pdf");
    write(&source, &data);
    let mut c = daemon.client().await;
    let mut request = upload(server.url("/upload/doc"), file_body(&source));
    request.rate_limit = Some(400_000);
    let task = c.create_upload("s", request).await.unwrap();
    daemon.wait_for_bytes(task.id, 0).await;
    c.request(ferry_proto::Request::Suspend { task: task.id })
        .await
        .unwrap();
    assert_eq!(c.task(task.id).await.state, TaskState::Suspended);
    assert!(server.upload("doc").is_none(), "the server stored nothing");
    c.request(ferry_proto::Request::Resume { task: task.id })
        .await
        .unwrap();
    let done = wait_completed(&mut c, task.id).await;
    assert!(done.error.is_none(), "{done:?}");
    assert!(
        server.upload("doc").unwrap() == data,
        "the server holds other bytes"
    );
    let attempts: Vec<u64> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/upload/doc")
        .map(|r| r.body_bytes_received)
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1], data.len() as u64, "sent again from zero");
}

/// The application that created an upload is killed: the daemon sends it on, and the next
/// attach gets its `completed` with the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_upload_the_upload_continues() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let data = content(48, 0, 1_000_000);
    let source = dir.path().join("backup.tar");
    write(&source, &data);
    let mut app = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/client.py"))
        .arg(daemon.socket())
        .arg("com.example.uploader")
        .arg("upload")
        .arg(server.url("/upload/backup"))
        .arg(&source)
        .arg("800000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    daemon.wait_for_session_bytes("com.example.uploader").await;
    app.kill().unwrap();
    app.wait().unwrap();
    let mut c = daemon.client().await;
    let task = c.tasks(Some("com.example.uploader")).await.remove(0);
    let done = wait_completed(&mut c, task.id).await;
    assert!(done.error.is_none(), "{done:?}");
    assert!(
        server.upload("backup").unwrap() == data,
        "the server holds other bytes"
    );
    assert_eq!(c.attach("com.example.uploader").await.unwrap(), 1);
    let completed = c.next_journaled().await;
    assert!(
        matches!(
            completed.event,
            Event::Completed {
                outcome: Outcome::Succeeded,
                reply: Some(_),
                ..
            }
        ),
        "{completed:?}"
    );
}

/// An upload waiting to retry after a 503 keeps no reply (no event names it, and its run
/// has ended), nor does it after a cancel; a reply file nothing names is deleted by the
/// sweep when the daemon starts; a reply still named by its task stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_file_outlives_what_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let source = dir.path().join("f.bin");
    write(&source, &content(49, 0, 10_000));
    let mut c = daemon.client().await;
    let busy = upload(
        server.url("/upload/busy?status=503&retry_after=60"),
        file_body(&source),
    );
    let task = c.create_upload("s", busy).await.unwrap();
    let waiting = daemon.home.join(format!("replies/{}.reply", task.id));
    let socket = daemon.socket();
    wait_until(|| {
        let (socket, waiting) = (socket.clone(), waiting.clone());
        async move {
            let t = Client::connect(&socket).await.task(task.id).await;
            // The 503's reply goes when the run ends to wait out the retry.
            t.state.name() == "retry_wait" && !waiting.exists()
        }
    })
    .await;
    c.request(ferry_proto::Request::Cancel { task: task.id })
        .await
        .unwrap();
    let done = wait_completed(&mut c, task.id).await;
    assert_eq!(done.reply, None);
    assert!(!waiting.exists(), "the 503's reply went with the cancel");

    let kept = c
        .create_upload("s", upload(server.url("/upload/ok"), file_body(&source)))
        .await
        .unwrap();
    let kept = wait_completed(&mut c, kept.id).await.reply.unwrap();
    daemon.terminate();
    let orphan = daemon.home.join("replies/999999.reply");
    write(&orphan, b"left by a crash");
    drop(c);
    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    wait_until(|| {
        let orphan = orphan.clone();
        async move { !orphan.exists() }
    })
    .await;
    assert!(Path::new(&kept.location).exists(), "a named reply stays");
    assert_eq!(c.tasks(None).await.len(), 2);
}

/// A running upload is not paused for a task of a higher class (it would have to send its
/// whole body again): the urgent download waits for the slot instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_upload_is_not_preempted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon =
        Daemon::start_env(&dir.path().join("home"), 200, &[("FERRY_MAX_RUNNING", "1")]).await;
    let mut c = daemon.client().await;
    let data = content(50, 0, 800_000);
    let source = dir.path().join("big.bin");
    write(&source, &data);
    let mut request = upload(server.url("/upload/big"), file_body(&source));
    request.rate_limit = Some(200_000);
    request.priority = Some(ferry_proto::Priority::Low);
    let up = c.create_upload("p", request).await.unwrap();
    daemon.wait_for_bytes(up.id, 0).await;

    let mut urgent = crate::fixture::download(
        server.url("/bytes/1000?seed=51"),
        Some(&dir.path().join("urgent.bin")),
    );
    urgent.priority = Some(ferry_proto::Priority::Foreground);
    let urgent = c.create("p", urgent).await;
    // The urgent task came while the upload ran (it takes about 4 s): the test means something.
    let running = c.task(up.id).await;
    assert!(
        !matches!(running.state, TaskState::Completed { .. }),
        "{running:?}"
    );
    let up_done = wait_completed(&mut c, up.id).await;
    assert!(up_done.error.is_none(), "{up_done:?}");
    let attempts = server
        .requests()
        .iter()
        .filter(|r| r.path == "/upload/big")
        .count();
    assert_eq!(attempts, 1, "the upload was never paused and sent again");
    assert!(server.upload("big").unwrap() == data);
    let urgent = wait_completed(&mut c, urgent.id).await;
    assert!(urgent.error.is_none(), "{urgent:?}");
}
