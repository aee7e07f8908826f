//! A real `ferryd` process per test, and a protocol client.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use ferry_proto::frame::{read_frame, write_frame};
use ferry_proto::{
    ClientFrame, DownloadRequest, ErrorInfo, EventFrame, PROTOCOL_VERSION, RemovedTask, Request,
    Response, ServerFrame, SessionConfig, TaskInfo, UploadBody, UploadRequest,
};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long any wait in these tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Daemon {
    pub home: PathBuf,
    child: Option<Child>,
    checkpoint_ms: u64,
}

impl Daemon {
    /// Starts `ferryd` on `home` and waits until it accepts connections.
    pub async fn start(home: &Path) -> Daemon {
        Daemon::start_with(home, 200).await
    }

    pub async fn start_with(home: &Path, checkpoint_ms: u64) -> Daemon {
        Daemon::start_env(home, checkpoint_ms, &[]).await
    }

    pub async fn start_env(home: &Path, checkpoint_ms: u64, env: &[(&str, &str)]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_ferryd"))
            .envs(env.iter().copied())
            .env("FERRY_HOME", home)
            .env("FERRY_CHECKPOINT_MS", checkpoint_ms.to_string())
            .env("FERRY_LOG", "warn")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            home: home.to_owned(),
            child: Some(child),
            checkpoint_ms,
        };
        let socket = daemon.socket();
        wait_until(|| {
            let socket = socket.clone();
            async move { std::os::unix::net::UnixStream::connect(&socket).is_ok() }
        })
        .await;
        daemon
    }

    pub fn socket(&self) -> PathBuf {
        self.home.join("ferryd.sock")
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_ms)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        child.wait().unwrap()
    }

    /// Waits until the daemon exits by itself, and returns its exit status.
    pub async fn exited(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the daemon did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket()).await
    }

    /// Polls (on fresh connections) until `session` has a task that has received (or sent)
    /// bytes — one an application in another process created.
    pub async fn wait_for_session_bytes(&self, session: &str) {
        let socket = self.socket();
        wait_until(|| {
            let (socket, session) = (socket.clone(), session.to_owned());
            async move {
                Client::connect(&socket)
                    .await
                    .tasks(Some(&session))
                    .await
                    .first()
                    .is_some_and(|t| t.bytes_done > 0)
            }
        })
        .await;
    }

    /// Polls (on fresh connections) until `task` is in `state`.
    pub async fn wait_for_state(&self, task: u64, state: ferry_proto::TaskState) {
        let socket = self.socket();
        wait_until(|| {
            let socket = socket.clone();
            async move { Client::connect(&socket).await.task(task).await.state == state }
        })
        .await;
    }

    /// Polls (on fresh connections) until `task` has more than `bytes` bytes.
    pub async fn wait_for_bytes(&self, task: u64, bytes: u64) {
        let socket = self.socket();
        wait_until(|| {
            let socket = socket.clone();
            async move { Client::connect(&socket).await.task(task).await.bytes_done > bytes }
        })
        .await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {sig} {pid}");
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

pub struct Client {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    next_id: u64,
    pub events: VecDeque<EventFrame>,
    pub pid: u32,
}

impl Client {
    pub async fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        write_frame(
            &mut writer,
            &ClientFrame::Hello {
                protocol: PROTOCOL_VERSION,
                client: "ferryd-tests".into(),
            },
        )
        .await
        .unwrap();
        let pid = match read_frame::<ServerFrame>(&mut reader).await.unwrap() {
            ServerFrame::Welcome {
                pid,
                protocol,
                revision,
                ..
            } => {
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert_eq!(revision, ferry_proto::PROTOCOL_REVISION);
                pid
            }
            other => panic!("expected welcome, got {other:?}"),
        };
        Client {
            reader,
            writer,
            next_id: 1,
            events: VecDeque::new(),
            pid,
        }
    }

    /// Sends a request and returns its answer; events that arrive first are kept.
    pub async fn request(&mut self, request: Request) -> Result<Response, ErrorInfo> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.writer, &ClientFrame::Request { id, request })
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(PATIENCE, read_frame::<ServerFrame>(&mut self.reader))
                .await
                .expect("an answer in time")
                .unwrap();
            match frame {
                ServerFrame::Response { id: rid, response } if rid == id => return Ok(response),
                ServerFrame::Error {
                    id: Some(rid),
                    error,
                } if rid == id => return Err(error),
                ServerFrame::Event(e) => self.events.push_back(e),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    pub async fn attach(&mut self, session: &str) -> Result<u64, ErrorInfo> {
        self.attach_with(session, SessionConfig::default(), false)
            .await
    }

    pub async fn attach_with(
        &mut self,
        session: &str,
        config: SessionConfig,
        take_over: bool,
    ) -> Result<u64, ErrorInfo> {
        match self
            .request(Request::Attach {
                session: session.into(),
                config,
                take_over,
            })
            .await?
        {
            Response::Attached { backlog, .. } => Ok(backlog),
            other => panic!("{other:?}"),
        }
    }

    pub async fn create(&mut self, session: &str, request: DownloadRequest) -> TaskInfo {
        match self
            .request(Request::CreateDownload {
                session: session.into(),
                request,
            })
            .await
        {
            Ok(Response::Task { task }) => task,
            other => panic!("{other:?}"),
        }
    }

    pub async fn create_upload(
        &mut self,
        session: &str,
        request: UploadRequest,
    ) -> Result<TaskInfo, ErrorInfo> {
        match self
            .request(Request::CreateUpload {
                session: session.into(),
                request,
            })
            .await?
        {
            Response::Task { task } => Ok(task),
            other => panic!("{other:?}"),
        }
    }

    /// One `get_tasks` request: (tasks, removed, unknown, answered).
    pub async fn found_tasks(
        &mut self,
        ids: &[u64],
    ) -> Result<(Vec<TaskInfo>, Vec<RemovedTask>, Vec<u64>, u32), ErrorInfo> {
        match self
            .request(Request::GetTasks {
                tasks: ids.to_vec(),
            })
            .await?
        {
            Response::FoundTasks {
                tasks,
                removed,
                unknown,
                answered,
            } => Ok((tasks, removed, unknown, answered)),
            other => panic!("{other:?}"),
        }
    }

    /// Every task (following `next` through the pages).
    pub async fn tasks(&mut self, session: Option<&str>) -> Vec<TaskInfo> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            match self
                .request(Request::ListTasks {
                    session: session.map(str::to_owned),
                    after,
                    limit: None,
                })
                .await
            {
                Ok(Response::Tasks { tasks, next }) => {
                    all.extend(tasks);
                    match next {
                        Some(n) => after = Some(n),
                        None => return all,
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }

    pub async fn task(&mut self, id: u64) -> TaskInfo {
        self.tasks(None)
            .await
            .into_iter()
            .find(|t| t.id == id)
            .expect("the task exists")
    }

    /// The next event (from the buffer, else from the socket).
    pub async fn next_event(&mut self) -> EventFrame {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        let frame = tokio::time::timeout(PATIENCE, read_frame::<ServerFrame>(&mut self.reader))
            .await
            .expect("an event in time")
            .unwrap();
        match frame {
            ServerFrame::Event(e) => e,
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// The next journaled event, skipping progress.
    pub async fn next_journaled(&mut self) -> EventFrame {
        loop {
            let e = self.next_event().await;
            if e.event.is_journaled() {
                return e;
            }
        }
    }

    pub async fn ack(&mut self, session: &str, seq: u64) {
        self.request(Request::Ack {
            session: session.into(),
            seq,
        })
        .await
        .unwrap();
    }

    /// Raw bytes on the socket (for malformed-frame tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next frame, whatever it is (None when the daemon closed the connection).
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        tokio::time::timeout(PATIENCE, read_frame::<ServerFrame>(&mut self.reader))
            .await
            .expect("a frame in time")
            .ok()
    }
}

/// A download of `url` to `dest` with defaults.
pub fn download(url: String, dest: Option<&Path>) -> DownloadRequest {
    DownloadRequest {
        url,
        destination: dest.map(|d| d.display().to_string()),
        directory: None,
        headers: Default::default(),
        checksum: None,
        priority: None,
        tag: None,
        group: None,
        connections: None,
        rate_limit: None,
        earliest_begin: None,
        start: true,
    }
}

/// An upload of `body` to `url` with defaults.
pub fn upload(url: String, body: UploadBody) -> UploadRequest {
    UploadRequest {
        url,
        method: None,
        body,
        headers: Default::default(),
        priority: None,
        tag: None,
        group: None,
        rate_limit: None,
        earliest_begin: None,
        start: true,
    }
}

/// A raw upload of the file at `path`.
pub fn file_body(path: &Path) -> UploadBody {
    UploadBody::File {
        path: path.display().to_string(),
    }
}

/// Waits until the task has completed and returns it.
pub async fn wait_completed(client: &mut Client, id: u64) -> TaskInfo {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let task = client.task(id).await;
        if matches!(task.state, ferry_proto::TaskState::Completed { .. }) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} did not complete: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
