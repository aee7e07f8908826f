//! Crashes and restarts: of the daemon, of the client.

use std::process::{Command, Stdio};

use ferry_proto::{Event, OutcomeKind, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Daemon, download, wait_completed, wait_until};

fn sha256(data: &[u8]) -> String {
    let mut h = ferry_engine::Algorithm::Sha256.hasher();
    h.update(data);
    h.finish_hex()
}

/// SIGKILL the daemon in the middle of a throttled segmented download: after a restart it
/// continues from the checkpoints, fetching again at most about one checkpoint interval of
/// bytes per segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_mid_transfer_continues_from_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let n: u64 = 8 * 1024 * 1024;
    let rate: u64 = 1_000_000; // per connection
    let connections = 4u64;
    let out = dir.path().join("big.bin");
    let url = server.url(&format!("/bytes/{n}?seed=21&rate={rate}"));
    let mut req = download(url, Some(&out));
    req.connections = Some(connections as u32);
    let mut c = daemon.client().await;
    let t = c.create("s", req).await;
    // Kill once about a quarter is durably checkpointed.
    let db = home.join("ferry.db");
    wait_until(|| {
        let db = db.clone();
        async move { checkpointed_bytes(&db, t.id) > n / 4 }
    })
    .await;
    daemon.kill9();
    let sent_before = server.bytes_sent();
    let checkpointed = checkpointed_bytes(&db, t.id);

    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        },
        "{done:?}"
    );
    assert_eq!(
        sha256(&std::fs::read(&out).unwrap()),
        sha256(&content(21, 0, n))
    );

    let fetched_again = (sent_before + server.bytes_sent() - sent_before).saturating_sub(n);
    // Per segment: what arrived after its last checkpoint, plus one throttle chunk in flight.
    let interval = daemon.checkpoint_interval().as_secs_f64();
    let per_segment = (rate as f64 * interval) as u64 + rate / 20 + 64 * 1024;
    let segments = connections + 2; // splits after the restart add at most a couple
    assert!(
        fetched_again <= segments * per_segment,
        "fetched {fetched_again} bytes again (checkpointed {checkpointed}); allowed {}",
        segments * per_segment
    );
}

fn checkpointed_bytes(db: &std::path::Path, task: u64) -> u64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    let json: Option<String> = conn
        .query_row(
            "SELECT checkpoint FROM checkpoints WHERE task = ?1",
            [task as i64],
            |r| r.get(0),
        )
        .ok();
    json.and_then(|j| serde_json::from_str::<ferry_engine::Checkpoint>(&j).ok())
        .map_or(0, |cp| cp.bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_and_a_restart_continues() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let n: u64 = 3_000_000;
    let out = dir.path().join("t.bin");
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=22&rate=1000000")),
        Some(&out),
    );
    req.connections = Some(1);
    let mut c = daemon.client().await;
    let t = c.create("s", req).await;
    daemon.wait_for_bytes(t.id, 300_000).await;
    drop(c);
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!home.join("ferryd.sock").exists() && !home.join("ferryd.pid").exists());
    // A clean stop checkpoints the WAL into the database.
    let wal = std::fs::metadata(home.join("ferry.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL is empty after a clean stop");

    server.clear_log();
    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    wait_completed(&mut c, t.id).await;
    assert_eq!(std::fs::read(&out).unwrap(), content(22, 0, n));
    let requests = server.requests();
    let range = requests[0].header("range").expect("continued with a range");
    let from: u64 = range[6..].split('-').next().unwrap().parse().unwrap();
    assert_eq!(
        server.bytes_sent(),
        n - from,
        "the stopped bytes were all kept"
    );
    assert!(from > 300_000);
}

/// An application in another process is killed while attached: the transfer goes on, and
/// the next attach gets everything, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transfer_gets_everything_on_reattach() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let out = dir.path().join("k.bin");
    let n = 2_000_000u64;
    let mut app = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/client.py"))
        .arg(daemon.socket())
        .arg("com.example.killed")
        .arg(server.url(&format!("/bytes/{n}?seed=23&rate=1000000")))
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the task exists and is transferring, then kill the application.
    let mut c = daemon.client().await;
    daemon.wait_for_session_bytes("com.example.killed").await;
    app.kill().unwrap();
    app.wait().unwrap();
    let task = c.tasks(Some("com.example.killed")).await.remove(0);
    wait_completed(&mut c, task.id).await;
    assert_eq!(std::fs::read(&out).unwrap(), content(23, 0, n));

    let mut again = daemon.client().await;
    assert_eq!(again.attach("com.example.killed").await.unwrap(), 2);
    let finished = again.next_journaled().await;
    assert!(
        matches!(finished.event, Event::FinishedDownloading { .. }),
        "{finished:?}"
    );
    let completed = again.next_journaled().await;
    assert!(matches!(completed.event, Event::Completed { .. }));
    assert_eq!(again.next_journaled().await.event, Event::BacklogDelivered);
    again
        .ack("com.example.killed", completed.seq.unwrap())
        .await;
    drop(again);
    let mut third = daemon.client().await;
    assert_eq!(
        third.attach("com.example.killed").await.unwrap(),
        0,
        "nothing twice"
    );
}

/// The resource timeout counts from the task's first start, across daemon restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_timeout_spans_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let mut daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    let config = ferry_proto::SessionConfig {
        resource_timeout_secs: 3,
        ..Default::default()
    };
    c.attach_with("rt", config, false).await.unwrap();
    // 500 kB at 200 kB/s: 2.5 s, within 3 s if it ran in one go.
    let mut req = download(
        server.url("/bytes/500000?rate=200000"),
        Some(&dir.path().join("rt")),
    );
    req.connections = Some(1);
    let t = c.create("rt", req).await;
    let started = std::time::Instant::now();
    daemon.wait_for_bytes(t.id, 100_000).await;
    drop(c);
    assert!(daemon.terminate().success());
    // The daemon stays down until the task's 3 s are over.
    while started.elapsed() < std::time::Duration::from_millis(3_100) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let daemon = Daemon::start(&home).await;
    let mut c = daemon.client().await;
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Failed
        }
    );
    assert_eq!(done.error.unwrap().code, "timed_out");
}

/// Regression: ferryd used to bind its socket before it watched SIGTERM, so a SIGTERM sent
/// as soon as the socket existed could kill it the default way (signal exit status, no
/// clean stop) instead of stopping it cleanly.
#[test]
fn sigterm_right_after_the_socket_appears_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..10 {
        let home = dir.path().join(format!("home{round}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferryd"))
            .env("FERRY_HOME", &home)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let socket = home.join("ferryd.sock");
        let deadline = std::time::Instant::now() + crate::fixture::PATIENCE;
        // As tight as it gets: the signal follows the socket's creation by microseconds.
        while !socket.exists() {
            assert!(std::time::Instant::now() < deadline, "no socket");
            std::thread::yield_now();
        }
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
        assert!(!socket.exists(), "round {round}: the socket is removed");
    }
}
