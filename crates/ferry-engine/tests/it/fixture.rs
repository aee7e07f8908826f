//! A temporary folder, a test origin and an engine per test; events recorded for assertions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_engine::{
    ClientConfig, Destination, DownloadSpec, Downloaded, Engine, Event, Failure, Progress,
    ProxyConfig, RetryPolicy,
};
use ferry_testserver::TestServer;
use tokio_util::sync::CancellationToken;

/// What an observer saw, owned so tests can inspect it after the download.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Redirected {
        from: String,
        to: String,
        status: u16,
    },
    ResumedAtOffset {
        offset: u64,
        expected: Option<u64>,
    },
    Retrying {
        attempt: u32,
        delay: Duration,
        code: &'static str,
    },
    Checkpoint(ferry_engine::Checkpoint),
}

#[derive(Default, Clone)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn non_checkpoint_events(&self) -> Vec<Seen> {
        self.events()
            .into_iter()
            .filter(|e| !matches!(e, Seen::Checkpoint(_)))
            .collect()
    }
}

impl ferry_engine::Observer for Recorder {
    fn on_event(&self, event: Event<'_>) {
        let seen = match event {
            Event::Redirected { from, to, status } => Seen::Redirected {
                from: from.to_string(),
                to: to.to_string(),
                status,
            },
            Event::ResumedAtOffset { offset, expected } => {
                Seen::ResumedAtOffset { offset, expected }
            }
            Event::Retrying {
                attempt,
                delay,
                error,
            } => Seen::Retrying {
                attempt,
                delay,
                code: error.kind().code(),
            },
            Event::Checkpoint(c) => Seen::Checkpoint(c.clone()),
            _ => return,
        };
        self.seen.lock().unwrap().push(seen);
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: TestServer,
    pub engine: Engine,
}

/// A client that ignores the machine's proxy variables: tests talk to loopback directly.
pub fn direct_client() -> ClientConfig {
    ClientConfig {
        proxy: ProxyConfig::default(),
        ..ClientConfig::default()
    }
}

impl Env {
    pub fn new() -> Env {
        Env::with_server(TestServer::start().unwrap())
    }

    pub fn with_server(server: TestServer) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        Env {
            dir,
            server,
            engine: Engine::new(&direct_client()).unwrap(),
        }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn staging(&self) -> PathBuf {
        self.dir.path().join("staging/task.part")
    }

    /// A spec for `path_query` on the test server into `out/`, with quick retries.
    pub fn spec(&self, path_query: &str) -> DownloadSpec {
        let mut spec = DownloadSpec::new(
            self.server.url(path_query),
            self.staging(),
            Destination::Folder(self.out()),
        );
        spec.retry = RetryPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_attempts: Some(5),
            ..RetryPolicy::default()
        };
        spec.request_timeout = Duration::from_secs(10);
        spec
    }

    pub async fn run(&self, spec: &DownloadSpec) -> (Result<Downloaded, Failure>, Recorder) {
        let recorder = Recorder::default();
        let result = self
            .engine
            .download(
                spec,
                &Progress::default(),
                &recorder,
                &CancellationToken::new(),
            )
            .await;
        (result, recorder)
    }

    /// Forgets the server's request log, then runs `path_query` from `checkpoint`.
    pub async fn resume(
        &self,
        path_query: &str,
        checkpoint: ferry_engine::Checkpoint,
    ) -> (Result<Downloaded, Failure>, Recorder) {
        self.server.clear_log();
        let mut spec = self.spec(path_query);
        spec.checkpoint = Some(checkpoint);
        self.run(&spec).await
    }

    /// Runs `spec` and cancels it once at least `after` bytes have been received.
    pub async fn run_and_cancel(&self, spec: &DownloadSpec, after: u64) -> Failure {
        let progress = Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        let watcher = {
            let (progress, cancel) = (progress.clone(), cancel.clone());
            tokio::spawn(async move {
                wait_until(|| progress.received() >= after).await;
                cancel.cancel();
            })
        };
        let result = self.engine.download(spec, &progress, &(), &cancel).await;
        watcher.await.unwrap();
        let failure = result.expect_err("the download should have been cancelled");
        assert_eq!(failure.error.kind().code(), "cancelled");
        failure
    }

    /// Files in `out/`.
    pub fn out_files(&self) -> Vec<String> {
        list(&self.out())
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Polls `condition` every 5 ms for up to 30 s.
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn content(seed: u64, len: u64) -> Vec<u8> {
    ferry_testserver::content(seed, 0, len)
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = ferry_engine::Algorithm::Sha256.hasher();
    h.update(data);
    h.finish_hex()
}
