//! Which connection is attached to which session, and live delivery of events to it.
//!
//! Events reach a client two ways: replayed from the journal when it attaches, and live when
//! the store publishes them after the commit that wrote them. Attaching reads the backlog and
//! registers the connection under the hub's lock, and the store publishes under the same
//! lock, so no event falls between the two; an event can be seen both ways, which the
//! connection filters by sequence number.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ferry_proto::{ErrorInfo, EventFrame, ServerFrame};
use tokio::sync::mpsc::UnboundedSender;

/// Identifies one client connection.
pub type ConnectionId = u64;

#[derive(Debug)]
struct Attached {
    connection: ConnectionId,
    pid: Option<i32>,
    sender: UnboundedSender<ServerFrame>,
}

/// The attachment registry.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, Attached>>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Attached>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends committed events to the sessions' attached connections, if any.
    pub fn publish(&self, events: &[EventFrame]) {
        if events.is_empty() {
            return;
        }
        let sessions = self.lock();
        for event in events {
            if let Some(attached) = sessions.get(&event.session) {
                let _ = attached.sender.send(ServerFrame::Event(event.clone()));
            }
        }
    }

    /// Makes `connection` the session's attached client. `opening()` runs under the lock
    /// and returns the frames the connection gets first (the response, the replayed backlog):
    /// they are queued before any live event can be. Fails with `session_in_use` when another
    /// live process holds the session and `take_over` is false; with `take_over`, the other
    /// connection is told and replaced.
    pub fn attach(
        &self,
        session: &str,
        connection: ConnectionId,
        pid: Option<i32>,
        sender: UnboundedSender<ServerFrame>,
        take_over: bool,
        opening: impl FnOnce() -> Result<Vec<ServerFrame>, ErrorInfo>,
    ) -> Result<(), ErrorInfo> {
        let mut sessions = self.lock();
        if let Some(current) = sessions.get(session)
            && current.connection != connection
            && !current.sender.is_closed()
        {
            // Another live process holds it: refused unless taken over. The same process
            // (or a dead one's leftover) is replaced; either way the old connection is told,
            // so it does not wait for events that now go elsewhere.
            if !take_over && !holder_is_gone_or_same(current.pid, pid) {
                let by = current
                    .pid
                    .map_or_else(|| "another client".to_owned(), |p| format!("pid {p}"));
                return Err(ErrorInfo::new(
                    "session_in_use",
                    format!("session {session} is in use by {by}"),
                ));
            }
            let _ = current.sender.send(ServerFrame::Error {
                id: None,
                error: ErrorInfo::new(
                    "session_taken_over",
                    format!("session {session} was taken over by another client"),
                ),
            });
        }
        for frame in opening()? {
            let _ = sender.send(frame);
        }
        sessions.insert(
            session.to_owned(),
            Attached {
                connection,
                pid,
                sender,
            },
        );
        Ok(())
    }

    /// Detaches `connection` from `session` (no-op if it is not the attached one).
    pub fn detach(&self, session: &str, connection: ConnectionId) {
        let mut sessions = self.lock();
        if sessions
            .get(session)
            .is_some_and(|a| a.connection == connection)
        {
            sessions.remove(session);
        }
    }

    /// Detaches `connection` from every session (it closed).
    pub fn detach_all(&self, connection: ConnectionId) {
        self.lock().retain(|_, a| a.connection != connection);
    }

    /// Whether some live connection is attached to `session`.
    pub fn is_attached(&self, session: &str) -> bool {
        self.lock()
            .get(session)
            .is_some_and(|a| !a.sender.is_closed())
    }

    /// The sessions with a live attached connection, with the client's pid when known.
    pub fn attached_pids(&self) -> HashMap<String, Option<i32>> {
        self.lock()
            .iter()
            .filter(|(_, a)| !a.sender.is_closed())
            .map(|(session, a)| (session.clone(), a.pid))
            .collect()
    }

    /// Sends a frame to the attached connection of `session`, if any.
    pub fn send_to(&self, session: &str, frame: ServerFrame) {
        if let Some(a) = self.lock().get(session) {
            let _ = a.sender.send(frame);
        }
    }
}

/// A holder whose process has exited (its connection not yet noticed closed), or the same
/// process attaching again from a new connection, does not block an attach.
fn holder_is_gone_or_same(holder: Option<i32>, newcomer: Option<i32>) -> bool {
    let Some(holder) = holder else {
        return false;
    };
    if Some(holder) == newcomer {
        return true;
    }
    match rustix::process::Pid::from_raw(holder) {
        Some(pid) => {
            rustix::process::test_kill_process(pid).is_err_and(|e| e == rustix::io::Errno::SRCH)
        }
        None => false,
    }
}
