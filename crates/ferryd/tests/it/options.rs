//! Session options (SPEC §4) the daemon applies to every transfer of the session: retry
//! policy, waiting for connectivity, user agent, https → http redirects, TLS roots and
//! client identity — and refusing a configuration that cannot work, at attach.

use ferry_proto::{OutcomeKind, RetryConfig, SessionConfig, TaskInfo, TaskState, TlsConfig};
use ferry_testserver::{TestServer, content};

use crate::fixture::{Client, Daemon, download, wait_completed};

fn succeeded() -> TaskState {
    TaskState::Completed {
        outcome: OutcomeKind::Succeeded,
    }
}

/// Attaches `session` with `config` and runs one download of `url` to its end.
async fn run_one(c: &mut Client, session: &str, config: SessionConfig, url: String) -> TaskInfo {
    c.attach_with(session, config, false).await.unwrap();
    let task = c.create(session, download(url, None)).await;
    wait_completed(c, task.id).await
}

/// Percent-encodes every byte but letters and digits.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_policy_and_waiting_for_connectivity_are_the_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;

    // Two attempts, 50 ms apart: a server that always answers 503 fails the task quickly.
    let quick = SessionConfig {
        retry: RetryConfig {
            initial_ms: 50,
            max_ms: 100,
            max_attempts: Some(2),
        },
        ..SessionConfig::default()
    };
    let done = run_one(
        &mut c,
        "r",
        quick,
        server.url("/bytes/10?seed=1&status=503"),
    )
    .await;
    let error = done.error.expect("failed");
    assert_eq!(
        (error.code.as_str(), error.status),
        ("http_status", Some(503))
    );
    assert_eq!(server.requests().len(), 2, "max_attempts");

    // Not waiting for connectivity: an unreachable host fails at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let impatient = SessionConfig {
        waits_for_connectivity: false,
        ..SessionConfig::default()
    };
    let done = run_one(&mut c, "n", impatient, format!("http://127.0.0.1:{port}/f")).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Failed
        }
    );
    assert_eq!(done.error.unwrap().code, "connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_agent_is_the_sessions_unless_headers_name_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let config = SessionConfig {
        user_agent: Some("Photos/2.1 (ferry)".into()),
        ..SessionConfig::default()
    };
    let done = run_one(&mut c, "ua", config, server.url("/bytes/10?seed=2")).await;
    assert_eq!(done.state, succeeded());
    let mut own = download(server.url("/bytes/10?seed=3"), None);
    own.headers.0.push(("User-Agent".into(), "task/1".into()));
    let own = c.create("ua", own).await;
    wait_completed(&mut c, own.id).await;
    let agents: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.header("user-agent").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(agents, ["Photos/2.1 (ferry)", "task/1"]);
}

/// SPEC §4 TLS: a server whose certificate only an extra root vouches for is refused, then
/// reached with that root; an https → http redirect is refused unless the session allows
/// it; a server that asks for a client certificate gets the session's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_roots_client_identity_and_insecure_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TestServer::start().unwrap();
    let tls = TestServer::start_tls().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;

    let done = run_one(
        &mut c,
        "none",
        SessionConfig::default(),
        tls.url("/bytes/10?seed=4"),
    )
    .await;
    assert_eq!(done.error.unwrap().code, "tls", "not trusted by default");

    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, tls.cert_pem().unwrap()).unwrap();
    let trusting = SessionConfig {
        tls: TlsConfig {
            extra_roots: vec![roots.display().to_string()],
            client_identity: None,
        },
        ..SessionConfig::default()
    };
    let done = run_one(
        &mut c,
        "roots",
        trusting.clone(),
        tls.url("/bytes/4000?seed=5"),
    )
    .await;
    assert_eq!(done.state, succeeded());
    let location = done.location.unwrap();
    assert_eq!(std::fs::read(location).unwrap(), content(5, 0, 4000));

    // https → http.
    let down = plain.url("/bytes/10?seed=6");
    let redirect = tls.url(&format!("/redirect/0?to={}", encode(&down)));
    let done = run_one(&mut c, "roots", trusting.clone(), redirect.clone()).await;
    assert_eq!(done.error.unwrap().code, "insecure_redirect");
    let allowing = SessionConfig {
        allow_insecure_redirects: true,
        ..trusting
    };
    let done = run_one(&mut c, "roots", allowing, redirect).await;
    assert_eq!(done.state, succeeded());

    // Mutual TLS.
    let mutual = TestServer::start_mutual_tls().unwrap();
    let roots = dir.path().join("mutual-roots.pem");
    std::fs::write(&roots, mutual.cert_pem().unwrap()).unwrap();
    let identity = dir.path().join("client.pem");
    std::fs::write(&identity, mutual.client_identity_pem().unwrap()).unwrap();
    let anonymous = SessionConfig {
        tls: TlsConfig {
            extra_roots: vec![roots.display().to_string()],
            client_identity: None,
        },
        ..SessionConfig::default()
    };
    let done = run_one(
        &mut c,
        "m",
        anonymous.clone(),
        mutual.url("/bytes/10?seed=7"),
    )
    .await;
    let refused = done.error.expect("no client certificate: refused");
    assert!(
        ["tls", "connection"].contains(&refused.code.as_str()),
        "{refused:?}"
    );
    let known = SessionConfig {
        tls: TlsConfig {
            client_identity: Some(identity.display().to_string()),
            ..anonymous.tls
        },
        ..anonymous
    };
    let done = run_one(&mut c, "m", known, mutual.url("/bytes/3000?seed=8")).await;
    assert_eq!(done.state, succeeded(), "{done:?}");
    assert_eq!(
        std::fs::read(done.location.unwrap()).unwrap(),
        content(8, 0, 3000)
    );
}

/// A configuration that cannot work is refused at attach, saying what is wrong, and the
/// session keeps the one it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cannot_work_is_refused_at_attach() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let good = SessionConfig {
        launch_command: Some(vec!["/bin/true".into()]),
        ..SessionConfig::default()
    };
    c.attach_with("s", good, false).await.unwrap();
    let missing = dir.path().join("nowhere.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let bad = [
        (
            SessionConfig {
                retry: RetryConfig {
                    initial_ms: 0,
                    ..RetryConfig::default()
                },
                ..SessionConfig::default()
            },
            "retry.initial_ms",
        ),
        (
            SessionConfig {
                retry: RetryConfig {
                    max_attempts: Some(0),
                    ..RetryConfig::default()
                },
                ..SessionConfig::default()
            },
            "retry.max_attempts",
        ),
        (
            SessionConfig {
                max_concurrent: 0,
                ..SessionConfig::default()
            },
            "max_concurrent",
        ),
        (
            SessionConfig {
                user_agent: Some("bad\nagent".into()),
                ..SessionConfig::default()
            },
            "user_agent",
        ),
        (
            SessionConfig {
                tls: TlsConfig {
                    extra_roots: vec![missing.display().to_string()],
                    client_identity: None,
                },
                ..SessionConfig::default()
            },
            "nowhere.pem",
        ),
        (
            SessionConfig {
                tls: TlsConfig {
                    extra_roots: Vec::new(),
                    client_identity: Some(garbage.display().to_string()),
                },
                ..SessionConfig::default()
            },
            "client identity",
        ),
    ];
    for (config, named) in bad {
        let error = c.attach_with("s", config, false).await.unwrap_err();
        assert_eq!(error.code, "invalid_request", "{error:?}");
        assert!(error.message.contains(named), "{named}: {}", error.message);
    }
    // The session still has its configuration.
    let sessions = match c.request(ferry_proto::Request::ListSessions).await.unwrap() {
        ferry_proto::Response::Sessions { sessions } => sessions,
        other => panic!("{other:?}"),
    };
    let s = sessions.iter().find(|s| s.id == "s").unwrap();
    assert_eq!(s.launch_command, Some(vec!["/bin/true".to_string()]));
}

/// The TLS files are read again when a transfer starts: a renewed root is picked up; while
/// the file cannot be read the last good material serves, and a client re-attaching with
/// the same configuration is not refused. Files that cannot be certificates are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_are_read_again_and_a_missing_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        TestServer::start_tls().unwrap(),
        TestServer::start_tls().unwrap(),
    );
    let daemon = Daemon::start(&dir.path().join("home")).await;
    let mut c = daemon.client().await;
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, first.cert_pem().unwrap()).unwrap();
    let config = SessionConfig {
        tls: TlsConfig {
            extra_roots: vec![roots.display().to_string()],
            client_identity: None,
        },
        ..SessionConfig::default()
    };
    let done = run_one(&mut c, "r", config.clone(), first.url("/bytes/10?seed=9")).await;
    assert_eq!(done.state, succeeded());

    // Renewed: the file now vouches for the second server only.
    std::fs::write(&roots, second.cert_pem().unwrap()).unwrap();
    let renewed = c
        .create("r", download(second.url("/bytes/10?seed=10"), None))
        .await;
    assert_eq!(wait_completed(&mut c, renewed.id).await.state, succeeded());

    // Gone for a moment: the last good material serves, and re-attaching is not refused.
    std::fs::remove_file(&roots).unwrap();
    let meanwhile = c
        .create("r", download(second.url("/bytes/10?seed=11"), None))
        .await;
    assert_eq!(
        wait_completed(&mut c, meanwhile.id).await.state,
        succeeded()
    );
    c.attach_with("r", config, false).await.unwrap();

    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    for (path, says) in [
        ("roots.pem".to_owned(), "absolute"),
        ("/dev/zero".to_owned(), "regular file"),
        (big.display().to_string(), "larger than"),
    ] {
        let bad = SessionConfig {
            tls: TlsConfig {
                extra_roots: vec![path],
                client_identity: None,
            },
            ..SessionConfig::default()
        };
        let error = c.attach_with("other", bad, false).await.unwrap_err();
        assert_eq!(error.code, "invalid_request");
        assert!(error.message.contains(says), "{says}: {}", error.message);
    }
}
