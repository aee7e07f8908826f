//! Force-quit, cancel with resume data, and continuing from it — also after a restart.

use ferry_proto::{CancelReason, Event, Outcome, OutcomeKind, Request, Response, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Client, Daemon, download, wait_completed};

async fn from_blob(
    c: &mut Client,
    session: &str,
    blob: &str,
) -> Result<Response, ferry_proto::ErrorInfo> {
    c.request(Request::CreateFromResumeData {
        session: session.into(),
        resume_data: blob.into(),
        destination: None,
        headers: Default::default(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_cancels_with_resume_data_that_continues_the_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let n = 3_000_000u64;
    let out = dir.path().join("r.bin");
    let mut c = daemon.client().await;
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=31&rate=1500000")),
        Some(&out),
    );
    req.connections = Some(1);
    let running = c.create("app", req).await;
    let mut idle = download(server.url("/bytes/100"), Some(&dir.path().join("never")));
    idle.start = false;
    let never_started = c.create("app", idle).await;
    daemon.wait_for_bytes(running.id, 400_000).await;

    c.request(Request::Terminate {
        session: "app".into(),
    })
    .await
    .unwrap();
    let t = c.task(running.id).await;
    assert_eq!(
        t.state,
        TaskState::Completed {
            outcome: OutcomeKind::Cancelled
        }
    );
    let blob = t
        .resume_data
        .clone()
        .expect("a running task keeps resume data");
    let idle = c.task(never_started.id).await;
    assert_eq!(
        idle.state,
        TaskState::Completed {
            outcome: OutcomeKind::Cancelled
        }
    );
    assert_eq!(idle.resume_data, None, "nothing to resume: no bytes");
    assert!(!out.exists());

    // The application's next attach learns it, with the same resume data.
    let mut app = daemon.client().await;
    assert_eq!(app.attach("app").await.unwrap(), 2);
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let e = app.next_journaled().await;
        match e.event {
            Event::Completed {
                outcome:
                    Outcome::Cancelled {
                        reason,
                        resume_data,
                    },
                ..
            } => {
                if e.task == Some(running.id) {
                    assert_eq!(resume_data.as_deref(), Some(blob.as_str()));
                }
                reasons.push(reason);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reasons, vec![CancelReason::UserTerminated; 2]);
    assert_eq!(app.next_journaled().await.event, Event::BacklogDelivered);

    // The resume data continues where it stopped.
    server.clear_log();
    let Response::Task { task } = from_blob(&mut app, "app", &blob).await.unwrap() else {
        panic!()
    };
    let kept = task.bytes_done;
    assert!(kept >= 400_000, "{kept}");
    let done = wait_completed(&mut app, task.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(31, 0, n));
    assert_eq!(
        server.requests()[0].header("range"),
        Some(format!("bytes={kept}-{}", n - 1).as_str())
    );
    assert_eq!(server.bytes_sent(), n - kept);
    // Used up: the same blob cannot start a second task.
    let err = from_blob(&mut app, "app", &blob).await.unwrap_err();
    assert_eq!(err.code, "invalid_resume_data");
    assert!(err.message.contains("gone"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_data_survives_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let n = 2_000_000u64;
    let out = dir.path().join("d.bin");
    let mut c = daemon.client().await;
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=32&rate=1000000")),
        Some(&out),
    );
    req.connections = Some(2);
    let t = c.create("s", req).await;
    daemon.wait_for_bytes(t.id, 300_000).await;
    let Response::Task { task } = c
        .request(Request::CancelWithResumeData { task: t.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    let blob = task.resume_data.expect("resume data");
    drop(c);
    assert!(daemon.terminate().success());

    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    let Response::Task { task } = from_blob(&mut c, "s", &blob).await.unwrap() else {
        panic!()
    };
    wait_completed(&mut c, task.id).await;
    assert_eq!(std::fs::read(&out).unwrap(), content(32, 0, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_or_foreign_resume_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let other = Daemon::start(&dir.path().join("other")).await;
    let mut c = daemon.client().await;
    let mut req = download(
        server.url("/bytes/3000000?seed=33&rate=1000000"),
        Some(&dir.path().join("t")),
    );
    req.connections = Some(1);
    let t = c.create("s", req).await;
    daemon.wait_for_bytes(t.id, 100_000).await;
    let Response::Task { task } = c
        .request(Request::CancelWithResumeData { task: t.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    let blob = task.resume_data.unwrap();

    let mut tampered = blob.clone().into_bytes();
    let i = blob.len() / 2;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let cases = [
        (String::from_utf8(tampered).unwrap(), "altered"),
        (blob[..blob.len() - 7].to_owned(), "truncated"),
        ("not resume data at all".to_owned(), "not ferry resume data"),
    ];
    for (bad, reason) in cases {
        let err = from_blob(&mut c, "s", &bad).await.unwrap_err();
        assert_eq!(err.code, "invalid_resume_data");
        assert!(err.message.contains(reason), "{reason}: {}", err.message);
    }
    let mut foreign = other.client().await;
    let err = from_blob(&mut foreign, "s", &blob).await.unwrap_err();
    assert!(err.message.contains("another ferryd"), "{}", err.message);
    assert!(foreign.tasks(None).await.is_empty(), "nothing created");
    // The genuine blob still works after all that.
    from_blob(&mut c, "s", &blob).await.unwrap();
}

/// SPEC §15: a destination folder that is missing when the file is to be placed is a clear
/// error, and the bytes are kept: the failed task carries resume data that continues —
/// here into another folder — without fetching them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_destination_folder_fails_with_resume_data_that_places_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let n = 300_000u64;
    let nowhere = dir.path().join("gone").join("f.bin");
    let t = c
        .create(
            "s",
            download(server.url(&format!("/bytes/{n}?seed=41")), Some(&nowhere)),
        )
        .await;
    let failed = wait_completed(&mut c, t.id).await;
    assert_eq!(
        failed.state,
        TaskState::Completed {
            outcome: OutcomeKind::Failed
        }
    );
    let error = failed.error.expect("an error");
    assert_eq!(error.code, "destination");
    assert!(error.message.contains("gone"), "{}", error.message);
    let blob = failed.resume_data.expect("the bytes were kept");
    assert!(!nowhere.exists());
    assert_eq!(server.bytes_sent(), n);

    // The `completed` event carries the same blob.
    c.attach("s").await.unwrap();
    let completed = loop {
        let e = c.next_journaled().await;
        if let Event::Completed { outcome, .. } = e.event {
            break outcome;
        }
    };
    assert_eq!(
        completed,
        Outcome::Failed {
            error,
            resume_data: Some(blob.clone()),
        }
    );

    let elsewhere = dir.path().join("f.bin");
    let Response::Task { task } = c
        .request(Request::CreateFromResumeData {
            session: "s".into(),
            resume_data: blob,
            destination: Some(elsewhere.display().to_string()),
            headers: Default::default(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let done = wait_completed(&mut c, task.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&elsewhere).unwrap(), content(41, 0, n));
    assert_eq!(server.bytes_sent(), n, "nothing fetched again");
}
