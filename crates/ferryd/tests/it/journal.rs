//! Events for absent clients: journaled, replayed in order, acknowledged once.

use ferry_proto::{Event, Outcome, OutcomeKind, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Daemon, download, wait_completed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_while_detached_then_replays_in_order_with_backlog_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let out = dir.path().join("a.bin");

    // An application creates two tasks without staying attached, then goes away.
    let mut app = daemon.client().await;
    let a = app
        .create(
            "com.example.app",
            download(server.url("/bytes/300000?seed=1"), Some(&out)),
        )
        .await;
    let b = app
        .create(
            "com.example.app",
            download(server.url("/bytes/1000?seed=2&filename=b.txt"), None),
        )
        .await;
    drop(app);

    let mut observer = daemon.client().await;
    wait_completed(&mut observer, a.id).await;
    let b_done = wait_completed(&mut observer, b.id).await;
    assert_eq!(
        b_done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(1, 0, 300_000));

    // It comes back: every event, in order per task, then backlog_delivered.
    let mut app = daemon.client().await;
    assert_eq!(app.attach("com.example.app").await.unwrap(), 4);
    let mut seen = Vec::new();
    loop {
        let e = app.next_journaled().await;
        if e.event == Event::BacklogDelivered {
            break;
        }
        seen.push(e);
    }
    assert_eq!(seen.len(), 4);
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq.unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for task in [a.id, b.id] {
        let of_task: Vec<_> = seen.iter().filter(|e| e.task == Some(task)).collect();
        assert!(
            matches!(of_task[0].event, Event::FinishedDownloading { .. }),
            "{of_task:?}"
        );
        let Event::Completed {
            outcome: Outcome::Succeeded,
            status: Some(200),
            reply: None,
            headers: Some(headers),
        } = &of_task[1].event
        else {
            panic!("{:?}", of_task[1]);
        };
        // SPEC §7: `completed` carries the response's status and headers.
        let length = if task == a.id { "300000" } else { "1000" };
        assert!(
            headers.contains(&("content-length".to_owned(), length.to_owned())),
            "{headers:?}"
        );
    }
    // The inbox file is there until its event is acknowledged.
    let Event::FinishedDownloading { location } =
        &seen.iter().find(|e| e.task == Some(b.id)).unwrap().event
    else {
        unreachable!()
    };
    assert!(
        location.ends_with("inbox/com.example.app/b.txt"),
        "{location}"
    );
    assert_eq!(std::fs::read(location).unwrap(), content(2, 0, 1000));
    app.ack("com.example.app", seen.last().unwrap().seq.unwrap())
        .await;
    assert!(
        !std::path::Path::new(location).exists(),
        "acknowledged inbox files are removed"
    );
    assert!(out.exists(), "a destination file is the application's");
    drop(app);

    // Nothing is delivered twice after acknowledgement.
    let mut app = daemon.client().await;
    assert_eq!(app.attach("com.example.app").await.unwrap(), 0);
    let tasks = app.tasks(Some("com.example.app")).await;
    assert_eq!(tasks.len(), 2);
    assert!(
        app.events.iter().all(|e| !e.event.is_journaled()),
        "{:?}",
        app.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_come_again_and_acks_cannot_skip_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut app = daemon.client().await;
    app.attach("s1").await.unwrap();
    let t = app
        .create("s1", download(server.url("/bytes/10?status=404"), None))
        .await;
    let e = app.next_journaled().await;
    assert_eq!(e.task, Some(t.id));
    match &e.event {
        Event::Completed {
            outcome: Outcome::Failed { error, .. },
            status: Some(404),
            reply: None,
            headers: None,
        } => {
            assert_eq!(error.code, "http_status");
        }
        other => panic!("{other:?}"),
    }
    // A client that crashes before acknowledging gets it again; an ack beyond what was
    // issued does not swallow later events.
    app.ack("s1", e.seq.unwrap() + 100).await;
    drop(app);
    let mut app = daemon.client().await;
    assert_eq!(app.attach("s1").await.unwrap(), 0);
    let t2 = app
        .create("s1", download(server.url("/bytes/10?status=410"), None))
        .await;
    let e2 = app.next_journaled().await;
    assert_eq!(
        e2.task,
        Some(t2.id),
        "the event after the over-reaching ack still arrives"
    );
    assert_eq!(e2.seq, Some(e.seq.unwrap() + 1));
    drop(app);
    let mut app = daemon.client().await;
    assert_eq!(
        app.attach("s1").await.unwrap(),
        1,
        "not acknowledged: delivered again"
    );
    assert_eq!(app.next_journaled().await.seq, e2.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_clients_get_live_events_and_a_progress_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut app = daemon.client().await;
    app.attach("live").await.unwrap();
    let mut req = download(server.url("/bytes/2000000?seed=5&rate=1000000"), None);
    req.connections = Some(1);
    req.tag = Some("my-tag".into());
    let t = app.create("live", req).await;
    // Progress while running.
    loop {
        let e = app.next_event().await;
        if let Event::Progress { total_written, .. } = e.event {
            assert_eq!(e.task, Some(t.id));
            assert!(total_written > 0);
            break;
        }
    }
    // Re-attaching mid-transfer: a snapshot per running task, no backlog_delivered.
    drop(app);
    let mut again = daemon.client().await;
    assert_eq!(again.attach("live").await.unwrap(), 0);
    let snapshot = again.next_event().await;
    assert!(
        matches!(snapshot.event, Event::Progress { .. }),
        "{snapshot:?}"
    );
    assert_eq!(snapshot.task, Some(t.id));
    let finished = again.next_journaled().await;
    assert!(
        matches!(finished.event, Event::FinishedDownloading { .. }),
        "{finished:?}"
    );
    assert_eq!(finished.tag.as_deref(), Some("my-tag"));
    assert!(matches!(
        again.next_journaled().await.event,
        Event::Completed { .. }
    ));
}
