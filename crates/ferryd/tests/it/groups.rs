//! Groups: one event when all are done, aggregate state, control of the whole group.

use ferry_proto::{Event, OutcomeKind, Request, Response, SessionConfig, TaskState};
use ferry_testserver::TestServer;

use crate::fixture::{Client, Daemon, download, wait_completed, wait_until};

fn in_group(url: String, group: &str) -> ferry_proto::DownloadRequest {
    let mut r = download(url, None);
    r.group = Some(group.into());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_completed_comes_once_after_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("g").await.unwrap();
    // In one request: a group whose first task finished before the next was created would
    // already have completed (and would complete again after the others).
    let requests = vec![
        in_group(server.url("/bytes/1000?seed=1&filename=a"), "batch"),
        in_group(
            server.url("/bytes/200000?seed=2&rate=400000&filename=b"),
            "batch",
        ),
        in_group(server.url("/bytes/10?status=404"), "batch"),
    ];
    let Ok(Response::Created { ids }) = c
        .request(Request::CreateDownloads {
            session: "g".into(),
            requests,
        })
        .await
    else {
        panic!("create_downloads failed")
    };
    c.create("g", download(server.url("/bytes/10?filename=loner"), None))
        .await;
    let mut completed = Vec::new();
    let group_event = loop {
        let e = c.next_journaled().await;
        match e.event {
            Event::Completed { .. } if e.task.is_some_and(|t| ids.contains(&t)) => {
                completed.push(e.task.unwrap())
            }
            Event::GroupCompleted { .. } => break e,
            _ => {}
        }
    };
    assert_eq!(
        completed.len(),
        3,
        "group_completed comes after all three tasks"
    );
    assert_eq!(
        group_event.event,
        Event::GroupCompleted {
            group: "batch".into(),
            succeeded: 2,
            failed: 1,
            cancelled: 0
        }
    );
    let Response::Groups { groups } = c
        .request(Request::ListGroups {
            session: "g".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].tasks, groups[0].completed, groups[0].succeeded),
        (3, 3, 2)
    );
    assert_eq!(groups[0].bytes_done, 201_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_paused_resumed_and_cancelled_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = in_group(
            server.url(&format!(
                "/bytes/2000000?seed={i}&rate=500000&filename=f{i}"
            )),
            "set",
        );
        r.connections = Some(1);
        ids.push(c.create("g", r).await.id);
    }
    let socket = daemon.socket();
    wait_until(|| {
        let socket = socket.clone();
        async move {
            let tasks = Client::connect(&socket).await.tasks(Some("g")).await;
            tasks.iter().all(|t| t.bytes_done > 0)
        }
    })
    .await;
    let Response::Group { group } = c
        .request(Request::SuspendGroup {
            session: "g".into(),
            group: "set".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(group.tasks, 3);
    assert!(
        group.bytes_done > 0 && group.bytes_total == Some(6_000_000),
        "{group:?}"
    );
    for id in &ids {
        assert_eq!(c.task(*id).await.state, TaskState::Suspended);
    }
    c.request(Request::ResumeGroup {
        session: "g".into(),
        group: "set".into(),
    })
    .await
    .unwrap();
    for id in &ids {
        assert!(matches!(c.task(*id).await.state, TaskState::Running { .. }));
    }
    let Response::Group { group } = c
        .request(Request::CancelGroup {
            session: "g".into(),
            group: "set".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(group.cancelled, 3);
    let err = c
        .request(Request::CancelGroup {
            session: "g".into(),
            group: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "unknown_group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_limit_runs_its_tasks_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let config = SessionConfig {
        group_max_concurrent: Some(1),
        ..SessionConfig::default()
    };
    c.attach_with("lim", config, false).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = in_group(
            server.url(&format!("/bytes/300000?seed={i}&rate=600000&filename=l{i}")),
            "one",
        );
        r.connections = Some(1);
        ids.push(c.create("lim", r).await.id);
    }
    // A task outside the group is not held back by it.
    let free = c
        .create("lim", download(server.url("/bytes/10?filename=free"), None))
        .await;
    wait_completed(&mut c, free.id).await;
    for (i, id) in ids.iter().enumerate() {
        // While task i runs, the later ones wait.
        daemon.wait_for_bytes(*id, 0).await;
        let tasks = c.tasks(Some("lim")).await;
        let running: Vec<_> = tasks
            .iter()
            .filter(|t| ids.contains(&t.id) && matches!(t.state, TaskState::Running { phase } if phase != ferry_proto::RunPhase::Waiting))
            .collect();
        assert!(running.len() <= 1, "{running:?}");
        for later in &ids[i + 1..] {
            let t = tasks.iter().find(|t| t.id == *later).unwrap();
            assert_eq!(t.bytes_done, 0, "task {later} started while {id} ran");
        }
        let done = wait_completed(&mut c, *id).await;
        assert_eq!(
            done.state,
            TaskState::Completed {
                outcome: OutcomeKind::Succeeded
            }
        );
    }
}
