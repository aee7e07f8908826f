//! What only background sessions do: start the daemon, survive it, share a session.

use std::collections::HashSet;

use ferry::{ErrorKind, EventKind, Session};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Home, names, next_event, until_completed, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn clients_starting_at_once_end_with_one_daemon() {
    let home = Home::new();
    assert!(home.daemons().is_empty());
    let opens = (0..6).map(|i| {
        let builder = home.session(&format!("com.example.race{i}"));
        tokio::spawn(async move { builder.open().await })
    });
    let mut pids = HashSet::new();
    let mut sessions = Vec::new();
    for open in opens {
        let session = open.await.unwrap().unwrap();
        pids.insert(session.daemon_pid().unwrap());
        sessions.push(session);
    }
    assert_eq!(
        pids.len(),
        1,
        "every client talks to the same daemon: {pids:?}"
    );
    // The losers of the race have exited; one daemon serves the home.
    wait_until(|| async { home.daemons().len() == 1 }).await;
    assert_eq!(home.daemons(), pids.into_iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_daemon_program_is_a_clear_error() {
    let home = Home::new();
    let e = Session::background("com.example.x")
        .home(home.path())
        .daemon_program(home.path().join("no-such-ferryd"))
        .open()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Daemon);
    assert!(e.to_string().contains("no-such-ferryd"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_session_id_is_refused() {
    let home = Home::new();
    let e = home.session("../etc").open().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_process_attached_means_session_in_use_unless_taken_over() {
    let home = Home::new();
    home.control("com.example.one").await; // starts the daemon
    // The holder is another process: the protocol client of the daemon's tests.
    let mut holder = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../ferryd/tests/it/client.py"
        ))
        .arg(home.path().join("ferryd.sock"))
        .arg("com.example.one")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("attached") {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    }
    let e = home.session("com.example.one").open().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionInUse, "{e}");
    assert!(
        e.to_string().contains(&format!("pid {}", holder.id())),
        "names the pid: {e}"
    );

    let session = home
        .session("com.example.one")
        .take_over(true)
        .open()
        .await
        .unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(
        line.contains("session_taken_over"),
        "the holder is told: {line}"
    );
    session.tasks().await.unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_replaced_in_the_same_process_ends_its_events() {
    let home = Home::new();
    let first = home.session("com.example.one").open().await.unwrap();
    let mut first_events = first.events().unwrap();
    let second = home.session("com.example.one").open().await.unwrap();
    let end = tokio::time::timeout(crate::fixture::PATIENCE, first_events.recv())
        .await
        .unwrap()
        .expect("an error item before the end");
    assert_eq!(end.unwrap_err().kind(), ErrorKind::SessionClosed);
    assert!(first_events.recv().await.is_none(), "then the stream ends");
    let e = first.tasks().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionClosed, "{e}");
    second.tasks().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn control_sessions_work_beside_the_attached_one() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let app = home.session("com.example.app").open().await.unwrap();
    let mut events = app.events().unwrap();
    let control = home.control("com.example.app").await;
    assert!(control.events().is_err(), "a control session has no events");
    let task = control
        .download(server.url("/bytes/1000"))
        .destination(dir.path().join("f"))
        .start()
        .await
        .unwrap();
    // The attached process gets the events of a task another process created.
    let seen = until_completed(&mut events, task.id()).await;
    assert_eq!(names(&seen), ["finished_downloading", "completed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_survives_a_daemon_crash() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let session = home.session("com.example.crash").open().await.unwrap();
    let mut events = session.events().unwrap();
    let first = session
        .download(server.url("/bytes/10"))
        .destination(dir.path().join("a"))
        .start()
        .await
        .unwrap();
    until_completed(&mut events, first.id()).await;
    let big = session
        .download(server.url("/bytes/4000000?seed=6&rate=1000000"))
        .destination(dir.path().join("b"))
        .connections(1)
        .start()
        .await
        .unwrap();
    // Past the first checkpoint (every second at this daemon's default).
    wait_until(|| async { big.info().await.unwrap().bytes_done > 1_500_000 }).await;
    let old_pid = session.daemon_pid().unwrap();
    home.kill_daemon().await;

    // The session reconnects by itself (starting a new daemon) and the download goes on
    // from its checkpoint; the first task's `completed`, unacknowledged when the daemon
    // died, is not handed out twice. (What happened before the re-attach is replayed,
    // then `backlog_delivered`.)
    let seen = until_completed(&mut events, big.id()).await;
    assert_ne!(session.daemon_pid(), Some(old_pid));
    assert!(
        seen.iter().all(|e| e.task_id() != Some(first.id())),
        "nothing repeated: {:?}",
        names(&seen)
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e.kind(), EventKind::ResumedAtOffset { offset, .. } if *offset > 0)),
        "{:?}",
        names(&seen)
    );
    seen.last().unwrap().result().unwrap().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("b")).unwrap(),
        content(6, 0, 4_000_000)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_of_an_earlier_process_are_listed_and_controllable() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let session = home.session("com.example.get").open().await.unwrap();
        session
            .download(server.url("/bytes/5000000?rate=100000"))
            .destination(dir.path().join("f"))
            .tag("nightly")
            .start()
            .await
            .unwrap()
            .id()
    };
    let session = home.session("com.example.get").open().await.unwrap();
    let mut events = session.events().unwrap();
    let tasks = session.tasks().await.unwrap();
    assert_eq!(tasks.len(), 1);
    let (task, info) = &tasks[0];
    assert_eq!((task.id(), info.tag.as_deref()), (id, Some("nightly")));
    task.cancel().await.unwrap();
    let seen = until_completed(&mut events, id).await;
    assert_eq!(seen.last().unwrap().tag(), Some("nightly"));
}

#[tokio::test(flavor = "multi_thread")]
async fn data_tasks_are_for_in_process_sessions() {
    let home = Home::new();
    let session = home.session("com.example.data").open().await.unwrap();
    let e = session
        .data("http://127.0.0.1:9/x")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("in-process"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_files_wait_until_acknowledged() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let session = home.session("com.example.inbox").open().await.unwrap();
    let mut events = session.events().unwrap();
    let task = session
        .download(server.url("/bytes/1000?seed=1&filename=report.pdf"))
        .start()
        .await
        .unwrap();
    let finished = next_event(&mut events).await;
    let EventKind::FinishedDownloading { location } = finished.kind() else {
        panic!("{:?}", finished.kind());
    };
    assert!(location.ends_with("report.pdf"), "{location}");
    assert_eq!(std::fs::read(location).unwrap(), content(1, 0, 1000));
    let completed = next_event(&mut events).await;
    assert_eq!(completed.task_id(), Some(task.id()));
    events.ack(&completed).await.unwrap();
    assert!(
        !std::path::Path::new(location).exists(),
        "acknowledged: the inbox file is gone"
    );
}
