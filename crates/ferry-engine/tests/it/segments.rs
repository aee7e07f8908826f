//! Segmented downloads over several connections.

use ferry_engine::{Checkpoint, Segment};

use crate::fixture::{Env, content};

const N: u64 = 8 * 1024 * 1024;

fn ranges(env: &Env) -> Vec<(u64, u64)> {
    env.server
        .requests()
        .iter()
        .filter_map(|r| {
            let spec = r.header("range")?.strip_prefix("bytes=")?.to_owned();
            let (a, b) = spec.split_once('-')?;
            Some((a.parse().ok()?, b.parse().unwrap_or(u64::MAX)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_use_several_connections() {
    let env = Env::new();
    let mut spec = env.spec(&format!("/bytes/{N}?seed=31&rate=8000000"));
    spec.connections = 4;
    spec.min_segment = 256 * 1024;
    let (result, _) = env.run(&spec).await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(31, N));
    let requests = env.server.requests();
    assert!(requests.len() >= 4, "{} requests", requests.len());
    assert_eq!(requests[0].status, 200);
    assert!(requests[1..].iter().all(|r| r.status == 206));
    assert!(
        requests[1..].iter().all(|r| r.header("if-range").is_some()),
        "segment requests are validated"
    );
    // A connection that lost the rest of its range to another stops early: little is wasted.
    assert!(
        env.server.bytes_sent() < N + N / 4,
        "{}",
        env.server.bytes_sent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_or_one_connection_are_not_split() {
    let env = Env::new();
    let mut spec = env.spec("/bytes/1000000?seed=32");
    spec.connections = 4;
    let (result, _) = env.run(&spec).await;
    result.unwrap();
    assert_eq!(
        env.server.requests().len(),
        1,
        "1 MB is below 2 × min_segment"
    );

    env.server.clear_log();
    let mut spec = env.spec(&format!("/bytes/{N}?seed=32"));
    spec.destination = ferry_engine::Destination::File(env.out().join("one"));
    spec.connections = 1;
    let (result, _) = env.run(&spec).await;
    result.unwrap();
    assert_eq!(env.server.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_segments_without_range_support() {
    let env = Env::new();
    let mut spec = env.spec(&format!("/bytes/{N}?seed=33&ranges=0"));
    spec.connections = 4;
    let (result, _) = env.run(&spec).await;
    assert_eq!(std::fs::read(result.unwrap().path).unwrap(), content(33, N));
    assert_eq!(env.server.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_takes_work_from_the_slowest() {
    let env = Env::new();
    // Learn the validators and fill a staging file with a first download.
    let path = format!("/bytes/{N}?seed=34&rate=4000000");
    let (probe, _) = env
        .run(&{
            let mut s = env.spec(&format!("/bytes/{N}?seed=34"));
            s.destination = ferry_engine::Destination::File(env.out().join("probe"));
            s
        })
        .await;
    let probe = probe.unwrap();
    let etag = probe
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    std::fs::create_dir_all(env.staging().parent().unwrap()).unwrap();
    std::fs::copy(&probe.path, env.staging()).unwrap();
    // An unbalanced map: segment A nearly done, segment B untouched.
    let half = N / 2;
    let checkpoint = Checkpoint {
        url: env.server.url(&path),
        current_url: env.server.url(&path),
        total: Some(N),
        validators: ferry_engine::Validators {
            etag: Some(etag),
            last_modified: None,
        },
        segments: vec![
            Segment {
                start: 0,
                pos: half - 64 * 1024,
                end: Some(half),
            },
            Segment {
                start: half,
                pos: half,
                end: Some(N),
            },
        ],
        file_name: None,
    };
    env.server.clear_log();
    let mut spec = env.spec(&path);
    spec.connections = 2;
    spec.min_segment = 256 * 1024;
    spec.checkpoint = Some(checkpoint);
    let (result, _) = env.run(&spec).await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(34, N));
    let ranges = ranges(&env);
    assert_eq!(ranges[0], (half - 64 * 1024, half - 1), "A resumes first");
    // B is fetched from its start by one connection, and the connection that finished A
    // (or the other one, whichever was idle first) takes the back half of it.
    assert!(ranges.iter().any(|r| r.0 == half), "{ranges:?}");
    assert!(
        ranges.iter().any(|r| r.0 > half && r.1 == N - 1),
        "an idle connection took the back of B: {ranges:?}"
    );
    assert!(ranges.len() >= 3, "{ranges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmented_and_resumed_downloads_verify_their_checksum() {
    use ferry_engine::{Algorithm, Checksum};
    let env = Env::new();
    let want = content(35, N);
    let digest = crate::fixture::sha256_hex(&want);
    let path = format!("/bytes/{N}?seed=35&rate=6000000");
    let mut spec = env.spec(&path);
    spec.connections = 4;
    spec.min_segment = 256 * 1024;
    spec.checksum = Some(Checksum::new(Algorithm::Sha256, &digest).unwrap());
    let failure = env.run_and_cancel(&spec, N / 3).await;
    spec.checkpoint = failure.checkpoint;
    assert!(spec.checkpoint.as_ref().unwrap().segments.len() > 1);
    let (result, _) = env.run(&spec).await;
    let done = result.unwrap();
    assert_eq!(done.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(std::fs::read(&done.path).unwrap(), want);

    // The same, from scratch, with a wrong digest: the follower must not hide a mismatch.
    let mut spec = env.spec(&path);
    spec.destination = ferry_engine::Destination::File(env.out().join("wrong"));
    spec.connections = 4;
    spec.min_segment = 256 * 1024;
    let wrong = crate::fixture::sha256_hex(b"x");
    spec.checksum = Some(Checksum::new(Algorithm::Sha256, &wrong).unwrap());
    let (result, _) = env.run(&spec).await;
    match result.unwrap_err().error.kind() {
        ferry_engine::ErrorKind::ChecksumMismatch { actual, .. } => assert_eq!(actual, &digest),
        other => panic!("{other:?}"),
    }
    assert!(!env.out().join("wrong").exists());
}
