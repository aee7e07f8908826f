//! The commands besides `get`: ls, pause/resume/cancel/rm, group, session, daemon, and
//! the generated completions and man page.

use std::process::Stdio;

use serde_json::Value;

use crate::{Env, alive, data, text};

#[test]
fn ls_shows_a_table_of_the_session_and_all_sessions() {
    let env = Env::new();
    env.ok(&[
        "get",
        "-q",
        &env.server.url("/bytes/3000?seed=1"),
        "-o",
        "a.bin",
    ]);
    env.run(&[
        "get",
        "-q",
        &env.server.url("/bytes/10?status=404"),
        "-o",
        "b.bin",
    ]);
    env.ok(&[
        "get",
        "-q",
        "--session",
        "other.app",
        &env.server.url("/bytes/2048?seed=2"),
        "-o",
        "c.bin",
    ]);

    let table = env.ok(&["ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "header + the two tasks of ferry.cli: {table}"
    );
    for column in [
        "ID",
        "STATE",
        "PROGRESS",
        "SPEED",
        "SIZE",
        "DESTINATION",
        "ERROR",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(
        lines[1].contains("succeeded") && lines[1].contains("2.9 KiB"),
        "{table}"
    );
    assert!(
        lines[1].contains("100%") && lines[1].contains("a.bin"),
        "{table}"
    );
    assert!(
        lines[2].contains("failed") && lines[2].contains("404"),
        "{table}"
    );

    let all = env.ok(&["ls", "--all"]);
    assert!(all.lines().next().unwrap().contains("SESSION"));
    assert!(
        all.contains("other.app") && all.contains("2.0 KiB"),
        "{all}"
    );

    let other = env.tasks(Some("other.app"));
    assert_eq!(other.len(), 1);
    for key in [
        "id",
        "session",
        "url",
        "state",
        "bytes_done",
        "bytes_total",
        "destination",
        "error",
    ] {
        assert!(other[0].get(key).is_some(), "{key} missing: {}", other[0]);
    }
    assert_eq!(other[0]["bytes_total"], 2048);
    assert_eq!(other[0]["bytes_done"], 2048);
}

/// SPEC §14: a password written into a URL is never in `ferry ls` (nor in any output).
#[test]
fn no_output_shows_a_password_written_into_a_url() {
    let env = Env::new();
    let with_password = |path: &str| {
        env.server
            .url(path)
            .replacen("http://", "http://ann:pa55word@", 1)
    };
    let failed = env.run(&["get", &with_password("/bytes/10?status=404"), "-o", "f"]);
    assert_eq!(
        failed.status.code(),
        Some(3),
        "a failed task: {}",
        text(&failed.stderr)
    );
    let done = env.run(&["get", &with_password("/bytes/10"), "-o", "d"]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let ls = env.ok(&["ls"]);
    let json = env.ok(&["ls", "--json"]);
    for out in [&failed.stdout, &failed.stderr, &done.stdout, &done.stderr] {
        assert!(!text(out).contains("pa55word"), "{}", text(out));
    }
    assert!(!ls.contains("pa55word"), "{ls}");
    assert!(!json.contains("pa55word"), "{json}");
    let json: Value = serde_json::from_str(&json).unwrap();
    let url = json[0]["url"].as_str().unwrap();
    assert!(url.starts_with("http://ann:***@127.0.0.1:"), "{url}");
}

#[test]
fn ls_into_a_closed_pipe_is_not_an_error() {
    let env = Env::new();
    env.ok(&["get", "-q", &env.server.url("/bytes/10"), "-o", "x"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .ferry(&["ls"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(text(&out.stderr), "", "no broken-pipe message");
    assert!(out.status.success());
}

#[test]
fn pause_and_resume_keep_the_bytes() {
    let env = Env::new();
    let url = env.server.url("/bytes/600000?seed=3&rate=300000");
    let ids = env.detach(&[&url, "-o", "p.bin"]);
    let id = ids[0].to_string();
    env.wait_transferring(ids[0]);
    assert_eq!(env.ok(&["pause", &id]).trim(), format!("{id} suspended"));
    let paused = env.wait_task(ids[0], "suspended", |t| t["state"] == "suspended");
    let kept = paused["bytes_done"].as_u64().unwrap();
    assert!(kept > 0);

    let resumed = env.ok(&["resume", &id]);
    assert!(resumed.starts_with(&format!("{id} ")), "{resumed}");
    assert_ne!(resumed.trim(), format!("{id} suspended"));
    env.ok(&["wait", &id]);
    assert_eq!(
        std::fs::read(env.work().join("p.bin")).unwrap(),
        data(3, 600_000)
    );
    // The transfer continued from the kept bytes: fewer than two full bodies were sent.
    assert!(env.server.bytes_sent() < 2 * 600_000 - kept + 1);

    // --all: every unfinished task of the session.
    let more = env.detach(&[&url, "-o", "q.bin"]);
    env.wait_transferring(more[0]);
    let out = env.ok(&["pause", "--all"]);
    assert_eq!(out.trim(), format!("{} suspended", more[0]));
    let out = env.ok(&["resume", "--all"]);
    assert!(out.starts_with(&format!("{} ", more[0])));
    env.ok(&["wait", "--all"]);

    // Unknown ids: an error naming the task, exit 1, the others still acted on.
    let out = env.run(&["pause", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("task 999999"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cancel_with_resume_data_then_resume_from_the_file() {
    let env = Env::new();
    let url = env.server.url("/bytes/800000?seed=4&rate=400000");
    let ids = env.detach(&[&url, "-o", "r.bin"]);
    let id = ids[0].to_string();
    env.wait_transferring(ids[0]);
    // Resume data that cannot be saved: the task is not cancelled.
    let out = env.run(&["cancel", "--keep-resume-data", "no/such/dir/r.dat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no/such/dir/r.dat"),
        "{}",
        text(&out.stderr)
    );
    assert_ne!(env.task(ids[0])["state"], "cancelled");

    let out = env.ok(&["cancel", "--keep-resume-data", "resume.dat", &id]);
    assert!(out.contains("ferry resume --from resume.dat"), "{out}");
    let task = env.task(ids[0]);
    assert_eq!(task["state"], "cancelled");
    let blob = env.work().join("resume.dat");
    assert_eq!(
        task["resume_data"].as_str().unwrap().as_bytes(),
        std::fs::read(&blob).unwrap()
    );
    assert!(!env.work().join("resume.ferry-tmp").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = env.run(&["resume", "--from", "resume.dat"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(env.work().join("r.bin")).unwrap(),
        data(4, 800_000)
    );
    assert!(
        env.server.bytes_sent() < 2 * 800_000,
        "continued, not restarted"
    );

    // A file that is not resume data: exit 2 with the reason.
    std::fs::write(env.work().join("junk.dat"), "junk").unwrap();
    let out = env.run(&["resume", "--from", "junk.dat"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("junk.dat"));
}

/// `ferry limit` changes a running task's own limit (at 40K a 3 MB file would outlast the
/// test's patience), a session's and the daemon's; a bad rate is a usage error.
#[test]
fn limit_changes_bandwidth_limits_of_running_transfers() {
    let env = Env::new();
    let url = env.server.url("/bytes/3000000?seed=9");
    let ids = env.detach(&[&url, "--limit", "40K", "-o", "slow.bin"]);
    env.wait_transferring(ids[0]);
    let id = ids[0].to_string();
    assert_eq!(env.ok(&["limit", "none", &id]).trim(), format!("{id} none"));
    // Within the 30 s this allows, only if the limit was lifted.
    env.wait_task(ids[0], "succeeded", |t| t["state"] == "succeeded");
    assert_eq!(
        std::fs::metadata(env.work().join("slow.bin"))
            .unwrap()
            .len(),
        3_000_000
    );
    assert!(env.ok(&["limit", "2M"]).starts_with("daemon: "));
    env.ok(&["limit", "none"]);
    assert!(
        env.ok(&["limit", "1M", "--session", "ferry.cli"])
            .starts_with("session ferry.cli: ")
    );
    let out = env.run(&["limit", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("fast"));
    let out = env.run(&["limit", "none", "--session", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// A download whose folder is missing fails with its bytes kept, says how to go on, and
/// `ferry resume ID` continues it once the folder exists — nothing fetched again.
#[test]
fn a_download_that_failed_with_its_bytes_kept_is_resumed_by_id() {
    let env = Env::new();
    let url = env.server.url("/bytes/200000?seed=10");
    let failed = env.run(&["get", &url, "-o", "later/f.bin"]);
    assert_eq!(failed.status.code(), Some(3), "{}", text(&failed.stderr));
    let line = text(&failed.stdout);
    let id: u64 = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        line.contains(&format!("`ferry resume {id}` continues")),
        "{line}"
    );
    std::fs::create_dir(env.work().join("later")).unwrap();
    let out = env.ok(&["resume", &id.to_string()]);
    let new: u64 = out
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.starts_with(&format!("{id} continued as ")), "{out}");
    env.ok(&["wait", &new.to_string()]);
    assert_eq!(
        std::fs::read(env.work().join("later/f.bin")).unwrap(),
        data(10, 200_000)
    );
    assert_eq!(env.server.bytes_sent(), 200_000, "nothing fetched again");
}

#[test]
fn rm_forgets_tasks_and_optionally_their_files() {
    let env = Env::new();
    let ids = env.detach(&[&env.server.url("/bytes/1000?seed=5"), "-o", "keep.bin"]);
    env.ok(&["wait", &ids[0].to_string()]);
    let out = env.ok(&["rm", &ids[0].to_string()]);
    assert!(out.contains("removed"), "{out}");
    assert!(env.tasks(None).is_empty());
    assert!(env.work().join("keep.bin").exists());
    // Waiting for a removed task says how it had ended (the daemon keeps a tombstone).
    let out = env.ok(&["wait", &ids[0].to_string()]);
    assert_eq!(out.trim(), format!("{} succeeded (removed since)", ids[0]));
    let json: Value =
        serde_json::from_str(&env.ok(&["wait", "--json", &ids[0].to_string()])).unwrap();
    assert_eq!(json[0]["id"], ids[0]);
    assert_eq!(json[0]["state"], "succeeded");
    assert_eq!(json[0]["removed"], true);
    // A task that never existed is an error naming it.
    let out = env.run(&["wait", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("there is no task 999999"),
        "{}",
        text(&out.stderr)
    );

    let ids = env.detach(&[&env.server.url("/bytes/1000?seed=6"), "-o", "gone.bin"]);
    env.ok(&["wait", &ids[0].to_string()]);
    env.ok(&["rm", "--delete-file", &ids[0].to_string()]);
    assert!(!env.work().join("gone.bin").exists());

    // cancel --all: every unfinished task of the session.
    let slow = env.server.url("/bytes/2000000?seed=7&rate=100000");
    let ids = env.detach(&[&slow, "-o", "c.bin"]);
    env.wait_transferring(ids[0]);
    assert_eq!(
        env.ok(&["cancel", "--all"]).trim(),
        format!("{} cancelled", ids[0])
    );
    env.ok(&["rm", &ids[0].to_string()]);
    let out = env.run(&["wait", &ids[0].to_string()]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a removed cancelled task: exit 4"
    );

    // An unfinished task is cancelled first.
    let ids = env.detach(&[&slow, "-o", "slow.bin"]);
    env.wait_transferring(ids[0]);
    env.ok(&["rm", "--all"]);
    assert!(env.tasks(None).is_empty());
    assert!(!env.work().join("slow.bin").exists());
}

#[test]
fn groups_are_listed_paused_resumed_and_cancelled_together() {
    let env = Env::new();
    let url = |seed| {
        env.server
            .url(&format!("/bytes/500000?seed={seed}&rate=250000"))
    };
    let (a, b) = (url(8), url(9));
    let ids = env.detach(&["--group", "album", &a, &b, "-d", "album"]);
    for id in &ids {
        env.wait_transferring(*id);
    }
    let listed = env.ok(&["group", "ls"]);
    assert!(listed.lines().next().unwrap().contains("GROUP"));
    let row = listed.lines().find(|l| l.starts_with("album")).unwrap();
    assert!(row.split_whitespace().nth(1) == Some("2"), "{listed}");

    env.ok(&["group", "pause", "album"]);
    for id in &ids {
        env.wait_task(*id, "suspended", |t| t["state"] == "suspended");
    }
    env.ok(&["group", "resume", "album"]);
    for id in &ids {
        env.wait_task(*id, "running", |t| t["state"] != "suspended");
    }
    env.ok(&["group", "cancel", "album"]);
    let out = env.run(&["wait", &ids[0].to_string(), &ids[1].to_string()]);
    assert_eq!(out.status.code(), Some(4), "cancelled: exit 4");
    let json: Value = serde_json::from_str(&env.ok(&["group", "ls", "--json"])).unwrap();
    assert_eq!(json[0]["name"], "album");
    assert_eq!(json[0]["cancelled"], 2);
}

#[test]
fn sessions_are_listed_terminated_and_invalidated() {
    let env = Env::new();
    let slow = env.server.url("/bytes/2000000?seed=10&rate=100000");
    let ids = env.detach(&["--session", "app.one", &slow, "-o", "one.bin"]);
    env.wait_transferring(ids[0]);
    env.detach(&[
        "--session",
        "app.two",
        &env.server.url("/bytes/10"),
        "-o",
        "two.bin",
    ]);

    let table = env.ok(&["session", "ls"]);
    assert!(table.lines().next().unwrap().contains("UNDELIVERED"));
    let row = table.lines().find(|l| l.starts_with("app.one")).unwrap();
    assert!(row.contains("active"), "{table}");
    assert!(table.contains("app.two"));

    env.ok(&["session", "terminate", "app.one"]);
    let task = env.wait_task(ids[0], "cancelled", |t| t["state"] == "cancelled");
    assert_eq!(task["session"], "app.one");
    let json: Value = serde_json::from_str(&env.ok(&["session", "ls", "--json"])).unwrap();
    let one = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "app.one")
        .unwrap();
    assert_eq!(one["terminated"], true);
    assert_eq!(one["unfinished"], 0);

    let ids = env.detach(&["--session", "app.three", &slow, "-o", "three.bin"]);
    env.wait_transferring(ids[0]);
    env.ok(&["session", "invalidate", "--cancel", "app.three"]);
    env.wait_task(ids[0], "cancelled", |t| t["state"] == "cancelled");

    // Without --cancel: no new tasks, the running one finishes.
    let ids = env.detach(&["--session", "app.four", &slow, "-o", "four.bin"]);
    env.ok(&["session", "invalidate", "app.four"]);
    let json: Value = serde_json::from_str(&env.ok(&["session", "ls", "--json"])).unwrap();
    let four = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "app.four")
        .unwrap();
    assert_eq!(four["invalidating"], true);
    let out = env.run(&["get", "--session", "app.four", &env.server.url("/bytes/10")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("invalidat"),
        "{}",
        text(&out.stderr)
    );
    assert_ne!(env.task(ids[0])["state"], "cancelled");
    env.ok(&["cancel", "--session", "app.four", &ids[0].to_string()]);
}

#[test]
fn daemon_start_status_and_stop() {
    let env = Env::new();
    let out = env.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3), "not running: exit 3");
    assert!(env.daemon_pid().is_none(), "status does not start ferryd");

    let started = env.ok(&["daemon", "start"]);
    let pid = env.daemon_pid().unwrap();
    assert!(started.contains(&format!("pid {pid}")), "{started}");
    env.ok(&["get", "-q", &env.server.url("/bytes/100"), "-o", "s.bin"]);

    let status: Value = serde_json::from_str(&env.ok(&["daemon", "status", "--json"])).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], pid);
    assert_eq!(status["home"], env.home().display().to_string());
    assert_eq!(status["tasks"]["succeeded"], 1);
    let human = env.ok(&["daemon", "status"]);
    assert!(
        human.contains("succeeded") && human.contains(&pid.to_string()),
        "{human}"
    );

    let stopped = env.ok(&["daemon", "stop"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    assert!(!alive(pid), "ferryd {pid} is gone when stop returns");
    assert_eq!(env.run(&["daemon", "status"]).status.code(), Some(3));
    assert_eq!(env.ok(&["daemon", "stop"]).trim(), "ferryd is not running");

    // The next command starts it again, with the tasks kept.
    assert_eq!(env.tasks(None).len(), 1);
    assert_ne!(env.daemon_pid(), Some(pid));
}

#[test]
fn help_completions_and_man_page_cover_every_command() {
    let env = Env::new();
    let commands = [
        "get",
        "ls",
        "watch",
        "wait",
        "pause",
        "resume",
        "cancel",
        "rm",
        "limit",
        "group",
        "session",
        "daemon",
        "completions",
        "man",
    ];
    let help = env.ok(&["--help"]);
    let man = env.ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH ferry"),
        "roff: {}",
        &man[..80]
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completions", shell]);
        for command in commands {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
    }
    for command in commands {
        assert!(help.contains(command), "--help lacks {command}");
        assert!(man.contains(command), "the man page lacks {command}");
    }
    let get_help = env.ok(&["get", "--help"]);
    for flag in [
        "--output",
        "--dir",
        "--input-file",
        "--sha256",
        "--checksum",
        "--session",
        "--group",
        "--priority",
        "--connections",
        "--limit",
        "--header",
        "--detach",
        "--json",
    ] {
        assert!(get_help.contains(flag), "get --help lacks {flag}");
    }
    // A page per command, with its flags.
    let listed = env.ok(&["man", "--dir", "pages"]);
    assert!(
        listed.contains("ferry-get.1") && listed.contains("ferry-group-pause.1"),
        "{listed}"
    );
    let get_page = std::fs::read_to_string(env.work().join("pages/ferry-get.1"))
        .unwrap()
        .replace("\\-", "-");
    for flag in [
        "--input-file",
        "--sha256",
        "--detach",
        "--priority",
        "--limit",
    ] {
        assert!(get_page.contains(flag), "ferry-get.1 lacks {flag}");
    }
    assert!(env.daemon_pid().is_none(), "help needs no daemon");
}
