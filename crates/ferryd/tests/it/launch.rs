//! Launch commands: the daemon wakes an absent application that has events waiting.

use std::path::Path;

use ferry_proto::{Request, SessionConfig};
use ferry_testserver::TestServer;

use crate::fixture::{Daemon, download, wait_completed, wait_until};

/// A launch command that appends "<session> <home>" to `log`.
fn recorder(log: &Path) -> SessionConfig {
    SessionConfig {
        launch_command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo \"$FERRY_SESSION $FERRY_HOME\" >> '{}'", log.display()),
        ]),
        launch_retry_secs: 1,
        ..SessionConfig::default()
    }
}

fn launches(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

async fn wait_for_launches(log: &Path, n: usize) {
    let log = log.to_owned();
    wait_until(|| {
        let log = log.clone();
        async move { launches(&log).len() >= n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_when_idle_with_events_pending_and_again_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let daemon = Daemon::start(&home).await;
    let log = dir.path().join("launched.log");

    let mut app = daemon.client().await;
    app.attach_with("com.example.bg", recorder(&log), false)
        .await
        .unwrap();
    let t = app
        .create("com.example.bg", download(server.url("/bytes/5000"), None))
        .await;
    // While attached, events are delivered live: no launch.
    wait_completed(&mut app, t.id).await;
    // The application exits without handling them.
    drop(app);

    wait_for_launches(&log, 1).await;
    assert_eq!(
        launches(&log)[0],
        format!("com.example.bg {}", home.display())
    );
    // Nobody attached and acknowledged: it runs again (after 1 s, then 2 s…).
    wait_for_launches(&log, 2).await;

    // The relaunched application attaches and acknowledges: the launches stop.
    let mut app = daemon.client().await;
    app.attach_with("com.example.bg", recorder(&log), false)
        .await
        .unwrap();
    let mut last = 0;
    loop {
        let e = app.next_journaled().await;
        match e.seq {
            Some(seq) => last = seq,
            None => break, // backlog_delivered
        }
    }
    app.ack("com.example.bg", last).await;
    drop(app);
    let settled = launches(&log).len();

    // A second session proves the launcher kept running meanwhile.
    let witness_log = dir.path().join("witness.log");
    let mut w = daemon.client().await;
    w.attach_with("witness", recorder(&witness_log), false)
        .await
        .unwrap();
    let wt = w
        .create("witness", download(server.url("/bytes/10"), None))
        .await;
    wait_completed(&mut w, wt.id).await;
    drop(w);
    wait_for_launches(&witness_log, 3).await;
    assert_eq!(
        launches(&log).len(),
        settled,
        "no launch after the backlog was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_terminated_session_is_not_launched() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let killed_log = dir.path().join("killed.log");
    let witness_log = dir.path().join("witness.log");

    let mut c = daemon.client().await;
    c.attach_with("killed", recorder(&killed_log), false)
        .await
        .unwrap();
    let mut slow = download(server.url("/bytes/5000000?rate=500000"), None);
    slow.connections = Some(1);
    c.create("killed", slow).await;
    c.request(Request::Detach {
        session: "killed".into(),
    })
    .await
    .unwrap();
    // Force-quit: its tasks complete cancelled with events pending, and no client.
    c.request(Request::Terminate {
        session: "killed".into(),
    })
    .await
    .unwrap();

    c.attach_with("witness", recorder(&witness_log), false)
        .await
        .unwrap();
    let t = c
        .create("witness", download(server.url("/bytes/10"), None))
        .await;
    wait_completed(&mut c, t.id).await;
    drop(c);
    wait_for_launches(&witness_log, 2).await;
    assert!(
        launches(&killed_log).is_empty(),
        "{:?}",
        launches(&killed_log)
    );
}

/// An upload finished while its application was away wakes it as a download does; the
/// relaunched application finds the reply named in `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_finished_unattended_runs_the_launch_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let log = dir.path().join("launched.log");
    let source = dir.path().join("report.pdf");
    std::fs::write(&source, b"%PDF-1.7 a small report").unwrap();

    let mut app = daemon.client().await;
    app.attach_with("com.example.up", recorder(&log), false)
        .await
        .unwrap();
    app.request(Request::Detach {
        session: "com.example.up".into(),
    })
    .await
    .unwrap();
    let request = crate::fixture::upload(
        server.url("/upload/report"),
        crate::fixture::file_body(&source),
    );
    let task = app.create_upload("com.example.up", request).await.unwrap();
    wait_completed(&mut app, task.id).await;
    drop(app);

    wait_for_launches(&log, 1).await;
    let mut app = daemon.client().await;
    assert_eq!(
        app.attach_with("com.example.up", recorder(&log), false)
            .await
            .unwrap(),
        1
    );
    match app.next_journaled().await.event {
        ferry_proto::Event::Completed {
            reply: Some(reply), ..
        } => assert!(Path::new(&reply.location).exists(), "{reply:?}"),
        other => panic!("{other:?}"),
    }
}
