//! The situations of seed `001_e129bb1536fabc99.txt` (iOS background sessions), through the
//! public API: the application exits, stays alive but detached, comes back before the
//! tasks finish, or is terminated by the user.

use ferry::{CancelReason, EventKind, Outcome, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Home, names, next_event, until_completed, wait_until};

const SESSION: &str = "com.example.seeds";

/// Fully exited: the tasks finish while no process is attached; the next run receives
/// what happened, then `backlog_delivered`, and once it acknowledges, nothing again.
#[tokio::test(flavor = "multi_thread")]
async fn app_exited_when_the_tasks_finished() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let session = home.session(SESSION).open().await.unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let task = session
                .download(server.url(&format!("/bytes/200000?seed={i}&rate=1000000")))
                .destination(dir.path().join(format!("{i}")))
                .start()
                .await
                .unwrap();
            ids.push(task.id());
        }
        ids
        // The session drops here: the application is gone.
    };
    let observer = home.control(SESSION).await;
    wait_until(|| async {
        observer
            .tasks()
            .await
            .unwrap()
            .iter()
            .all(|(_, i)| matches!(i.state, TaskState::Completed { .. }))
    })
    .await;

    let session = home.session(SESSION).open().await.unwrap();
    assert_eq!(
        session.backlog(),
        6,
        "two events per task happened while away"
    );
    let mut events = session.events().unwrap();
    let mut replayed = Vec::new();
    loop {
        let event = next_event(&mut events).await;
        let end = matches!(event.kind(), EventKind::BacklogDelivered);
        replayed.push(event);
        if end {
            break;
        }
    }
    for id in &ids {
        let of_task: Vec<_> = replayed
            .iter()
            .filter(|e| e.task_id() == Some(*id))
            .cloned()
            .collect();
        assert_eq!(
            names(&of_task),
            ["finished_downloading", "completed"],
            "task {id}"
        );
    }
    assert_eq!(replayed.len(), 7, "{:?}", names(&replayed));
    events.ack_backlog().await.unwrap();
    for i in 0..3 {
        assert_eq!(
            std::fs::read(dir.path().join(format!("{i}"))).unwrap(),
            content(i, 0, 200_000)
        );
    }
    drop(events);
    drop(session);

    // Acknowledged: the next run starts clean (no backlog, so no `backlog_delivered`).
    let session = home.session(SESSION).open().await.unwrap();
    assert_eq!(session.backlog(), 0);
    let mut events = session.events().unwrap();
    let probe = session
        .download(server.url("/bytes/10"))
        .destination(dir.path().join("probe"))
        .start()
        .await
        .unwrap();
    let seen = until_completed(&mut events, probe.id()).await;
    assert_eq!(names(&seen), ["finished_downloading", "completed"]);
}

/// An event taken but not handled (the process crashed while handling it) is delivered
/// again to the next run.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_being_handled_in_a_crash_comes_again() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let session = home.session(SESSION).open().await.unwrap();
    let mut events = session.events().unwrap();
    let task = session
        .download(server.url("/bytes/1000"))
        .destination(dir.path().join("f"))
        .start()
        .await
        .unwrap();
    let finished = next_event(&mut events).await;
    assert_eq!(
        names(std::slice::from_ref(&finished)),
        ["finished_downloading"]
    );
    events.ack(&finished).await.unwrap();
    let completed = next_event(&mut events).await;
    assert_eq!(names(std::slice::from_ref(&completed)), ["completed"]);
    // `completed` was being handled when the process died: never acknowledged.
    drop(events);
    drop(session);

    let session = home.session(SESSION).open().await.unwrap();
    let mut events = session.events().unwrap();
    let again = next_event(&mut events).await;
    assert_eq!(again.task_id(), Some(task.id()));
    assert!(
        matches!(again.kind(), EventKind::Completed { .. }),
        "{:?}",
        again.kind()
    );
    assert!(matches!(
        next_event(&mut events).await.kind(),
        EventKind::BacklogDelivered
    ));
}

/// Detached but alive: the process keeps running without receiving events (it only holds
/// a control session); what finishes meanwhile waits in the journal for its next attach.
#[tokio::test(flavor = "multi_thread")]
async fn app_detached_but_alive() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let attached = home.session(SESSION).open().await.unwrap();
    let control = home.control(SESSION).await;
    let task = control
        .download(server.url("/bytes/300000?seed=7&rate=1000000"))
        .destination(dir.path().join("f"))
        .start()
        .await
        .unwrap();
    drop(attached); // to the background: the process lives on with `control`
    wait_until(|| async {
        matches!(
            task.info().await.unwrap().state,
            TaskState::Completed { .. }
        )
    })
    .await;

    let session = home.session(SESSION).open().await.unwrap();
    let mut events = session.events().unwrap();
    let seen = until_completed(&mut events, task.id()).await;
    assert_eq!(names(&seen), ["finished_downloading", "completed"]);
    assert!(matches!(
        next_event(&mut events).await.kind(),
        EventKind::BacklogDelivered
    ));
    assert_eq!(
        std::fs::read(dir.path().join("f")).unwrap(),
        content(7, 0, 300_000)
    );
}

/// Re-attached before completion: nothing happened while away, so there is no backlog;
/// the rest arrives live (a progress snapshot first), without `backlog_delivered`.
#[tokio::test(flavor = "multi_thread")]
async fn app_reattached_before_completion() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let task_id = {
        let session = home.session(SESSION).open().await.unwrap();
        let task = session
            .download(server.url("/bytes/2000000?seed=9&rate=1000000"))
            .destination(dir.path().join("f"))
            .connections(1)
            .start()
            .await
            .unwrap();
        wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
        task.id()
    };
    let session = home.session(SESSION).open().await.unwrap();
    let mut events = session.events().unwrap();
    let first = tokio::time::timeout(crate::fixture::PATIENCE, events.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.kind(), EventKind::Progress { total_written, .. } if *total_written > 0),
        "a progress snapshot comes first: {:?}",
        first.kind()
    );
    let seen = until_completed(&mut events, task_id).await;
    assert_eq!(
        names(&seen),
        ["finished_downloading", "completed"],
        "no backlog_delivered"
    );
    assert_eq!(
        std::fs::read(dir.path().join("f")).unwrap(),
        content(9, 0, 2_000_000)
    );
}

/// User-terminated (`ferry session terminate` while the app is gone): the running task is
/// cancelled with resume data, delivered at the next attach, and resumable from its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn app_terminated_by_the_user() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/bytes/3000000?seed=11&rate=1000000");
    let task_id = {
        let session = home.session(SESSION).open().await.unwrap();
        let task = session
            .download(&url)
            .destination(dir.path().join("f"))
            .connections(1)
            .start()
            .await
            .unwrap();
        wait_until(|| async { task.info().await.unwrap().bytes_done > 100_000 }).await;
        task.id()
    };
    home.control(SESSION).await.terminate().await.unwrap();

    let session = home.session(SESSION).open().await.unwrap();
    let mut events = session.events().unwrap();
    let seen = until_completed(&mut events, task_id).await;
    assert_eq!(names(&seen), ["completed"]);
    let EventKind::Completed {
        outcome: Outcome::Cancelled {
            reason,
            resume_data,
        },
        ..
    } = seen[0].kind()
    else {
        panic!("{:?}", seen[0].kind());
    };
    assert_eq!(*reason, CancelReason::UserTerminated);
    assert!(resume_data.is_some());
    let error = seen[0].result().unwrap().unwrap_err();
    let blob = error
        .resume_data()
        .expect("resume data on the error")
        .clone();
    assert!(matches!(
        next_event(&mut events).await.kind(),
        EventKind::BacklogDelivered
    ));
    events.ack_backlog().await.unwrap();

    server.clear_log();
    let resumed = session.download_from_resume_data(&blob).await.unwrap();
    let seen = until_completed(&mut events, resumed.id()).await;
    assert!(
        seen.iter().any(
            |e| matches!(e.kind(), EventKind::ResumedAtOffset { offset, .. } if *offset > 100_000)
        ),
        "{:?}",
        names(&seen)
    );
    seen.last().unwrap().result().unwrap().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("f")).unwrap(),
        content(11, 0, 3_000_000)
    );
    assert!(server.bytes_sent() < 3_000_000, "only the rest was fetched");
}
