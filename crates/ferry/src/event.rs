//! The session's events as a stream, with acknowledgement.

use std::pin::Pin;
use std::task::{Context, Poll};

use ferry_proto::{EventFrame, Outcome, Reply, TaskId};
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::resume::ResumeData;
use crate::session::Session;
use crate::task::Task;

/// What happened (SPEC §7). Per task, events come in the order of the variants; a task's
/// [`Completed`](EventKind::Completed) comes exactly once and last.
pub use ferry_proto::Event as EventKind;

/// One event of a session: what happened, to which task, and its place in the journal.
#[derive(Debug, Clone)]
pub struct Event {
    frame: EventFrame,
}

impl Event {
    /// What happened.
    pub fn kind(&self) -> &EventKind {
        &self.frame.event
    }

    /// The task it is about, for task events.
    pub fn task_id(&self) -> Option<TaskId> {
        self.frame.task
    }

    /// The task's tag, as given at creation.
    pub fn tag(&self) -> Option<&str> {
        self.frame.tag.as_deref()
    }

    /// The event's position in the session's journal (absent for progress, which is not
    /// journaled, and for `backlog_delivered`).
    pub fn seq(&self) -> Option<u64> {
        self.frame.seq
    }

    /// For the [`Completed`](EventKind::Completed) event of an upload the server answered:
    /// its reply — status, headers and the file holding the body. Also when the status was
    /// not a success and the task failed. The file is deleted once the event is
    /// acknowledged (by asking for the next one): read or move it first.
    pub fn reply(&self) -> Option<&Reply> {
        match &self.frame.event {
            EventKind::Completed { reply, .. } => reply.as_ref(),
            _ => None,
        }
    }

    /// For [`Completed`](EventKind::Completed): `Ok` when the task succeeded, else its error
    /// — a cancelled download's error carries its [`Error::resume_data`], and so does a
    /// failed one whose bytes were kept (no space, destination folder unusable).
    pub fn result(&self) -> Option<Result<(), Error>> {
        let EventKind::Completed { outcome, .. } = &self.frame.event else {
            return None;
        };
        Some(match outcome {
            Outcome::Succeeded => Ok(()),
            Outcome::Failed { error, resume_data } => Err(Error::from(error.clone())
                .with_resume_data(resume_data.clone().map(ResumeData::from_wire))),
            Outcome::Cancelled {
                reason,
                resume_data,
            } => {
                let why = match reason {
                    ferry_proto::CancelReason::Client => "the task was cancelled",
                    ferry_proto::CancelReason::UserTerminated => {
                        "the task was cancelled: the user terminated the session"
                    }
                };
                Err(Error::cancelled(
                    resume_data.clone().map(ResumeData::from_wire),
                    why,
                ))
            }
        })
    }
}

/// The session's events, in order ([`Session::events`]). A [`Stream`]; or call
/// [`Events::recv`].
///
/// Every event the daemon journals is delivered at least once: an event is acknowledged
/// when the application asks for the next one (or explicitly with [`Events::ack`]), so a
/// process that crashes while handling one receives it again from its next session. A
/// background session also reconnects by itself if the daemon restarts, without repeating
/// what it already handed out. The stream ends with an error item if the session is lost
/// for good (another process [took it over](crate::SessionBuilder::take_over)).
pub struct Events {
    session: Session,
    receiver: mpsc::UnboundedReceiver<Result<EventFrame, Error>>,
    /// The journaled event taken last, acknowledged when the next is asked for.
    taken: Option<u64>,
    /// Highest acknowledgement asked for without waiting for its answer (the session sends
    /// it, merged with later ones).
    sent: u64,
    /// Highest acknowledgement the daemon has confirmed.
    confirmed: u64,
}

impl Events {
    pub(crate) fn new(
        session: Session,
        receiver: mpsc::UnboundedReceiver<Result<EventFrame, Error>>,
    ) -> Events {
        Events {
            session,
            receiver,
            taken: None,
            sent: 0,
            confirmed: 0,
        }
    }

    /// The next event; `None` once the session is closed.
    pub async fn recv(&mut self) -> Option<Result<Event, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Acknowledges `event` and everything before it now, and waits until the daemon has
    /// recorded it — do this (or [`Events::ack_backlog`]) before exiting: the acknowledgement
    /// made by asking for the next event is sent without waiting, and may be lost with the
    /// process, so the event would come again. (Recorded means committed: a crash of the
    /// daemon keeps it; a crash of the machine may undo an acknowledgement that frees no
    /// file, and the events then come again — see `docs/PROTOCOL.md`, `ack`.)
    ///
    /// # Errors
    /// When the daemon cannot be reached; the acknowledgement is then made with the next.
    pub async fn ack(&mut self, event: &Event) -> Result<(), Error> {
        match event.seq() {
            Some(seq) => self.ack_through(seq).await,
            None => Ok(()),
        }
    }

    /// Acknowledges every event taken so far — after `backlog_delivered`, this is
    /// URLSession's stored completion handler: the daemon then knows the application has
    /// handled what it missed (and will not run its launch command again).
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn ack_backlog(&mut self) -> Result<(), Error> {
        match self.taken {
            Some(seq) => self.ack_through(seq).await,
            None => Ok(()),
        }
    }

    /// A handle to the task an event is about.
    pub fn task(&self, event: &Event) -> Option<Task> {
        event.task_id().map(|id| self.session.task(id))
    }

    /// Acknowledges through `seq` and waits for the daemon's answer; it covers every event
    /// before, whether or not their acknowledgement without waiting went out.
    async fn ack_through(&mut self, seq: u64) -> Result<(), Error> {
        if seq <= self.confirmed {
            return Ok(());
        }
        let request = ferry_proto::Request::Ack {
            session: self.session.id().to_owned(),
            seq,
        };
        self.session.call_done(request).await?;
        self.session.acknowledged(seq);
        self.confirmed = self.confirmed.max(seq);
        self.sent = self.sent.max(seq);
        Ok(())
    }
}

impl Stream for Events {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Asking for the next event means the previous one was handled.
        if let Some(seq) = this.taken
            && seq > this.sent
        {
            this.session.ack_soon(seq);
            this.sent = seq;
        }
        let next = match this.receiver.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        Poll::Ready(next.map(|item| {
            item.map(|frame| {
                if let Some(seq) = frame.seq {
                    this.taken = Some(seq);
                }
                Event { frame }
            })
        }))
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("session", &self.session.id())
            .field("acknowledged", &self.confirmed)
            .finish()
    }
}
