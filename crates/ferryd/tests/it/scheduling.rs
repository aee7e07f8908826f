//! Who runs when: priorities with preemption, discretionary tasks, per-host limits,
//! earliest_begin.

use ferry_proto::{OutcomeKind, Priority, RunPhase, SessionConfig, TaskState};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Daemon, download, wait_completed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pauses_a_lower_one_which_resumes_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon =
        Daemon::start_env(&dir.path().join("home"), 200, &[("FERRY_MAX_RUNNING", "1")]).await;
    let mut c = daemon.client().await;
    let n = 3_000_000u64;
    let low_out = dir.path().join("low.bin");
    let mut low = download(
        server.url(&format!("/bytes/{n}?seed=41&rate=1000000")),
        Some(&low_out),
    );
    low.connections = Some(1);
    low.priority = Some(Priority::Normal);
    let low = c.create("p", low).await;
    daemon.wait_for_bytes(low.id, 0).await;

    let mut high = download(
        server.url("/bytes/200000?seed=42"),
        Some(&dir.path().join("high.bin")),
    );
    high.priority = Some(Priority::Foreground);
    let high = c.create("p", high).await;
    let done = wait_completed(&mut c, high.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    let paused = c.task(low.id).await;
    assert!(
        !matches!(paused.state, TaskState::Completed { .. }),
        "the lower task was paused, not finished first: {paused:?}"
    );
    let done = wait_completed(&mut c, low.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&low_out).unwrap(), content(41, 0, n));
    // It continued from its bytes: one of its later requests is a range from the middle.
    let resumed = server
        .requests()
        .iter()
        .filter(|r| r.query.contains("seed=41"))
        .filter_map(|r| r.header("range").map(str::to_owned))
        .any(|r| !r.starts_with("bytes=0-"));
    assert!(
        resumed,
        "{:?}",
        server
            .requests()
            .iter()
            .map(|r| r.header("range"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discretionary_tasks_wait_while_others_are_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    // Session "a" runs one task at a time, so its second task waits…
    let one = SessionConfig {
        max_concurrent: 1,
        ..SessionConfig::default()
    };
    c.attach_with("a", one, false).await.unwrap();
    c.request(ferry_proto::Request::Detach {
        session: "a".into(),
    })
    .await
    .unwrap();
    let mut busy = download(
        server.url("/bytes/1500000?seed=43&rate=1000000"),
        Some(&dir.path().join("b")),
    );
    busy.connections = Some(1);
    let busy = c.create("a", busy).await;
    daemon.wait_for_bytes(busy.id, 0).await;
    let queued = c
        .create(
            "a",
            download(
                server.url("/bytes/100?seed=45"),
                Some(&dir.path().join("n")),
            ),
        )
        .await;
    // …and a discretionary task of another session, free to run by every limit, waits too.
    let mut low = download(
        server.url("/bytes/100?seed=44"),
        Some(&dir.path().join("low")),
    );
    low.priority = Some(Priority::Low);
    let low = c.create("b", low).await;
    wait_completed(&mut c, queued.id).await;
    wait_completed(&mut c, low.id).await;
    let order: Vec<u64> = server
        .requests()
        .iter()
        .filter_map(|r| {
            r.query
                .split('&')
                .find_map(|p| p.strip_prefix("seed=")?.parse().ok())
        })
        .collect();
    let pos = |seed| order.iter().position(|s| *s == seed).unwrap();
    assert!(
        pos(45) < pos(44),
        "the discretionary task waited for the queued one: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_host_limit_holds_across_sessions_and_other_hosts_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let config = SessionConfig {
        max_per_host: 1,
        ..SessionConfig::default()
    };
    for s in ["h1", "h2"] {
        c.attach_with(s, config.clone(), false).await.unwrap();
        c.request(ferry_proto::Request::Detach { session: s.into() })
            .await
            .unwrap();
    }
    let mut first = download(
        server.url("/bytes/1500000?seed=46&rate=1000000"),
        Some(&dir.path().join("1")),
    );
    first.connections = Some(1);
    let first = c.create("h1", first).await;
    daemon.wait_for_bytes(first.id, 0).await;
    let same_host = c
        .create(
            "h2",
            download(
                server.url("/bytes/100?seed=47"),
                Some(&dir.path().join("2")),
            ),
        )
        .await;
    let other = server
        .url("/bytes/100?seed=48")
        .replace("127.0.0.1", "localhost");
    let other_host = c
        .create("h2", download(other, Some(&dir.path().join("3"))))
        .await;
    wait_completed(&mut c, other_host.id).await;
    let waiting = c.task(same_host.id).await;
    assert_eq!(
        waiting.state,
        TaskState::Running {
            phase: RunPhase::Waiting
        },
        "127.0.0.1 is busy with the first task"
    );
    wait_completed(&mut c, first.id).await;
    let done = wait_completed(&mut c, same_host.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_begin_holds_a_task_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let begin = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2;
    let mut later = download(
        server.url("/bytes/100?seed=49"),
        Some(&dir.path().join("later")),
    );
    later.earliest_begin = Some(begin);
    let later = c.create("e", later).await;
    let now = c
        .create(
            "e",
            download(
                server.url("/bytes/100?seed=50"),
                Some(&dir.path().join("now")),
            ),
        )
        .await;
    wait_completed(&mut c, now.id).await;
    assert_eq!(
        c.task(later.id).await.state,
        TaskState::Running {
            phase: RunPhase::Waiting
        }
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.query.contains("seed=49"))
    );
    wait_completed(&mut c, later.id).await;
    let finished_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(finished_at >= begin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_wait_and_retry_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("r").await.unwrap();
    // Nothing listens on port 9: unreachable, so the task waits in retry_wait, not failed.
    let down = c
        .create(
            "r",
            download(
                "http://127.0.0.1:9/file".into(),
                Some(&dir.path().join("d")),
            ),
        )
        .await;
    let e = c.next_journaled().await;
    let received = ferry_proto::due_in(std::time::Duration::ZERO);
    match &e.event {
        ferry_proto::Event::Retrying {
            attempt: 1,
            error,
            delay_ms,
            at: Some(at),
        } => {
            assert_eq!(error.code, "connection");
            // Made before it was received: due at most `delay_ms` after that (+1 ms of
            // rounding to whole milliseconds).
            assert!(
                *at <= received + delay_ms + 1,
                "{at} vs {received} + {delay_ms}"
            );
            assert!(
                *at + 60_000 > received + delay_ms,
                "{at} vs {received} + {delay_ms}"
            );
        }
        other => panic!("{other:?}"),
    }
    let t = c.task(down.id).await;
    assert_eq!(
        t.state,
        TaskState::Running {
            phase: RunPhase::RetryWait
        }
    );
    assert_eq!(t.error.unwrap().code, "connection");
    // A 503 once: retried, then it succeeds.
    let ok = c
        .create(
            "r",
            download(
                server.url("/bytes/100?status=503&fail_times=1"),
                Some(&dir.path().join("ok")),
            ),
        )
        .await;
    let done = wait_completed(&mut c, ok.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_timeout_fails_a_task_that_takes_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let config = SessionConfig {
        resource_timeout_secs: 1,
        ..SessionConfig::default()
    };
    c.attach_with("slow", config, false).await.unwrap();
    let t = c
        .create(
            "slow",
            download(
                server.url("/bytes/5000000?rate=200000"),
                Some(&dir.path().join("s")),
            ),
        )
        .await;
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Failed
        }
    );
    assert_eq!(done.error.unwrap().code, "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_rate_limit_applies_to_running_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("rl").await.unwrap();
    let n = 3_000_000u64;
    let out = dir.path().join("rl.bin");
    let mut req = download(
        server.url(&format!("/bytes/{n}?seed=51&rate=1000000")),
        Some(&out),
    );
    req.connections = Some(1);
    let t = c.create("rl", req).await;
    daemon.wait_for_bytes(t.id, 0).await;
    // Limit the running transfer to 100 kB/s (the server sends 1 MB/s).
    let limited = SessionConfig {
        rate_limit: Some(100_000),
        ..SessionConfig::default()
    };
    c.attach_with("rl", limited, false).await.unwrap();
    let before = c.task(t.id).await.bytes_done;
    let start = std::time::Instant::now();
    // Measuring a rate takes time: let half a second pass.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = c.task(t.id).await.bytes_done;
    // Whatever the machine's speed, no more than the rate allows (plus the limiter's burst
    // and a chunk in flight) can have arrived; unlimited, ~500 kB would have.
    let allowed = (100_000.0 * start.elapsed().as_secs_f64()) as u64 + 128 * 1024;
    assert!(
        after - before <= allowed,
        "{} bytes in {:?}",
        after - before,
        start.elapsed()
    );
    // Lifted again, it finishes.
    c.attach_with("rl", SessionConfig::default(), false)
        .await
        .unwrap();
    let done = wait_completed(&mut c, t.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(51, 0, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_wide_and_per_task_rate_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start_env(
        &dir.path().join("home"),
        200,
        &[("FERRY_RATE_LIMIT", "200000")],
    )
    .await;
    let mut c = daemon.client().await;
    // Two sessions share the daemon-wide 200 kB/s; a third task has its own 50 kB/s.
    let a = c
        .create(
            "x",
            download(
                server.url("/bytes/3000000?seed=1"),
                Some(&dir.path().join("a")),
            ),
        )
        .await;
    let b = c
        .create(
            "y",
            download(
                server.url("/bytes/3000000?seed=2"),
                Some(&dir.path().join("b")),
            ),
        )
        .await;
    let mut slow = download(
        server.url("/bytes/3000000?seed=3"),
        Some(&dir.path().join("s")),
    );
    slow.rate_limit = Some(50_000);
    let s = c.create("y", slow).await;
    for id in [a.id, b.id, s.id] {
        daemon.wait_for_bytes(id, 0).await;
    }
    let start = std::time::Instant::now();
    let bytes = |tasks: &[ferry_proto::TaskInfo], id: u64| {
        tasks.iter().find(|t| t.id == id).unwrap().bytes_done
    };
    let before = c.tasks(None).await;
    assert!(
        before
            .iter()
            .all(|t| matches!(t.state, TaskState::Running { .. })),
        "limited, none can have finished yet: {before:?}"
    );
    // Measuring a rate takes time: let a second pass.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = c.tasks(None).await;
    let secs = start.elapsed().as_secs_f64();
    let gained = |id| bytes(&after, id) - bytes(&before, id);
    let slack = 3 * 128 * 1024;
    let total = gained(a.id) + gained(b.id) + gained(s.id);
    assert!(
        total <= (200_000.0 * secs) as u64 + slack,
        "all together: {total} in {secs:.2}s"
    );
    assert!(
        gained(s.id) <= (50_000.0 * secs) as u64 + 128 * 1024,
        "the slow task: {}",
        gained(s.id)
    );
}

/// `set_rate_limit` changes the daemon's, a task's and a session's limit while transfers
/// run. Every limit is 40 kB/s, so no 3 MB transfer can finish within any wait of this test
/// (75 s, more than `PATIENCE`) unless its limits are lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_change_while_transfers_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start_env(
        &dir.path().join("home"),
        200,
        &[("FERRY_RATE_LIMIT", "40000")],
    )
    .await;
    let mut c = daemon.client().await;
    let file = |seed: u64, name: &str| {
        download(
            server.url(&format!("/bytes/3000000?seed={seed}")),
            Some(&dir.path().join(name)),
        )
    };
    let plain = c.create("x", file(1, "a")).await;
    let mut own = file(2, "b");
    own.rate_limit = Some(40_000);
    let own = c.create("y", own).await;
    let limited = SessionConfig {
        rate_limit: Some(40_000),
        ..SessionConfig::default()
    };
    c.attach_with("z", limited, false).await.unwrap();
    let of_session = c.create("z", file(3, "c")).await;
    for id in [plain.id, own.id, of_session.id] {
        daemon.wait_for_bytes(id, 0).await;
    }
    let set = |task: Option<u64>, session: Option<&str>| ferry_proto::Request::SetRateLimit {
        task,
        session: session.map(str::to_owned),
        bytes_per_second: None,
    };
    let err = c.request(set(Some(own.id), Some("y"))).await.unwrap_err();
    assert_eq!(err.code, "invalid_request");
    let err = c.request(set(None, Some("nobody"))).await.unwrap_err();
    assert_eq!(err.code, "unknown_session");

    // The daemon-wide limit lifted: the task limited by nothing else finishes.
    c.request(set(None, None)).await.unwrap();
    wait_completed(&mut c, plain.id).await;
    for id in [own.id, of_session.id] {
        let t = c.task(id).await;
        assert!(matches!(t.state, TaskState::Running { .. }), "{t:?}");
    }
    // Its own limit lifted, the second; its session's, the third.
    c.request(set(Some(own.id), None)).await.unwrap();
    wait_completed(&mut c, own.id).await;
    assert!(matches!(
        c.task(of_session.id).await.state,
        TaskState::Running { .. }
    ));
    c.request(set(None, Some("z"))).await.unwrap();
    let done = wait_completed(&mut c, of_session.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(
        std::fs::read(dir.path().join("c")).unwrap(),
        content(3, 0, 3_000_000)
    );
    let err = c.request(set(Some(own.id), None)).await.unwrap_err();
    assert_eq!(err.code, "invalid_state");
}

/// A session that runs one transfer at a time.
async fn one_at_a_time(c: &mut crate::fixture::Client, session: &str) {
    let one = SessionConfig {
        max_concurrent: 1,
        ..SessionConfig::default()
    };
    c.attach_with(session, one, false).await.unwrap();
    c.request(ferry_proto::Request::Detach {
        session: session.into(),
    })
    .await
    .unwrap();
}

async fn set_priority(
    c: &mut crate::fixture::Client,
    task: u64,
    priority: Priority,
) -> Result<ferry_proto::TaskInfo, ferry_proto::ErrorInfo> {
    match c
        .request(ferry_proto::Request::SetPriority { task, priority })
        .await?
    {
        ferry_proto::Response::Task { task } => Ok(task),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_waiting_task_lets_it_preempt_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    one_at_a_time(&mut c, "sp").await;
    let n = 3_000_000u64;
    let first_out = dir.path().join("first.bin");
    let mut first = download(
        server.url(&format!("/bytes/{n}?seed=52&rate=1000000")),
        Some(&first_out),
    );
    first.connections = Some(1);
    let first = c.create("sp", first).await;
    daemon.wait_for_bytes(first.id, 0).await;
    let second = c
        .create(
            "sp",
            download(
                server.url("/bytes/200000?seed=53"),
                Some(&dir.path().join("second.bin")),
            ),
        )
        .await;
    assert_eq!(
        c.task(second.id).await.state,
        TaskState::Running {
            phase: RunPhase::Waiting
        },
        "the session runs one transfer at a time"
    );

    let raised = set_priority(&mut c, second.id, Priority::High)
        .await
        .unwrap();
    assert_eq!(raised.priority, Priority::High);
    let done = wait_completed(&mut c, second.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    let paused = c.task(first.id).await;
    assert!(
        !matches!(paused.state, TaskState::Completed { .. }),
        "the raised task ran first: {paused:?}"
    );
    let done = wait_completed(&mut c, first.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&first_out).unwrap(), content(52, 0, n));

    // A completed task has no priority to change; an unknown one is unknown.
    let err = set_priority(&mut c, second.id, Priority::Low)
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_state");
    assert!(err.message.contains("succeeded"), "{}", err.message);
    let err = set_priority(&mut c, 999_999, Priority::Low)
        .await
        .unwrap_err();
    assert_eq!(err.code, "unknown_task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_running_task_lets_a_waiting_one_preempt_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    one_at_a_time(&mut c, "sp").await;
    let n = 3_000_000u64;
    let first_out = dir.path().join("first.bin");
    let mut first = download(
        server.url(&format!("/bytes/{n}?seed=54&rate=1000000")),
        Some(&first_out),
    );
    first.connections = Some(1);
    let first = c.create("sp", first).await;
    daemon.wait_for_bytes(first.id, 0).await;
    let second = c
        .create(
            "sp",
            download(
                server.url("/bytes/200000?seed=55"),
                Some(&dir.path().join("second.bin")),
            ),
        )
        .await;

    let lowered = set_priority(&mut c, first.id, Priority::Low).await.unwrap();
    assert_eq!(lowered.priority, Priority::Low);
    wait_completed(&mut c, second.id).await;
    let paused = c.task(first.id).await;
    assert!(
        !matches!(paused.state, TaskState::Completed { .. }),
        "the lowered task made way: {paused:?}"
    );
    assert_eq!(paused.priority, Priority::Low);
    let done = wait_completed(&mut c, first.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&first_out).unwrap(), content(54, 0, n));
}

/// A running task pointed at a new URL starts over at once: it keeps its slot, and a
/// younger waiting task of the same class does not take it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_given_a_new_url_keeps_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let one = SessionConfig {
        max_concurrent: 1,
        ..SessionConfig::default()
    };
    c.attach_with("s", one, false).await.unwrap();
    let slow = |seed: u64, name: &str| {
        let mut d = download(
            server.url(&format!("/bytes/2000000?seed={seed}&rate=500000")),
            Some(&dir.path().join(name)),
        );
        d.connections = Some(1);
        d
    };
    let a = c.create("s", slow(61, "a.bin")).await;
    let b = c.create("s", slow(62, "b.bin")).await;
    daemon.wait_for_bytes(a.id, 0).await;
    let before = c.task(a.id).await.bytes_done;
    c.request(ferry_proto::Request::UpdateUrl {
        task: a.id,
        url: server.url("/bytes/2000000?seed=61&rate=500000&signed=2"),
    })
    .await
    .unwrap();
    let socket = daemon.socket();
    crate::fixture::wait_until(|| {
        let socket = socket.clone();
        async move {
            let t = crate::fixture::Client::connect(&socket)
                .await
                .task(a.id)
                .await;
            t.state.name() == "transferring" && t.bytes_done > before
        }
    })
    .await;
    assert_eq!(
        c.task(b.id).await.state,
        TaskState::Running {
            phase: RunPhase::Waiting
        },
        "the younger task did not take the slot"
    );
}

/// SPEC §4/§11: a task waiting out a retry holds no slot — a server that answers 503 with a
/// long `Retry-After` does not block the queue behind it — and it waits without a run until
/// it is due: through a suspend and resume, and across a daemon restart, which does not
/// retry it early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_out_a_retry_gives_its_slot_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let home = dir.path().join("home");
    let env = [("FERRY_MAX_RUNNING", "1")];
    let mut daemon = Daemon::start_env(&home, 200, &env).await;
    let mut c = daemon.client().await;
    // Always 503, "come back in 120 s": longer than the test's patience.
    let busy = server.url("/bytes/100?seed=61&status=503&retry_after=120");
    let busy = c
        .create("q", download(busy, Some(&dir.path().join("busy"))))
        .await;
    let retry_wait = TaskState::Running {
        phase: RunPhase::RetryWait,
    };
    let busy_requests = || {
        server
            .requests()
            .iter()
            .filter(|r| r.query.contains("seed=61"))
            .count()
    };
    daemon.wait_for_state(busy.id, retry_wait).await;

    // The only slot is free: the next task runs at once.
    let out = dir.path().join("next");
    let next = c
        .create("q", download(server.url("/bytes/2000?seed=62"), Some(&out)))
        .await;
    let done = wait_completed(&mut c, next.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(62, 0, 2000));
    assert_eq!(c.task(busy.id).await.state, retry_wait);
    assert_eq!(busy_requests(), 1, "not retried before it is due");

    // Suspended while it waits, it pauses; resumed, it tries again at once.
    c.request(ferry_proto::Request::Suspend { task: busy.id })
        .await
        .unwrap();
    assert_eq!(c.task(busy.id).await.state, TaskState::Suspended);
    c.request(ferry_proto::Request::Resume { task: busy.id })
        .await
        .unwrap();
    crate::fixture::wait_until(|| async { busy_requests() == 2 }).await;
    daemon.wait_for_state(busy.id, retry_wait).await;

    // A restart keeps it waiting for its time, while other tasks run.
    drop(c);
    daemon.terminate();
    let daemon = Daemon::start_env(&home, 200, &env).await;
    let mut c = daemon.client().await;
    let after = c
        .create(
            "q",
            download(server.url("/bytes/10?seed=63"), Some(&dir.path().join("a"))),
        )
        .await;
    wait_completed(&mut c, after.id).await;
    assert_eq!(c.task(busy.id).await.state, retry_wait);
    assert_eq!(busy_requests(), 2, "the restart did not retry it early");

    c.request(ferry_proto::Request::Cancel { task: busy.id })
        .await
        .unwrap();
    assert_eq!(
        c.task(busy.id).await.state,
        TaskState::Completed {
            outcome: OutcomeKind::Cancelled
        }
    );
}

/// The runs of a task that waits out its retries count its attempts on: the second
/// `retrying` is attempt 2, so the backoff grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_on_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    c.attach("r").await.unwrap();
    let out = dir.path().join("f");
    let task = c
        .create(
            "r",
            download(
                server.url("/bytes/5000?seed=64&status=503&fail_times=2"),
                Some(&out),
            ),
        )
        .await;
    let mut attempts = Vec::new();
    loop {
        let e = c.next_journaled().await;
        match e.event {
            ferry_proto::Event::Retrying { attempt, .. } => attempts.push(attempt),
            ferry_proto::Event::Completed { outcome, .. } => {
                assert!(
                    matches!(outcome, ferry_proto::Outcome::Succeeded),
                    "{outcome:?}"
                );
                break;
            }
            _ => {}
        }
    }
    assert_eq!(attempts, [1, 2]);
    assert_eq!(std::fs::read(&out).unwrap(), content(64, 0, 5000));
    assert_eq!(c.task(task.id).await.error, None);
}

/// Tasks waiting out a retry that is not due cannot hide one that is: a session with more
/// of them than a round reads (64) still retries its newest task when it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_waiting_out_retries_do_not_hide_a_due_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let mut busy = Vec::new();
    for i in 0..70 {
        let url = server.url(&format!("/bytes/10?seed={i}&status=503&retry_after=120"));
        busy.push(c.create("m", download(url, None)).await.id);
    }
    let retry_wait = TaskState::Running {
        phase: RunPhase::RetryWait,
    };
    for id in &busy {
        daemon.wait_for_state(*id, retry_wait).await;
    }
    // The newest task: one 503 without Retry-After (a retry within about a second).
    let out = dir.path().join("late");
    let late = c
        .create(
            "m",
            download(
                server.url("/bytes/1000?seed=99&status=503&fail_times=1"),
                Some(&out),
            ),
        )
        .await;
    let done = wait_completed(&mut c, late.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(99, 0, 1000));
}

/// A new URL for a task waiting out a retry is tried at once, with a fresh count: with two
/// attempts allowed, the new URL's one 503 is its first failure, not the task's second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_ends_the_wait_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let two_attempts = SessionConfig {
        retry: ferry_proto::RetryConfig {
            max_attempts: Some(2),
            ..ferry_proto::RetryConfig::default()
        },
        ..SessionConfig::default()
    };
    c.attach_with("u", two_attempts, false).await.unwrap();
    let out = dir.path().join("moved");
    let task = c
        .create(
            "u",
            download(
                server.url("/bytes/10?seed=71&status=503&retry_after=120"),
                Some(&out),
            ),
        )
        .await;
    loop {
        if let ferry_proto::Event::Retrying { .. } = c.next_journaled().await.event {
            break;
        }
    }
    c.request(ferry_proto::Request::UpdateUrl {
        task: task.id,
        url: server.url("/bytes/3000?seed=72&status=503&fail_times=1"),
    })
    .await
    .unwrap();
    let done = wait_completed(&mut c, task.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        }
    );
    assert_eq!(std::fs::read(&out).unwrap(), content(72, 0, 3000));
}

/// A retry that would come after the resource timeout fails the task `timed_out` at once,
/// without another attempt and without announcing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_past_the_resource_timeout_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let config = SessionConfig {
        resource_timeout_secs: 30,
        ..SessionConfig::default()
    };
    c.attach_with("t", config, false).await.unwrap();
    let task = c
        .create(
            "t",
            download(
                server.url("/bytes/10?seed=73&status=503&retry_after=120"),
                Some(&dir.path().join("t")),
            ),
        )
        .await;
    let done = wait_completed(&mut c, task.id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Failed
        }
    );
    assert_eq!(done.error.unwrap().code, "timed_out");
    assert_eq!(server.requests().len(), 1, "no attempt after the first");
    loop {
        let e = c.next_journaled().await;
        assert!(
            !matches!(e.event, ferry_proto::Event::Retrying { .. }),
            "no retry is announced: {e:?}"
        );
        if let ferry_proto::Event::Completed { .. } = e.event {
            break;
        }
    }
}
