//! Background sessions: a connection to `ferryd` that speaks `docs/PROTOCOL.md`.
//!
//! One task per session supervises the connection: it connects (starting the daemon if
//! needed), says hello, attaches, then reads frames until the connection ends — and does it
//! all again, with a growing pause, if the daemon went away. Requests wait for a live
//! connection. Events go to the session's channel; after a reconnect the journal replays what
//! was not acknowledged, and what this process already handed out is dropped, so the
//! application sees each event once.

pub(crate) mod spawn;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_proto::frame::{FrameError, read_frame, write_frame};
use ferry_proto::{
    ClientFrame, ErrorInfo, Event, EventFrame, PROTOCOL_VERSION, Request, Response, ServerFrame,
    SessionConfig,
};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind};

/// How long a request waits for a connection while the daemon is away.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// What the session asks of the daemon on every connection.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub home: PathBuf,
    /// The `ferryd` to start (`None`: look for it).
    pub program: Option<PathBuf>,
    /// The session (unused without `attach`: nothing session-scoped is sent then).
    pub session: String,
    /// `None`: control only — requests, no events (another process may be attached).
    pub attach: Option<Attach>,
    pub client_name: String,
    /// When to start `ferryd` if none runs.
    pub start: Start,
}

/// When a client starts `ferryd` if none runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// On every (re)connection: a session outlives daemon restarts.
    Always,
    /// On the first connection only; reconnects wait for a daemon someone else starts.
    FirstOnly,
    /// Never: the first connection fails with `not_running`.
    Never,
}

#[derive(Debug, Clone)]
pub(crate) struct Attach {
    pub config: SessionConfig,
    pub take_over: bool,
}

type Answer = Result<Response, ErrorInfo>;

/// One live connection.
struct Link {
    daemon_pid: u32,
    /// The daemon's protocol revision (what it announced in `welcome`).
    revision: u32,
    outbound: mpsc::UnboundedSender<ClientFrame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    dead: CancellationToken,
}

impl Link {
    /// Fails every request still waiting: the connection is gone.
    fn fail_pending(&self, why: &str) {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, answer) in pending {
            let mut info = ErrorInfo::new("disconnected", why);
            info.transient = true;
            let _ = answer.send(Err(info));
        }
    }
}

/// The acknowledgement to send without waiting, and whether one is on its way.
#[derive(Default)]
struct AckSlot {
    /// Highest sequence number asked for.
    wanted: u64,
    /// Highest sequence number queued on a connection (or acknowledged explicitly).
    sent: u64,
    /// A task is sending acknowledgements ([`send_acks`]).
    in_flight: bool,
}

/// The state the supervisor keeps between connections.
struct Shared {
    options: Options,
    next_id: AtomicU64,
    /// The current connection; `None` while (re)connecting.
    link: watch::Sender<Option<Arc<Link>>>,
    /// Why the session stopped for good (taken over, daemon refused), once it has.
    fatal: Mutex<Option<ErrorInfo>>,
    /// Highest sequence number handed to the application.
    forwarded: AtomicU64,
    /// Journaled events replayed at the first attach.
    backlog: AtomicU64,
    /// Acknowledgements asked for without waiting ([`Client::ack_soon`]).
    acks: Mutex<AckSlot>,
    /// The runtime the session was opened on.
    runtime: tokio::runtime::Handle,
    /// Where events go; dropped when the session is lost for good, which ends the stream.
    events: Mutex<Option<mpsc::UnboundedSender<Result<EventFrame, Error>>>>,
    closed: CancellationToken,
}

impl Shared {
    fn acks(&self) -> std::sync::MutexGuard<'_, AckSlot> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send_event(&self, item: Result<EventFrame, Error>) {
        if let Some(events) = &*self.events.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = events.send(item);
        }
    }
}

/// A background session's link to the daemon. Dropping it closes the connection, which
/// detaches the session: its tasks go on and its events wait in the journal.
pub(crate) struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Connects and (when asked) attaches, failing if the first connection fails. Events
    /// (and a final error, if the session is lost) go to `events`.
    pub(crate) async fn connect(
        options: Options,
        events: mpsc::UnboundedSender<Result<EventFrame, Error>>,
    ) -> Result<Client, Error> {
        let (link, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            options,
            next_id: AtomicU64::new(1),
            link,
            fatal: Mutex::new(None),
            forwarded: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            acks: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            events: Mutex::new(Some(events)),
            closed: CancellationToken::new(),
        });
        let reader = establish(&shared, false).await?;
        tokio::spawn(supervise(shared.clone(), reader));
        Ok(Client { shared })
    }

    /// Sends a request and waits for its answer, waiting for a connection first if the
    /// daemon is being reconnected to.
    pub(crate) async fn call(&self, request: Request) -> Result<Response, Error> {
        call(&self.shared, request).await
    }

    /// Acknowledges through `seq` without waiting for the answer (the next one covers it if
    /// this one is lost). At most one such acknowledgement is in flight: those asked for
    /// meanwhile merge into the highest, sent when its answer comes — an application taking
    /// thousands of events sends a handful of acks, not one per event.
    pub(crate) fn ack_soon(&self, seq: u64) {
        let mut acks = self.shared.acks();
        acks.wanted = acks.wanted.max(seq);
        if acks.in_flight {
            return;
        }
        acks.in_flight = true;
        drop(acks);
        // On the runtime the session was opened on: the events may be polled elsewhere.
        self.shared.runtime.spawn(send_acks(self.shared.clone()));
    }

    /// An acknowledgement through `seq` was made and answered ([`crate::Events::ack`]): no
    /// merged one below it needs to go.
    pub(crate) fn acknowledged(&self, seq: u64) {
        let mut acks = self.shared.acks();
        acks.sent = acks.sent.max(seq);
    }

    pub(crate) fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    /// The protocol revision of the daemon connected to (waiting for a connection first).
    pub(crate) async fn daemon_revision(&self) -> Result<u32, Error> {
        Ok(live_link(&self.shared).await?.revision)
    }

    pub(crate) fn daemon_pid(&self) -> Option<u32> {
        self.shared.link.borrow().as_ref().map(|l| l.daemon_pid)
    }
}

/// Sends a request and waits for its answer, waiting for a connection first if the daemon is
/// being reconnected to.
async fn call(shared: &Shared, request: Request) -> Result<Response, Error> {
    let link = live_link(shared).await?;
    // An older daemon still running after an upgrade would close the connection on it.
    check_revision(&request, link.daemon_pid, link.revision)?;
    let answer = send_request(shared, &link, request)?;
    answer_of(&link, answer).await
}

/// Refuses `request` when the daemon (`pid`, of protocol `revision`) is older than it: such a
/// daemon would close the connection on it, or ignore a session option it does not know.
fn check_revision(request: &Request, pid: u32, revision: u32) -> Result<(), Error> {
    if request.revision() <= revision {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        "unsupported",
        format!(
            "the running ferryd (pid {pid}) is older than this request (protocol revision \
             {revision} < {}): restart it (`ferry daemon stop`; the next command starts the \
             new one)",
            request.revision()
        ),
    ))
}

/// Queues `request` on `link`; its answer comes on the returned channel.
fn send_request(
    shared: &Shared,
    link: &Link,
    request: Request,
) -> Result<oneshot::Receiver<Answer>, Error> {
    let (tx, rx) = oneshot::channel();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    link.pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, tx);
    link.outbound
        .send(ClientFrame::Request { id, request })
        .map_err(|_| Error::disconnected("the connection to ferryd closed"))?;
    Ok(rx)
}

/// Waits for a request's answer, or for its connection's end: a request queued just as the
/// connection died may have missed the failing of every pending one, and would wait forever.
async fn answer_of(link: &Link, answer: oneshot::Receiver<Answer>) -> Result<Response, Error> {
    let closed = || Error::disconnected("the connection to ferryd closed");
    tokio::select! {
        biased;
        answer = answer => answer.map_err(|_| closed())?.map_err(Error::from),
        () = link.dead.cancelled() => Err(closed()),
    }
}

async fn live_link(shared: &Shared) -> Result<Arc<Link>, Error> {
    let mut watch = shared.link.subscribe();
    let wait = watch.wait_for(|link| link.as_ref().is_some_and(|l| !l.dead.is_cancelled()));
    let fatal = || {
        shared
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    };
    if let Some(info) = fatal() {
        return Err(info.into());
    }
    tokio::select! {
        link = tokio::time::timeout(RECONNECT_PATIENCE, wait) => match link {
            Ok(Ok(link)) => link.clone().ok_or_else(|| Error::disconnected("no connection")),
            Ok(Err(_)) => Err(fatal().map_or_else(|| Error::disconnected("the session is closed"), Error::from)),
            Err(_) => Err(Error::disconnected(format!(
                "ferryd has not been reachable for {} s",
                RECONNECT_PATIENCE.as_secs()
            ))),
        },
        () = shared.closed.cancelled() => Err(Error::disconnected("the session is closed")),
    }
}

/// Sends the acknowledgements [`Client::ack_soon`] asked for, one at a time, each for the
/// highest sequence number asked for so far, until none is left to send or the session is
/// closed.
async fn send_acks(shared: Arc<Shared>) {
    loop {
        let Ok(link) = live_link(&shared).await else {
            // Closed (a dropped session queues what is left itself) or unreachable for long:
            // the next `ack_soon` tries again.
            shared.acks().in_flight = false;
            return;
        };
        // Marked sent only once queued, under the lock: `Drop` either sees it queued or
        // queues it itself.
        let (seq, before, answer) = {
            let mut acks = shared.acks();
            if acks.wanted <= acks.sent {
                acks.in_flight = false;
                return;
            }
            let seq = acks.wanted;
            let request = Request::Ack {
                session: shared.options.session.clone(),
                seq,
            };
            let Ok(answer) = send_request(&shared, &link, request) else {
                continue; // the link is dead: wait for the next one
            };
            let before = std::mem::replace(&mut acks.sent, seq);
            (seq, before, answer)
        };
        match answer_of(&link, answer).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Disconnected => {
                // Maybe not recorded: send it again on the next connection (its replay of
                // these events is dropped here as already handed out, so only an ack covers
                // them).
                let mut acks = shared.acks();
                if acks.sent == seq {
                    acks.sent = before;
                }
            }
            // Refused (the session is gone): nothing to repeat.
            Err(e) => tracing::debug!(error = %e, "an acknowledgement was refused"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.closed.cancel();
        if let Some(link) = self.shared.link.borrow().as_ref() {
            // An acknowledgement asked for but not sent yet goes out with the queue.
            let mut acks = self.shared.acks();
            if acks.wanted > acks.sent {
                acks.sent = acks.wanted;
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                let request = Request::Ack {
                    session: self.shared.options.session.clone(),
                    seq: acks.wanted,
                };
                let _ = link.outbound.send(ClientFrame::Request { id, request });
            }
            link.dead.cancel();
        }
    }
}

/// Keeps the session connected until it is closed or lost for good.
async fn supervise(shared: Arc<Shared>, mut reader: OwnedReadHalf) {
    loop {
        let end = read_frames(&shared, &mut reader).await;
        let link = shared.link.send_replace(None);
        if let Some(link) = link {
            link.dead.cancel();
            link.fail_pending("the connection to ferryd closed");
        }
        if let Err(info) = end {
            give_up(&shared, info);
            return;
        }
        let mut pause = Duration::from_millis(50);
        reader = loop {
            if shared.closed.is_cancelled() {
                return;
            }
            match establish(&shared, true).await {
                Ok(reader) => break reader,
                Err(e) if is_fatal(&e) => {
                    give_up(&shared, ErrorInfo::new(e.code(), e.to_string()));
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "reconnecting to ferryd"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shared.closed.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        };
    }
}

/// Errors after which reconnecting cannot help (`Unsupported`: the daemon now running is
/// older than the session's configuration; it has to be restarted).
fn is_fatal(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::SessionInUse | ErrorKind::InvalidInput | ErrorKind::Unsupported
    )
}

fn give_up(shared: &Shared, info: ErrorInfo) {
    tracing::debug!(code = %info.code, "the session's connection ended for good");
    *shared.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(info.clone());
    let events = shared
        .events
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(events) = events {
        let _ = events.send(Err(info.into()));
    }
    shared.closed.cancel();
}

/// Connects, says hello and attaches; publishes the new link and returns its reading half.
async fn establish(shared: &Arc<Shared>, reconnect: bool) -> Result<OwnedReadHalf, Error> {
    let options = &shared.options;
    let start = match options.start {
        Start::Always => true,
        Start::FirstOnly => !reconnect,
        Start::Never => false,
    };
    let stream = spawn::connect_or_start(&options.home, options.program.as_deref(), start).await?;
    let (mut reader, mut writer) = stream.into_split();
    write_frame(
        &mut writer,
        &ClientFrame::Hello {
            protocol: PROTOCOL_VERSION,
            client: options.client_name.clone(),
        },
    )
    .await
    .map_err(frame_error)?;
    let (daemon_pid, revision) = match read_frame::<ServerFrame>(&mut reader)
        .await
        .map_err(frame_error)?
    {
        ServerFrame::Welcome { pid, revision, .. } => (pid, revision),
        ServerFrame::Error { error, .. } => return Err(error.into()),
        other => {
            return Err(Error::new(
                ErrorKind::Daemon,
                "protocol_error",
                format!("ferryd answered hello with {other:?}"),
            ));
        }
    };
    if let Some(attach) = &options.attach {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request::Attach {
            session: options.session.clone(),
            config: attach.config.clone(),
            take_over: attach.take_over,
        };
        check_revision(&request, daemon_pid, revision)?;
        write_frame(&mut writer, &ClientFrame::Request { id, request })
            .await
            .map_err(frame_error)?;
        // The answer comes before any event of the session.
        match read_frame::<ServerFrame>(&mut reader)
            .await
            .map_err(frame_error)?
        {
            ServerFrame::Response {
                response: Response::Attached { backlog, .. },
                ..
            } => {
                if !reconnect {
                    shared.backlog.store(backlog, Ordering::Relaxed);
                }
            }
            ServerFrame::Error { error, .. } => return Err(error.into()),
            other => {
                return Err(Error::new(
                    ErrorKind::Daemon,
                    "protocol_error",
                    format!("ferryd answered attach with {other:?}"),
                ));
            }
        }
    }
    let (outbound, queue) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        daemon_pid,
        revision,
        outbound,
        pending: Mutex::new(HashMap::new()),
        dead: CancellationToken::new(),
    });
    tokio::spawn(write_frames(writer, queue, link.dead.clone()));
    shared.link.send_replace(Some(link));
    if reconnect {
        tracing::debug!(session = %options.session, "reconnected to ferryd");
    }
    Ok(reader)
}

async fn write_frames(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<ClientFrame>,
    dead: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            frame = queue.recv() => frame,
            () = dead.cancelled() => {
                // Closing: what was queued (acknowledgements) still goes out.
                while let Ok(frame) = queue.try_recv() {
                    if write_frame(&mut writer, &frame).await.is_err() {
                        break;
                    }
                }
                None
            }
        };
        let Some(frame) = frame else { break };
        if write_frame(&mut writer, &frame).await.is_err() {
            dead.cancel();
            break;
        }
    }
    // Dropping the writer shuts the socket down for writing; the daemon then closes it.
}

/// Reads until the connection ends: `Ok` when it broke (reconnect), `Err` when the daemon
/// ended the session's connection on purpose (taken over) or the session was closed.
async fn read_frames(shared: &Shared, reader: &mut OwnedReadHalf) -> Result<(), ErrorInfo> {
    let Some(link) = shared.link.borrow().clone() else {
        return Ok(());
    };
    // Events replayed after a reconnect that this process already handed out are dropped;
    // `backlog_delivered` too when nothing of the replay was new.
    let mut replay_new = 0u64;
    loop {
        let frame = tokio::select! {
            frame = read_frame::<ServerFrame>(reader) => frame,
            () = link.dead.cancelled() => {
                return if shared.closed.is_cancelled() {
                    Err(ErrorInfo::new("disconnected", "the session is closed"))
                } else {
                    Ok(())
                };
            }
        };
        match frame {
            Ok(ServerFrame::Response { id, response }) => answer(&link, id, Ok(response)),
            Ok(ServerFrame::Error {
                id: Some(id),
                error,
            }) => answer(&link, id, Err(error)),
            Ok(ServerFrame::Error { id: None, error }) => {
                return if error.code == "session_taken_over" {
                    Err(error)
                } else {
                    tracing::warn!(code = %error.code, message = %error.message, "ferryd closed the connection");
                    Ok(())
                };
            }
            Ok(ServerFrame::Event(event)) => {
                if let Some(seq) = event.seq {
                    if seq <= shared.forwarded.load(Ordering::Relaxed) {
                        continue;
                    }
                    shared.forwarded.store(seq, Ordering::Relaxed);
                    replay_new += 1;
                } else if event.event == Event::BacklogDelivered {
                    // A backlog is never empty, so nothing new means all of it was seen.
                    let seen_all = replay_new == 0;
                    replay_new = 0;
                    if seen_all {
                        continue;
                    }
                }
                shared.send_event(Ok(event));
            }
            Ok(ServerFrame::Welcome { .. }) => {}
            Err(FrameError::Closed) | Err(FrameError::Io(_)) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable frame from ferryd");
                return Ok(());
            }
        }
    }
}

fn answer(link: &Link, id: u64, result: Answer) {
    let waiting = link
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    if let Some(waiting) = waiting {
        let _ = waiting.send(result);
    }
}

fn frame_error(e: FrameError) -> Error {
    match e {
        FrameError::Closed | FrameError::Io(_) => {
            Error::disconnected(format!("talking to ferryd: {e}"))
        }
        other => Error::new(
            ErrorKind::Daemon,
            "protocol_error",
            format!("talking to ferryd: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use ferry_proto::{Event, EventFrame};
    use tokio::net::UnixListener;

    use super::*;
    use crate::Session;

    const EVENTS: u64 = 200;

    type Reader = tokio::net::unix::OwnedReadHalf;
    type Writer = tokio::net::unix::OwnedWriteHalf;

    /// Session `s` against the scripted daemon listening in `home`.
    async fn open_session(home: &std::path::Path) -> Session {
        Session::background("s")
            .home(home)
            // Never a real daemon: reconnects find no socket once the script ends.
            .daemon_program(home.join("no-ferryd"))
            .open()
            .await
            .unwrap()
    }

    /// Accepts a connection and answers its hello and attach.
    async fn accept(listener: &UnixListener) -> (Reader, Writer) {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let hello: ClientFrame = read_frame(&mut reader).await.unwrap();
        assert!(matches!(hello, ClientFrame::Hello { .. }), "{hello:?}");
        let welcome = ServerFrame::Welcome {
            protocol: PROTOCOL_VERSION,
            daemon_version: "test".into(),
            pid: std::process::id(),
            revision: ferry_proto::PROTOCOL_REVISION,
        };
        write_frame(&mut writer, &welcome).await.unwrap();
        let ClientFrame::Request { id, .. } = read_frame(&mut reader).await.unwrap() else {
            panic!("expected attach");
        };
        let attached = Response::Attached {
            session: "s".into(),
            backlog: 0,
        };
        let response = ServerFrame::Response {
            id,
            response: attached,
        };
        write_frame(&mut writer, &response).await.unwrap();
        (reader, writer)
    }

    async fn send_events(writer: &mut Writer, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let event = ServerFrame::Event(EventFrame {
                session: "s".into(),
                seq: Some(seq),
                task: Some(1),
                tag: None,
                event: Event::Redirected {
                    from: "http://a/".into(),
                    to: "http://b/".into(),
                    status: 301,
                },
            });
            write_frame(writer, &event).await.unwrap();
        }
    }

    /// The next frame, which must be an ack: its request id and sequence number.
    async fn next_ack(reader: &mut Reader) -> (u64, u64) {
        let frame: ClientFrame = read_frame(reader).await.unwrap();
        match frame {
            ClientFrame::Request {
                id,
                request: Request::Ack { seq, .. },
            } => (id, seq),
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// A daemon from before `get_tasks` (revision 0) closes the connection on it: the
    /// library asks such a daemon one task at a time instead, and refuses requests it cannot
    /// answer without sending them.
    #[tokio::test]
    async fn tasks_by_id_asks_an_older_daemon_one_task_at_a_time() {
        let home = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(home.path().join("ferryd.sock")).unwrap();
        let (answered, asked_ids) = tokio::sync::oneshot::channel();
        let script = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let _hello: ClientFrame = read_frame(&mut reader).await.unwrap();
            // As a daemon of revision 0 sends it: no `revision` field.
            let welcome = serde_json::json!({
                "frame": "welcome", "protocol": PROTOCOL_VERSION,
                "daemon_version": "old", "pid": std::process::id(),
            });
            let welcome: ServerFrame = serde_json::from_value(welcome).unwrap();
            write_frame(&mut writer, &welcome).await.unwrap();
            let mut asked = Vec::new();
            for _ in 0..2 {
                let ClientFrame::Request { id, request } = read_frame(&mut reader).await.unwrap()
                else {
                    panic!("expected a request");
                };
                let Request::GetTask { task } = request else {
                    panic!("an older daemon asked for {request:?}");
                };
                asked.push(task);
                let frame = if task == 7 {
                    let task = serde_json::json!({
                        "id": 7, "session": "s", "url": "http://h/f", "current_url": null,
                        "destination": null, "location": null, "state": "suspended",
                        "bytes_done": 0, "bytes_total": null, "error": null, "tag": null,
                        "group": null, "priority": "normal", "resume_data": null,
                    });
                    ServerFrame::Response {
                        id,
                        response: Response::Task {
                            task: serde_json::from_value(task).unwrap(),
                        },
                    }
                } else {
                    ServerFrame::Error {
                        id: Some(id),
                        error: ErrorInfo::new("unknown_task", format!("there is no task {task}")),
                    }
                };
                write_frame(&mut writer, &frame).await.unwrap();
            }
            answered.send(asked).unwrap();
            // The connection stays until the client closes it; nothing else may come.
            let next = read_frame::<ClientFrame>(&mut reader).await;
            assert!(next.is_err(), "sent to an old daemon: {next:?}");
        });
        let daemon = crate::Daemon::builder()
            .home(home.path())
            .daemon_program(home.path().join("no-ferryd"))
            .open()
            .await
            .unwrap();
        let found = daemon.tasks_by_id(&[7, 8]).await.unwrap();
        assert_eq!(found.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [7]);
        assert_eq!(found.unknown, [8]);
        assert!(found.removed.is_empty());
        assert_eq!(asked_ids.await.unwrap(), [7, 8]);
        // A request the old daemon does not know is refused here, not sent.
        let err = daemon.set_rate_limit(None).await.unwrap_err();
        assert_eq!(err.code(), "unsupported", "{err}");
        assert!(err.to_string().contains("restart it"), "{err}");
        drop(daemon);
        script.await.unwrap();
    }

    /// A session whose configuration sets an option an older daemon does not know (it would
    /// ignore it) is refused before its attach is sent.
    #[tokio::test]
    async fn an_option_an_older_daemon_would_ignore_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(home.path().join("ferryd.sock")).unwrap();
        let script = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let _hello: ClientFrame = read_frame(&mut reader).await.unwrap();
            let welcome = ServerFrame::Welcome {
                protocol: PROTOCOL_VERSION,
                daemon_version: "older".into(),
                pid: std::process::id(),
                revision: 1,
            };
            write_frame(&mut writer, &welcome).await.unwrap();
            let next = read_frame::<ClientFrame>(&mut reader).await;
            assert!(next.is_err(), "sent to an older daemon: {next:?}");
        });
        let opened = Session::background("s")
            .home(home.path())
            .daemon_program(home.path().join("no-ferryd"))
            .user_agent("App/1")
            .open()
            .await;
        let Err(err) = opened else {
            panic!("attached to an older daemon with an option it would ignore");
        };
        assert_eq!(err.code(), "unsupported", "{err}");
        assert!(err.to_string().contains("restart it"), "{err}");
        script.await.unwrap();
    }

    /// An acknowledgement whose connection died before its answer is sent again on the next
    /// connection: the replayed events are dropped by the client as already handed out, so
    /// nothing else would ever acknowledge them.
    #[tokio::test]
    async fn an_acknowledgement_cut_off_by_a_reconnect_is_sent_again() {
        let home = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(home.path().join("ferryd.sock")).unwrap();
        let daemon = tokio::spawn(async move {
            let (mut reader, mut writer) = accept(&listener).await;
            send_events(&mut writer, 1..=3).await;
            let (_, first) = next_ack(&mut reader).await;
            drop((reader, writer)); // no answer: the connection ends
            let (mut reader, _writer) = accept(&listener).await;
            let (_, again) = next_ack(&mut reader).await;
            (first, again)
        });
        let session = open_session(home.path()).await;
        let mut events = session.events().unwrap();
        for _ in 0..3 {
            events.recv().await.unwrap().unwrap();
        }
        // Asking for a fourth event acknowledges the third; none is there.
        let fourth = futures_util::FutureExt::now_or_never(events.recv());
        assert!(fourth.is_none(), "{fourth:?}");
        let (first, again) = tokio::time::timeout(Duration::from_secs(20), daemon)
            .await
            .expect("no acknowledgement on the new connection")
            .unwrap();
        assert!(again >= first, "{first} then {again}");
    }

    /// What the client sends on the wire is the point here, so the peer is a scripted
    /// daemon: it sends `EVENTS` events, and holds its answer to the first acknowledgement
    /// until the application has taken them all.
    #[tokio::test]
    async fn acknowledgements_of_taken_events_merge_while_one_is_in_flight() {
        let home = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(home.path().join("ferryd.sock")).unwrap();
        let (all_taken, taken) = oneshot::channel::<()>();
        let (report, acks) = oneshot::channel::<Vec<u64>>();
        let daemon = tokio::spawn(async move {
            let (mut reader, mut writer) = accept(&listener).await;
            send_events(&mut writer, 1..=EVENTS).await;
            let mut taken = Some(taken);
            let mut acks = Vec::new();
            while acks.last() != Some(&EVENTS) {
                let (id, seq) = next_ack(&mut reader).await;
                acks.push(seq);
                if let Some(taken) = taken.take() {
                    taken.await.unwrap();
                }
                let done = ServerFrame::Response {
                    id,
                    response: Response::Done,
                };
                write_frame(&mut writer, &done).await.unwrap();
            }
            report.send(acks).unwrap();
            // Open until the client goes: an ack still on its way must not break the link.
            while read_frame::<ClientFrame>(&mut reader).await.is_ok() {}
        });
        let session = open_session(home.path()).await;
        let mut events = session.events().unwrap();
        let mut last = None;
        for seq in 1..=EVENTS {
            let event = events.recv().await.unwrap().unwrap();
            assert_eq!(event.seq(), Some(seq));
            last = Some(event);
        }
        all_taken.send(()).unwrap();
        events.ack(&last.unwrap()).await.unwrap();
        let acks = acks.await.unwrap();
        drop((events, session));
        daemon.await.unwrap();
        // One went while events were being taken and was held; the next, sent when its
        // answer came, covers every event taken meanwhile; the explicit one covers the last.
        // (Without merging: one per event.)
        assert!(acks.len() <= 3, "{} acks: {acks:?}", acks.len());
        assert_eq!(acks.iter().max(), Some(&EVENTS));
    }
}
