//! Control without attachment: create, list, get, suspend, resume, cancel, update the URL,
//! remove, status.

use ferry_proto::{
    ErrorInfo, Event, Headers, Outcome, OutcomeKind, Request, Response, SessionConfig, TaskInfo,
    TaskState,
};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Client, Daemon, download, wait_completed, wait_until};

async fn get_task(c: &mut Client, task: u64) -> Result<TaskInfo, ErrorInfo> {
    match c.request(Request::GetTask { task }).await? {
        Response::Task { task } => Ok(task),
        other => panic!("{other:?}"),
    }
}

async fn update_url(c: &mut Client, task: u64, url: &str) -> Result<TaskInfo, ErrorInfo> {
    let request = Request::UpdateUrl {
        task,
        url: url.into(),
    };
    match c.request(request).await? {
        Response::Task { task } => Ok(task),
        other => panic!("{other:?}"),
    }
}

const TAG_LEN: usize = 4096;

/// `batches × per_batch` suspended tasks with tags of the largest size (4 KiB), created with
/// `create_downloads`; their ids in order.
async fn tagged_tasks(c: &mut Client, session: &str, batches: usize, per_batch: usize) -> Vec<u64> {
    let tag = "t".repeat(TAG_LEN);
    let mut created = Vec::new();
    for batch in 0..batches {
        let requests = (0..per_batch)
            .map(|i| {
                let mut r = download(format!("http://127.0.0.1:9/{batch}/{i}"), None);
                r.start = false;
                r.tag = Some(tag.clone());
                r
            })
            .collect();
        let Response::Created { ids } = c
            .request(Request::CreateDownloads {
                session: session.into(),
                requests,
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(ids.len(), per_batch);
        created.extend(ids);
    }
    created
}

async fn remove(c: &mut Client, task: u64, delete_file: bool) -> Result<(), ErrorInfo> {
    match c.request(Request::Remove { task, delete_file }).await? {
        Response::Done => Ok(()),
        other => panic!("{other:?}"),
    }
}

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
    let created = tagged_tasks(&mut c, "bulk", 15, 200).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tasks_answers_by_id_with_tombstones_a_frame_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    // Two completed tasks, removed: one succeeded, one cancelled.
    let done = c
        .create(
            "a",
            download(
                server.url("/bytes/1000?seed=3"),
                Some(&dir.path().join("d")),
            ),
        )
        .await;
    wait_completed(&mut c, done.id).await;
    let mut never_ran = download(server.url("/bytes/1000?seed=4"), None);
    never_ran.start = false;
    let cancelled = c.create("a", never_ran).await;
    c.request(Request::Cancel { task: cancelled.id })
        .await
        .unwrap();
    remove(&mut c, done.id, false).await.unwrap();
    remove(&mut c, cancelled.id, false).await.unwrap();
    // 300 suspended tasks with 4 KiB tags, in another session: more than one frame holds.
    let big = tagged_tasks(&mut c, "b", 2, 150).await;
    let tag = "t".repeat(TAG_LEN);
    let never = big.iter().max().unwrap() + 1000;

    let mut asked = vec![done.id, never, cancelled.id];
    asked.extend(big.iter().rev());
    let (tasks, removed, unknown, answered) = c.found_tasks(&asked).await.unwrap();
    let answered = answered as usize;
    assert!(
        (3..asked.len()).contains(&answered),
        "one frame cannot hold 300 tasks of 4 KiB: {answered} of {} answered",
        asked.len()
    );
    assert_eq!(unknown, vec![never]);
    let gone: Vec<_> = removed
        .iter()
        .map(|r| (r.id, r.session.as_str(), r.outcome))
        .collect();
    assert_eq!(
        gone,
        vec![
            (done.id, "a", OutcomeKind::Succeeded),
            (cancelled.id, "a", OutcomeKind::Cancelled)
        ]
    );
    let mut seen: Vec<u64> = tasks.iter().map(|t| t.id).collect();
    assert_eq!(
        seen,
        asked[3..answered],
        "the tasks answered, in the order asked"
    );
    // The rest, asked again.
    let (tasks, removed, unknown, rest) = c.found_tasks(&asked[answered..]).await.unwrap();
    assert_eq!(rest as usize, asked.len() - answered);
    assert!(removed.is_empty() && unknown.is_empty());
    assert!(tasks.iter().all(|t| t.tag.as_deref() == Some(tag.as_str())));
    seen.extend(tasks.iter().map(|t| t.id));
    assert_eq!(seen, asked[3..]);

    // `get_task` says what became of a removed task, still as `unknown_task`.
    let err = get_task(&mut c, done.id).await.unwrap_err();
    assert_eq!(err.code, "unknown_task");
    assert!(
        err.message.contains("was removed (it had succeeded)"),
        "{}",
        err.message
    );
    let err = get_task(&mut c, never).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.message.as_str()),
        ("unknown_task", format!("there is no task {never}").as_str())
    );
    // Too many ids at once: refused, saying the limit.
    let err = c
        .found_tasks(&vec![done.id; ferry_proto::MAX_GET_TASKS + 1])
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_request");
    assert!(err.message.contains("at most 10000"), "{}", err.message);
}

/// Regression: a task whose JSON is larger than a page's budget (but fits in a frame) made
/// `get_tasks` answer nothing (`answered: 0`, so a client asking again never got on) and
/// ended a `list_tasks` listing before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_larger_than_a_page_is_still_answered_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let mut small = download("http://127.0.0.1:9/small".into(), None);
    small.start = false;
    let small = c.create("huge", small).await;
    // ~1,000,000 bytes of URL: more than a page's budget, less than a frame.
    let mut huge = download(
        format!("http://127.0.0.1:9/{}", "a".repeat(1_000_000)),
        None,
    );
    huge.start = false;
    let huge = c.create("huge", huge).await;

    let asked = [small.id, huge.id];
    let (tasks, _, _, answered) = c.found_tasks(&asked).await.unwrap();
    assert_eq!((tasks.len(), answered), (1, 1));
    let (tasks, _, _, answered) = c.found_tasks(&asked[1..]).await.unwrap();
    assert_eq!(answered, 1, "the first id always answered");
    assert_eq!(tasks[0].id, huge.id);
    let listed: Vec<u64> = c.tasks(Some("huge")).await.iter().map(|t| t.id).collect();
    assert_eq!(listed, asked);
}

/// SPEC §4: a session's headers go with every request, and a task's header replaces the
/// session's of the same name instead of both being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_header_replaces_the_sessions_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let config = SessionConfig {
        headers: Headers(vec![
            ("X-Session".into(), "s".into()),
            ("Authorization".into(), "Bearer session".into()),
        ]),
        ..SessionConfig::default()
    };
    c.attach_with("h", config, false).await.unwrap();
    let out = dir.path().join("echo.json");
    let mut req = download(server.url("/echo"), Some(&out));
    req.headers = Headers(vec![("authorization".into(), "Bearer task".into())]);
    let task = c.create("h", req).await;
    wait_completed(&mut c, task.id).await;
    let echoed: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(echoed["x-session"], "s");
    assert_eq!(echoed["authorization"], "Bearer task");
}

/// SPEC §14: an error that names a URL (a redirect loop here) does not show a password
/// written into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_error_hides_a_password_written_into_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let url = server
        .url("/loop")
        .replacen("http://", "http://ann:pa55word@", 1);
    let task = c
        .create("pw", download(url, Some(&dir.path().join("x"))))
        .await;
    let done = wait_completed(&mut c, task.id).await;
    let error = done.error.expect("a redirect loop fails");
    assert_eq!(error.code, "too_many_redirects");
    assert!(error.message.contains("ann:***@"), "{}", error.message);
    assert!(!error.message.contains("pa55word"), "{}", error.message);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_task_answers_one_task_with_live_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    // Checkpoints a minute apart: stored byte counts stay 0 while it runs.
    let daemon = Daemon::start_with(&dir.path().join("home"), 60_000).await;
    let mut c = daemon.client().await;
    let n = 3_000_000u64;
    let out = dir.path().join("g.bin");
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=12&rate=1000000")),
        Some(&out),
    );
    req.connections = Some(1);
    req.tag = Some("one".into());
    let t = c.create("g", req).await;
    daemon.wait_for_bytes(t.id, 100_000).await;
    let task = get_task(&mut c, t.id).await.unwrap();
    assert_eq!((task.id, task.tag.as_deref()), (t.id, Some("one")));
    assert!(matches!(task.state, TaskState::Running { .. }), "{task:?}");
    assert!(task.bytes_done >= 100_000, "live bytes: {task:?}");
    assert_eq!(task.bytes_total, Some(n));

    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(get_task(&mut c, t.id).await.unwrap(), done);
    assert_eq!(done.location.as_deref(), Some(out.to_str().unwrap()));
    let err = get_task(&mut c, 999_999).await.unwrap_err();
    assert_eq!(err.code, "unknown_task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_url_moves_a_running_download_to_the_new_url_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("u").await.unwrap();
    let n = 3_000_000u64;
    let out = dir.path().join("u.bin");
    let old = server.url(&format!("/bytes/{n}?seed=13&rate=1000000"));
    let mut req = download(old.clone(), Some(&out));
    req.connections = Some(1);
    let t = c.create("u", req).await;
    daemon.wait_for_bytes(t.id, 300_000).await;

    // The same resource (same validators) at another URL, not throttled.
    let new = server.url(&format!("/bytes/{n}?seed=13"));
    let task = update_url(&mut c, t.id, &new).await.unwrap();
    assert_eq!(task.url, new);
    assert!(
        task.current_url.is_none() || task.current_url.as_deref() == Some(new.as_str()),
        "the old URL is forgotten: {task:?}"
    );
    assert!(
        !matches!(task.state, TaskState::Completed { .. }),
        "{task:?}"
    );
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(done.url, new);
    assert_eq!(std::fs::read(&out).unwrap(), content(13, 0, n));

    // It continued from its bytes, from the new URL.
    let offset = loop {
        let e = c.next_journaled().await;
        match e.event {
            Event::ResumedAtOffset { offset, .. } => break offset,
            Event::Completed { .. } => panic!("no resumed_at_offset before completed"),
            _ => {}
        }
    };
    assert!(offset >= 300_000, "{offset}");
    let requests = server.requests();
    let to_new: Vec<_> = requests.iter().filter(|r| r.query == "seed=13").collect();
    assert_eq!(to_new.len(), 1, "{requests:?}");
    assert_eq!(
        to_new[0].header("range"),
        Some(format!("bytes={offset}-{}", n - 1).as_str())
    );
    assert!(to_new[0].header("if-range").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_url_of_a_suspended_task_and_what_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let n = 2_000_000u64;
    let out = dir.path().join("s.bin");
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=14&rate=1000000")),
        Some(&out),
    );
    req.connections = Some(1);
    let t = c.create("u", req).await;
    daemon.wait_for_bytes(t.id, 200_000).await;
    let Response::Task { task } = c.request(Request::Suspend { task: t.id }).await.unwrap() else {
        panic!()
    };
    assert!(task.current_url.is_some());
    let kept = task.bytes_done;

    for (bad, code) in [
        ("no url", "invalid_url"),
        ("ftp://example.com/f", "unsupported_scheme"),
    ] {
        let err = update_url(&mut c, t.id, bad).await.unwrap_err();
        assert_eq!(err.code, code);
        assert!(err.message.contains(bad), "{}", err.message);
    }
    let new = server.url(&format!("/bytes/{n}?seed=14&rate=4000000"));
    let task = update_url(&mut c, t.id, &new).await.unwrap();
    assert_eq!(task.state, TaskState::Suspended);
    assert_eq!((task.url.as_str(), task.current_url), (new.as_str(), None));
    assert_eq!(task.bytes_done, kept, "the bytes are kept");

    server.clear_log();
    c.request(Request::Resume { task: t.id }).await.unwrap();
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(14, 0, n));
    let first = &server.requests()[0];
    assert_eq!(first.query, "seed=14&rate=4000000");
    assert_eq!(
        first.header("range"),
        Some(format!("bytes={kept}-{}", n - 1).as_str())
    );

    let err = update_url(&mut c, t.id, &new).await.unwrap_err();
    assert_eq!(err.code, "invalid_state");
    assert!(err.message.contains("succeeded"), "{}", err.message);
    let err = update_url(&mut c, 999_999, &new).await.unwrap_err();
    assert_eq!(err.code, "unknown_task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_forgets_a_completed_task_but_not_its_unacknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let mut slow = download(
        server.url("/bytes/3000000?seed=15&rate=500000"),
        Some(&dir.path().join("slow")),
    );
    slow.group = Some("g".into());
    let running = c.create("rm", slow).await;
    let out = dir.path().join("done.bin");
    let mut req = download(server.url("/bytes/1000?seed=16"), Some(&out));
    req.tag = Some("keep-me".into());
    req.group = Some("g".into());
    let done = c.create("rm", req).await;
    wait_completed(&mut c, done.id).await;

    let err = remove(&mut c, running.id, false).await.unwrap_err();
    assert_eq!(err.code, "invalid_state");
    assert!(err.message.contains("cancel it first"), "{}", err.message);
    assert!(c.tasks(Some("rm")).await.iter().any(|t| t.id == running.id));

    remove(&mut c, done.id, false).await.unwrap();
    let listed: Vec<u64> = c.tasks(None).await.iter().map(|t| t.id).collect();
    assert_eq!(listed, vec![running.id]);
    assert_eq!(
        get_task(&mut c, done.id).await.unwrap_err().code,
        "unknown_task"
    );
    let Response::Status { tasks, .. } = c.request(Request::Status).await.unwrap() else {
        panic!()
    };
    assert_eq!(tasks.get("succeeded"), None, "{tasks:?}");
    let Response::Groups { groups } = c
        .request(Request::ListGroups {
            session: "rm".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((groups[0].tasks, groups[0].completed), (1, 0));
    assert!(out.exists(), "without delete_file the file stays");
    let err = remove(&mut c, done.id, false).await.unwrap_err();
    assert_eq!(err.code, "unknown_task");
    assert!(
        err.message.contains("was removed (it had succeeded)"),
        "{}",
        err.message
    );

    // Its events were not acknowledged: the next attach still delivers them, tag and all.
    let mut app = daemon.client().await;
    app.attach("rm").await.unwrap();
    let mut of_removed = Vec::new();
    loop {
        let e = app.next_journaled().await;
        if e.event == Event::BacklogDelivered {
            break;
        }
        if e.task == Some(done.id) {
            assert_eq!(e.tag.as_deref(), Some("keep-me"));
            of_removed.push(e.event);
        }
    }
    assert!(
        matches!(
            of_removed.as_slice(),
            [
                Event::FinishedDownloading { .. },
                Event::Completed {
                    outcome: Outcome::Succeeded,
                    ..
                }
            ]
        ),
        "{of_removed:?}"
    );

    // Once cancelled, the other task can go too.
    c.request(Request::Cancel { task: running.id })
        .await
        .unwrap();
    remove(&mut c, running.id, false).await.unwrap();
    assert!(c.tasks(None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_with_delete_file_deletes_the_file_or_the_kept_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let out = dir.path().join("placed.bin");
    let placed = c
        .create(
            "rm",
            download(server.url("/bytes/1000?seed=17"), Some(&out)),
        )
        .await;
    wait_completed(&mut c, placed.id).await;
    assert!(out.exists());
    remove(&mut c, placed.id, true).await.unwrap();
    assert!(!out.exists(), "the placed file is deleted");

    let mut req = download(
        server.url("/bytes/3000000?seed=18&rate=1000000"),
        Some(&dir.path().join("kept.bin")),
    );
    req.connections = Some(1);
    let t = c.create("rm", req).await;
    daemon.wait_for_bytes(t.id, 100_000).await;
    let Response::Task { task } = c
        .request(Request::CancelWithResumeData { task: t.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    let blob = task.resume_data.expect("resume data");
    let resume_area = || {
        std::fs::read_dir(daemon.home.join("resume"))
            .unwrap()
            .count()
    };
    assert_eq!(resume_area(), 1);
    remove(&mut c, t.id, true).await.unwrap();
    assert_eq!(resume_area(), 0, "the kept bytes are deleted");
    let err = c
        .request(Request::CreateFromResumeData {
            session: "rm".into(),
            resume_data: blob,
            destination: None,
            headers: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_resume_data");
    assert!(err.message.contains("removed"), "{}", err.message);
    assert!(c.tasks(None).await.is_empty());
}

/// `directory`: the file lands in that folder (created if missing) under the server's
/// name, with the session's conflict policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_gets_the_file_under_the_servers_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let folder = dir.path().join("downloads/new");
    let mut locations = Vec::new();
    for _ in 0..2 {
        let mut req = download(server.url("/bytes/1000?seed=4&filename=report.pdf"), None);
        req.directory = Some(folder.display().to_string());
        let t = c.create("s", req).await;
        assert_eq!(t.destination, None);
        let done = wait_completed(&mut c, t.id).await;
        assert_eq!(
            done.state,
            TaskState::Completed {
                outcome: OutcomeKind::Succeeded
            },
            "{done:?}"
        );
        locations.push(done.location.unwrap());
    }
    assert_eq!(
        locations,
        [
            folder.join("report.pdf").display().to_string(),
            folder.join("report (1).pdf").display().to_string()
        ]
    );
    for location in &locations {
        assert_eq!(std::fs::read(location).unwrap(), content(4, 0, 1000));
    }

    let cases = [
        (Some("relative/dir"), None, "absolute"),
        (Some("/tmp/a\0b"), None, "NUL"),
        (Some("/tmp"), Some("/tmp/f"), "exclude"),
    ];
    for (directory, destination, mentions) in cases {
        let mut req = download(server.url("/bytes/1"), None);
        req.directory = directory.map(str::to_owned);
        req.destination = destination.map(str::to_owned);
        let err = c
            .request(Request::CreateDownload {
                session: "s".into(),
                request: req,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code, "invalid_request", "{err:?}");
        assert!(err.message.contains(mentions), "{err:?}");
    }
}

/// A running transfer reports its rate; a task that does not transfer reports none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transferring_task_reports_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let rate: u64 = 400_000;
    let mut req = download(
        server.url(&format!("/bytes/40000000?rate={rate}")),
        Some(&dir.path().join("slow.bin")),
    );
    req.connections = Some(1);
    let t = c.create("s", req).await;
    let mut held = download(server.url("/bytes/1000"), None);
    held.start = false;
    let suspended = c.create("s", held).await;

    let socket = daemon.socket();
    let deadline = tokio::time::Instant::now() + crate::fixture::PATIENCE;
    let measured = loop {
        let info = get_task(&mut c, t.id).await.unwrap();
        if let Some(r) = info.bytes_per_second {
            assert_eq!(
                info.state,
                TaskState::Running {
                    phase: ferry_proto::RunPhase::Transferring
                }
            );
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rate: {info:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        (rate / 4..=rate * 4).contains(&measured),
        "measured {measured} B/s for a {rate} B/s transfer"
    );
    // The list shows it too.
    let listed = Client::connect(&socket).await.tasks(Some("s")).await;
    assert!(
        listed
            .iter()
            .any(|i| i.id == t.id && i.bytes_per_second.is_some())
    );
    assert_eq!(
        get_task(&mut c, suspended.id)
            .await
            .unwrap()
            .bytes_per_second,
        None
    );

    c.request(Request::Suspend { task: t.id }).await.unwrap();
    assert_eq!(get_task(&mut c, t.id).await.unwrap().bytes_per_second, None);
}

#[tokio::test]
async fn a_task_receiving_bytes_is_transferring_before_its_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    // Checkpoints a minute apart: the stored phase stays `connecting` for the whole test.
    let daemon = Daemon::start_with(&dir.path().join("home"), 60_000).await;
    let mut c = daemon.client().await;
    let mut req = download(
        server.url("/bytes/40000000?rate=200000"),
        Some(&dir.path().join("slow.bin")),
    );
    req.connections = Some(1);
    let t = c.create("s", req).await;
    let deadline = tokio::time::Instant::now() + crate::fixture::PATIENCE;
    let info = loop {
        let info = get_task(&mut c, t.id).await.unwrap();
        if info.bytes_done > 0 {
            break info;
        }
        assert!(tokio::time::Instant::now() < deadline, "no bytes: {info:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        info.state,
        TaskState::Running {
            phase: ferry_proto::RunPhase::Transferring
        },
        "{info:?}"
    );
}
