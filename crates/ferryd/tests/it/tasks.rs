//! Control without attachment: create, list, suspend, resume, cancel, status.

use ferry_proto::{Event, Outcome, OutcomeKind, Request, Response, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Daemon, download, wait_completed, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_keeps_bytes_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let n = 3_000_000u64;
    let out = dir.path().join("f.bin");
    let mut c = daemon.client().await;
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=11&rate=1500000")),
        Some(&out),
    );
    req.connections = Some(1);
    let t = c.create("s", req).await;
    let socket = daemon.socket();
    wait_until(|| {
        let socket = socket.clone();
        async move {
            let mut c = crate::fixture::Client::connect(&socket).await;
            c.task(t.id).await.bytes_done > 500_000
        }
    })
    .await;
    let Response::Task { task } = c.request(Request::Suspend { task: t.id }).await.unwrap() else {
        panic!()
    };
    assert_eq!(task.state, TaskState::Suspended);
    let kept = task.bytes_done;
    assert!(kept > 0 && kept < n, "{kept}");
    server.clear_log();
    let Response::Task { task } = c.request(Request::Resume { task: t.id }).await.unwrap() else {
        panic!()
    };
    assert!(matches!(task.state, TaskState::Running { .. }));
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(11, 0, n));
    let range = server.requests()[0].header("range").unwrap().to_owned();
    assert_eq!(
        range,
        format!("bytes={kept}-{}", n - 1),
        "resumed from the suspended bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_deletes_the_bytes_and_completes_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("s").await.unwrap();
    let t = c
        .create(
            "s",
            download(
                server.url("/bytes/5000000?rate=1000000"),
                Some(&dir.path().join("x")),
            ),
        )
        .await;
    loop {
        if matches!(c.next_event().await.event, Event::Progress { .. }) {
            break;
        }
    }
    let Response::Task { task } = c.request(Request::Cancel { task: t.id }).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        task.state,
        TaskState::Completed {
            outcome: OutcomeKind::Cancelled
        }
    );
    assert!(!daemon.home.join(format!("staging/{}.part", t.id)).exists());
    let e = c.next_journaled().await;
    assert!(
        matches!(
            e.event,
            Event::Completed {
                outcome: Outcome::Cancelled { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let err = c.request(Request::Resume { task: t.id }).await.unwrap_err();
    assert_eq!(err.code, "invalid_state");
    let err = c
        .request(Request::Cancel { task: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(err.code, "unknown_task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_suspended_tasks_wait_for_resume_and_status_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let mut req = download(server.url("/bytes/100"), Some(&dir.path().join("s.bin")));
    req.start = false;
    let t = c.create("s", req).await;
    assert_eq!(t.state, TaskState::Suspended);
    let Response::Status { tasks, pid, .. } = c.request(Request::Status).await.unwrap() else {
        panic!()
    };
    assert_eq!(pid, daemon.pid());
    assert_eq!(c.pid, pid, "welcome names the same pid");
    assert_eq!(tasks.get("suspended"), Some(&1));
    assert!(
        server.requests().is_empty(),
        "a suspended task does not run"
    );
    c.request(Request::Resume { task: t.id }).await.unwrap();
    wait_completed(&mut c, t.id).await;
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let cases = [
        (
            download("ftp://example.com/f".into(), None),
            "unsupported_scheme",
            "ftp://example.com/f",
        ),
        (download("no url".into(), None), "invalid_url", "no url"),
        (
            download(
                "http://h/f".into(),
                Some(std::path::Path::new("relative/x")),
            ),
            "invalid_request",
            "absolute",
        ),
        (
            ferry_proto::DownloadRequest {
                checksum: Some("sha256:zz".into()),
                ..download("http://h/f".into(), None)
            },
            "invalid_request",
            "64 hex",
        ),
    ];
    for (req, code, mentions) in cases {
        let err = c
            .request(Request::CreateDownload {
                session: "s".into(),
                request: req,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code, code);
        assert!(err.message.contains(mentions), "{}", err.message);
    }
    let err = c
        .request(Request::CreateDownload {
            session: "../etc".into(),
            request: download("http://h/".into(), None),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_request");
    assert!(c.tasks(None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_tasks_and_invalidate_lets_tasks_finish_then_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("inv").await.unwrap();
    let mut req = download(
        server.url("/bytes/600000?rate=1000000"),
        Some(&dir.path().join("i1")),
    );
    req.connections = Some(1);
    let t = c.create("inv", req).await;
    c.request(Request::FinishTasksAndInvalidate {
        session: "inv".into(),
    })
    .await
    .unwrap();
    let err = c
        .request(Request::CreateDownload {
            session: "inv".into(),
            request: download(server.url("/bytes/10"), None),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "session_invalidated");
    let mut seen = Vec::new();
    loop {
        let e = c.next_journaled().await;
        let end = e.event == Event::SessionInvalidated;
        seen.push(e);
        if end {
            break;
        }
    }
    let completed = seen
        .iter()
        .position(|e| {
            e.task == Some(t.id)
                && matches!(
                    e.event,
                    Event::Completed {
                        outcome: Outcome::Succeeded,
                        ..
                    }
                )
        })
        .expect("the running task finished normally");
    assert_eq!(
        completed,
        seen.len() - 2,
        "session_invalidated right after the last completion"
    );
    // The id can be used again.
    c.create(
        "inv",
        download(server.url("/bytes/10"), Some(&dir.path().join("i2"))),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_and_cancel_cancels_everything_then_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("inv").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let req = download(
            server.url(&format!("/bytes/5000000?seed={i}&rate=500000")),
            Some(&dir.path().join(format!("c{i}"))),
        );
        ids.push(c.create("inv", req).await.id);
    }
    c.request(Request::InvalidateAndCancel {
        session: "inv".into(),
    })
    .await
    .unwrap();
    let mut cancelled = Vec::new();
    loop {
        let e = c.next_journaled().await;
        match e.event {
            Event::Completed {
                outcome: Outcome::Cancelled { .. },
                ..
            } => cancelled.push(e.task.unwrap()),
            Event::SessionInvalidated => break,
            _ => {}
        }
    }
    cancelled.sort_unstable();
    assert_eq!(cancelled, ids);
    for id in ids {
        assert_eq!(
            c.task(id).await.state,
            TaskState::Completed {
                outcome: OutcomeKind::Cancelled
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_creation_and_paged_listing_of_thousands_of_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    // 3,000 suspended tasks with 4 KiB tags: far more than one frame can list.
    let tag = "t".repeat(4096);
    let mut created = Vec::new();
    for batch in 0..15 {
        let requests = (0..200)
            .map(|i| {
                let mut r = download(format!("http://127.0.0.1:9/{batch}/{i}"), None);
                r.start = false;
                r.tag = Some(tag.clone());
                r
            })
            .collect();
        let Response::Created { ids } = c
            .request(Request::CreateDownloads {
                session: "bulk".into(),
                requests,
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(ids.len(), 200);
        created.extend(ids);
    }
    let listed: Vec<u64> = c.tasks(Some("bulk")).await.iter().map(|t| t.id).collect();
    assert_eq!(
        listed, created,
        "every task, once, in id order, across pages"
    );

    let Response::Tasks { tasks, next } = c
        .request(Request::ListTasks {
            session: Some("bulk".into()),
            after: None,
            limit: Some(7),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(tasks.len(), 7);
    assert_eq!(next, Some(tasks[6].id));

    // One bad request: nothing of the batch is created, and the error says which.
    let mut bad = vec![download("http://h/ok".into(), None); 3];
    bad[1].url = "gopher://h/x".into();
    let err = c
        .request(Request::CreateDownloads {
            session: "bulk".into(),
            requests: bad,
        })
        .await
        .unwrap_err();
    assert!(err.message.starts_with("request 1:"), "{}", err.message);
    assert_eq!(c.tasks(Some("bulk")).await.len(), 3000);
}

/// Regression: suspending a task the scheduler was starting at that moment answered
/// `invalid_state` ("it is connecting") instead of suspending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_catches_tasks_that_are_just_starting() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let requests = (0..60)
        .map(|i| {
            download(
                server.url(&format!("/bytes/1000000?seed={i}&rate=100000")),
                None,
            )
        })
        .collect();
    let Response::Created { ids } = c
        .request(Request::CreateDownloads {
            session: "race".into(),
            requests,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    for id in &ids {
        let answer = c.request(Request::Suspend { task: *id }).await;
        let Ok(Response::Task { task }) = answer else {
            panic!("task {id}: {answer:?}")
        };
        assert_eq!(task.state, TaskState::Suspended, "task {id}");
    }
    // The same for cancel, on tasks being started again after a resume.
    for id in &ids {
        c.request(Request::Resume { task: *id }).await.unwrap();
    }
    for id in &ids {
        let answer = c.request(Request::Cancel { task: *id }).await;
        let Ok(Response::Task { task }) = answer else {
            panic!("task {id}: {answer:?}")
        };
        assert_eq!(
            task.state,
            TaskState::Completed {
                outcome: OutcomeKind::Cancelled
            },
            "task {id}"
        );
    }
}
