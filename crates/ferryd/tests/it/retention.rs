//! Retention: kept bytes, acknowledged completed tasks and the tombstones of removed tasks go
//! after the retention period (`FERRY_RETENTION_SECS`), swept every `FERRY_SWEEP_MS`; nothing
//! goes before it.

use std::path::Path;

use ferry_proto::{OutcomeKind, Request, Response, TaskInfo, TaskState};
use ferry_testserver::TestServer;

use crate::fixture::{Client, Daemon, download, wait_completed, wait_until};

const SHORT: &[(&str, &str)] = &[("FERRY_RETENTION_SECS", "1"), ("FERRY_SWEEP_MS", "100")];

/// The kept bytes in the daemon's resume area.
fn kept_files(home: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(home.join("resume"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect()
}

/// Starts a slow download in `session`, and cancels it with resume data once it has bytes.
async fn cancelled_with_resume_data(
    daemon: &Daemon,
    c: &mut Client,
    server: &TestServer,
    session: &str,
    out: &Path,
) -> TaskInfo {
    let mut req = download(server.url("/bytes/3000000?seed=71&rate=1000000"), Some(out));
    req.connections = Some(1);
    let t = c.create(session, req).await;
    daemon.wait_for_bytes(t.id, 100_000).await;
    let Response::Task { task } = c
        .request(Request::CancelWithResumeData { task: t.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(task.resume_data.is_some());
    task
}

/// A small download in `session`, completed.
async fn succeeded(c: &mut Client, server: &TestServer, session: &str, out: &Path) -> TaskInfo {
    let t = c
        .create(
            session,
            download(server.url("/bytes/1000?seed=72"), Some(out)),
        )
        .await;
    let done = wait_completed(c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    done
}

async fn from_blob(c: &mut Client, blob: &str) -> Result<Response, ferry_proto::ErrorInfo> {
    c.request(Request::CreateFromResumeData {
        session: "s".into(),
        resume_data: blob.into(),
        destination: None,
        headers: Default::default(),
    })
    .await
}

async fn listed(socket: &Path, id: u64) -> bool {
    Client::connect(socket)
        .await
        .tasks(None)
        .await
        .iter()
        .any(|t| t.id == id)
}

/// Kept bytes go after the retention period once nothing of the daemon names their resume
/// data any more — never while a task row or an unacknowledged event still holds it (SPEC §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_bytes_expire_after_the_retention_period_once_nothing_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let daemon = Daemon::start_env(&home, 200, SHORT).await;
    let mut c = daemon.client().await;
    // Held: its task stays (its events are not acknowledged).
    let held =
        cancelled_with_resume_data(&daemon, &mut c, &server, "s", &dir.path().join("h")).await;
    let held_file = kept_files(&home);
    assert_eq!(held_file.len(), 1, "the bytes are kept");
    // Let go: its events are acknowledged and its task removed (the blob is only with the
    // client now).
    let free =
        cancelled_with_resume_data(&daemon, &mut c, &server, "f", &dir.path().join("f")).await;
    let blob = free.resume_data.clone().unwrap();
    let mut app = daemon.client().await;
    app.attach("f").await.unwrap();
    app.ack("f", u64::MAX).await;
    c.request(Request::Remove {
        task: free.id,
        delete_file: false,
    })
    .await
    .unwrap();
    assert_eq!(kept_files(&home).len(), 2);

    wait_until(|| {
        let home = home.clone();
        async move { kept_files(&home).len() == 1 }
    })
    .await;
    assert_eq!(
        kept_files(&home),
        held_file,
        "the held bytes stay past the period"
    );
    let err = from_blob(&mut c, &blob).await.unwrap_err();
    assert_eq!(err.code, "invalid_resume_data");
    assert!(err.message.contains("expired"), "{}", err.message);
    assert!(listed(&daemon.socket(), held.id).await);
    assert_eq!(c.tasks(None).await.len(), 1, "nothing was created");

    // Once its events are acknowledged the task is forgotten, and then its bytes go too.
    c.attach("s").await.unwrap();
    c.ack("s", u64::MAX).await;
    wait_until(|| {
        let home = home.clone();
        async move { kept_files(&home).is_empty() }
    })
    .await;
    assert!(!listed(&daemon.socket(), held.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_completed_tasks_are_forgotten_after_the_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start_env(&dir.path().join("home"), 200, SHORT).await;
    let mut c = daemon.client().await;
    // Completed first, so it is at least as old as the other; its events stay unacknowledged.
    let unacked = succeeded(&mut c, &server, "keeps", &dir.path().join("u")).await;
    let acked = succeeded(&mut c, &server, "acks", &dir.path().join("a")).await;
    c.ack("acks", u64::MAX).await;

    // Forgotten, it leaves a tombstone saying how it ended (seen while it is kept: for the
    // retention period too)…
    wait_until(|| {
        let socket = daemon.socket();
        async move { found(&socket, acked.id).await == Found::Removed(OutcomeKind::Succeeded) }
    })
    .await;
    // The sweep that forgot the newer task saw this one too, and kept it.
    assert_eq!(found(&daemon.socket(), unacked.id).await, Found::Task);
    // Forgotten as `remove` forgets: the placed file stays.
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap().len(), 1000);
    assert_eq!(std::fs::read(dir.path().join("u")).unwrap().len(), 1000);
    // …and the tombstone goes a retention period later.
    wait_until(|| {
        let socket = daemon.socket();
        async move { found(&socket, acked.id).await == Found::Unknown }
    })
    .await;
    assert_eq!(found(&daemon.socket(), unacked.id).await, Found::Task);
}

#[derive(Debug, PartialEq)]
enum Found {
    Task,
    Removed(OutcomeKind),
    Unknown,
}

/// What `get_tasks` says of one task.
async fn found(socket: &Path, id: u64) -> Found {
    let mut c = Client::connect(socket).await;
    match c.found_tasks(&[id]).await.unwrap() {
        (tasks, _, _, 1) if tasks.len() == 1 => Found::Task,
        (_, removed, _, 1) if removed.len() == 1 => Found::Removed(removed[0].outcome),
        (_, _, unknown, 1) if unknown == [id] => Found::Unknown,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_removed_within_the_default_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let daemon = Daemon::start_env(&home, 200, &[("FERRY_SWEEP_MS", "100")]).await;
    let mut c = daemon.client().await;
    let done = succeeded(&mut c, &server, "acks", &dir.path().join("a")).await;
    let cancelled =
        cancelled_with_resume_data(&daemon, &mut c, &server, "acks", &dir.path().join("r")).await;
    c.ack("acks", u64::MAX).await;

    // The same setup in a daemon with a 1 s retention is swept clean; by then the default
    // daemon, sweeping every 100 ms as well, has swept many times.
    let control_home = dir.path().join("control");
    let control = Daemon::start_env(&control_home, 200, SHORT).await;
    let mut cc = control.client().await;
    let control_done = succeeded(&mut cc, &server, "acks", &dir.path().join("ca")).await;
    let control_cancelled =
        cancelled_with_resume_data(&control, &mut cc, &server, "acks", &dir.path().join("cr"))
            .await;
    cc.ack("acks", u64::MAX).await;
    wait_until(|| {
        let (socket, home) = (control.socket(), control_home.clone());
        async move {
            kept_files(&home).is_empty()
                && !listed(&socket, control_done.id).await
                && !listed(&socket, control_cancelled.id).await
        }
    })
    .await;

    assert!(listed(&daemon.socket(), done.id).await);
    assert!(listed(&daemon.socket(), cancelled.id).await);
    assert_eq!(kept_files(&home).len(), 1);
    let Response::Task { task } = from_blob(&mut c, &cancelled.resume_data.unwrap())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(task.bytes_done > 0, "the kept bytes are used");
}
