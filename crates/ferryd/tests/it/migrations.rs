//! Numbered migrations against real databases that older daemons left behind.
//!
//! Each fixture under `tests/data/migrations/v<N>/` is what a `ferryd` built from an older
//! commit wrote with schema version `N`: `ferry.db` (stopped with SIGTERM, WAL checkpointed,
//! VACUUMed), its `staging/*.part` files and, from schema 2 on, its `resume/*.part` files
//! and `resume.key`. Every one was made the same way: by building `ferryd` at that commit (a
//! git worktree), running it against `ferry-testserver` and creating the tasks through the
//! protocol with `tests/data/migrations/make_fixture.py` (see `tests/data/README.md`) — none
//! was written with SQL by hand:
//!
//! | fixture | schema | built from commit |
//! |---------|--------|-------------------|
//! | `v1`    | 1      | `3d8361f` (the first store, `d18e912`, plus docs) |
//! | `v2`    | 2      | `ea844a3` (resume data; before groups) |
//! | `v4`    | 4      | `2b445ab` (before `started_at`, which later code reads) |
//! | `v6`    | 6      | `e3490be` (the last before journal rows carried tags) |
//! | `v7`    | 7      | `b308490` (the newest committed schema, before `completed_at`) |
//!
//! Session `app` was never acknowledged, so its journal holds every event; session `other`
//! acknowledged everything. The tests compare what the new daemon reports with the rows as
//! the old daemon wrote them (read from the copy before the new daemon opens it), so a
//! migration that drops a column or rewrites JSON fails them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_proto::{ErrorInfo, Event, EventFrame, OutcomeKind, Request, Response, TaskState};
use ferry_testserver::{TestServer, content};
use rusqlite::{Connection, OpenFlags};

use crate::fixture::{Daemon, wait_completed};

/// A retention period (`FERRY_RETENTION_SECS`) no fixture outlives.
const TEN_YEARS: &str = "315360000";

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/migrations")
        .join(name)
}

/// Copies the fixture into `home` as the daemon lays it out (`home.rs`).
fn install(name: &str, home: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let from = fixture_dir(name);
    std::fs::create_dir_all(home.join("staging")).unwrap();
    std::fs::create_dir_all(home.join("inbox")).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = home.join("ferry.db");
    std::fs::copy(from.join("ferry.db"), &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Bytes of unfinished tasks; kept bytes of cancelled ones and the key of their resume data.
    for folder in ["staging", "resume"] {
        if let Ok(parts) = std::fs::read_dir(from.join(folder)) {
            std::fs::create_dir_all(home.join(folder)).unwrap();
            for part in parts {
                let part = part.unwrap();
                std::fs::copy(part.path(), home.join(folder).join(part.file_name())).unwrap();
            }
        }
    }
    let key = from.join("resume.key");
    if key.exists() {
        std::fs::copy(&key, home.join("resume.key")).unwrap();
        std::fs::set_permissions(
            home.join("resume.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
}

fn open_read_only(db: &Path) -> Connection {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn user_version(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// The schema as `sqlite_master` holds it (tables and indexes, by name).
fn schema(conn: &Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A task row as the old daemon wrote it.
#[derive(Debug)]
struct OldTask {
    session: String,
    request: serde_json::Value,
    state: String,
    error: Option<ErrorInfo>,
    bytes_done: u64,
    bytes_total: Option<u64>,
    resume_data: Option<String>,
}

/// A journal row as the old daemon wrote it.
#[derive(Debug)]
struct OldEvent {
    seq: u64,
    task: Option<u64>,
    event: Event,
}

struct Written {
    version: i64,
    tasks: BTreeMap<u64, OldTask>,
    /// Per session, in order.
    journal: BTreeMap<String, Vec<OldEvent>>,
    acked: BTreeMap<String, u64>,
}

impl Written {
    fn tagged(&self, tag: &str) -> (u64, &OldTask) {
        self.tasks
            .iter()
            .find(|(_, t)| t.request["tag"] == tag)
            .map(|(id, t)| (*id, t))
            .unwrap_or_else(|| panic!("the fixture has a task tagged {tag}"))
    }
}

fn read_written(db: &Path) -> Written {
    let conn = open_read_only(db);
    let version = user_version(&conn);
    let resume_data = if version >= 2 { "resume_data" } else { "NULL" };
    let mut tasks = BTreeMap::new();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, session, request, state, error, bytes_done, bytes_total, {resume_data} \
             FROM tasks ORDER BY id"
        ))
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                OldTask {
                    session: r.get(1)?,
                    request: serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
                    state: r.get(3)?,
                    error: r
                        .get::<_, Option<String>>(4)?
                        .map(|e| serde_json::from_str(&e).unwrap()),
                    bytes_done: r.get::<_, i64>(5)? as u64,
                    bytes_total: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
                    resume_data: r.get(7)?,
                },
            ))
        })
        .unwrap();
    for row in rows {
        let (id, task) = row.unwrap();
        tasks.insert(id as u64, task);
    }
    let mut journal: BTreeMap<String, Vec<OldEvent>> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT session, seq, task, event FROM journal ORDER BY session, seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                OldEvent {
                    seq: r.get::<_, i64>(1)? as u64,
                    task: r.get::<_, Option<i64>>(2)?.map(|n| n as u64),
                    event: serde_json::from_str(&r.get::<_, String>(3)?).unwrap(),
                },
            ))
        })
        .unwrap();
    for row in rows {
        let (session, event) = row.unwrap();
        journal.entry(session).or_default().push(event);
    }
    let mut acked = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT id, acked_seq FROM sessions").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    for row in rows {
        let (id, seq) = row.unwrap();
        acked.insert(id, seq as u64);
    }
    Written {
        version,
        tasks,
        journal,
        acked,
    }
}

/// The schema version and `sqlite_master` of a database the current daemon creates.
async fn fresh_schema(dir: &Path) -> (i64, Vec<(String, String)>) {
    let home = dir.join("fresh");
    let mut daemon = Daemon::start(&home).await;
    // The store is migrated before the socket exists.
    daemon.client().await.tasks(None).await;
    daemon.terminate();
    let conn = open_read_only(&home.join("ferry.db"));
    (user_version(&conn), schema(&conn))
}

fn request_path(url: &str) -> &str {
    let rest = url.split_once("://").unwrap().1;
    &rest[rest.find('/').unwrap()..]
}

/// The whole check for one fixture of schema `version`.
async fn migrates(name: &str, version: i64) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    install(name, &home);
    let written = read_written(&home.join("ferry.db"));
    assert_eq!(written.version, version, "the fixture's schema version");

    // What the fixture must hold for the checks below to mean anything.
    let tags: Vec<&str> = written
        .tasks
        .values()
        .map(|t| t.request["tag"].as_str().unwrap())
        .collect();
    let mut expected_tags = vec!["other", "done", "failed", "paused", "idle"];
    if version >= 2 {
        expected_tags.push("kept");
    }
    assert_eq!(tags, expected_tags);
    let (paused_id, paused) = written.tagged("paused");
    assert_eq!(paused.state, "suspended");
    assert!(
        paused.bytes_done >= 6_000 && paused.bytes_done < 24_000,
        "{paused:?}"
    );
    assert!(home.join(format!("staging/{paused_id}.part")).exists());
    assert_eq!(written.tagged("done").1.bytes_done, 5_000);
    assert_eq!(written.tagged("failed").1.state, "failed");
    assert_eq!(written.tagged("other").1.session, "other");
    assert!(written.acked["other"] > 0, "session other acknowledged");
    assert!(!written.journal.contains_key("other"));
    let app_journal = &written.journal["app"];
    let mut journaled_tasks = vec!["done", "done", "failed"];
    if version >= 2 {
        journaled_tasks.push("kept");
    }
    assert_eq!(
        app_journal
            .iter()
            .map(|e| e.task.unwrap())
            .collect::<Vec<_>>(),
        journaled_tasks
            .iter()
            .map(|tag| written.tagged(tag).0)
            .collect::<Vec<_>>()
    );
    assert_eq!(written.acked["app"], 0);

    let (newest, fresh) = fresh_schema(dir.path()).await;
    assert!(newest >= 7, "{newest}");

    // The daemon starts on it. The fixture's acknowledged completed task (`other`) would be
    // forgotten by the retention sweep once the fixture is older than the retention period
    // (7 days): that is retention working, not a migration, so it is kept out of the way.
    let mut daemon = Daemon::start_env(&home, 200, &[("FERRY_RETENTION_SECS", TEN_YEARS)]).await;
    let mut c = daemon.client().await;

    // Every task is listed as written.
    let listed = c.tasks(None).await;
    assert_eq!(
        listed.iter().map(|t| t.id).collect::<Vec<_>>(),
        written.tasks.keys().copied().collect::<Vec<_>>()
    );
    for t in &listed {
        let old = &written.tasks[&t.id];
        assert_eq!(t.session, old.session, "task {}", t.id);
        assert_eq!(t.url, old.request["url"].as_str().unwrap(), "task {}", t.id);
        assert_eq!(t.state.name(), old.state, "task {}", t.id);
        assert_eq!(t.bytes_done, old.bytes_done, "task {}", t.id);
        assert_eq!(t.bytes_total, old.bytes_total, "task {}", t.id);
        assert_eq!(t.error, old.error, "task {}", t.id);
        assert_eq!(
            t.tag.as_deref(),
            old.request["tag"].as_str(),
            "task {}",
            t.id
        );
        assert_eq!(
            t.group.as_deref(),
            old.request["group"].as_str(),
            "task {}",
            t.id
        );
        assert_eq!(
            t.destination.as_deref(),
            old.request["destination"].as_str(),
            "task {}",
            t.id
        );
        assert_eq!(t.resume_data, old.resume_data, "task {}", t.id);
    }
    let idle = listed
        .iter()
        .find(|t| t.tag.as_deref() == Some("idle"))
        .unwrap();
    let expected_group = (version >= 3).then_some("batch");
    assert_eq!(idle.group.as_deref(), expected_group);
    assert_eq!(idle.state, TaskState::Suspended);
    assert_eq!(idle.bytes_done, 0);
    let failed = listed
        .iter()
        .find(|t| t.tag.as_deref() == Some("failed"))
        .unwrap();
    assert_eq!(
        failed.error.as_ref().map(|e| e.code.as_str()),
        Some("http_status")
    );

    // The acknowledged session has nothing to replay (and no backlog_delivered); the other gets its journal in order,
    // each event with its task's tag, then backlog_delivered.
    let mut other = daemon.client().await;
    assert_eq!(other.attach("other").await.unwrap(), 0);
    let mut app = daemon.client().await;
    assert_eq!(app.attach("app").await.unwrap(), app_journal.len() as u64);
    let mut replayed: Vec<EventFrame> = Vec::new();
    loop {
        let e = app.next_journaled().await;
        if e.event == Event::BacklogDelivered {
            break;
        }
        replayed.push(e);
    }
    assert_eq!(replayed.len(), app_journal.len());
    for (got, old) in replayed.iter().zip(app_journal) {
        assert_eq!(got.session, "app");
        assert_eq!(got.seq, Some(old.seq));
        assert_eq!(got.task, old.task);
        assert_eq!(got.event, old.event, "seq {}", old.seq);
        let tag = old
            .task
            .and_then(|id| written.tasks[&id].request["tag"].as_str());
        assert_eq!(got.tag.as_deref(), tag, "seq {}", old.seq);
    }
    let (done_id, _) = written.tagged("done");
    assert!(
        replayed
            .iter()
            .any(|e| e.task == Some(done_id) && matches!(e.event, Event::Completed { .. })),
        "{replayed:?}"
    );

    // The suspended task continues from its checkpoint and staging file, against the live
    // origin (the fixture's port is gone): same resource, same validators, so a range.
    let server = TestServer::start().unwrap();
    let path = request_path(paused.request["url"].as_str().unwrap()).replace("&rate=2048", "");
    c.request(Request::UpdateUrl {
        task: paused_id,
        url: server.url(&path),
    })
    .await
    .unwrap();
    c.request(Request::Resume { task: paused_id })
        .await
        .unwrap();
    let done = wait_completed(&mut c, paused_id).await;
    assert_eq!(
        done.state,
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded
        },
        "{done:?}"
    );
    let location = done.location.clone().expect("a placed file");
    assert_eq!(std::fs::read(&location).unwrap(), content(12, 0, 24_000));
    let range = server.requests()[0]
        .header("range")
        .map(str::to_owned)
        .expect("a range request: the checkpoint was kept");
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split('-').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        from > 0 && from <= paused.bytes_done,
        "{range} for {}",
        paused.bytes_done
    );
    assert_eq!(server.bytes_sent(), 24_000 - from);

    // Resume data of a cancelled task still continues the download (schema 2 on).
    if version >= 2 {
        let (_, kept) = written.tagged("kept");
        let blob = kept.resume_data.clone().expect("resume data was written");
        server.clear_log();
        let Response::Task { task } = c
            .request(Request::CreateFromResumeData {
                session: "app".into(),
                resume_data: blob,
                destination: None,
                headers: Default::default(),
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(task.bytes_done, kept.bytes_done);
        let path = request_path(kept.request["url"].as_str().unwrap()).replace("&rate=2048", "");
        c.request(Request::UpdateUrl {
            task: task.id,
            url: server.url(&path),
        })
        .await
        .unwrap();
        let done = wait_completed(&mut c, task.id).await;
        assert_eq!(
            done.state,
            TaskState::Completed {
                outcome: OutcomeKind::Succeeded
            },
            "{done:?}"
        );
        let location = done.location.clone().expect("a placed file");
        assert_eq!(std::fs::read(&location).unwrap(), content(13, 0, 24_000));
        let ranged = server
            .requests()
            .iter()
            .any(|r| r.header("range").is_some_and(|h| h != "bytes=0-"));
        assert!(ranged, "continued with a range");
    }

    // Stopped, the database has the newest schema, exactly as a new one has it.
    drop((c, other, app));
    assert!(daemon.terminate().success());
    let conn = open_read_only(&home.join("ferry.db"));
    assert_eq!(user_version(&conn), newest);
    assert_eq!(schema(&conn), fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_schema_1() {
    migrates("v1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_schema_2() {
    migrates("v2", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_schema_4() {
    migrates("v4", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_schema_6() {
    migrates("v6", 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_schema_7() {
    migrates("v7", 7).await;
}
