//! Resuming from checkpoints: only missing bytes, restarts when the resource changed.

use ferry_engine::Validators;

use crate::fixture::{Env, Seen, content};

const N: u64 = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_a_checkpoint_fetching_only_the_missing_bytes() {
    let env = Env::new();
    let spec = env.spec(&format!("/bytes/{N}?seed=21&rate=4000000"));
    let failure = env.run_and_cancel(&spec, N / 4).await;
    let checkpoint = failure
        .checkpoint
        .expect("a cancelled download keeps a checkpoint");
    let kept = checkpoint.bytes();
    assert!((N / 4..N).contains(&kept), "{kept}");

    let (result, recorder) = env
        .resume(&format!("/bytes/{N}?seed=21"), checkpoint.clone())
        .await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(21, N));

    let requests = env.server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("range"),
        Some(format!("bytes={kept}-{}", N - 1).as_str())
    );
    assert_eq!(
        requests[0].header("if-range"),
        checkpoint.validators.etag.as_deref()
    );
    assert_eq!(
        env.server.bytes_sent(),
        N - kept,
        "only the missing bytes are fetched"
    );
    assert_eq!(
        recorder.non_checkpoint_events(),
        vec![Seen::ResumedAtOffset {
            offset: kept,
            expected: Some(N)
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_etag_between_attempts_restarts_from_zero() {
    let env = Env::new();
    let path = format!("/bytes/{N}?seed=22&versioned=1&rate=4000000");
    let failure = env.run_and_cancel(&env.spec(&path), N / 4).await;
    let checkpoint = failure.checkpoint.unwrap();

    env.server.set_generation(1);
    let (result, recorder) = env
        .resume(&format!("/bytes/{N}?seed=22&versioned=1"), checkpoint)
        .await;
    let done = result.unwrap();
    assert_eq!(
        std::fs::read(done.path).unwrap(),
        ferry_testserver::content(22, 1, N),
        "the file is the new version, not a mix"
    );
    assert_eq!(env.server.requests()[0].status, 200);
    assert_eq!(env.server.bytes_sent(), N);
    assert_eq!(
        recorder.non_checkpoint_events(),
        vec![Seen::ResumedAtOffset {
            offset: 0,
            expected: Some(N)
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ignoring_ranges_still_yields_the_right_file() {
    let env = Env::new();
    let n = 1_000_000;
    let (result, recorder) = env
        .run(&env.spec(&format!(
            "/bytes/{n}?seed=23&ranges=0&drop_after=400000&fail_times=1"
        )))
        .await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(23, n));
    let requests = env.server.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].header("range").is_some(),
        "the retry tried to resume"
    );
    assert_eq!(requests[1].status, 200, "the server ignored the range");
    assert!(
        recorder
            .non_checkpoint_events()
            .contains(&Seen::ResumedAtOffset {
                offset: 0,
                expected: Some(n)
            })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_file_shorter_than_recorded_restarts_from_zero() {
    for damage in ["truncate", "delete"] {
        let env = Env::new();
        let spec = env.spec(&format!("/bytes/{N}?seed=24&rate=4000000"));
        let checkpoint = env.run_and_cancel(&spec, N / 2).await.checkpoint.unwrap();
        match damage {
            "truncate" => std::fs::OpenOptions::new()
                .write(true)
                .open(env.staging())
                .unwrap()
                .set_len(checkpoint.high_water() - 1)
                .unwrap(),
            _ => std::fs::remove_file(env.staging()).unwrap(),
        }
        let (result, _) = env.resume(&format!("/bytes/{N}?seed=24"), checkpoint).await;
        assert_eq!(
            std::fs::read(result.unwrap().path).unwrap(),
            content(24, N),
            "{damage}"
        );
        assert_eq!(env.server.requests()[0].header("range"), None, "{damage}");
        assert_eq!(env.server.bytes_sent(), N, "{damage}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_describe_bytes_already_in_the_staging_file() {
    use std::os::unix::fs::FileExt;
    use std::sync::Mutex;

    let env = Env::new();
    let mut spec = env.spec(&format!("/bytes/{N}?seed=25&rate=1000000"));
    spec.checkpoint_interval = std::time::Duration::from_millis(100);
    spec.connections = 3;
    spec.min_segment = 128 * 1024;
    let want = content(25, N);
    let staging = env.staging();
    let seen = Mutex::new(Vec::new());
    // At the moment a checkpoint is reported, every byte it claims must be in the file.
    let observer = |event: ferry_engine::Event<'_>| {
        if let ferry_engine::Event::Checkpoint(cp) = event {
            let file = std::fs::File::open(&staging).unwrap();
            for s in &cp.segments {
                let mut buf = vec![0; (s.pos - s.start) as usize];
                file.read_exact_at(&mut buf, s.start).unwrap();
                assert!(buf == want[s.start as usize..s.pos as usize], "{s:?}");
            }
            seen.lock().unwrap().push(cp.clone());
        }
    };
    env.engine
        .download(
            &spec,
            &ferry_engine::Progress::default(),
            &observer,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    let checkpoints = seen.into_inner().unwrap();
    assert!(checkpoints.len() >= 3, "{}", checkpoints.len());
    let mut last = 0;
    for cp in &checkpoints {
        assert!(cp.is_consistent(), "{cp:?}");
        assert!(cp.bytes() >= last, "checkpoints never go backwards");
        last = cp.bytes();
    }
    assert!(
        checkpoints.iter().any(|cp| cp.segments.len() > 1),
        "segment map recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_etag_is_not_used_for_if_range() {
    let env = Env::new();
    let path = format!("/bytes/{N}?seed=26&weak_etag=1&rate=4000000");
    let checkpoint = env
        .run_and_cancel(&env.spec(&path), N / 4)
        .await
        .checkpoint
        .unwrap();
    assert_eq!(checkpoint.validators.etag, None);
    let last_modified = checkpoint.validators.last_modified.clone().unwrap();
    let (result, _) = env
        .resume(&format!("/bytes/{N}?seed=26&weak_etag=1"), checkpoint)
        .await;
    assert_eq!(std::fs::read(result.unwrap().path).unwrap(), content(26, N));
    assert_eq!(
        env.server.requests()[0].header("if-range"),
        Some(last_modified.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_validator_means_no_resume() {
    let env = Env::new();
    let path = format!("/bytes/{N}?seed=27&etag=0&lastmod=0&rate=4000000");
    let checkpoint = env
        .run_and_cancel(&env.spec(&path), N / 4)
        .await
        .checkpoint
        .unwrap();
    assert_eq!(checkpoint.validators, Validators::default());
    let (result, _) = env
        .resume(&format!("/bytes/{N}?seed=27&etag=0&lastmod=0"), checkpoint)
        .await;
    assert_eq!(std::fs::read(result.unwrap().path).unwrap(), content(27, N));
    assert_eq!(
        env.server.requests()[0].header("range"),
        None,
        "without a validator the bytes cannot be trusted to match"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_range_is_never_appended() {
    let env = Env::new();
    let path = format!("/bytes/{N}?seed=28&rate=4000000&bad_range=1");
    let checkpoint = env
        .run_and_cancel(&env.spec(&path), N / 4)
        .await
        .checkpoint
        .unwrap();
    let (result, recorder) = env
        .resume(&format!("/bytes/{N}?seed=28&bad_range=1"), checkpoint)
        .await;
    assert_eq!(std::fs::read(result.unwrap().path).unwrap(), content(28, N));
    assert!(
        recorder.non_checkpoint_events().iter().any(|e| matches!(
            e,
            Seen::Retrying {
                code: "range_mismatch",
                ..
            }
        )),
        "{:?}",
        recorder.non_checkpoint_events()
    );
    let requests = env.server.requests();
    assert_eq!(requests[0].status, 206, "the server answered a range…");
    assert_eq!(
        requests[1].header("range"),
        None,
        "…from the wrong offset: restart from zero"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_size_is_preallocated() {
    let env = Env::new();
    let path = format!("/bytes/{N}?seed=29&rate=2000000");
    let checkpoint = env
        .run_and_cancel(&env.spec(&path), 1)
        .await
        .checkpoint
        .unwrap();
    assert!(checkpoint.bytes() < N);
    let meta = std::fs::metadata(env.staging()).unwrap();
    assert_eq!(
        meta.len(),
        N,
        "the staging file has its final size from the start"
    );
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 >= N,
        "and its blocks are reserved, not sparse"
    );
}

/// A fast transfer checkpoints by volume too: with an interval that never comes, a
/// checkpoint still follows every `checkpoint_bytes` (so a crash loses at most about that
/// much), each one durable and further than the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_come_every_checkpoint_bytes_as_well_as_every_interval() {
    use std::sync::Mutex;

    let env = Env::new();
    let mut spec = env.spec(&format!("/bytes/{N}?seed=26&rate=1000000"));
    spec.checkpoint_interval = std::time::Duration::from_secs(3600);
    spec.checkpoint_bytes = 256 * 1024;
    let seen = Mutex::new(Vec::new());
    let observer = |event: ferry_engine::Event<'_>| {
        if let ferry_engine::Event::Checkpoint(cp) = event {
            seen.lock().unwrap().push(cp.bytes());
        }
    };
    env.engine
        .download(
            &spec,
            &ferry_engine::Progress::default(),
            &observer,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    // 2 MiB in steps of at least 256 KiB, the last before the end: 4 or more.
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[1] >= w[0] + 256 * 1024),
        "{seen:?}"
    );
    assert_eq!(ferry_engine::DEFAULT_CHECKPOINT_BYTES, 16 << 20);
}
