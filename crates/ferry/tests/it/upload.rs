//! Uploads: a file as the body and multipart forms, their replies, and what is refused.
//! The raw PUT and the refused upload run against both kinds of session.

use std::io::Write;
use std::path::Path;

use ferry::{ErrorKind, Event, EventKind, Events, Session, TaskKind, TaskState, UploadMethod};
use ferry_testserver::{TestServer, content};
use sha2::{Digest, Sha256};

use crate::both;
use crate::fixture::{Kind, Subject, next_event, wait_until};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Events of `task` until its `completed` (inclusive), with how many progress events came
/// and the highest `total_written` among them.
async fn completion(events: &mut Events, task: u64) -> (Event, usize, u64) {
    let (mut progress, mut most) = (0, 0);
    loop {
        let event = tokio::time::timeout(crate::fixture::PATIENCE, events.recv())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no error");
        assert_eq!(event.task_id(), Some(task), "{event:?}");
        match event.kind() {
            EventKind::Progress { total_written, .. } => {
                progress += 1;
                most = most.max(*total_written);
            }
            EventKind::Completed { .. } => return (event, progress, most),
            EventKind::Retrying { .. } | EventKind::Redirected { .. } => {}
            other => panic!("an upload has no {other:?}"),
        }
    }
}

fn reply_json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

both!(a_raw_put_arrives_whole_and_its_reply_comes_in_completed);
async fn a_raw_put_arrives_whole_and_its_reply_comes_in_completed(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    // The engine hands the body over in 256 KiB chunks: several make several reports.
    const SIZE: u64 = 1_000_000;
    let body = content(7, 0, SIZE);
    std::fs::write(s.file("photo.bin"), &body).unwrap();
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .upload(s.file("photo.bin"), server.url("/upload/photo"))
        .group("album")
        // Long enough for progress reports.
        .rate_limit(SIZE)
        .start()
        .await
        .unwrap();

    let (completed, progress, most) = completion(&mut events, task.id()).await;
    completed.result().unwrap().unwrap();
    assert!(progress > 0, "progress counts the bytes sent");
    assert!(most <= SIZE, "{most}");
    if let Kind::InProcess = kind {
        // The daemon's progress is sampled; an in-process session reports the last bytes.
        assert_eq!(most, SIZE, "the last progress is the whole body");
    }
    let reply = completed
        .reply()
        .expect("the reply comes in completed")
        .clone();
    assert_eq!(reply.status, 201);
    assert!(
        reply
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.contains("json")),
        "{:?}",
        reply.headers
    );
    let answer = reply_json(&reply.location);
    assert_eq!(
        answer["sha256"],
        sha256(&body),
        "the server hashed the file"
    );
    assert_eq!(answer["bytes"], SIZE);
    assert_eq!(
        reply.bytes,
        std::fs::metadata(&reply.location).unwrap().len()
    );
    assert_eq!(server.upload("photo").unwrap(), body);
    let request = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/upload/photo")
        .unwrap();
    assert_eq!(request.method, "PUT", "a raw upload is a PUT by default");
    assert_eq!(
        request.header("content-type"),
        Some("application/octet-stream")
    );

    let info = task.info().await.unwrap();
    assert_eq!(info.kind, TaskKind::Upload);
    assert_eq!(info.state.name(), "succeeded");
    assert_eq!((info.bytes_done, info.bytes_total), (SIZE, Some(SIZE)));
    assert_eq!(info.destination, None);
    assert_eq!(info.location.as_deref(), Some(reply.location.as_str()));
    assert_eq!(info.reply.as_ref(), Some(&reply));

    // Uploads take part in groups as downloads do.
    match next_event(&mut events).await.kind() {
        EventKind::GroupCompleted {
            group, succeeded, ..
        } => assert_eq!((group.as_str(), *succeeded), ("album", 1)),
        other => panic!("{other:?}"),
    }
    // Asking for the next event acknowledged `completed`: the reply file goes.
    let location = reply.location.clone();
    wait_until(|| async { !Path::new(&location).exists() }).await;
}

both!(a_refused_upload_fails_and_keeps_the_reply);
async fn a_refused_upload_fails_and_keeps_the_reply(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    std::fs::write(s.file("big.bin"), content(1, 0, 50_000)).unwrap();
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .upload(s.file("big.bin"), server.url("/upload/x?status=413"))
        .start()
        .await
        .unwrap();

    let (completed, _, _) = completion(&mut events, task.id()).await;
    let e = completed.result().unwrap().unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Http, Some(413)), "{e}");
    assert!(!e.is_transient(), "413 is not retried");
    let reply = completed
        .reply()
        .expect("a refusal keeps the reply")
        .clone();
    assert_eq!(reply.status, 413);
    assert_eq!(
        std::fs::read_to_string(&reply.location).unwrap(),
        "error 413"
    );
    assert_eq!(reply.bytes, 9);
    assert!(server.upload("x").is_none());

    let info = task.info().await.unwrap();
    assert_eq!(info.state.name(), "failed");
    assert_eq!(info.reply.as_ref(), Some(&reply));
    assert_eq!(info.error.map(|e| e.status), Some(Some(413)));
    assert_eq!(info.location.as_deref(), Some(reply.location.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_form_sends_each_field_and_file() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (content(2, 0, 70_000), content(3, 0, 1_000));
    std::fs::write(dir.path().join("a.bin"), &a).unwrap();
    std::fs::write(dir.path().join("b.txt"), &b).unwrap();
    let session = Session::in_process().open().await.unwrap();
    let mut events = session.events().unwrap();
    let task = session
        .multipart(server.url("/upload/form"))
        .field("note", "holiday")
        .file("first", dir.path().join("a.bin"))
        .file_with(
            "second",
            dir.path().join("b.txt"),
            Some("renamed.txt".into()),
            Some("text/plain".into()),
        )
        .start()
        .await
        .unwrap();

    let (completed, _, most) = completion(&mut events, task.id()).await;
    completed.result().unwrap().unwrap();
    let reply = completed.reply().unwrap();
    let answer = reply_json(&reply.location);
    let parts = answer["parts"].as_array().unwrap();
    let summary: Vec<_> = parts
        .iter()
        .map(|p| {
            (
                p["field"].as_str().unwrap(),
                p["file_name"].as_str(),
                p["content_type"].as_str(),
                p["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("note", None, None, sha256(b"holiday")),
            (
                "first",
                Some("a.bin"),
                Some("application/octet-stream"),
                sha256(&a)
            ),
            (
                "second",
                Some("renamed.txt"),
                Some("text/plain"),
                sha256(&b)
            ),
        ]
    );
    assert_eq!(server.upload("form/first").unwrap(), a);
    assert_eq!(server.upload("form/second").unwrap(), b);
    let request = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/upload/form")
        .unwrap();
    assert_eq!(request.method, "POST", "a form is a POST by default");
    let sent = task.info().await.unwrap().bytes_done;
    assert_eq!(
        sent, request.body_bytes_received,
        "the framing counts as sent"
    );
    assert_eq!(most, sent);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_method_can_be_chosen() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"hello").unwrap();
    let session = Session::in_process().open().await.unwrap();
    let mut events = session.events().unwrap();
    let task = session
        .upload(dir.path().join("f"), server.url("/upload/posted"))
        .method(UploadMethod::Post)
        .header("content-type", "text/plain")
        .start()
        .await
        .unwrap();
    let (completed, _, _) = completion(&mut events, task.id()).await;
    completed.result().unwrap().unwrap();
    let request = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/upload/posted")
        .unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), Some("text/plain"));
    assert_eq!(server.upload("posted").unwrap(), b"hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_changed_during_the_upload_fails_source_changed() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing.log");
    std::fs::write(&path, content(4, 0, 1_000_000)).unwrap();
    let session = Session::in_process().open().await.unwrap();
    let mut events = session.events().unwrap();
    let task = session
        .upload(&path, server.url("/upload/log"))
        .rate_limit(400_000)
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b"one more line\n").unwrap();
    drop(file);

    let (completed, _, _) = completion(&mut events, task.id()).await;
    let e = completed.result().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SourceChanged, "{e}");
    assert_eq!(e.code(), "source_changed");
    assert_eq!(task.info().await.unwrap().state.name(), "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_upload_starts_again_from_zero_and_a_cancelled_one_has_no_resume_data() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = content(5, 0, 400_000);
    std::fs::write(dir.path().join("f"), &body).unwrap();
    let session = Session::in_process().open().await.unwrap();
    let mut events = session.events().unwrap();
    let task = session
        .upload(dir.path().join("f"), server.url("/upload/again"))
        .rate_limit(400_000)
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
    let paused = task.suspend().await.unwrap();
    assert_eq!(paused.state, TaskState::Suspended);
    assert_eq!(paused.bytes_done, 0, "an upload keeps nothing");
    task.start().await.unwrap();
    let (completed, _, _) = completion(&mut events, task.id()).await;
    completed.result().unwrap().unwrap();
    assert_eq!(server.upload("again").unwrap(), body);
    let puts = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/upload/again")
        .count();
    assert_eq!(puts, 2, "the body was sent again from the start");

    let task = session
        .upload(dir.path().join("f"), server.url("/upload/never"))
        .rate_limit(100_000)
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
    assert!(task.cancel_with_resume_data().await.unwrap().is_none());
    let (completed, _, _) = completion(&mut events, task.id()).await;
    let e = completed.result().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert!(e.resume_data().is_none());
    assert!(completed.reply().is_none(), "no reply was read");
    assert!(server.upload("never").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_when_created() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let session = Session::in_process().open().await.unwrap();
    let url = server.url("/upload/bad");

    let missing = dir.path().join("missing.bin");
    let e = session.upload(&missing, &url).start().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("missing.bin"), "names the file: {e}");

    let e = session.upload(dir.path(), &url).create().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "a folder is not a file: {e}");

    let e = session
        .multipart(&url)
        .field("a", "b")
        .file("f", &missing)
        .start()
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Io,
        "every file of a form is checked: {e}"
    );

    let e = session
        .upload(dir.path().join("f"), &url)
        .field("a", "b")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("multipart"), "says what to use: {e}");

    let e = session
        .upload(dir.path().join("f"), &url)
        .file("a", dir.path().join("f"))
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let e = session.multipart(&url).start().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "an empty form: {e}");

    let e = session
        .multipart(&url)
        .field("say \"hi\"", "b")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "a quote in a name: {e}");

    let e = session
        .upload(dir.path().join("f"), "ftp://example.com/f")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let e = session
        .upload(dir.path().join("f"), &url)
        .header("bad header", "v")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    assert!(
        session.tasks().await.unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relative_path_is_taken_from_the_current_folder() {
    let server = TestServer::start().unwrap();
    let session = Session::in_process().open().await.unwrap();
    let mut events = session.events().unwrap();
    // Tests run in the crate's folder.
    let task = session
        .upload("Cargo.toml", server.url("/upload/manifest"))
        .start()
        .await
        .unwrap();
    let (completed, _, _) = completion(&mut events, task.id()).await;
    completed.result().unwrap().unwrap();
    assert_eq!(
        server.upload("manifest").unwrap(),
        std::fs::read("Cargo.toml").unwrap()
    );
}

both!(a_file_changed_before_its_upload_runs_fails_source_changed);
/// The file is checked against what it was when the task was created, not only against
/// what the run first sees: a task created suspended whose file is rewritten meanwhile fails.
async fn a_file_changed_before_its_upload_runs_fails_source_changed(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let path = s.file("notes.txt");
    std::fs::write(&path, content(2, 0, 20_000)).unwrap();
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .upload(&path, server.url("/upload/notes"))
        .create()
        .await
        .unwrap();
    // Same size, other bytes; the modification time set back, as `touch -r` would.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, content(3, 0, 20_000)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    task.start().await.unwrap();
    let (completed, _, _) = completion(&mut events, task.id()).await;
    let e = completed.result().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SourceChanged, "{e}");
    assert!(
        e.to_string().contains("since the upload was created"),
        "{e}"
    );
    assert!(server.upload("notes").is_none());
    assert!(server.requests().is_empty(), "nothing was sent");
}
