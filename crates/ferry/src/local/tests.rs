//! The runtime against the real test server: each test has its own server, runtime and
//! folder, and waits by polling conditions or reading events, never by sleeping.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_engine::ClientConfig;
use ferry_proto::{
    CancelReason, DownloadRequest, ErrorInfo, Event, EventFrame, FormFile, Headers, Outcome,
    OutcomeKind, Priority, Request, Response, RunPhase, SessionConfig, TaskId, TaskInfo, TaskKind,
    TaskState, UploadBody, UploadRequest,
};
use ferry_testserver::{TestServer, content};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::Runtime;

const SESSION: &str = "com.example.local";
/// A guard against hanging forever, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

struct Fixture {
    server: TestServer,
    dir: tempfile::TempDir,
    runtime: Runtime,
    events: UnboundedReceiver<EventFrame>,
}

fn fixture(config: SessionConfig) -> Fixture {
    let (tx, events) = unbounded_channel();
    let runtime = Runtime::new(SESSION.into(), config, &ClientConfig::default(), tx).unwrap();
    Fixture {
        server: TestServer::start().unwrap(),
        dir: tempfile::tempdir().unwrap(),
        runtime,
        events,
    }
}

fn request(url: String) -> DownloadRequest {
    DownloadRequest {
        url,
        destination: None,
        directory: None,
        headers: Headers::default(),
        checksum: None,
        priority: None,
        tag: None,
        group: None,
        connections: None,
        rate_limit: None,
        earliest_begin: None,
        start: true,
    }
}

fn completed(outcome: OutcomeKind) -> TaskState {
    TaskState::Completed { outcome }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// A download of `path` on the test server into the test's folder as `name`.
    fn to_file(&self, path: &str, name: &str) -> DownloadRequest {
        DownloadRequest {
            destination: Some(self.path(name)),
            ..request(self.url(path))
        }
    }

    async fn ask(&self, request: Request) -> Result<Response, ErrorInfo> {
        self.runtime.handle(request).await
    }

    async fn ask_task(&self, request: Request) -> Result<TaskInfo, ErrorInfo> {
        match self.ask(request).await? {
            Response::Task { task } => Ok(task),
            other => panic!("expected a task, got {other:?}"),
        }
    }

    async fn create(&self, request: DownloadRequest) -> TaskInfo {
        self.ask_task(Request::CreateDownload {
            session: SESSION.into(),
            request,
        })
        .await
        .unwrap()
    }

    async fn get(&self, task: TaskId) -> Result<TaskInfo, ErrorInfo> {
        self.ask_task(Request::GetTask { task }).await
    }

    /// Polls the task until `ready` holds.
    async fn wait_for(&self, task: TaskId, ready: impl Fn(&TaskInfo) -> bool) -> TaskInfo {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let info = self.get(task).await.unwrap();
            if ready(&info) {
                return info;
            }
            assert!(Instant::now() < give_up, "task never got there: {info:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a running task has received bytes.
    async fn wait_for_bytes(&self, task: TaskId) -> TaskInfo {
        self.wait_for(task, |t| t.bytes_done > 0 && !is_completed(t))
            .await
    }

    async fn next_event(&mut self) -> EventFrame {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no event came")
            .expect("the runtime dropped its event channel")
    }

    /// Every event until `done` holds for those received so far.
    async fn until(&mut self, done: impl Fn(&[EventFrame]) -> bool) -> Vec<EventFrame> {
        let mut frames = Vec::new();
        while !done(&frames) {
            frames.push(self.next_event().await);
        }
        frames
    }

    /// Every event until each of `tasks` has completed.
    async fn until_completed(&mut self, tasks: &[TaskId]) -> Vec<EventFrame> {
        self.until(|frames| tasks.iter().all(|t| has_completed(frames, *t)))
            .await
    }

    /// A blob from a slow download cancelled once it has bytes.
    async fn resume_data(&mut self, seed: u64) -> (TaskInfo, String) {
        let mut slow = request(self.url(&format!("/bytes/600000?seed={seed}&rate=150000")));
        slow.destination = Some(self.path("resumed.bin"));
        slow.connections = Some(1);
        let task = self.create(slow).await;
        self.wait_for_bytes(task.id).await;
        let cancelled = self
            .ask_task(Request::CancelWithResumeData { task: task.id })
            .await
            .unwrap();
        let blob = cancelled.resume_data.clone().expect("resume data");
        (cancelled, blob)
    }
}

fn is_completed(task: &TaskInfo) -> bool {
    matches!(task.state, TaskState::Completed { .. })
}

fn has_completed(frames: &[EventFrame], task: TaskId) -> bool {
    frames
        .iter()
        .any(|f| f.task == Some(task) && matches!(f.event, Event::Completed { .. }))
}

fn has(frames: &[EventFrame], wanted: impl Fn(&Event) -> bool) -> bool {
    frames.iter().any(|f| wanted(&f.event))
}

fn events_of(frames: &[EventFrame], task: TaskId) -> Vec<&Event> {
    frames
        .iter()
        .filter(|f| f.task == Some(task))
        .map(|f| &f.event)
        .collect()
}

fn resumed_at(events: &[&Event]) -> Option<u64> {
    events.iter().find_map(|e| match e {
        Event::ResumedAtOffset { offset, .. } => Some(*offset),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_to_a_destination_with_events_in_order() {
    let mut f = fixture(SessionConfig::default());
    let mut req = f.to_file("/bytes/300000?seed=1", "one.bin");
    req.tag = Some("first".into());
    let task = f.create(req).await;
    assert_eq!(task.session, SESSION);
    let frames = f.until_completed(&[task.id]).await;

    assert!(frames.iter().all(|fr| fr.task == Some(task.id)
        && fr.tag.as_deref() == Some("first")
        && fr.session == SESSION));
    let (progress, rest) = frames.split_at(frames.len() - 2);
    assert!(!progress.is_empty());
    for p in progress {
        assert!(
            matches!(p.event, Event::Progress { .. }) && p.seq.is_none(),
            "{p:?}"
        );
    }
    assert!(matches!(
        progress.last().map(|p| &p.event),
        Some(Event::Progress {
            total_written: 300_000,
            ..
        })
    ));
    assert_eq!(
        rest[0].event,
        Event::FinishedDownloading {
            location: f.path("one.bin")
        }
    );
    let Event::Completed {
        outcome: Outcome::Succeeded,
        status: Some(200),
        reply: None,
        headers: Some(headers),
    } = &rest[1].event
    else {
        panic!("{:?}", rest[1]);
    };
    assert!(
        headers.contains(&("content-length".to_owned(), "300000".to_owned())),
        "{headers:?}"
    );
    assert_eq!((rest[0].seq, rest[1].seq), (Some(1), Some(2)));
    assert_eq!(
        std::fs::read(f.path("one.bin")).unwrap(),
        content(1, 0, 300_000)
    );
    let info = f.get(task.id).await.unwrap();
    assert_eq!(info.state, completed(OutcomeKind::Succeeded));
    assert_eq!(info.location, Some(f.path("one.bin")));
    assert_eq!(
        (info.bytes_done, info.bytes_total),
        (300_000, Some(300_000))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn download_without_destination_stays_in_the_temp_folder_until_acknowledged() {
    let mut f = fixture(SessionConfig::default());
    let task = f.create(request(f.url("/bytes/1000?seed=2"))).await;
    let frames = f.until_completed(&[task.id]).await;
    let (seq, location) = frames
        .iter()
        .find_map(|fr| match &fr.event {
            Event::FinishedDownloading { location } => Some((fr.seq.unwrap(), location.clone())),
            _ => None,
        })
        .expect("finished_downloading");
    assert!(!Path::new(&location).starts_with(f.dir.path()));
    assert_eq!(std::fs::read(&location).unwrap(), content(2, 0, 1000));

    let ack = |seq| Request::Ack {
        session: SESSION.into(),
        seq,
    };
    f.ask(ack(seq - 1)).await.unwrap();
    assert!(Path::new(&location).exists(), "acknowledged too early");
    assert_eq!(f.ask(ack(seq)).await.unwrap(), Response::Done);
    assert!(!Path::new(&location).exists(), "the inbox file stayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_fails_with_http_status_and_writes_nothing() {
    let mut f = fixture(SessionConfig::default());
    let task = f.create(f.to_file("/bytes/100?status=404", "nf.bin")).await;
    let frames = f.until_completed(&[task.id]).await;
    let events = events_of(&frames, task.id);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::FinishedDownloading { .. }))
    );
    match events.last() {
        Some(Event::Completed {
            outcome: Outcome::Failed { error, .. },
            status: Some(404),
            reply: None,
            headers: None,
        }) => assert_eq!(
            (error.code.as_str(), error.status),
            ("http_status", Some(404))
        ),
        other => panic!("{other:?}"),
    }
    assert!(!Path::new(&f.path("nf.bin")).exists());
    let info = f.get(task.id).await.unwrap();
    assert_eq!(info.state, completed(OutcomeKind::Failed));
    assert_eq!(info.error.map(|e| e.code), Some("http_status".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_tasks_answers_every_id_in_order_and_names_the_unknown() {
    let f = fixture(SessionConfig::default());
    let suspended = |seed| DownloadRequest {
        start: false,
        ..request(f.url(&format!("/bytes/10?seed={seed}")))
    };
    let (a, b) = (f.create(suspended(1)).await, f.create(suspended(2)).await);
    let never = b.id + 100;
    let asked = vec![b.id, never, a.id];
    let Response::FoundTasks {
        tasks,
        removed,
        unknown,
        answered,
    } = f.ask(Request::GetTasks { tasks: asked }).await.unwrap()
    else {
        panic!("expected found_tasks")
    };
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    assert_eq!((ids, unknown, answered), (vec![b.id, a.id], vec![never], 3));
    assert!(
        removed.is_empty(),
        "an in-process session keeps no tombstones"
    );
    let err = f
        .ask(Request::GetTasks {
            tasks: vec![a.id; ferry_proto::MAX_GET_TASKS + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_request");
}

/// A task's and a session's limit change while the transfer runs: at 40 kB/s a 3 MB file
/// cannot finish within `PATIENCE` unless both are lifted.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_change_while_the_transfer_runs() {
    let mut f = fixture(SessionConfig {
        rate_limit: Some(40_000),
        ..SessionConfig::default()
    });
    let mut req = f.to_file("/bytes/3000000?seed=8", "limited.bin");
    req.rate_limit = Some(40_000);
    let task = f.create(req).await;
    f.wait_for_bytes(task.id).await;
    let set = |task, session: Option<&str>| Request::SetRateLimit {
        task,
        session: session.map(str::to_owned),
        bytes_per_second: None,
    };
    f.ask_task(set(Some(task.id), None)).await.unwrap();
    f.ask(set(None, Some(SESSION))).await.unwrap();
    let err = f.ask(set(None, None)).await.unwrap_err();
    assert_eq!(err.code, "unsupported");
    f.until_completed(&[task.id]).await;
    assert_eq!(
        std::fs::read(f.path("limited.bin")).unwrap(),
        content(8, 0, 3_000_000)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_and_resume_continue_from_the_bytes_kept() {
    let mut f = fixture(SessionConfig::default());
    let mut req = f.to_file("/bytes/600000?seed=4&rate=200000", "slow.bin");
    req.connections = Some(1);
    let task = f.create(req).await;
    f.wait_for_bytes(task.id).await;

    let suspended = f
        .ask_task(Request::Suspend { task: task.id })
        .await
        .unwrap();
    assert_eq!(suspended.state, TaskState::Suspended);
    assert!(suspended.bytes_done > 0, "{suspended:?}");
    let resumed = f.ask_task(Request::Resume { task: task.id }).await.unwrap();
    assert!(matches!(resumed.state, TaskState::Running { .. }));

    let frames = f.until_completed(&[task.id]).await;
    let events = events_of(&frames, task.id);
    assert!(
        resumed_at(&events).is_some_and(|offset| offset > 0),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.path("slow.bin")).unwrap(),
        content(4, 0, 600_000)
    );
    let last = f.server.requests().pop().unwrap();
    assert!(
        last.header("range").is_some_and(|r| r != "bytes=0-"),
        "{last:?}"
    );
}

/// As in the daemon: bytes that could not be placed (the folder is missing) are kept, and the
/// failed task's resume data places them elsewhere without fetching them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_destination_folder_fails_with_resume_data() {
    let mut f = fixture(SessionConfig::default());
    let task = f
        .create(f.to_file("/bytes/200000?seed=6", "gone/f.bin"))
        .await;
    let frames = f.until_completed(&[task.id]).await;
    let Some(Event::Completed {
        outcome: Outcome::Failed { error, resume_data },
        ..
    }) = events_of(&frames, task.id).last().copied()
    else {
        panic!("{frames:?}")
    };
    assert_eq!(error.code, "destination");
    let blob = resume_data.clone().expect("the bytes were kept");
    assert_eq!(
        f.get(task.id).await.unwrap().resume_data.as_ref(),
        Some(&blob)
    );
    let continued = f
        .ask_task(Request::CreateFromResumeData {
            session: SESSION.into(),
            resume_data: blob,
            destination: Some(f.path("f.bin")),
            headers: Headers::default(),
        })
        .await
        .unwrap();
    f.until_completed(&[continued.id]).await;
    assert_eq!(
        std::fs::read(f.path("f.bin")).unwrap(),
        content(6, 0, 200_000)
    );
    assert_eq!(f.server.requests().len(), 1, "nothing fetched again");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_with_resume_data_then_create_from_it_finishes_the_file() {
    let mut f = fixture(SessionConfig::default());
    let (cancelled, blob) = f.resume_data(5).await;
    assert_eq!(cancelled.state, completed(OutcomeKind::Cancelled));
    let frames = f.until_completed(&[cancelled.id]).await;
    assert_eq!(
        events_of(&frames, cancelled.id).last(),
        Some(&&Event::Completed {
            outcome: Outcome::Cancelled {
                reason: CancelReason::Client,
                resume_data: Some(blob.clone()),
            },
            status: None,
            reply: None,
            headers: None,
        })
    );

    let from_blob = |destination| Request::CreateFromResumeData {
        session: SESSION.into(),
        resume_data: blob.clone(),
        destination,
        headers: Headers::default(),
    };
    let task = f
        .ask_task(from_blob(Some(f.path("continued.bin"))))
        .await
        .unwrap();
    assert!(task.bytes_done > 0);
    let frames = f.until_completed(&[task.id]).await;
    let events = events_of(&frames, task.id);
    assert!(
        resumed_at(&events).is_some_and(|offset| offset > 0),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.path("continued.bin")).unwrap(),
        content(5, 0, 600_000)
    );
    // The blob is used up.
    let again = f.ask(from_blob(None)).await.unwrap_err();
    assert_eq!(again.code, "invalid_resume_data");
    assert!(again.message.contains("gone"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_tampered_foreign_and_daemon_resume_data() {
    let mut f = fixture(SessionConfig::default());
    let (_, blob) = f.resume_data(6).await;
    let from = |resume_data: String| Request::CreateFromResumeData {
        session: SESSION.into(),
        resume_data,
        destination: None,
        headers: Headers::default(),
    };

    let mut tampered = blob.clone().into_bytes();
    let i = "ferry-local-resume-v1.".len() + 12;
    tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
    let refused = f
        .ask(from(String::from_utf8(tampered).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "invalid_resume_data");
    assert!(refused.message.contains("altered"), "{refused:?}");

    let daemon = f
        .ask(from("ferry-resume-v1.7b7d.00ff".into()))
        .await
        .unwrap_err();
    assert_eq!(daemon.code, "invalid_resume_data");
    assert!(daemon.message.contains("ferryd"), "{daemon:?}");

    // Another runtime of the same process has another key.
    let (tx, _events) = unbounded_channel();
    let other = Runtime::new(
        SESSION.into(),
        SessionConfig::default(),
        &ClientConfig::default(),
        tx,
    )
    .unwrap();
    let foreign = other.handle(from(blob.clone())).await.unwrap_err();
    assert_eq!(foreign.code, "invalid_resume_data");

    // Refusals do not use the blob up.
    let task = f.ask_task(from(blob)).await.unwrap();
    f.ask(Request::Cancel { task: task.id }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_one_runs_tasks_one_at_a_time() {
    let mut f = fixture(SessionConfig {
        max_concurrent: 1,
        ..SessionConfig::default()
    });
    let mut ids = Vec::new();
    for seed in 1..=3 {
        let path = format!("/bytes/200000?seed={seed}&rate=400000");
        ids.push(f.create(f.to_file(&path, &format!("{seed}.bin"))).await.id);
    }
    let mut saw_a_queue = false;
    let give_up = Instant::now() + PATIENCE;
    loop {
        let states: Vec<TaskState> = match f
            .ask(Request::ListTasks {
                session: Some(SESSION.into()),
                after: None,
                limit: None,
            })
            .await
            .unwrap()
        {
            Response::Tasks { tasks, .. } => tasks.iter().map(|t| t.state).collect(),
            other => panic!("{other:?}"),
        };
        let waiting = TaskState::Running {
            phase: RunPhase::Waiting,
        };
        let active = states
            .iter()
            .filter(|s| matches!(s, TaskState::Running { .. }) && **s != waiting)
            .count();
        assert!(active <= 1, "{states:?}");
        saw_a_queue |= active == 1 && states.contains(&waiting);
        if states
            .iter()
            .all(|s| matches!(s, TaskState::Completed { .. }))
        {
            break;
        }
        assert!(Instant::now() < give_up, "{states:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_a_queue);
    let frames = f.until_completed(&ids).await;
    let order: Vec<TaskId> = frames
        .iter()
        .filter(|fr| matches!(fr.event, Event::Completed { .. }))
        .filter_map(|fr| fr.task)
        .collect();
    assert_eq!(order, ids, "same priority: id order");
}

#[tokio::test(flavor = "multi_thread")]
async fn group_completed_follows_the_last_task_of_the_group() {
    let mut f = fixture(SessionConfig::default());
    let in_group = |mut r: DownloadRequest| {
        r.group = Some("nightly".into());
        r
    };
    // Created together: a group created one task at a time may complete in between.
    let requests = [
        ("/bytes/1000?seed=1", "a"),
        ("/bytes/2000?seed=2", "b"),
        ("/bytes/10?status=404", "c"),
    ]
    .map(|(path, name)| in_group(f.to_file(path, name)))
    .to_vec();
    let created = f
        .ask(Request::CreateDownloads {
            session: SESSION.into(),
            requests,
        })
        .await
        .unwrap();
    let Response::Created { ids } = created else {
        panic!("{created:?}")
    };
    let outsider = f.create(f.to_file("/bytes/10", "d")).await.id;
    let frames = f
        .until(|frames| {
            ids.iter()
                .chain([&outsider])
                .all(|t| has_completed(frames, *t))
                && has(frames, |e| matches!(e, Event::GroupCompleted { .. }))
        })
        .await;

    let groups: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, fr)| matches!(fr.event, Event::GroupCompleted { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(groups.len(), 1, "{frames:?}");
    let at = groups[0];
    assert_eq!(
        frames[at].event,
        Event::GroupCompleted {
            group: "nightly".into(),
            succeeded: 2,
            failed: 1,
            cancelled: 0
        }
    );
    assert_eq!(frames[at].task, None);
    let last_member = frames
        .iter()
        .rposition(|fr| {
            matches!(fr.event, Event::Completed { .. }) && fr.task.is_some_and(|t| ids.contains(&t))
        })
        .unwrap();
    assert_eq!(at, last_member + 1);

    let groups = f
        .ask(Request::ListGroups {
            session: SESSION.into(),
        })
        .await
        .unwrap();
    let Response::Groups { groups } = groups else {
        panic!("{groups:?}")
    };
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].tasks, groups[0].completed), (3, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn data_task_returns_the_body_once() {
    let mut f = fixture(SessionConfig::default());
    let task = f
        .runtime
        .create_data(request(f.url("/bytes/70000?seed=9")))
        .await
        .unwrap();
    assert_eq!(task.destination, None);
    let body = f.runtime.take_data(task.id).await.unwrap();
    assert_eq!(body, content(9, 0, 70_000));
    assert_eq!(
        f.runtime.take_data(task.id).await.unwrap_err().code,
        "invalid_state"
    );
    let frames = f.until_completed(&[task.id]).await;
    let events = events_of(&frames, task.id);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::FinishedDownloading { .. }))
    );
    assert!(matches!(
        events.last(),
        Some(Event::Completed {
            outcome: Outcome::Succeeded,
            ..
        })
    ));
    let info = f.get(task.id).await.unwrap();
    assert_eq!((info.destination, info.location), (None, None));

    let missing = f
        .runtime
        .create_data(request(f.url("/bytes/10?status=404")))
        .await
        .unwrap();
    let error = f.runtime.take_data(missing.id).await.unwrap_err();
    assert_eq!(
        (error.code.as_str(), error.status),
        ("http_status", Some(404))
    );

    let held = f
        .runtime
        .create_data(DownloadRequest {
            start: false,
            ..request(f.url("/bytes/10"))
        })
        .await
        .unwrap();
    f.ask(Request::Cancel { task: held.id }).await.unwrap();
    assert_eq!(
        f.runtime.take_data(held.id).await.unwrap_err().code,
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_cancels_every_unfinished_task_as_user_terminated() {
    let mut f = fixture(SessionConfig::default());
    let mut slow = f.to_file("/bytes/600000?seed=10&rate=150000", "slow.bin");
    slow.connections = Some(1);
    let running = f.create(slow).await.id;
    let held = f
        .create(DownloadRequest {
            start: false,
            ..f.to_file("/bytes/1000", "held.bin")
        })
        .await
        .id;
    f.wait_for_bytes(running).await;
    let done = f
        .ask(Request::Terminate {
            session: SESSION.into(),
        })
        .await
        .unwrap();
    assert_eq!(done, Response::Done);

    let frames = f.until_completed(&[running, held]).await;
    let cancellation = |task| match events_of(&frames, task).last() {
        Some(Event::Completed {
            outcome:
                Outcome::Cancelled {
                    reason,
                    resume_data,
                },
            ..
        }) => (*reason, resume_data.is_some()),
        other => panic!("{other:?}"),
    };
    assert_eq!(cancellation(running), (CancelReason::UserTerminated, true));
    assert_eq!(cancellation(held), (CancelReason::UserTerminated, false));
    for task in [running, held] {
        assert_eq!(
            f.get(task).await.unwrap().state,
            completed(OutcomeKind::Cancelled)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn update_url_continues_from_the_new_url() {
    let mut f = fixture(SessionConfig::default());
    let mut slow = f.to_file("/bytes/600000?seed=12&rate=150000", "moved.bin");
    slow.connections = Some(1);
    let task = f.create(slow).await;
    f.wait_for_bytes(task.id).await;

    let fast = f.url("/bytes/600000?seed=12");
    let updated = f
        .ask_task(Request::UpdateUrl {
            task: task.id,
            url: fast.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        (updated.url.as_str(), updated.current_url.as_deref()),
        (fast.as_str(), None)
    );
    let frames = f.until_completed(&[task.id]).await;
    let events = events_of(&frames, task.id);
    assert!(
        resumed_at(&events).is_some_and(|offset| offset > 0),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.path("moved.bin")).unwrap(),
        content(12, 0, 600_000)
    );
    let last = f.server.requests().pop().unwrap();
    assert_eq!(last.query, "seed=12");
    assert!(last.header("if-range").is_some(), "{last:?}");
    let bad = f
        .ask(Request::UpdateUrl {
            task: task.id,
            url: fast,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code, "invalid_state");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_invalid_requests_like_the_daemon() {
    let f = fixture(SessionConfig::default());
    let create = |request| Request::CreateDownload {
        session: SESSION.into(),
        request,
    };
    let code = |r: Result<Response, ErrorInfo>| r.unwrap_err().code;
    assert_eq!(
        code(f.ask(create(request("not a url".into()))).await),
        "invalid_url"
    );
    assert_eq!(
        code(f.ask(create(request("ftp://h/f".into()))).await),
        "unsupported_scheme"
    );
    let relative = DownloadRequest {
        destination: Some("rel/f".into()),
        ..request(f.url("/bytes/1"))
    };
    assert_eq!(code(f.ask(create(relative)).await), "invalid_request");
    let zero = DownloadRequest {
        connections: Some(0),
        ..request(f.url("/bytes/1"))
    };
    assert_eq!(code(f.ask(create(zero)).await), "invalid_request");
    let checksum = DownloadRequest {
        checksum: Some("crc:00".into()),
        ..request(f.url("/bytes/1"))
    };
    assert_eq!(code(f.ask(create(checksum)).await), "invalid_request");
    for (directory, destination, mentions) in [
        ("rel/dir", None, "absolute"),
        ("/tmp/a\0b", None, "NUL"),
        ("/tmp", Some(f.path("x")), "exclude"),
    ] {
        let folder = DownloadRequest {
            directory: Some(directory.into()),
            destination,
            ..request(f.url("/bytes/1"))
        };
        let error = f.ask(create(folder)).await.unwrap_err();
        assert_eq!(error.code, "invalid_request");
        assert!(error.message.contains(mentions), "{error:?}");
    }

    let elsewhere = f
        .ask(Request::CreateDownload {
            session: "other".into(),
            request: request(f.url("/bytes/1")),
        })
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code, "invalid_request");
    assert!(elsewhere.message.contains("this in-process session is"));

    let batch = f
        .ask(Request::CreateDownloads {
            session: SESSION.into(),
            requests: vec![request(f.url("/bytes/1")), request("nope".into())],
        })
        .await
        .unwrap_err();
    assert!(batch.message.starts_with("request 1:"), "{batch:?}");
    let listed = f
        .ask(Request::ListTasks {
            session: None,
            after: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(
        listed,
        Response::Tasks {
            tasks: vec![],
            next: None
        }
    );
    assert_eq!(f.get(u64::MAX).await.unwrap_err().code, "unknown_task");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_tasks_pages_in_id_order() {
    let f = fixture(SessionConfig::default());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let held = DownloadRequest {
            start: false,
            ..request(f.url("/bytes/1"))
        };
        ids.push(f.create(held).await.id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f
            .ask(Request::ListTasks {
                session: Some(SESSION.into()),
                after,
                limit: Some(2),
            })
            .await
            .unwrap();
        let Response::Tasks { tasks, next } = page else {
            panic!("{page:?}")
        };
        assert!(tasks.len() <= 2);
        seen.extend(tasks.iter().map(|t| t.id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalidation_waits_for_the_last_task_then_takes_tasks_again() {
    let mut f = fixture(SessionConfig::default());
    let mut slow = f.to_file("/bytes/600000?seed=13&rate=150000", "slow.bin");
    slow.connections = Some(1);
    let running = f.create(slow).await.id;
    f.ask(Request::FinishTasksAndInvalidate {
        session: SESSION.into(),
    })
    .await
    .unwrap();
    let refused = f
        .ask(Request::CreateDownload {
            session: SESSION.into(),
            request: request(f.url("/bytes/1")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code, "session_invalidated");

    f.ask(Request::Cancel { task: running }).await.unwrap();
    let invalidated = |frames: &[EventFrame]| has(frames, |e| *e == Event::SessionInvalidated);
    let frames = f.until(invalidated).await;
    assert!(has_completed(&frames, running));
    assert_eq!(
        frames.last().map(|fr| &fr.event),
        Some(&Event::SessionInvalidated)
    );
    f.create(DownloadRequest {
        start: false,
        ..request(f.url("/bytes/1"))
    })
    .await;

    f.ask(Request::InvalidateAndCancel {
        session: SESSION.into(),
    })
    .await
    .unwrap();
    let frames: Vec<Event> = f
        .until(invalidated)
        .await
        .into_iter()
        .map(|fr| fr.event)
        .collect();
    assert!(matches!(
        frames.as_slice(),
        [Event::Completed { .. }, Event::SessionInvalidated]
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_forgets_a_completed_task_and_deletes_its_file() {
    let mut f = fixture(SessionConfig::default());
    let held = f
        .create(DownloadRequest {
            start: false,
            ..f.to_file("/bytes/1000", "kept.bin")
        })
        .await;
    let unfinished = f
        .ask(Request::Remove {
            task: held.id,
            delete_file: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unfinished.code, "invalid_state");
    f.ask(Request::Resume { task: held.id }).await.unwrap();
    f.until_completed(&[held.id]).await;
    assert!(Path::new(&f.path("kept.bin")).exists());
    f.ask(Request::Remove {
        task: held.id,
        delete_file: true,
    })
    .await
    .unwrap();
    assert!(!Path::new(&f.path("kept.bin")).exists());
    assert_eq!(f.get(held.id).await.unwrap_err().code, "unknown_task");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_deletes_the_temp_folder_and_ends_the_session() {
    let mut f = fixture(SessionConfig::default());
    let task = f.create(request(f.url("/bytes/1000?seed=3"))).await;
    let frames = f.until_completed(&[task.id]).await;
    let location = frames
        .iter()
        .find_map(|fr| match &fr.event {
            Event::FinishedDownloading { location } => Some(location.clone()),
            _ => None,
        })
        .unwrap();
    assert!(Path::new(&location).exists());
    f.runtime.shutdown();
    assert!(!Path::new(&location).exists());
    assert_eq!(
        f.ask(Request::Status).await.unwrap_err().code,
        "session_invalidated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_raised_to_foreground_preempts_a_running_one() {
    let mut f = fixture(SessionConfig {
        max_concurrent: 1,
        ..SessionConfig::default()
    });
    let mut slow = f.to_file("/bytes/600000?seed=14&rate=150000", "slow.bin");
    slow.connections = Some(1);
    let running = f.create(slow).await.id;
    f.wait_for_bytes(running).await;
    let queued = f
        .create(f.to_file("/bytes/1000?seed=15", "quick.bin"))
        .await
        .id;
    let raised = f
        .ask_task(Request::SetPriority {
            task: queued,
            priority: Priority::Foreground,
        })
        .await
        .unwrap();
    assert_eq!(raised.priority, Priority::Foreground);

    let frames = f.until_completed(&[running, queued]).await;
    let order: Vec<TaskId> = frames
        .iter()
        .filter(|fr| matches!(fr.event, Event::Completed { .. }))
        .filter_map(|fr| fr.task)
        .collect();
    assert_eq!(order, [queued, running]);
    let events = events_of(&frames, running);
    assert!(
        resumed_at(&events).is_some_and(|offset| offset > 0),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.path("slow.bin")).unwrap(),
        content(14, 0, 600_000)
    );
}

/// As in the daemon: a task waiting out a retry holds no slot (a 503 with a long
/// `Retry-After` does not block the queue), and waits without a run until due; suspended
/// meanwhile it pauses, resumed it tries again at once, and its attempts count on.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_waiting_out_a_retry_gives_its_slot_to_the_next() {
    let mut f = fixture(SessionConfig {
        max_concurrent: 1,
        ..SessionConfig::default()
    });
    // Always 503, "come back in 120 s": longer than the test's patience.
    let busy = f
        .create(f.to_file("/bytes/100?seed=16&status=503&retry_after=120", "busy"))
        .await
        .id;
    let retry_wait = TaskState::Running {
        phase: RunPhase::RetryWait,
    };
    f.wait_for(busy, |t| t.state == retry_wait).await;
    let next = f.create(f.to_file("/bytes/2000?seed=17", "next")).await.id;
    f.until_completed(&[next]).await;
    assert_eq!(
        f.get(next).await.unwrap().state,
        completed(OutcomeKind::Succeeded)
    );
    assert_eq!(std::fs::read(f.path("next")).unwrap(), content(17, 0, 2000));
    let busy_requests = |f: &Fixture| {
        f.server
            .requests()
            .iter()
            .filter(|r| r.query.contains("seed=16"))
            .count()
    };
    assert_eq!(f.get(busy).await.unwrap().state, retry_wait);
    assert_eq!(busy_requests(&f), 1, "not retried before it is due");

    let suspended = f.ask_task(Request::Suspend { task: busy }).await.unwrap();
    assert_eq!(suspended.state, TaskState::Suspended);
    f.ask_task(Request::Resume { task: busy }).await.unwrap();
    // Its first retry after the resume is attempt 1 again: the backoff starts afresh.
    f.until(|frames| {
        frames
            .iter()
            .filter(|fr| fr.task == Some(busy))
            .any(|fr| matches!(fr.event, Event::Retrying { attempt: 1, .. }))
    })
    .await;
    assert_eq!(busy_requests(&f), 2, "tried again at once");
    let cancelled = f.ask_task(Request::Cancel { task: busy }).await.unwrap();
    assert_eq!(cancelled.state, completed(OutcomeKind::Cancelled));

    // A 503 twice: the second run's retry is attempt 2.
    let twice = f
        .create(f.to_file("/bytes/500?seed=18&status=503&fail_times=2", "twice"))
        .await
        .id;
    let frames = f.until_completed(&[twice]).await;
    let attempts: Vec<u32> = events_of(&frames, twice)
        .iter()
        .filter_map(|e| match e {
            Event::Retrying { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(std::fs::read(f.path("twice")).unwrap(), content(18, 0, 500));
}

/// The session options the daemon applies (SPEC §4), in process too: user agent, retry
/// policy, waiting for connectivity, extra TLS roots; a configuration that cannot work is
/// refused when the session is made.
#[tokio::test(flavor = "multi_thread")]
async fn session_options_apply_in_process_too() {
    let tls = TestServer::start_tls().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, tls.cert_pem().unwrap()).unwrap();
    let mut f = fixture(SessionConfig {
        user_agent: Some("Notes/3".into()),
        retry: ferry_proto::RetryConfig {
            initial_ms: 20,
            max_ms: 40,
            max_attempts: Some(2),
        },
        waits_for_connectivity: false,
        tls: ferry_proto::TlsConfig {
            extra_roots: vec![roots.display().to_string()],
            client_identity: None,
        },
        ..SessionConfig::default()
    });
    let secure = DownloadRequest {
        destination: Some(f.path("s.bin")),
        ..request(tls.url("/bytes/2000?seed=19"))
    };
    let secure = f.create(secure).await.id;
    let busy = f
        .create(f.to_file("/bytes/10?seed=20&status=503", "busy"))
        .await
        .id;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = f
        .create(request(format!("http://127.0.0.1:{port}/f")))
        .await
        .id;
    f.until_completed(&[secure, busy, gone]).await;
    assert_eq!(
        std::fs::read(f.path("s.bin")).unwrap(),
        content(19, 0, 2000)
    );
    assert_eq!(tls.requests()[0].header("user-agent"), Some("Notes/3"));
    let busy = f.get(busy).await.unwrap();
    assert_eq!(busy.error.unwrap().status, Some(503));
    assert_eq!(f.server.requests().len(), 2, "max_attempts");
    assert_eq!(f.get(gone).await.unwrap().error.unwrap().code, "connection");

    let (tx, _events) = unbounded_channel();
    let bad = SessionConfig {
        retry: ferry_proto::RetryConfig {
            initial_ms: 10,
            max_ms: 5,
            max_attempts: None,
        },
        ..SessionConfig::default()
    };
    let refused = Runtime::new(SESSION.into(), bad, &ClientConfig::default(), tx.clone());
    assert!(refused.err().unwrap().message.contains("retry.initial_ms"));
    let missing = SessionConfig {
        tls: ferry_proto::TlsConfig {
            extra_roots: vec![dir.path().join("none.pem").display().to_string()],
            client_identity: None,
        },
        ..SessionConfig::default()
    };
    let refused = Runtime::new(SESSION.into(), missing, &ClientConfig::default(), tx);
    let error = refused.err().unwrap();
    assert_eq!(error.code, "invalid_request");
    assert!(error.message.contains("none.pem"), "{}", error.message);
}

/// Every byte but letters and digits as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_redirects_and_retries() {
    let mut f = fixture(SessionConfig::default());
    let target = f.url("/bytes/1000?seed=7&status=503&fail_times=1&retry_after=0");
    let via = f.url(&format!("/redirect/1?to={}", encode(&target)));
    let task = f
        .create(DownloadRequest {
            destination: Some(f.path("r.bin")),
            ..request(via)
        })
        .await;
    let frames = f.until_completed(&[task.id]).await;
    let events = events_of(&frames, task.id);
    let redirects: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Redirected { to, .. } => Some(to.as_str()),
            _ => None,
        })
        .collect();
    // Two hops, and after the 503 two again: a retry without bytes starts a new run from
    // the request's URL.
    assert_eq!(redirects.len(), 4, "{events:?}");
    assert_eq!(redirects[1], target.as_str());
    assert_eq!(redirects[3], target.as_str());
    let retry = events
        .iter()
        .find_map(|e| match e {
            Event::Retrying { attempt, error, .. } => Some((*attempt, error.status)),
            _ => None,
        })
        .expect("a retrying event");
    assert_eq!(retry, (1, Some(503)));
    assert!(matches!(
        events.last(),
        Some(Event::Completed {
            outcome: Outcome::Succeeded,
            ..
        })
    ));
    let info = f.get(task.id).await.unwrap();
    assert_eq!(info.current_url.as_deref(), Some(target.as_str()));
    assert_eq!(std::fs::read(f.path("r.bin")).unwrap(), content(7, 0, 1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_session_and_task_headers() {
    let f = fixture(SessionConfig {
        headers: Headers(vec![
            ("X-Session".into(), "s".into()),
            ("Authorization".into(), "Bearer session".into()),
        ]),
        ..SessionConfig::default()
    });
    let task = f
        .runtime
        .create_data(DownloadRequest {
            headers: Headers(vec![
                ("X-Task".into(), "t".into()),
                ("authorization".into(), "Bearer task".into()),
            ]),
            ..request(f.url("/echo"))
        })
        .await
        .unwrap();
    let body = f.runtime.take_data(task.id).await.unwrap();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["x-session"], "s");
    assert_eq!(echoed["x-task"], "t");
    // The task's value replaces the session's (SPEC §4), rather than both being sent.
    assert_eq!(echoed["authorization"], "Bearer task");
}

#[tokio::test(flavor = "multi_thread")]
async fn checksum_mismatch_fails_without_placing_the_file() {
    let mut f = fixture(SessionConfig::default());
    let task = f
        .create(DownloadRequest {
            checksum: Some(format!("sha256:{}", "00".repeat(32))),
            ..f.to_file("/bytes/1000", "sum.bin")
        })
        .await;
    let frames = f.until_completed(&[task.id]).await;
    match events_of(&frames, task.id).last() {
        Some(Event::Completed {
            outcome: Outcome::Failed { error, .. },
            ..
        }) => assert_eq!(error.code, "checksum_mismatch"),
        other => panic!("{other:?}"),
    }
    assert!(!Path::new(&f.path("sum.bin")).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_and_its_requests_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let f = fixture(SessionConfig::default());
    send_sync(&f.runtime);
    let status = f.runtime.handle(Request::Status);
    send(&status);
    let Response::Status { home, version, .. } = status.await.unwrap() else {
        panic!("not a status")
    };
    assert_eq!(
        (home.as_str(), version.as_str()),
        ("in-process", env!("CARGO_PKG_VERSION"))
    );
    send(&f.runtime.take_data(1));
    send(&f.runtime.create_data(request(f.url("/bytes/1"))));
}

#[tokio::test(flavor = "multi_thread")]
async fn create_upload_refuses_what_the_library_would_not_send() {
    let f = fixture(SessionConfig::default());
    std::fs::write(f.path("f"), b"x").unwrap();
    let upload = |body: UploadBody| UploadRequest {
        url: f.url("/upload/u"),
        method: None,
        body,
        headers: Headers::default(),
        priority: None,
        tag: None,
        group: None,
        rate_limit: None,
        earliest_begin: None,
        start: true,
    };
    let ask = |request: UploadRequest| {
        f.ask_task(Request::CreateUpload {
            session: SESSION.into(),
            request,
        })
    };
    // The daemon has another current folder: a relative path means nothing there.
    let relative = upload(UploadBody::File { path: "f".into() });
    let e = ask(relative).await.unwrap_err();
    assert_eq!(e.code, "invalid_request", "{e:?}");
    assert!(e.message.contains("absolute"), "{e:?}");
    let empty = upload(UploadBody::Multipart {
        fields: vec![],
        files: vec![],
    });
    assert_eq!(ask(empty).await.unwrap_err().code, "invalid_request");
    let bad_type = upload(UploadBody::Multipart {
        fields: vec![],
        files: vec![FormFile {
            name: "f".into(),
            path: f.path("f"),
            file_name: None,
            content_type: Some("text/\nplain".into()),
        }],
    });
    assert_eq!(ask(bad_type).await.unwrap_err().code, "invalid_upload");
    let mut tagged = upload(UploadBody::File { path: f.path("f") });
    tagged.tag = Some("t".repeat(5000));
    assert_eq!(ask(tagged).await.unwrap_err().code, "invalid_request");

    let fine = ask(upload(UploadBody::File { path: f.path("f") }))
        .await
        .unwrap();
    assert_eq!(fine.kind, TaskKind::Upload);
    assert_eq!((fine.destination, fine.reply), (None, None));
}
