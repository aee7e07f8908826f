//! Server faults: statuses, retries, timeouts, redirects, broken bodies.

use std::time::Duration;

use ferry_engine::ErrorKind;

use crate::fixture::{Env, Seen, content};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_statuses_fail_at_once_and_write_nothing() {
    let env = Env::new();
    for code in [403u16, 404, 410] {
        env.server.clear_log();
        let (result, _) = env
            .run(&env.spec(&format!("/bytes/1000?status={code}")))
            .await;
        let failure = result.unwrap_err();
        assert_eq!(failure.error.status(), Some(code));
        assert!(!failure.error.is_transient());
        assert_eq!(env.server.requests().len(), 1, "{code} is not retried");
        assert!(
            env.out_files().is_empty(),
            "no error body saved as the file"
        );
        assert!(failure.checkpoint.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_statuses_are_retried_honouring_retry_after() {
    let env = Env::new();
    let (result, recorder) = env
        .run(&env.spec("/bytes/5000?seed=4&status=503&retry_after=1&fail_times=2"))
        .await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(4, 5000));
    let retries: Vec<_> = recorder
        .non_checkpoint_events()
        .into_iter()
        .filter(|e| matches!(e, Seen::Retrying { .. }))
        .collect();
    assert_eq!(
        retries,
        vec![
            Seen::Retrying {
                attempt: 1,
                delay: Duration::from_millis(200),
                code: "http_status"
            },
            Seen::Retrying {
                attempt: 2,
                delay: Duration::from_millis(200),
                code: "http_status"
            },
        ],
        "Retry-After: 1 is honoured, capped by the policy's 200 ms maximum"
    );
    assert_eq!(env.server.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_used_as_the_delay() {
    let env = Env::new();
    let mut spec = env.spec("/bytes/100?status=429&retry_after=1&fail_times=1");
    spec.retry.max = Duration::from_secs(5);
    let (result, recorder) = env.run(&spec).await;
    result.unwrap();
    assert!(recorder.non_checkpoint_events().contains(&Seen::Retrying {
        attempt: 1,
        delay: Duration::from_secs(1),
        code: "http_status"
    }));
}

/// SPEC §14: a connection error names the host, never a password written into the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_error_does_not_quote_a_password_in_the_url() {
    let env = Env::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spec = env.spec("/");
    spec.url = format!("http://ann:pa55word@127.0.0.1:{port}/f");
    // Fail at once instead of waiting for the host to come up.
    spec.retry.waits_for_connectivity = false;
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "connection");
    let message = ferry_engine::display_chain(&failure.error);
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains("pa55word"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_attempts() {
    let env = Env::new();
    let (result, _) = env.run(&env.spec("/bytes/100?status=500")).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.status(), Some(500));
    assert_eq!(env.server.requests().len(), 5);
}

/// With `hand_back_retries` a transient failure ends the run with when to try again and a
/// checkpoint, instead of a sleep; the next run continues from both (bytes and count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_back_retry_ends_the_run_and_the_next_run_goes_on_from_it() {
    let env = Env::new();
    let n = 1_000_000;
    let path = format!("/bytes/{n}?seed=5&drop_after=300000&fail_times=1");
    let mut spec = env.spec(&path);
    spec.hand_back_retries = true;
    let (result, recorder) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert!(failure.error.is_transient(), "{}", failure.error);
    let retry = failure.retry.expect("a transient failure is handed back");
    assert_eq!(retry.attempt, 1);
    assert!(retry.delay <= Duration::from_millis(20), "{retry:?}");
    assert_eq!(
        env.server.requests().len(),
        1,
        "no second attempt in the run"
    );
    assert!(
        recorder
            .non_checkpoint_events()
            .iter()
            .any(|e| matches!(e, Seen::Retrying { attempt: 1, .. })),
        "the retry is reported before the run ends"
    );
    let checkpoint = failure
        .checkpoint
        .expect("the bytes so far are checkpointed");
    assert!(checkpoint.bytes() > 0);

    spec.checkpoint = Some(checkpoint);
    spec.failed_attempts = retry.attempt;
    let (result, _) = env.run(&spec).await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(5, n));
    assert!(
        env.server.requests()[1].header("range").is_some(),
        "the next run asks for the rest"
    );

    // The count goes on across runs: the policy's 5 attempts are used up by the fifth.
    let mut spec = env.spec("/bytes/100?status=500");
    spec.hand_back_retries = true;
    spec.failed_attempts = 3;
    let failure = env.run(&spec).await.0.unwrap_err();
    assert_eq!(failure.retry.map(|r| r.attempt), Some(4));
    spec.failed_attempts = 4;
    let failure = env.run(&spec).await.0.unwrap_err();
    assert_eq!(
        failure.retry, None,
        "attempts used up: the failure is final"
    );
    assert_eq!(failure.error.status(), Some(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_without_refetching() {
    let env = Env::new();
    let n = 1_000_000;
    let (result, recorder) = env
        .run(&env.spec(&format!("/bytes/{n}?seed=5&drop_after=300000&fail_times=1")))
        .await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(5, n));
    let requests = env.server.requests();
    assert_eq!(requests.len(), 2);
    let range = requests[1]
        .header("range")
        .unwrap_or_else(|| panic!("the retry asks for a range: {requests:?}"));
    let (from, to) = range.trim_start_matches("bytes=").split_once('-').unwrap();
    let offset: u64 = from.parse().unwrap();
    assert_eq!(to, (n - 1).to_string());
    assert!(offset > 0 && offset <= 300_000, "{range}");
    assert_eq!(
        requests[1].body_bytes_sent,
        n - offset,
        "only the missing bytes"
    );
    assert!(
        recorder
            .non_checkpoint_events()
            .contains(&Seen::ResumedAtOffset {
                offset,
                expected: Some(n)
            })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_content_length_is_caught_and_resumed() {
    let env = Env::new();
    let n = 400_000;
    let (result, recorder) = env
        .run(&env.spec(&format!("/bytes/{n}?seed=6&short_by=1000&fail_times=1")))
        .await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(6, n));
    assert!(
        recorder.events().iter().any(|e| matches!(
            e,
            Seen::Retrying {
                code: "interrupted" | "short_body",
                ..
            }
        )),
        "{:?}",
        recorder.non_checkpoint_events()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_first_byte_hits_the_request_timeout_and_retries() {
    let env = Env::new();
    let mut spec = env.spec("/bytes/1000?seed=8&first_byte_delay_ms=2000&fail_times=1");
    spec.request_timeout = Duration::from_millis(300);
    let (result, recorder) = env.run(&spec).await;
    result.unwrap();
    assert!(recorder.events().iter().any(|e| matches!(
        e,
        Seen::Retrying {
            attempt: 1,
            code: "request_timeout",
            ..
        }
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_timeout_fails_permanently_with_a_checkpoint() {
    let env = Env::new();
    let mut spec = env.spec("/bytes/1000000?rate=100000");
    spec.resource_timeout = Some(Duration::from_millis(500));
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(
        failure.error.kind(),
        &ErrorKind::TimedOut(Duration::from_millis(500))
    );
    assert!(!failure.error.is_transient());
    let checkpoint = failure.checkpoint.expect("bytes so far are kept");
    assert!(checkpoint.bytes() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_redirect_chain_and_reports_each_hop() {
    let env = Env::new();
    let target = env.server.url("/bytes/100?seed=9");
    let encoded: String = url_encode(&target);
    let (result, recorder) = env
        .run(&env.spec(&format!("/redirect/2?to={encoded}&code=307")))
        .await;
    let done = result.unwrap();
    assert_eq!(done.final_url.as_str(), target);
    assert_eq!(done.redirects.len(), 3);
    let hops: Vec<_> = recorder
        .non_checkpoint_events()
        .into_iter()
        .filter(|e| matches!(e, Seen::Redirected { .. }))
        .collect();
    assert_eq!(hops.len(), 3);
    assert!(matches!(&hops[2], Seen::Redirected { to, status: 307, .. } if *to == target));
    assert_eq!(std::fs::read(done.path).unwrap(), content(9, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loop_is_too_many_redirects() {
    let env = Env::new();
    let (result, _) = env.run(&env.spec("/loop")).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "too_many_redirects");
    assert!(!failure.error.is_transient());
    assert!(env.out_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_twenty_redirects_is_too_many() {
    let env = Env::new();
    let target = url_encode(&env.server.url("/bytes/10"));
    let (result, _) = env
        .run(&env.spec(&format!("/redirect/19?to={target}")))
        .await;
    assert!(result.is_ok(), "20 redirects are followed");
    let (result, _) = env
        .run(&env.spec(&format!("/redirect/20?to={target}")))
        .await;
    assert_eq!(
        result.unwrap_err().error.kind().code(),
        "too_many_redirects"
    );
}

pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
