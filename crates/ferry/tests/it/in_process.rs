//! What only in-process sessions do: data tasks, and ending with the session.

use ferry::{ErrorKind, Session};
use ferry_testserver::{TestServer, content};

use crate::fixture::wait_until;

#[tokio::test(flavor = "multi_thread")]
async fn a_data_task_returns_the_body() {
    let server = TestServer::start().unwrap();
    let session = Session::in_process().open().await.unwrap();
    let body = session
        .data(server.url("/redirect/2?to=%2Fbytes%2F70000%3Fseed%3D12"))
        .fetch()
        .await
        .unwrap();
    assert_eq!(body, content(12, 0, 70_000), "redirects are followed");

    let checked = session
        .data(server.url("/bytes/100"))
        .checksum(format!("sha256:{}", "0".repeat(64)))
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(checked.kind(), ErrorKind::ChecksumMismatch, "{checked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_or_cancelled_data_task_says_why() {
    let server = TestServer::start().unwrap();
    let session = Session::in_process().open().await.unwrap();
    let e = session
        .data(server.url("/bytes/10?status=410"))
        .fetch()
        .await
        .unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Http, Some(410)));

    let task = session
        .data(server.url("/bytes/5000000?rate=200000"))
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
    task.cancel().await.unwrap();
    let e = task.data().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_session_stops_its_transfers() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let session = Session::in_process().open().await.unwrap();
    let task = session
        .download(server.url("/bytes/20000000?rate=1000000"))
        .destination(dir.path().join("never"))
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
    drop(task);
    drop(session);
    // The server sees its response aborted: what it has sent stops growing, short of all.
    let mut last = u64::MAX;
    wait_until(|| {
        let sent = server.bytes_sent();
        let stable = sent == last;
        last = sent;
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            stable
        }
    })
    .await;
    assert!(last < 20_000_000, "{last}");
    assert!(!dir.path().join("never").exists());
}
