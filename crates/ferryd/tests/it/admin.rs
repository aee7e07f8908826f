//! Daemon-wide requests: `list_sessions` and `shutdown`.

use ferry_proto::{Request, Response, SessionConfig, SessionInfo, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Client, Daemon, download, wait_completed, wait_until};

async fn sessions(c: &mut Client) -> Vec<SessionInfo> {
    match c.request(Request::ListSessions).await {
        Ok(Response::Sessions { sessions }) => sessions,
        other => panic!("{other:?}"),
    }
}

fn find<'a>(sessions: &'a [SessionInfo], id: &str) -> &'a SessionInfo {
    sessions
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no session {id} in {sessions:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_reports_attachment_counts_and_marks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;

    // "b-attached": attached with a launch command; one finished task whose events are not
    // acknowledged, one suspended task.
    let mut attached = daemon.client().await;
    let config = SessionConfig {
        launch_command: Some(vec!["/bin/true".into(), "--collect".into()]),
        ..SessionConfig::default()
    };
    attached
        .attach_with("b-attached", config, false)
        .await
        .unwrap();
    let done = attached
        .create(
            "b-attached",
            download(server.url("/bytes/1000"), Some(&dir.path().join("one.bin"))),
        )
        .await;
    let last_seq = loop {
        let e = attached.next_journaled().await;
        if e.task == Some(done.id) && matches!(e.event, ferry_proto::Event::Completed { .. }) {
            break e.seq.unwrap();
        }
    };
    let mut held = download(server.url("/bytes/1000"), None);
    held.start = false;
    attached.create("b-attached", held).await;

    // "a-terminated": never attached; its one task is cancelled by the user's terminate.
    let mut other = daemon.client().await;
    let mut held = download(server.url("/bytes/1000"), None);
    held.start = false;
    other.create("a-terminated", held).await;
    other
        .request(Request::Terminate {
            session: "a-terminated".into(),
        })
        .await
        .unwrap();

    // "c-invalidating": a suspended task keeps the invalidation going.
    let mut held = download(server.url("/bytes/1000"), None);
    held.start = false;
    other.create("c-invalidating", held).await;
    other
        .request(Request::FinishTasksAndInvalidate {
            session: "c-invalidating".into(),
        })
        .await
        .unwrap();

    let list = sessions(&mut other).await;
    let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a-terminated", "b-attached", "c-invalidating"]);

    let a = find(&list, "a-terminated");
    assert_eq!(
        (a.attached_pid, a.tasks, a.unfinished, a.undelivered),
        (None, 1, 0, 1),
        "{a:?}"
    );
    assert!(a.terminated && !a.invalidating, "{a:?}");
    assert_eq!(a.launch_command, None);

    let b = find(&list, "b-attached");
    assert_eq!(b.attached_pid, Some(std::process::id()), "{b:?}");
    assert_eq!(
        (b.tasks, b.unfinished, b.undelivered),
        (2, 1, last_seq),
        "{b:?}"
    );
    assert!(!b.terminated && !b.invalidating, "{b:?}");
    assert_eq!(
        b.launch_command.as_deref(),
        Some(&["/bin/true".to_owned(), "--collect".to_owned()][..])
    );

    let c = find(&list, "c-invalidating");
    assert!(c.invalidating && !c.terminated, "{c:?}");
    assert_eq!((c.tasks, c.unfinished, c.undelivered), (1, 1, 0), "{c:?}");

    // Acknowledged events are delivered; a closed connection is no longer attached.
    attached.ack("b-attached", last_seq).await;
    let b = find(&sessions(&mut other).await, "b-attached").clone();
    assert_eq!(b.undelivered, 0, "{b:?}");
    drop(attached);
    let socket = daemon.socket();
    wait_until(|| {
        let socket = socket.clone();
        async move {
            let mut c = Client::connect(&socket).await;
            find(&sessions(&mut c).await, "b-attached")
                .attached_pid
                .is_none()
        }
    })
    .await;
}

/// `shutdown` answers, closes the connection, and stops the daemon as SIGTERM does: the
/// running transfer is checkpointed, the socket removed, exit status 0; a restart continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_like_sigterm_after_answering() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let n: u64 = 3_000_000;
    let out = dir.path().join("t.bin");
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=23&rate=1000000")),
        Some(&out),
    );
    req.connections = Some(1);
    let mut c = daemon.client().await;
    let t = c.create("s", req).await;
    daemon.wait_for_bytes(t.id, 300_000).await;

    assert_eq!(c.request(Request::Shutdown).await, Ok(Response::Done));
    assert_eq!(c.next_frame().await, None, "the connection is closed");
    let status = daemon.exited().await;
    assert!(status.success(), "{status:?}");
    assert!(!home.join("ferryd.sock").exists() && !home.join("ferryd.pid").exists());

    server.clear_log();
    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    let done = wait_completed(&mut c, t.id).await;
    assert!(
        matches!(
            done.state,
            TaskState::Completed {
                outcome: ferry_proto::OutcomeKind::Succeeded
            }
        ),
        "{done:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(23, 0, n));
    let requests = server.requests();
    let range = requests[0].header("range").expect("continued with a range");
    let from: u64 = range[6..].split('-').next().unwrap().parse().unwrap();
    assert!(from > 300_000, "continued from {from}");
}
