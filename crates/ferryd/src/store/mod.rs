//! The durable store: SQLite in WAL mode, one writer thread, one reader connection.
//!
//! Only the writer thread writes. It takes every job waiting in its queue, runs each under a
//! savepoint of one transaction, commits once, and only then answers the callers and
//! publishes the journal events the jobs wrote — so an event reaches a client only after
//! it is durable, and a thousand finishing tasks cost one fsync, not a thousand.
//!
//! A *relaxed* job ([`Store::write_relaxed`], [`Store::write_detached_relaxed`]) writes state
//! that no event announces and that a crash may lose — a run's start, a checkpoint, an
//! acknowledgement that frees no file (undone, its events come again) — and can
//! publish no events (reads such as `get_task` may see it; after a crash they read the state
//! before it, as restart normalisation would make them anyway). A batch of relaxed jobs only is committed with
//! `synchronous=NORMAL`: written to the WAL without an fsync. The WAL is replayed in order up
//! to its first incomplete commit, so the next `FULL` commit's fsync makes every earlier
//! relaxed commit durable with it, and a crash loses at most a tail of relaxed commits —
//! never one that a later durable commit follows.

mod schema;
pub mod tasks;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_proto::EventFrame;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;

pub use tasks::{NewTask, TaskRequest, TaskRow};

/// Jobs taken into one transaction at most.
const MAX_BATCH: usize = 512;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("stored data is unreadable: {0}")]
    Decode(#[from] serde_json::Error),
    /// The row asked for does not exist (or is not in the expected state).
    #[error("{0}")]
    NotFound(String),
    /// The database cannot be used; the message says why and how to recover.
    #[error("{0}")]
    Unusable(String),
    /// The writer thread has stopped.
    #[error("the store is shut down")]
    Closed,
}

/// Seconds since the epoch, for `created_at` / `updated_at`.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a job leaves for after the commit: events to publish and the caller's answer.
struct Finished {
    ok: bool,
    events: Vec<EventFrame>,
    reply: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// A queued write.
struct Job {
    /// Whether a crash may lose it (see the module doc): no events, no answer a client sees.
    relaxed: bool,
    run: Box<dyn FnOnce(&Connection) -> Finished + Send>,
}

/// Commits with `synchronous=NORMAL` (no fsync) and with `FULL`, as counted by the writer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitCounts {
    /// Transactions committed with `synchronous=FULL`.
    pub full: u64,
    /// Transactions committed with `synchronous=NORMAL` (relaxed jobs only).
    pub relaxed: u64,
}

/// The store; cheap to share behind an `Arc`.
pub struct Store {
    /// `None` once closed.
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    reader: Mutex<Connection>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    commits: Arc<Mutex<CommitCounts>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the database, checks it, migrates it and normalises task states.
    ///
    /// # Errors
    /// [`StoreError::Unusable`] for a corrupt, unreadable or too-new database, with how to
    /// recover; the file is left as it was.
    pub fn open(path: &Path, hub: Arc<Hub>) -> Result<Store, StoreError> {
        let existed = path.exists();
        if !existed {
            // Created 0600 before SQLite sees it; its -wal and -shm files copy the mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| unusable(path, &e.to_string()))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unusable(path, &e.to_string()))?;
        if existed {
            check_integrity(&conn, path)?;
        }
        configure(&conn, path)?;
        migrate(&conn, path)?;
        normalise(&conn)?;

        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        stable_plans(&reader);

        let (jobs, queue) = mpsc::unbounded_channel();
        let commits = Arc::new(Mutex::new(CommitCounts::default()));
        let counts = commits.clone();
        let writer = std::thread::Builder::new()
            .name("ferryd-store".into())
            .spawn(move || write_loop(conn, queue, &hub, &counts))
            .map_err(|e| unusable(path, &format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            jobs: Mutex::new(Some(jobs)),
            reader: Mutex::new(reader),
            writer: Mutex::new(Some(writer)),
            commits,
            path: path.to_owned(),
        })
    }

    /// Runs `f` in the writer's next transaction; resolves after the commit. `f` returns its
    /// value and the journal events it wrote, which are published after the commit.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<(R, Vec<EventFrame>), StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit_job(false, f, move |r| {
            let _ = tx.send(r);
        });
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::write`] for state no event announces and that a crash may lose (it then
    /// reads as it did before): committed without an fsync when only relaxed jobs share the
    /// transaction, made durable by the next durable commit. Publishes no events. Do not
    /// announce what it wrote before a durable commit follows — unless losing it is harmless
    /// to whoever was told (an acknowledgement: its events only come again).
    pub async fn write_relaxed<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit_job(
            true,
            move |c| f(c).map(|value| (value, Vec::new())),
            move |r| {
                let _ = tx.send(r);
            },
        );
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write_detached`] for relaxed state (see [`Store::write_relaxed`]):
    /// checkpoints.
    pub fn write_detached_relaxed(
        &self,
        f: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    ) {
        self.submit_job(
            true,
            move |c| f(c).map(|()| ((), Vec::new())),
            |r: Result<(), StoreError>| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "a background store write failed");
                }
            },
        );
    }

    /// How many transactions the writer committed durably and relaxed so far.
    pub fn commit_counts(&self) -> CommitCounts {
        *self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Like [`Store::write`] without waiting: for checkpoints and events reported from the
    /// engine's synchronous callbacks. Order with other writes is kept.
    pub fn write_detached(
        &self,
        f: impl FnOnce(&Connection) -> Result<Vec<EventFrame>, StoreError> + Send + 'static,
    ) {
        self.submit_job(
            false,
            move |c| f(c).map(|events| ((), events)),
            |r: Result<(), StoreError>| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "a background store write failed");
                }
            },
        );
    }

    fn submit_job<R: Send + 'static>(
        &self,
        relaxed: bool,
        f: impl FnOnce(&Connection) -> Result<(R, Vec<EventFrame>), StoreError> + Send + 'static,
        answer: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) {
        let run = Box::new(move |conn: &Connection| match f(conn) {
            Ok((value, events)) => Finished {
                ok: true,
                events,
                reply: Box::new(move |committed| answer(committed.map(|()| value))),
            },
            Err(e) => Finished {
                ok: false,
                events: Vec::new(),
                reply: Box::new(move |_| answer(Err(e))),
            },
        });
        let job = Job { relaxed, run };
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = jobs.as_ref().map(|j| j.send(job));
        if !matches!(sent, Some(Ok(()))) {
            // Dropping the job drops its answer channel: the caller sees `Closed`.
            tracing::warn!("a store write after shutdown was dropped");
        }
    }

    /// Runs a read on the reader connection (blocking: call from the blocking pool or keep
    /// it short).
    pub fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn)
    }

    /// Runs a read on the reader connection if it is free at once; hands `f` back if another
    /// read holds it (call [`Store::read`] from the blocking pool then).
    pub fn try_read<R, F>(&self, f: F) -> Result<Result<R, StoreError>, F>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError>,
    {
        match self.reader.try_lock() {
            Ok(conn) => Ok(f(&conn)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(f(&p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Err(f),
        }
    }

    /// Stops the writer after it has committed everything queued.
    pub fn close(&self) {
        // Dropping the sender ends the writer's queue once it is drained.
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn unusable(path: &Path, reason: &str) -> StoreError {
    StoreError::Unusable(format!(
        "the database {} cannot be used: {reason}. ferryd will not start with it, and has not \
         changed it. To recover: keep a copy (cp {0} {0}.broken), then either restore a backup \
         of it, or remove it (rm {0} {0}-wal {0}-shm) to start with no tasks — the tasks and \
         undelivered events it held are then lost.",
        path.display()
    ))
}

fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let verdict: Result<String, _> = conn.query_row("PRAGMA quick_check", [], |r| r.get(0));
    match verdict {
        Ok(v) if v == "ok" => Ok(()),
        Ok(v) => Err(unusable(path, &format!("integrity check failed: {v}"))),
        Err(e) => Err(unusable(path, &e.to_string())),
    }
}

/// WAL with `synchronous=FULL`: a commit is on disk before anyone is told (kill -9 or power
/// loss). Every setting is read back, because SQLite ignores some silently.
fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    stable_plans(conn);
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let foreign_keys: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    if mode != "wal" || synchronous != 2 || foreign_keys != 1 {
        return Err(unusable(
            path,
            &format!(
                "settings did not take (journal_mode={mode}, synchronous={synchronous}, \
                 foreign_keys={foreign_keys})"
            ),
        ));
    }
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema::MIGRATIONS.len() as i64;
    if version > known {
        return Err(unusable(
            path,
            &format!("it has schema version {version}, newer than this ferryd's {known}"),
        ));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Query plans that do not depend on the values bound: otherwise SQLite compiles a cached
/// statement again on every run whose parameters it compared with the partial index
/// `tasks_by_group` (`session = ?` does: the scheduler's read of waiting tasks, a session's
/// task list…). Only speed depends on it, so a failure is just logged.
fn stable_plans(conn: &Connection) {
    if let Err(e) = conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    ) {
        tracing::warn!(error = %e, "could not make query plans stable");
    }
}

/// Nothing stays in a state that no code path leaves: whatever was running when the last
/// daemon stopped waits to run again, from its checkpoint. A task waiting out a retry
/// without a run (`retry_at` set) keeps waiting until it is due.
fn normalise(conn: &Connection) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE tasks SET state = 'waiting' \
         WHERE state IN ('connecting', 'transferring') \
            OR (state = 'retry_wait' AND retry_at IS NULL)",
        [],
    )?;
    if n > 0 {
        tracing::info!(tasks = n, "tasks that were running will continue");
    }
    Ok(())
}

fn write_loop(
    mut conn: Connection,
    mut queue: mpsc::UnboundedReceiver<Job>,
    hub: &Hub,
    counts: &Mutex<CommitCounts>,
) {
    // `open` set FULL; the level can only change outside a transaction.
    let mut relaxed_now = false;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Relaxed jobs publish no events and promise no client anything a crash could break:
        // a batch of only those needs no fsync. Any other job makes the commit durable, with every relaxed one before it.
        let relaxed = batch.iter().all(|j| j.relaxed);
        // A durable batch that cannot get FULL back is rolled back, never committed relaxed.
        let mut unsafe_level = None;
        if relaxed != relaxed_now {
            let level = if relaxed { "NORMAL" } else { "FULL" };
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => relaxed_now = relaxed,
                Err(e) => {
                    tracing::error!(error = %e, "could not set synchronous={level}");
                    if !relaxed {
                        unsafe_level = Some(e);
                    }
                }
            }
        }
        let mut finished = Vec::with_capacity(batch.len());
        let lone = batch.len() == 1;
        // Ok(false): a lone job failed and its transaction was rolled back — nothing to count.
        let committed = (|| -> Result<bool, rusqlite::Error> {
            let mut tx = conn.transaction()?;
            for job in batch {
                if lone {
                    // A lone job needs no savepoint (two more statements to compile): if it
                    // fails, the transaction it alone wrote is rolled back instead.
                    let done = (job.run)(&tx);
                    let ok = done.ok;
                    finished.push(done);
                    if !ok {
                        return tx.rollback().map(|()| false);
                    }
                    continue;
                }
                let sp = tx.savepoint()?;
                let done = (job.run)(&sp);
                if done.ok {
                    sp.commit()?;
                } // else: dropping the savepoint rolls the failed job back alone.
                finished.push(done);
            }
            match unsafe_level {
                Some(e) => Err(e), // dropping `tx` rolls the batch back
                None => tx.commit().map(|()| true),
            }
        })();
        if matches!(committed, Ok(true)) {
            // Counted before anyone is answered, so a caller sees its own commit counted.
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            if relaxed_now {
                counts.relaxed += 1;
            } else {
                counts.full += 1;
            }
        }
        for done in finished {
            match &committed {
                Ok(_) => {
                    hub.publish(&done.events);
                    (done.reply)(Ok(()));
                }
                Err(e) => (done.reply)(Err(StoreError::Unusable(format!("commit failed: {e}")))),
            }
        }
        if let Err(e) = &committed {
            tracing::error!(error = %e, "a store transaction failed");
        }
    }
    // A clean stop leaves everything in the database file and an empty WAL (the reader
    // connection stays open, so closing this one would not checkpoint it).
    let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    match checkpoint {
        Ok(0) => {}
        Ok(_) => tracing::warn!("the WAL was busy at stop; it is replayed at the next start"),
        Err(e) => tracing::warn!(error = %e, "could not checkpoint the WAL at stop"),
    }
}

/// Session rows.
pub mod sessions {
    use super::*;
    use ferry_proto::SessionConfig;

    /// Inserts the session or replaces its configuration; an attach also ends a user
    /// termination (the application runs again).
    pub fn upsert(conn: &Connection, id: &str, config: &SessionConfig) -> Result<(), StoreError> {
        conn.execute(
            "INSERT INTO sessions (id, config, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT(id) DO UPDATE SET config = excluded.config, terminated_at = NULL",
            (id, serde_json::to_string(config)?, now()),
        )?;
        Ok(())
    }

    /// Replaces an existing session's configuration (nothing else); false if there is no
    /// such session.
    pub fn set_config(
        conn: &Connection,
        id: &str,
        config: &SessionConfig,
    ) -> Result<bool, StoreError> {
        let changed = conn.execute(
            "UPDATE sessions SET config = ?2 WHERE id = ?1",
            (id, serde_json::to_string(config)?),
        )?;
        Ok(changed > 0)
    }

    /// Inserts the session with the default configuration if it does not exist.
    pub fn ensure(conn: &Connection, id: &str) -> Result<(), StoreError> {
        conn.execute(
            "INSERT OR IGNORE INTO sessions (id, config, created_at) VALUES (?1, ?2, ?3)",
            (id, serde_json::to_string(&SessionConfig::default())?, now()),
        )?;
        Ok(())
    }

    /// The session's configuration.
    pub fn config(conn: &Connection, id: &str) -> Result<Option<SessionConfig>, StoreError> {
        // Read for every journaled event: keep the statement prepared.
        let text: Option<String> = conn
            .prepare_cached("SELECT config FROM sessions WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    /// A session with its counts, for `list_sessions`.
    #[derive(Debug, Clone)]
    pub struct Summary {
        /// The session id.
        pub id: String,
        /// Its configuration.
        pub config: SessionConfig,
        /// Its tasks.
        pub tasks: u64,
        /// Of which not completed.
        pub unfinished: u64,
        /// Journaled events not yet acknowledged.
        pub undelivered: u64,
        /// Being invalidated.
        pub invalidating: bool,
        /// Terminated by the user and not attached since.
        pub terminated: bool,
    }

    /// Every session with its counts, in id order.
    pub fn summaries(conn: &Connection) -> Result<Vec<Summary>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT s.id, s.config, s.invalidating, s.terminated_at IS NOT NULL, \
                    (SELECT COUNT(*) FROM tasks t WHERE t.session = s.id), \
                    (SELECT COUNT(*) FROM tasks t WHERE t.session = s.id \
                       AND t.state NOT IN ('succeeded', 'failed', 'cancelled')), \
                    (SELECT COUNT(*) FROM journal j WHERE j.session = s.id) \
             FROM sessions s ORDER BY s.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let mut out = Vec::new();
        for row in rows {
            let (id, config, invalidating, terminated, tasks, unfinished, undelivered) = row?;
            out.push(Summary {
                id,
                config: serde_json::from_str(&config)?,
                tasks: count(tasks),
                unfinished: count(unfinished),
                undelivered: count(undelivered),
                invalidating,
                terminated,
            });
        }
        Ok(out)
    }

    /// Every session with its configuration.
    pub fn all(conn: &Connection) -> Result<Vec<(String, SessionConfig)>, StoreError> {
        // Read by every scheduling round: keep the statement prepared.
        let mut stmt = conn.prepare_cached("SELECT id, config FROM sessions ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, config) = row?;
            out.push((id, serde_json::from_str(&config)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(c: &Connection) -> Result<i64, StoreError> {
        Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    /// Relaxed jobs alone commit with `synchronous=NORMAL` (1); a durable job after them gets
    /// `FULL` (2) back, and so does a batch that mixes the two — the relaxed job in it is then
    /// committed durably too.
    #[tokio::test]
    async fn only_a_batch_of_relaxed_jobs_commits_without_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db"), Arc::new(Hub::default())).unwrap();
        assert_eq!(store.write_relaxed(synchronous).await.unwrap(), 1);
        assert_eq!(
            store.commit_counts(),
            CommitCounts {
                full: 0,
                relaxed: 1
            }
        );
        let durable = store.write(|c| Ok((synchronous(c)?, Vec::new()))).await;
        assert_eq!(durable.unwrap(), 2);

        // Hold the writer in a job so the next two queue up and share one transaction.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let gate = store.write(move |_| {
            held.recv().unwrap();
            Ok(((), Vec::new()))
        });
        let mut gate = Box::pin(gate);
        let mut relaxed = Box::pin(store.write_relaxed(synchronous));
        let mut durable = Box::pin(store.write(|c| Ok((synchronous(c)?, Vec::new()))));
        // A first poll queues each job (in this order); then the writer may go on.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(gate.as_mut().poll(&mut cx).is_pending());
        assert!(relaxed.as_mut().poll(&mut cx).is_pending());
        assert!(durable.as_mut().poll(&mut cx).is_pending());
        release.send(()).unwrap();
        gate.await.unwrap();
        let (relaxed, durable) = (relaxed.await.unwrap(), durable.await.unwrap());
        assert_eq!((relaxed, durable), (2, 2), "a mixed batch is durable");
        assert_eq!(store.commit_counts().relaxed, 1);
        store.close();
    }

    /// A cached statement with `session = ?` is not compiled again for each new value (see
    /// `stable_plans`), on the reader or the writer.
    #[tokio::test]
    async fn a_cached_statement_is_not_prepared_again_per_session() {
        fn reprepares(c: &Connection) -> Result<i32, StoreError> {
            let sql = "SELECT id FROM tasks WHERE session = ?1 AND state = 'waiting' \
                       ORDER BY priority DESC, id LIMIT ?2";
            for session in ["a", "b", "c"] {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map((session, 8), |r| r.get::<_, i64>(0))?;
                assert_eq!(rows.count(), 0);
            }
            let stmt = c.prepare_cached(sql)?;
            Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db"), Arc::new(Hub::default())).unwrap();
        assert_eq!(store.read(reprepares).unwrap(), 0);
        let written = store.write(|c| Ok((reprepares(c)?, Vec::new()))).await;
        assert_eq!(written.unwrap(), 0);
        store.close();
    }

    /// A journal written before rows carried their task's tag (schema 6) keeps the tags
    /// through the migration, also once the task is removed.
    #[tokio::test]
    async fn journal_rows_keep_their_tag_after_migration_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &schema::MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            conn.execute_batch(
                r#"
                INSERT INTO sessions (id, config, next_seq, created_at) VALUES ('s', '{}', 3, 0);
                INSERT INTO tasks (id, session, request, priority, state, created_at, updated_at)
                    VALUES (1, 's', '{"url": "http://h/f", "tag": "t1"}', 1, 'failed', 0, 0);
                INSERT INTO journal (session, seq, task, event) VALUES
                    ('s', 1, 1, '{"type": "session_invalidated"}'),
                    ('s', 2, NULL, '{"type": "session_invalidated"}');
                "#,
            )
            .unwrap();
        }
        let store = Store::open(&path, Arc::new(Hub::default())).unwrap();
        let tags = |store: &Store| {
            store
                .read(|c| tasks::backlog(c, "s"))
                .unwrap()
                .into_iter()
                .map(|e| (e.task, e.tag))
                .collect::<Vec<_>>()
        };
        let expected = vec![(Some(1), Some("t1".to_owned())), (None, None)];
        assert_eq!(tags(&store), expected);
        let removed = store
            .write(|c| Ok((tasks::delete_completed(c, 1)?, Vec::new())))
            .await
            .unwrap();
        assert!(removed);
        assert!(store.read(|c| tasks::get(c, 1)).unwrap().is_none());
        assert_eq!(tags(&store), expected);
        store.close();
    }
}
