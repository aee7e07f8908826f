//! Who may talk to the daemon, and what bad input does to it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use ferry_proto::{ServerFrame, SessionConfig};

use crate::fixture::Daemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_for_a_session_is_refused_unless_it_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    // The first client is another process (a live pid other than ours).
    let mut holder = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/client.py"))
        .arg(daemon.socket())
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
    let mut second = daemon.client().await;
    let err = second.attach("com.example.one").await.unwrap_err();
    assert_eq!(err.code, "session_in_use");
    assert!(
        err.message.contains(&format!("pid {}", holder.id())),
        "{}",
        err.message
    );
    // Control needs no attachment.
    second.tasks(Some("com.example.one")).await;
    // Taking over works, and the holder is told.
    second
        .attach_with("com.example.one", SessionConfig::default(), true)
        .await
        .unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.contains("session_taken_over"), "{line}");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let daemon = Daemon::start(&home).await;
    // Open the file modes so only the daemon's uid check stands in the way.
    for p in [dir.path(), home.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = std::env::temp_dir().join(format!("ferry-client-{}.py", std::process::id()));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/client.py"),
        &script,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(&script)
        .arg(daemon.socket())
        .arg("com.example.intruder")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("permission_denied"),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("welcome"), "{stdout}");
    // The daemon is unharmed.
    let mut c = daemon.client().await;
    assert!(c.tasks(None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut good = daemon.client().await;
    good.attach("keep").await.unwrap();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            [&5u32.to_be_bytes()[..], b"{oops"].concat(),
            "malformed_frame",
        ),
        ((u32::MAX).to_be_bytes().to_vec(), "frame_too_large"),
        (
            [&15u32.to_be_bytes()[..], br#"{"frame":"zzz"}"#].concat(),
            "malformed_frame",
        ),
    ];
    for (bytes, code) in cases {
        let mut bad = daemon.client().await;
        bad.send_raw(&bytes).await;
        match bad.next_frame().await {
            Some(ServerFrame::Error { id: None, error }) => assert_eq!(error.code, code),
            other => panic!("{other:?}"),
        }
        assert!(bad.next_frame().await.is_none(), "the connection is closed");
    }
    // A wrong protocol version is refused in the handshake.
    let stream = tokio::net::UnixStream::connect(daemon.socket())
        .await
        .unwrap();
    let (mut r, mut w) = stream.into_split();
    ferry_proto::frame::write_frame(
        &mut w,
        &ferry_proto::ClientFrame::Hello {
            protocol: 99,
            client: "x".into(),
        },
    )
    .await
    .unwrap();
    match ferry_proto::frame::read_frame::<ServerFrame>(&mut r)
        .await
        .unwrap()
    {
        ServerFrame::Error { error, .. } => assert_eq!(error.code, "unsupported_protocol"),
        other => panic!("{other:?}"),
    }
    // The other client and the daemon carry on.
    assert!(good.tasks(None).await.is_empty());
    good.attach("keep").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(home.join("ferry.db"), &garbage).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .env("FERRY_HOME", &home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot be used") && stderr.contains("To recover"),
        "{stderr}"
    );
    assert!(stderr.contains("ferry.db"), "{stderr}");
    assert_eq!(
        std::fs::read(home.join("ferry.db")).unwrap(),
        garbage,
        "the file is untouched"
    );
    assert!(!home.join("ferryd.sock").exists());

    // A database from a newer ferryd is refused too.
    let newer = dir.path().join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    let conn = rusqlite::Connection::open(newer.join("ferry.db")).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let out = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .env("FERRY_HOME", &newer)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("newer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_per_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let daemon = Daemon::start(&home).await;
    let out = Command::new(env!("CARGO_BIN_EXE_ferryd"))
        .env("FERRY_HOME", &home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("pid {}", daemon.pid())),
        "{stderr}"
    );
    // Files are private.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&home).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(daemon.socket()).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(home.join("ferry.db")).unwrap().mode() & 0o777,
        0o600
    );
}
