//! Numbered migrations. `PRAGMA user_version` records how many have run; each runs in the
//! transaction that bumps it. Never edit a released migration: add the next one.

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: sessions, tasks, checkpoints, journal.
    r#"
    CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        config      TEXT NOT NULL,          -- JSON of ferry_proto::SessionConfig
        next_seq    INTEGER NOT NULL DEFAULT 1,
        acked_seq   INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL
    ) STRICT;

    -- AUTOINCREMENT: task ids are never reused, even after the newest task is removed.
    CREATE TABLE tasks (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        session     TEXT NOT NULL REFERENCES sessions(id),
        request     TEXT NOT NULL,          -- JSON of ferry_proto::DownloadRequest
        priority    INTEGER NOT NULL,       -- 0 low … 3 foreground
        state       TEXT NOT NULL,          -- ferry_proto::TaskState::name()
        error       TEXT,                   -- JSON of ferry_proto::ErrorInfo
        bytes_done  INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER,
        current_url TEXT,
        location    TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX tasks_by_state ON tasks(state, priority DESC, id);
    CREATE INDEX tasks_by_session ON tasks(session, id);

    -- The engine's checkpoint (JSON of ferry_engine::Checkpoint) of tasks with bytes.
    CREATE TABLE checkpoints (
        task        INTEGER PRIMARY KEY REFERENCES tasks(id),
        checkpoint  TEXT NOT NULL
    ) STRICT;

    -- Undelivered events, per session in order. Rows at or below the session's acked_seq
    -- are deleted when acknowledged.
    CREATE TABLE journal (
        session     TEXT NOT NULL REFERENCES sessions(id),
        seq         INTEGER NOT NULL,
        task        INTEGER,
        event       TEXT NOT NULL,          -- JSON of ferry_proto::Event
        PRIMARY KEY (session, seq)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 2: resume data of cancelled tasks; the mark of a user-terminated session.
    r#"
    ALTER TABLE tasks ADD COLUMN resume_data TEXT;
    ALTER TABLE sessions ADD COLUMN terminated_at INTEGER;
    "#,
    // 3: groups.
    r#"
    ALTER TABLE tasks ADD COLUMN grp TEXT;
    UPDATE tasks SET grp = json_extract(request, '$.group');
    CREATE INDEX tasks_by_group ON tasks(session, grp) WHERE grp IS NOT NULL;
    "#,
    // 4: sessions being invalidated take no new tasks.
    r#"
    ALTER TABLE sessions ADD COLUMN invalidating INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: when a task first started, for the resource timeout across pauses and restarts.
    r#"
    ALTER TABLE tasks ADD COLUMN started_at INTEGER;
    "#,
    // 6: the scheduler reads each session's next waiting tasks.
    r#"
    CREATE INDEX tasks_waiting_by_session ON tasks(session, state, priority DESC, id);
    "#,
    // 7: journal rows carry their task's tag, so they stay deliverable as they were after the
    // task is removed (`journal.task` is a plain number, not a reference).
    r#"
    ALTER TABLE journal ADD COLUMN tag TEXT;
    UPDATE journal SET tag = (SELECT json_extract(t.request, '$.tag') FROM tasks t
                              WHERE t.id = journal.task)
    WHERE task IS NOT NULL;
    "#,
    // 8: when a task completed, for retention (completed tasks are forgotten a while after
    // their events were acknowledged). A completed row changed no more, so `updated_at` is
    // when it completed.
    r#"
    ALTER TABLE tasks ADD COLUMN completed_at INTEGER;
    UPDATE tasks SET completed_at = updated_at
    WHERE state IN ('succeeded', 'failed', 'cancelled');
    "#,
    // 9: upload tasks. `request` holds the JSON of the kind's request
    // (ferry_proto::DownloadRequest or UploadRequest); `reply` the server's answer to an
    // upload (JSON of ferry_proto::Reply); `sources` the identities of an upload's files when
    // it was created (JSON of a list of ferry_engine::SourceIdentity).
    r#"
    ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'download';
    ALTER TABLE tasks ADD COLUMN reply TEXT;
    ALTER TABLE tasks ADD COLUMN sources TEXT;
    "#,
    // 10: tombstones: how removed tasks had ended, kept for the retention period after their
    // removal, so that a client following a task learns its outcome after another removed it.
    r#"
    CREATE TABLE removed_tasks (
        id          INTEGER PRIMARY KEY,    -- the task's id (never reused)
        session     TEXT NOT NULL,
        state       TEXT NOT NULL,          -- its completed state: succeeded, failed, cancelled
        removed_at  INTEGER NOT NULL
    ) STRICT;
    "#,
    // 11: a task waiting out a retry holds no slot: its run ended and it is due again at
    // `retry_at` (unix ms; set only while it so waits in `retry_wait`), with the attempts that
    // failed in a row so far.
    r#"
    ALTER TABLE tasks ADD COLUMN retry_at INTEGER;
    ALTER TABLE tasks ADD COLUMN failed_attempts INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tasks_parked ON tasks(session, retry_at) WHERE retry_at IS NOT NULL;
    "#,
];
