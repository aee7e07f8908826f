//! The daemon-wide handle: status, sessions, tasks of every session, shutdown.

use std::path::Path;
use std::time::Duration;

use ferry::{Daemon, DaemonBuilder, ErrorKind};
use ferry_testserver::TestServer;

use crate::fixture::{Home, ferryd_program};

fn handle(home: &Home) -> DaemonBuilder {
    Daemon::builder()
        .home(home.path())
        .daemon_program(ferryd_program())
        .client_name("ferry-tests")
}

fn alive(pid: u32) -> bool {
    // Gone, or a zombie not yet reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_sessions_and_tasks_span_every_session() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let a = home.session("app.a").open().await.unwrap();
    let a1 = a.download(server.url("/bytes/10")).create().await.unwrap();
    a.download(server.url("/bytes/20")).create().await.unwrap();
    let b = home.control("app.b").await;
    let b1 = b.download(server.url("/bytes/30")).create().await.unwrap();

    let daemon = handle(&home).start(false).open().await.unwrap();
    assert_eq!(daemon.pid(), home.daemon_pid());
    let status = daemon.status().await.unwrap();
    assert_eq!(Some(status.pid), home.daemon_pid());
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        status.home.canonicalize().unwrap(),
        home.path().canonicalize().unwrap()
    );
    assert_eq!(status.tasks.get("suspended"), Some(&3), "{status:?}");

    let sessions = daemon.sessions().await.unwrap();
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["app.a", "app.b"]);
    assert_eq!(sessions[0].attached_pid, Some(std::process::id()));
    assert_eq!((sessions[0].tasks, sessions[0].unfinished), (2, 2));
    assert_eq!(
        sessions[1].attached_pid, None,
        "a control session is not attached"
    );
    assert_eq!(sessions[1].tasks, 1);

    let all = daemon.tasks(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    let of_b = daemon.tasks(Some("app.b")).await.unwrap();
    assert_eq!(of_b.iter().map(|t| t.id).collect::<Vec<_>>(), [b1.id()]);
    let one = daemon.task(a1.id()).await.unwrap();
    assert_eq!((one.id, one.session.as_str()), (a1.id(), "app.a"));
    let missing = daemon.task(a1.id() + 1000).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    // The handle is attached to nothing: the session's own events still flow to its owner.
    let mut events = a.events().unwrap();
    let done = a
        .download(server.url("/bytes/10"))
        .destination(tempfile::tempdir().unwrap().path().join("x"))
        .start()
        .await
        .unwrap();
    crate::fixture::until_completed(&mut events, done.id()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_by_id_asks_again_until_every_id_is_answered() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let control = home.control("app.c").await;
    // 300 tasks with 4 KiB tags: more than one frame of answer holds.
    let tag = "t".repeat(4096);
    let mut ids = Vec::new();
    for i in 0..300 {
        let task = control
            .download(server.url(&format!("/bytes/10?seed={i}")))
            .tag(tag.clone())
            .create()
            .await
            .unwrap();
        ids.push(task.id());
    }
    let gone = control
        .download(server.url("/bytes/10"))
        .create()
        .await
        .unwrap();
    gone.cancel().await.unwrap();
    gone.remove(false).await.unwrap();
    let never = gone.id() + 1000;

    let daemon = handle(&home).start(false).open().await.unwrap();
    let mut asked = ids.clone();
    asked.insert(100, never);
    asked.insert(200, gone.id());
    let found = daemon.tasks_by_id(&asked).await.unwrap();
    assert_eq!(found.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    assert!(found.tasks.iter().all(|t| t.tag.as_deref() == Some(&*tag)));
    assert_eq!(found.unknown, [never]);
    let removed: Vec<_> = found.removed.iter().map(|r| (r.id, r.outcome)).collect();
    assert_eq!(removed, [(gone.id(), ferry::OutcomeKind::Cancelled)]);
    assert_eq!(daemon.tasks_by_id(&[]).await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_the_daemon_and_a_later_open_starts_one() {
    let home = Home::new();
    let daemon = handle(&home).open().await.unwrap();
    let pid = daemon.pid().unwrap();
    assert_eq!(home.daemons(), [pid], "open started the daemon");
    daemon.shutdown().await.unwrap();
    assert!(!alive(pid), "the daemon's process is gone");
    assert!(home.daemons().is_empty());
    assert!(!home.path().join("ferryd.sock").exists());

    let refused = handle(&home).start(false).open().await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::NotRunning);

    let again = handle(&home).open().await.unwrap();
    let new_pid = again.pid().unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(again.status().await.unwrap().pid, new_pid);
    assert_eq!(home.daemons(), [new_pid]);
}

#[tokio::test(flavor = "multi_thread")]
async fn start_false_without_a_daemon_fails_fast_and_starts_nothing() {
    let home = Home::new();
    let opened = tokio::time::timeout(Duration::from_secs(5), handle(&home).start(false).open())
        .await
        .expect("no waiting for a daemon");
    let error = opened.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotRunning);
    assert_eq!(error.code(), "not_running");
    assert!(
        error
            .to_string()
            .contains(&home.path().display().to_string()),
        "{error}"
    );
    assert!(home.daemons().is_empty());
    assert!(!Path::new(&home.path().join("ferryd.sock")).exists());
    assert!(
        !home.path().join("ferryd.log").exists(),
        "nothing was started"
    );
}
