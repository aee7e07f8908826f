//! Proxies, TLS, credentials across redirects, rate limits.

use std::time::{Duration, Instant};

use ferry_engine::{ClientConfig, Destination, Engine, Limits, ProxyConfig, RateLimiter};
use ferry_testserver::TestServer;

use crate::faults::url_encode;
use crate::fixture::{Env, content, direct_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_is_used() {
    let mut env = Env::new();
    env.engine = Engine::new(&ClientConfig {
        proxy: ProxyConfig {
            http: Some(env.server.url("")),
            ..ProxyConfig::default()
        },
        ..ClientConfig::default()
    })
    .unwrap();
    let mut spec = env.spec("/");
    spec.url = "http://ferry-proxy-test.invalid/bytes/1000?seed=51".into();
    let (result, _) = env.run(&spec).await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(51, 1000));
    assert_eq!(
        env.server.requests()[0].uri,
        "http://ferry-proxy-test.invalid/bytes/1000?seed=51",
        "the request went to the proxy in absolute form"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_hosts_go_direct() {
    let mut env = Env::new();
    env.engine = Engine::new(&ClientConfig {
        proxy: ProxyConfig {
            // Nothing listens on port 9 (discard): using the proxy would fail.
            http: Some("http://127.0.0.1:9".into()),
            https: None,
            no_proxy: Some("127.0.0.1".into()),
        },
        ..ClientConfig::default()
    })
    .unwrap();
    let (result, _) = env.run(&env.spec("/bytes/100")).await;
    result.unwrap();
    assert!(env.server.requests()[0].uri.starts_with('/'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_and_accepts_extra_roots() {
    let server = TestServer::start_tls().unwrap();
    let pem = server.cert_pem().unwrap();
    let env = Env::with_server(server);
    let (result, _) = env.run(&env.spec("/bytes/5000?seed=52")).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "tls", "{:?}", failure.error);
    assert!(
        !failure.error.is_transient(),
        "an untrusted certificate is not retried"
    );

    let engine = Engine::new(&ClientConfig {
        extra_roots_pem: vec![pem.into_bytes()],
        ..direct_client()
    })
    .unwrap();
    let env = Env { engine, ..env };
    let (result, _) = env.run(&env.spec("/bytes/5000?seed=52")).await;
    assert_eq!(
        std::fs::read(result.unwrap().path).unwrap(),
        content(52, 5000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_http_redirect_is_refused_unless_allowed() {
    let tls = TestServer::start_tls().unwrap();
    let plain = TestServer::start().unwrap();
    let engine = Engine::new(&ClientConfig {
        extra_roots_pem: vec![tls.cert_pem().unwrap().into_bytes()],
        ..direct_client()
    })
    .unwrap();
    let target = url_encode(&plain.url("/bytes/100"));
    let env = Env {
        engine,
        ..Env::with_server(tls)
    };
    let mut spec = env.spec(&format!("/redirect/0?to={target}"));
    let (result, _) = env.run(&spec).await;
    assert_eq!(result.unwrap_err().error.kind().code(), "insecure_redirect");
    assert!(plain.requests().is_empty());

    spec.allow_insecure_redirects = true;
    let (result, _) = env.run(&spec).await;
    result.unwrap();
    assert_eq!(plain.requests().len(), 1);
}

/// Credentials (`Authorization: Bearer secret-token`, `Cookie: session=abc`) and a header
/// that may go anywhere (`X-Trace: kept`).
fn with_credentials(spec: &mut ferry_engine::DownloadSpec) {
    spec.headers
        .insert("authorization", "Bearer secret-token".parse().unwrap());
    spec.headers
        .insert("cookie", "session=abc".parse().unwrap());
    spec.headers.insert("x-trace", "kept".parse().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_forwarded_to_another_origin() {
    let env = Env::new();
    let other = TestServer::start().unwrap();
    let mut spec = env.spec(&format!(
        "/redirect/1?to={}",
        url_encode(&other.url("/bytes/100"))
    ));
    with_credentials(&mut spec);
    let (result, _) = env.run(&spec).await;
    result.unwrap();
    let first = env.server.requests();
    assert_eq!(first.len(), 2, "two hops on the first origin");
    for r in &first {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer secret-token"),
            "same origin keeps it"
        );
    }
    let second = &other.requests()[0];
    assert_eq!(second.header("authorization"), None);
    assert_eq!(second.header("cookie"), None);
    assert_eq!(second.header("x-trace"), Some("kept"));
}

/// Regression: the extra connections of a segmented download went straight to the URL the
/// redirect ended at with every header of the request, credentials included, even when that
/// URL is on another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_requests_after_a_redirect_to_another_origin_carry_no_credentials() {
    let env = Env::new();
    let other = TestServer::start().unwrap();
    let n = 4 * 1024 * 1024u64;
    let mut spec = env.spec(&format!(
        "/redirect/1?to={}",
        url_encode(&other.url(&format!("/bytes/{n}?seed=61&rate=8000000")))
    ));
    spec.connections = 4;
    spec.min_segment = 256 * 1024;
    with_credentials(&mut spec);
    let (result, _) = env.run(&spec).await;
    result.unwrap();
    let requests = other.requests();
    assert!(
        requests.iter().filter(|r| r.status == 206).count() >= 1,
        "segmented: {} requests",
        requests.len()
    );
    for r in &requests {
        assert_eq!(r.header("authorization"), None, "{:?}", r.header("range"));
        assert_eq!(r.header("cookie"), None);
        assert_eq!(r.header("x-trace"), Some("kept"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_and_can_change_while_running() {
    let env = Env::new();
    let n = 600_000u64;
    let limiter = RateLimiter::new(400_000);
    let mut spec = env.spec(&format!("/bytes/{n}?seed=53"));
    spec.limits = Limits::none().with(limiter.clone());
    let start = Instant::now();
    let (result, _) = env.run(&spec).await;
    result.unwrap();
    // 600 kB at 400 kB/s, less the 100 ms burst allowance and one chunk in flight.
    assert!(
        start.elapsed() >= Duration::from_millis(1_200),
        "{:?}",
        start.elapsed()
    );

    // Lowered while running: the rest goes at the new rate.
    let limiter = RateLimiter::unlimited();
    let mut spec = env.spec(&format!("/bytes/{n}?seed=54&rate=1000000"));
    spec.destination = Destination::File(env.out().join("second"));
    spec.limits = Limits::none().with(limiter.clone());
    let progress = std::sync::Arc::new(ferry_engine::Progress::default());
    let lower = {
        let (limiter, progress) = (limiter.clone(), progress.clone());
        tokio::spawn(async move {
            crate::fixture::wait_until(|| progress.received() > 0).await;
            limiter.set_rate(200_000);
            (Instant::now(), progress.received())
        })
    };
    let result = env
        .engine
        .download(
            &spec,
            &progress,
            &(),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let (lowered_at, received_then) = lower.await.unwrap();
    let done = result.unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), content(54, n));
    // What was left when the limit dropped needs at least (left − burst) / 200 kB/s.
    let left = n - received_then;
    let floor = Duration::from_secs_f64(left.saturating_sub(20_000 + 64 * 1024) as f64 / 200_000.0);
    assert!(
        left > 300_000,
        "the limit changed early enough to matter: {left}"
    );
    assert!(
        lowered_at.elapsed() >= floor,
        "{:?} < {floor:?}",
        lowered_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_caps_concurrent_transfers_together() {
    let env = Env::new();
    let shared = RateLimiter::new(400_000);
    let n = 300_000u64;
    let specs: Vec<_> = (0..2)
        .map(|i| {
            let mut spec = env.spec(&format!("/bytes/{n}?seed={}", 60 + i));
            spec.destination = Destination::File(env.out().join(format!("f{i}")));
            spec.staging = env.dir.path().join(format!("staging/f{i}.part"));
            spec.limits = Limits::none()
                .with(RateLimiter::unlimited())
                .with(shared.clone());
            spec
        })
        .collect();
    let start = Instant::now();
    let (a, b) = tokio::join!(env.run(&specs[0]), env.run(&specs[1]));
    a.0.unwrap();
    b.0.unwrap();
    // 600 kB through one 400 kB/s bucket, less the burst allowance and a chunk in flight.
    assert!(
        start.elapsed() >= Duration::from_millis(1_100),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_is_used_for_https_urls_unless_no_proxy_matches() {
    let tls = TestServer::start_tls().unwrap();
    let root = tls.cert_pem().unwrap().into_bytes();
    let env = Env::with_server(tls);
    let engine = |no_proxy: Option<&str>| {
        Engine::new(&ClientConfig {
            proxy: ProxyConfig {
                http: None,
                // Nothing listens on port 9: a request that uses this proxy cannot succeed.
                https: Some("http://127.0.0.1:9".into()),
                no_proxy: no_proxy.map(str::to_owned),
            },
            extra_roots_pem: vec![root.clone()],
            ..ClientConfig::default()
        })
        .unwrap()
    };
    let mut spec = env.spec("/bytes/1000?seed=55");
    spec.retry.max_attempts = Some(1);
    // An unreachable proxy would be waited for.
    spec.retry.waits_for_connectivity = false;
    let env = Env {
        engine: engine(None),
        ..env
    };
    let (result, _) = env.run(&spec).await;
    assert_eq!(
        result.unwrap_err().error.kind().code(),
        "connection",
        "went to the proxy"
    );
    assert!(env.server.requests().is_empty());

    let env = Env {
        engine: engine(Some("127.0.0.1")),
        ..env
    };
    let (result, _) = env.run(&spec).await;
    assert_eq!(
        std::fs::read(result.unwrap().path).unwrap(),
        content(55, 1000)
    );
}

/// Over HTTP/2 (ALPN `h2`) a segmented download's ranges share the connection, and a
/// connection that breaks mid-transfer is resumed from the bytes kept: the file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_over_http2_segmented_and_resumed() {
    let server = TestServer::start_h2().unwrap();
    let engine = Engine::new(&ClientConfig {
        extra_roots_pem: vec![server.cert_pem().unwrap().into_bytes()],
        ..direct_client()
    })
    .unwrap();
    let env = Env {
        engine,
        ..Env::with_server(server)
    };
    let n = 4_000_000;
    let mut spec = env.spec(&format!("/bytes/{n}?seed=81"));
    spec.connections = 4;
    spec.min_segment = 256 * 1024;
    let (result, _) = env.run(&spec).await;
    assert_eq!(std::fs::read(result.unwrap().path).unwrap(), content(81, n));
    let requests = env.server.requests();
    assert!(
        requests.iter().all(|r| r.version == "HTTP/2.0"),
        "{:?}",
        requests.iter().map(|r| &r.version).collect::<Vec<_>>()
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.header("range").is_some())
            .count()
            >= 2,
        "segmented: {} requests",
        requests.len()
    );

    env.server.clear_log();
    let path = format!("/bytes/{n}?seed=82&drop_after=1500000&fail_times=1");
    let (result, recorder) = env.run(&env.spec(&path)).await;
    assert_eq!(std::fs::read(result.unwrap().path).unwrap(), content(82, n));
    let resumed = recorder
        .non_checkpoint_events()
        .into_iter()
        .any(|e| matches!(e, crate::fixture::Seen::ResumedAtOffset { offset, .. } if offset > 0));
    assert!(resumed, "{:?}", recorder.non_checkpoint_events());
}
