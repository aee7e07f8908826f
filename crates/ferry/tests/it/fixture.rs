//! A private `FERRY_HOME` per test whose daemon the library itself starts, and helpers to
//! run the same behaviour against background and in-process sessions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry::{Event, EventKind, Events, Session, SessionBuilder};

/// How long any wait in these tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `ferryd` binary of this workspace, built if a `cargo test -p ferry` did not.
pub fn ferryd_program() -> PathBuf {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            // target/debug/deps/it-… → target/debug/ferryd
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap().parent().unwrap();
            let program = dir.join("ferryd");
            if !program.is_file() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = std::process::Command::new(cargo)
                    .args(["build", "-p", "ferryd", "--bin", "ferryd"])
                    .status()
                    .unwrap();
                assert!(status.success(), "building ferryd");
            }
            program
        })
        .clone()
}

/// A `FERRY_HOME` whose daemon is started on demand by the library.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A background session of this home.
    pub fn session(&self, id: &str) -> SessionBuilder {
        Session::background(id)
            .home(self.path())
            .daemon_program(ferryd_program())
            .client_name("ferry-tests")
    }

    /// A control-only session (no events), as another process would use.
    pub async fn control(&self, id: &str) -> Session {
        self.session(id).attach(false).open().await.unwrap()
    }

    /// The running daemon's pid, from its pid file.
    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path().join("ferryd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `ferryd` processes serving this home (from /proc).
    pub fn daemons(&self) -> Vec<u32> {
        let wanted = format!("FERRY_HOME={}", self.path().display());
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                comm.trim() == "ferryd"
                    && environ
                        .split(|b| *b == 0)
                        .any(|var| var == wanted.as_bytes())
                    && !is_zombie(*pid)
            })
            .collect()
    }

    /// SIGKILL to the daemon, and waits until it is gone.
    pub async fn kill_daemon(&self) {
        let pid = self.daemon_pid().expect("a running daemon");
        signal(pid, "KILL");
        wait_until(|| async { !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) })
            .await;
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Only the daemon this test's library started serves this home.
        for pid in self.daemons() {
            signal(pid, "KILL");
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status();
}

/// Polls an async condition every 10 ms until it holds, for at most [`PATIENCE`].
pub async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next event that is not progress.
pub async fn next_event(events: &mut Events) -> Event {
    loop {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no error");
        if !matches!(event.kind(), EventKind::Progress { .. }) {
            return event;
        }
    }
}

/// Events (progress left out) until `task`'s `completed`, inclusive.
pub async fn until_completed(events: &mut Events, task: u64) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(events).await;
        let done = event.task_id() == Some(task) && event.result().is_some();
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// The kinds' names, for order assertions.
pub fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| name(e.kind())).collect()
}

pub fn name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Progress { .. } => "progress",
        EventKind::Redirected { .. } => "redirected",
        EventKind::ResumedAtOffset { .. } => "resumed_at_offset",
        EventKind::Retrying { .. } => "retrying",
        EventKind::FinishedDownloading { .. } => "finished_downloading",
        EventKind::Completed { .. } => "completed",
        EventKind::GroupCompleted { .. } => "group_completed",
        EventKind::SessionInvalidated => "session_invalidated",
        EventKind::BacklogDelivered => "backlog_delivered",
    }
}

/// Which kind of session a behavioural test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Background,
    InProcess,
}

/// A session of `kind` (with a fresh home for background ones), configured by `configure`.
pub struct Subject {
    pub session: Session,
    _home: Option<Home>,
    pub dir: tempfile::TempDir,
}

impl Subject {
    pub async fn open(
        kind: Kind,
        configure: impl FnOnce(SessionBuilder) -> SessionBuilder,
    ) -> Subject {
        let (builder, home) = match kind {
            Kind::Background => {
                let home = Home::new();
                (home.session("com.example.test"), Some(home))
            }
            Kind::InProcess => (Session::in_process(), None),
        };
        Subject {
            session: configure(builder).open().await.unwrap(),
            _home: home,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs a behavioural test against both kinds of session: `both!(name)` expects an
/// `async fn name(kind: Kind)` in scope.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn background() {
                super::$name($crate::fixture::Kind::Background).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn in_process() {
                super::$name($crate::fixture::Kind::InProcess).await
            }
        }
    };
}
