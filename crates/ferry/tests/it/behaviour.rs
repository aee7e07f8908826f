//! Every task operation, run against a background and an in-process session alike.

use ferry::{ErrorKind, EventKind, Outcome, Priority, ResumeData, RunPhase, TaskState};
use ferry_testserver::{TestServer, content};

use crate::both;
use crate::fixture::{Kind, Subject, names, next_event, until_completed, wait_until};

both!(download_reports_progress_then_finished_then_completed);
async fn download_reports_progress_then_finished_then_completed(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .download(server.url("/bytes/300000?seed=3&rate=300000"))
        .destination(s.file("a.bin"))
        .tag("first")
        .start()
        .await
        .unwrap();

    let mut progress = 0;
    let mut seen = Vec::new();
    loop {
        let event = events.recv().await.unwrap().unwrap();
        assert_eq!(event.task_id(), Some(task.id()));
        assert_eq!(event.tag(), Some("first"), "the tag comes with every event");
        if let EventKind::Progress { total_written, .. } = event.kind() {
            assert!(seen.is_empty(), "progress after {seen:?}");
            assert!(*total_written <= 300_000);
            progress += 1;
            continue;
        }
        let done = event.result().is_some();
        seen.push(event);
        if done {
            break;
        }
    }
    assert!(progress > 0, "progress events while transferring");
    assert_eq!(names(&seen), ["finished_downloading", "completed"]);
    let EventKind::FinishedDownloading { location } = seen[0].kind() else {
        unreachable!()
    };
    assert_eq!(location, s.file("a.bin").to_str().unwrap());
    seen[1].result().unwrap().unwrap();
    assert_eq!(
        std::fs::read(s.file("a.bin")).unwrap(),
        content(3, 0, 300_000)
    );
    let info = task.info().await.unwrap();
    assert_eq!(info.state.name(), "succeeded");
    assert_eq!(info.bytes_done, 300_000);
}

both!(http_error_fails_the_task_and_writes_nothing);
async fn http_error_fails_the_task_and_writes_nothing(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .download(server.url("/bytes/100?status=404"))
        .destination(s.file("missing"))
        .start()
        .await
        .unwrap();
    let seen = until_completed(&mut events, task.id()).await;
    assert_eq!(names(&seen), ["completed"]);
    let error = seen[0].result().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Http);
    assert_eq!(error.status(), Some(404));
    assert!(!error.is_transient());
    assert!(
        !s.file("missing").exists(),
        "an error body is never the file"
    );
}

both!(bad_input_is_refused_at_creation_with_the_reason);
async fn bad_input_is_refused_at_creation_with_the_reason(kind: Kind) {
    let s = Subject::open(kind, |b| b).await;
    let e = s
        .session
        .download("ftp://example.com/f")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("ftp://example.com/f"), "{e}");
    let e = s
        .session
        .download("http://127.0.0.1:9/f")
        .checksum("sha256:nothex")
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = s
        .session
        .download("http://127.0.0.1:9/f")
        .tag("x".repeat(5000))
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        s.session.tasks().await.unwrap().is_empty(),
        "nothing was created"
    );
    let e = s.session.task(999_999).info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

both!(suspend_keeps_the_bytes_and_start_continues);
async fn suspend_keeps_the_bytes_and_start_continues(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let url = server.url("/bytes/2000000?seed=5&rate=1000000");
    let task = s
        .session
        .download(&url)
        .destination(s.file("s.bin"))
        .connections(1)
        .create()
        .await
        .unwrap();
    assert_eq!(task.info().await.unwrap().state, TaskState::Suspended);
    task.start().await.unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 100_000 }).await;
    let paused = task.suspend().await.unwrap();
    assert_eq!(paused.state, TaskState::Suspended);
    assert!(paused.bytes_done > 0, "the bytes are kept");
    task.start().await.unwrap();
    let seen = until_completed(&mut events, task.id()).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e.kind(), EventKind::ResumedAtOffset { offset, .. } if *offset > 0)),
        "{:?}",
        names(&seen)
    );
    seen.last().unwrap().result().unwrap().unwrap();
    assert_eq!(
        std::fs::read(s.file("s.bin")).unwrap(),
        content(5, 0, 2_000_000)
    );
    let ranged = server
        .requests()
        .iter()
        .filter(|r| r.header("range").is_some())
        .count();
    assert!(ranged >= 1, "the second attempt asked for a range");
}

both!(cancel_deletes_and_completes_cancelled);
async fn cancel_deletes_and_completes_cancelled(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .download(server.url("/bytes/5000000?rate=500000"))
        .destination(s.file("c.bin"))
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 0 }).await;
    let info = task.cancel().await.unwrap();
    assert_eq!(info.state.name(), "cancelled");
    assert_eq!(info.resume_data, None);
    let seen = until_completed(&mut events, task.id()).await;
    let error = seen.last().unwrap().result().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Cancelled);
    assert!(error.resume_data().is_none());
    assert!(!s.file("c.bin").exists());
    let again = task.cancel().await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidState, "{again}");
}

both!(resume_data_continues_a_cancelled_download);
async fn resume_data_continues_a_cancelled_download(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let url = server.url("/bytes/3000000?seed=8&rate=1500000");
    let task = s
        .session
        .download(&url)
        .destination(s.file("r.bin"))
        .connections(1)
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 200_000 }).await;
    let blob = task
        .cancel_with_resume_data()
        .await
        .unwrap()
        .expect("bytes were kept");
    let seen = until_completed(&mut events, task.id()).await;
    let error = seen.last().unwrap().result().unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Cancelled);
    assert_eq!(
        error.resume_data(),
        Some(&blob),
        "the event carries the same blob"
    );

    // Stored as bytes, tampered with: refused with the reason, nothing created.
    let mut bytes = blob.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
    let forged = ResumeData::from_bytes(bytes).unwrap();
    let e = s
        .session
        .download_from_resume_data(&forged)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResumeData, "{e}");

    server.clear_log();
    let restored = ResumeData::from_bytes(blob.as_bytes().to_vec()).unwrap();
    let resumed = s
        .session
        .download_from_resume_data(&restored)
        .await
        .unwrap();
    let seen = until_completed(&mut events, resumed.id()).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e.kind(), EventKind::ResumedAtOffset { offset, .. } if *offset > 0)),
        "{:?}",
        names(&seen)
    );
    seen.last().unwrap().result().unwrap().unwrap();
    assert_eq!(
        std::fs::read(s.file("r.bin")).unwrap(),
        content(8, 0, 3_000_000)
    );
    assert!(
        server.bytes_sent() < 3_000_000,
        "only the rest was fetched: {}",
        server.bytes_sent()
    );
}

both!(a_raised_priority_runs_first);
async fn a_raised_priority_runs_first(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b.max_concurrent(1)).await;
    let slow = |seed: u32| server.url(&format!("/bytes/4000000?seed={seed}&rate=400000"));
    let first = s
        .session
        .download(slow(1))
        .destination(s.file("1"))
        .start()
        .await
        .unwrap();
    wait_until(|| async { first.info().await.unwrap().bytes_done > 0 }).await;
    let second = s
        .session
        .download(slow(2))
        .destination(s.file("2"))
        .start()
        .await
        .unwrap();
    let third = s
        .session
        .download(slow(3))
        .destination(s.file("3"))
        .start()
        .await
        .unwrap();
    let waiting = TaskState::Running {
        phase: RunPhase::Waiting,
    };
    assert_eq!(third.info().await.unwrap().state, waiting);

    let raised = third.set_priority(Priority::Foreground).await.unwrap();
    assert_eq!(raised.priority, Priority::Foreground);
    // The foreground task takes the only slot; the normal ones wait.
    wait_until(|| async { third.info().await.unwrap().bytes_done > 0 }).await;
    assert_eq!(second.info().await.unwrap().state, waiting);
    assert_eq!(second.info().await.unwrap().bytes_done, 0);
    for t in [&first, &second, &third] {
        t.cancel().await.unwrap();
    }
    let e = third.set_priority(Priority::Low).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
}

both!(update_url_continues_from_the_new_url);
async fn update_url_continues_from_the_new_url(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    // The same resource behind a "signed" query that expires: same content and validators.
    let task = s
        .session
        .download(server.url("/bytes/3000000?seed=4&rate=1000000&sig=old"))
        .destination(s.file("u.bin"))
        .connections(1)
        .start()
        .await
        .unwrap();
    wait_until(|| async { task.info().await.unwrap().bytes_done > 200_000 }).await;
    let e = task.update_url("not a url").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let fresh = server.url("/bytes/3000000?seed=4&sig=new");
    let info = task.update_url(&fresh).await.unwrap();
    assert_eq!(info.url, fresh);
    let seen = until_completed(&mut events, task.id()).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e.kind(), EventKind::ResumedAtOffset { offset, .. } if *offset > 0)),
        "the bytes were kept: {:?}",
        names(&seen)
    );
    seen.last().unwrap().result().unwrap().unwrap();
    assert_eq!(
        std::fs::read(s.file("u.bin")).unwrap(),
        content(4, 0, 3_000_000)
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.query.contains("sig=new"))
    );
}

both!(remove_forgets_a_completed_task);
async fn remove_forgets_a_completed_task(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let running = s
        .session
        .download(server.url("/bytes/5000000?rate=100000"))
        .destination(s.file("running"))
        .start()
        .await
        .unwrap();
    let e = running.remove(false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");

    let done = s
        .session
        .download(server.url("/bytes/1000"))
        .destination(s.file("done"))
        .start()
        .await
        .unwrap();
    until_completed(&mut events, done.id()).await;
    done.remove(true).await.unwrap();
    assert!(
        !s.file("done").exists(),
        "delete_file deletes the placed file"
    );
    let ids: Vec<u64> = s
        .session
        .tasks()
        .await
        .unwrap()
        .iter()
        .map(|(t, _)| t.id())
        .collect();
    assert_eq!(ids, [running.id()]);
    assert_eq!(done.info().await.unwrap_err().kind(), ErrorKind::NotFound);
    running.cancel().await.unwrap();
}

both!(tasks_lists_every_task_of_the_session);
async fn tasks_lists_every_task_of_the_session(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let downloads = (0..5).map(|i| {
        s.session
            .download(server.url(&format!("/bytes/10?seed={i}")))
            .destination(s.file(&format!("{i}")))
            .tag(format!("t{i}"))
    });
    let created = s.session.start_downloads(downloads).await.unwrap();
    let listed = s.session.tasks().await.unwrap();
    assert_eq!(
        listed.iter().map(|(t, _)| t.id()).collect::<Vec<_>>(),
        created.iter().map(|t| t.id()).collect::<Vec<_>>()
    );
    let tags: Vec<_> = listed.iter().map(|(_, i)| i.tag.clone().unwrap()).collect();
    assert_eq!(tags, ["t0", "t1", "t2", "t3", "t4"]);

    // One bad request: nothing is created, and the error names it.
    let bad = [
        s.session.download(server.url("/bytes/1")),
        s.session.download("gopher://x/"),
    ];
    let e = s.session.start_downloads(bad).await.unwrap_err();
    assert!(e.to_string().contains("request 1"), "{e}");
    assert_eq!(s.session.tasks().await.unwrap().len(), 5);
}

both!(group_progress_control_and_completion);
async fn group_progress_control_and_completion(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let group = s.session.group("album");
    for i in 0..3 {
        group
            .download(server.url(&format!("/bytes/1000000?seed={i}&rate=1000000")))
            .destination(s.file(&format!("{i}.jpg")))
            .start()
            .await
            .unwrap();
    }
    let paused = group.suspend().await.unwrap();
    assert_eq!(paused.tasks, 3);
    let tasks = group.tasks().await.unwrap();
    assert!(tasks.iter().all(|(_, i)| i.state == TaskState::Suspended));
    group.resume().await.unwrap();
    loop {
        let event = next_event(&mut events).await;
        if let EventKind::GroupCompleted {
            group: name,
            succeeded,
            failed,
            cancelled,
        } = event.kind()
        {
            assert_eq!(
                (name.as_str(), *succeeded, *failed, *cancelled),
                ("album", 3, 0, 0)
            );
            break;
        }
    }
    let progress = group.progress().await.unwrap();
    assert_eq!((progress.completed, progress.succeeded), (3, 3));
    assert_eq!(progress.bytes_done, 3_000_000);
    for i in 0..3 {
        assert_eq!(
            std::fs::read(s.file(&format!("{i}.jpg"))).unwrap(),
            content(i, 0, 1_000_000)
        );
    }
    let e = s.session.group("nope").progress().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    let other = s.session.group("other");
    other
        .download(server.url("/bytes/5000000?rate=100000"))
        .destination(s.file("o"))
        .start()
        .await
        .unwrap();
    let cancelled = other.cancel().await.unwrap();
    assert_eq!(cancelled.cancelled, 1);
}

both!(finish_tasks_and_invalidate_waits_for_the_tasks);
async fn finish_tasks_and_invalidate_waits_for_the_tasks(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .download(server.url("/bytes/400000?rate=1000000"))
        .destination(s.file("f"))
        .start()
        .await
        .unwrap();
    s.session.finish_tasks_and_invalidate().await.unwrap();
    let e = s
        .session
        .download(server.url("/bytes/1"))
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionClosed, "{e}");
    let mut seen = until_completed(&mut events, task.id()).await;
    seen.push(next_event(&mut events).await);
    assert_eq!(
        names(&seen),
        ["finished_downloading", "completed", "session_invalidated"]
    );
    assert!(s.file("f").exists(), "the task was allowed to finish");
    // Afterwards the id takes tasks again.
    s.session
        .download(server.url("/bytes/1"))
        .destination(s.file("g"))
        .start()
        .await
        .unwrap();
}

both!(invalidate_and_cancel_cancels_then_invalidates);
async fn invalidate_and_cancel_cancels_then_invalidates(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .download(server.url("/bytes/5000000?rate=200000"))
        .destination(s.file("f"))
        .start()
        .await
        .unwrap();
    s.session.invalidate_and_cancel().await.unwrap();
    let mut seen = until_completed(&mut events, task.id()).await;
    seen.push(next_event(&mut events).await);
    assert_eq!(names(&seen), ["completed", "session_invalidated"]);
    let e = seen[0].result().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert!(!s.file("f").exists());
}

both!(terminate_cancels_with_resume_data);
async fn terminate_cancels_with_resume_data(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let running = s
        .session
        .download(server.url("/bytes/3000000?seed=2&rate=1000000"))
        .destination(s.file("t"))
        .connections(1)
        .start()
        .await
        .unwrap();
    let never = s
        .session
        .download(server.url("/bytes/10"))
        .create()
        .await
        .unwrap();
    wait_until(|| async { running.info().await.unwrap().bytes_done > 0 }).await;
    s.session.terminate().await.unwrap();
    let mut outcomes = std::collections::HashMap::new();
    while outcomes.len() < 2 {
        let event = next_event(&mut events).await;
        if let EventKind::Completed { outcome, .. } = event.kind() {
            outcomes.insert(event.task_id().unwrap(), outcome.clone());
        }
    }
    let user = ferry::CancelReason::UserTerminated;
    assert!(
        matches!(&outcomes[&running.id()], Outcome::Cancelled { reason, resume_data: Some(_) } if *reason == user)
    );
    assert!(
        matches!(&outcomes[&never.id()], Outcome::Cancelled { reason, resume_data: None } if *reason == user)
    );
}

both!(a_directory_saves_under_the_servers_name);
async fn a_directory_saves_under_the_servers_name(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let folder = s.file("downloads/today");
    let task = s
        .session
        .download(server.url("/bytes/2000?seed=8&filename=report.pdf"))
        .directory(&folder)
        .start()
        .await
        .unwrap();
    let seen = until_completed(&mut events, task.id()).await;
    assert_eq!(names(&seen), ["finished_downloading", "completed"]);
    let EventKind::FinishedDownloading { location } = seen[0].kind() else {
        unreachable!()
    };
    assert_eq!(location, folder.join("report.pdf").to_str().unwrap());
    assert_eq!(
        std::fs::read(folder.join("report.pdf")).unwrap(),
        content(8, 0, 2000)
    );
    let info = task.info().await.unwrap();
    assert_eq!(info.location.as_deref(), Some(location.as_str()));

    let relative = s
        .session
        .download(server.url("/bytes/1"))
        .directory("relative/folder")
        .start()
        .await
        .unwrap_err();
    assert_eq!(relative.kind(), ErrorKind::InvalidInput);
    assert!(relative.to_string().contains("absolute"), "{relative}");
    let both = s
        .session
        .download(server.url("/bytes/1"))
        .directory(&folder)
        .destination(s.file("x"))
        .start()
        .await
        .unwrap_err();
    assert_eq!(both.kind(), ErrorKind::InvalidInput);
    assert!(both.to_string().contains("exclude"), "{both}");
}

both!(a_transferring_task_reports_its_rate);
/// A task shows its current rate while it transfers, and none once it has completed.
async fn a_transferring_task_reports_its_rate(kind: Kind) {
    let server = TestServer::start().unwrap();
    let s = Subject::open(kind, |b| b).await;
    let mut events = s.session.events().unwrap();
    let task = s
        .session
        .download(server.url("/bytes/3000000?seed=9&rate=1000000"))
        .destination(s.file("rated.bin"))
        .start()
        .await
        .unwrap();
    let seen = {
        let task = task.clone();
        wait_until(move || {
            let task = task.clone();
            async move {
                let info = task.info().await.unwrap();
                info.bytes_per_second.is_some_and(|r| r > 0) && info.state.name() == "transferring"
            }
        })
    };
    seen.await;
    until_completed(&mut events, task.id()).await;
    assert_eq!(task.info().await.unwrap().bytes_per_second, None);
}
