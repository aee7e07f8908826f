//! Whole downloads: content, names, checksums, conflicts.

use ferry_engine::{Algorithm, Checksum, Conflict, Destination};

use crate::fixture::{Env, content, list, sha256_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_the_exact_bytes_and_places_the_file() {
    let env = Env::new();
    let n = 3 * 1024 * 1024 + 17;
    let (result, _) = env.run(&env.spec(&format!("/bytes/{n}?seed=7"))).await;
    let done = result.unwrap();
    assert_eq!(done.path, env.out().join(n.to_string()));
    assert_eq!(done.bytes, n);
    assert_eq!(done.status, 200);
    assert_eq!(std::fs::read(&done.path).unwrap(), content(7, n));
    assert!(
        !env.staging().exists(),
        "the staging file is moved, not copied"
    );
    assert_eq!(env.server.bytes_sent(), n, "nothing fetched twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_a_body_of_unknown_length() {
    let env = Env::new();
    let (result, _) = env.run(&env.spec("/bytes/200000?seed=3&chunked=1")).await;
    let done = result.unwrap();
    assert_eq!(done.bytes, 200_000);
    assert_eq!(std::fs::read(done.path).unwrap(), content(3, 200_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_an_empty_file() {
    let env = Env::new();
    let (result, _) = env.run(&env.spec("/bytes/0")).await;
    let done = result.unwrap();
    assert_eq!(std::fs::metadata(done.path).unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_every_supported_checksum() {
    let env = Env::new();
    let n = 300_000;
    let data = content(11, n);
    for algorithm in Algorithm::ALL {
        let mut h = algorithm.hasher();
        h.update(&data);
        let digest = h.finish_hex();
        let mut spec = env.spec(&format!("/bytes/{n}?seed=11"));
        spec.destination = Destination::File(env.out().join(algorithm.name()));
        spec.checksum = Some(Checksum::new(algorithm, &digest).unwrap());
        let (result, _) = env.run(&spec).await;
        let done = result.unwrap_or_else(|f| panic!("{algorithm}: {f}"));
        assert_eq!(done.digest.as_deref(), Some(digest.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_fails_and_places_nothing() {
    let env = Env::new();
    let mut spec = env.spec("/bytes/100000?seed=1");
    let wrong = sha256_hex(b"something else");
    spec.checksum = Some(Checksum::new(Algorithm::Sha256, &wrong).unwrap());
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    match failure.error.kind() {
        ferry_engine::ErrorKind::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha256_hex(&content(1, 100_000)));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert!(!failure.error.is_transient());
    assert!(env.out_files().is_empty(), "nothing at the destination");
    assert!(
        !env.staging().exists(),
        "wrong bytes are not kept for a resume"
    );
    assert_eq!(env.server.requests().len(), 1, "a mismatch is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_come_from_content_disposition_then_the_url() {
    let env = Env::new();
    let (result, _) = env
        .run(&env.spec("/bytes/10?filename=report%20final.pdf"))
        .await;
    assert_eq!(result.unwrap().path, env.out().join("report final.pdf"));
    let (result, _) = env
        .run(&env.spec("/bytes/10?filename_star=na%C3%AFve.txt&filename=plain.txt"))
        .await;
    assert_eq!(result.unwrap().path, env.out().join("naïve.txt"));
    let (result, _) = env.run(&env.spec("/bytes/10")).await;
    assert_eq!(result.unwrap().path, env.out().join("10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_content_disposition_cannot_leave_the_folder() {
    let env = Env::new();
    let hostile = [
        ("..%2F..%2Fescaped.txt", "escaped.txt"),
        ("%2Fetc%2Fpasswd", "passwd"),
        ("..", "10"),
    ];
    for (raw, expected) in hostile {
        let (result, _) = env
            .run(&env.spec(&format!("/bytes/10?filename={raw}")))
            .await;
        let done = result.unwrap();
        assert_eq!(done.path.parent(), Some(env.out().as_path()), "{raw}");
        assert_eq!(done.path.file_name().unwrap(), expected, "{raw}");
        std::fs::remove_file(done.path).unwrap();
    }
    // Control characters arrive percent-encoded in filename*.
    let (result, _) = env
        .run(&env.spec("/bytes/10?filename_star=a%0Ab%0D.txt"))
        .await;
    assert_eq!(result.unwrap().path, env.out().join("ab.txt"));
    // Backslashes in an unquoted token.
    let (result, _) = env
        .run(&env.spec("/bytes/10?cd=attachment%3Bfilename%3D..%5C..%5Cwin.ini"))
        .await;
    assert_eq!(result.unwrap().path, env.out().join("win.ini"));
    // A raw header with a path in filename*.
    let (result, _) = env
        .run(&env.spec("/bytes/10?cd=attachment%3B%20filename*%3DUTF-8''..%252F..%252Fx.sh"))
        .await;
    assert_eq!(result.unwrap().path, env.out().join("x.sh"));
    let mut outside = list(env.dir.path());
    outside.retain(|n| n != "out" && n != "staging");
    assert!(outside.is_empty(), "files outside out/: {outside:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_policies() {
    let env = Env::new();
    let target = env.out().join("f.bin");
    std::fs::write(&target, b"old").unwrap();
    let mut spec = env.spec("/bytes/50?seed=2");
    spec.destination = Destination::File(target.clone());

    spec.conflict = Conflict::Rename;
    let (result, _) = env.run(&spec).await;
    assert_eq!(result.unwrap().path, env.out().join("f (1).bin"));
    assert_eq!(std::fs::read(&target).unwrap(), b"old");

    spec.conflict = Conflict::Fail;
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "destination_exists");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert!(failure.checkpoint.is_some(), "the finished bytes are kept");

    spec.conflict = Conflict::Overwrite;
    let (result, _) = env.run(&spec).await;
    assert_eq!(result.unwrap().path, target);
    assert_eq!(std::fs::read(&target).unwrap(), content(2, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_destination_folder_is_a_clear_error() {
    let env = Env::new();
    let mut spec = env.spec("/bytes/50");
    spec.destination = Destination::File(env.dir.path().join("no/such/folder/f"));
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "destination");
    assert!(
        failure.error.to_string().contains("no/such/folder"),
        "{}",
        failure.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_rejected_before_any_request() {
    let env = Env::new();
    for (url, code) in [
        ("ftp://127.0.0.1/x", "unsupported_scheme"),
        ("http://", "invalid_url"),
        ("not a url", "invalid_url"),
    ] {
        let mut spec = env.spec("/");
        spec.url = url.into();
        let (result, _) = env.run(&spec).await;
        let failure = result.unwrap_err();
        assert_eq!(failure.error.kind().code(), code, "{url}");
        assert!(
            failure
                .error
                .to_string()
                .contains(url.trim_end_matches('/')),
            "{}",
            failure.error
        );
    }
    assert!(env.server.requests().is_empty());
}
