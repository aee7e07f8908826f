//! `ferry get`: through the daemon, its display, `-i`, and its exit statuses.

use std::process::Command;

use crate::{Env, data, ferryd_program, finish, sha256, signal, text};

#[test]
fn downloads_through_the_daemon_into_the_current_folder() {
    let env = Env::new();
    let url = env.server.url("/bytes/300000?seed=1&filename=data.bin");
    let out = env.run(&["get", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = env.work().join("data.bin");
    assert_eq!(std::fs::read(&path).unwrap(), data(1, 300_000));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("succeeded {}", path.display())),
        "{stdout}"
    );
    // Not a pipe or a terminal: plain lines, no escape sequences.
    assert!(!stdout.contains('\x1b'), "{stdout:?}");

    // The task is the daemon's, in the session ferry.cli, and the daemon outlives the command.
    let tasks = env.tasks(None);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["session"], "ferry.cli");
    assert_eq!(tasks[0]["state"], "succeeded");
    assert_eq!(tasks[0]["destination"], path.display().to_string());
    let pid = env.daemon_pid().expect("ferryd started");
    assert!(crate::alive(pid));

    // Nothing attaches to ferry.cli to acknowledge events: it keeps none (task states are
    // what counts), so retention can forget its old tasks.
    let sessions: serde_json::Value =
        serde_json::from_str(&env.ok(&["session", "ls", "--json"])).unwrap();
    let cli = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "ferry.cli")
        .unwrap();
    assert_eq!(cli["undelivered"], 0, "{cli}");
    assert_eq!(cli["attached_pid"], serde_json::Value::Null);
}

#[test]
fn output_dir_and_checksums() {
    let env = Env::new();
    let url = env.server.url("/bytes/100000?seed=2");
    let good = sha256(&data(2, 100_000));
    env.ok(&["get", "-q", &url, "-o", "sub.bin", "--sha256", &good]);
    assert_eq!(
        std::fs::read(env.work().join("sub.bin")).unwrap(),
        data(2, 100_000)
    );

    let named = env.server.url("/bytes/5000?seed=3&filename=x.bin");
    env.ok(&["get", "-q", &named, "-d", "into"]);
    assert_eq!(
        std::fs::read(env.work().join("into/x.bin")).unwrap(),
        data(3, 5000)
    );

    // --json: the final states, machine-readable.
    let json = env.ok(&["get", "--json", &named, "-o", "j.bin"]);
    let tasks: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(tasks[0]["state"], "succeeded");
    assert_eq!(tasks[0]["bytes_done"], 5000);
    assert_eq!(
        tasks[0]["destination"],
        env.work().join("j.bin").display().to_string()
    );

    // A wrong digest fails the task: exit 3, the error says why, nothing at the destination.
    let out = env.run(&[
        "get",
        "-q",
        &url,
        "-o",
        "bad.bin",
        "--checksum",
        &format!("sha256:{}", sha256(b"other")),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("checksum"),
        "{}",
        text(&out.stdout)
    );
    assert!(!env.work().join("bad.bin").exists());
}

#[test]
fn exit_statuses_for_http_errors_and_bad_usage() {
    let env = Env::new();
    let out = env.run(&["get", &env.server.url("/bytes/10?status=404")]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("failed") && stdout.contains("404"),
        "{stdout}"
    );

    // Usage errors: exit 2 and a line saying what was wrong; nothing is created.
    let url = env.server.url("/bytes/10");
    let out = env.run(&["get", &url, &url, "-o", "one.bin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-o names one file"));
    let out = env.run(&["get", "ftp://example/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("ferry: "));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.tasks(None).len(), 1, "only the 404 task exists");
}

#[test]
fn a_cancelled_download_exits_4() {
    let env = Env::new();
    let url = env.server.url("/bytes/2000000?seed=4&rate=100000");
    let child = env.spawn(&["get", "-q", &url, "-o", "slow.bin"]);
    let id = env.first_task();
    env.wait_transferring(id);
    let cancelled = env.ok(&["cancel", &id.to_string()]);
    assert_eq!(cancelled.trim(), format!("{id} cancelled"));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(!env.work().join("slow.bin").exists());
}

#[test]
fn ctrl_c_detaches_and_the_download_goes_on() {
    let env = Env::new();
    let url = env.server.url("/bytes/600000?seed=5&rate=300000");
    let child = env.spawn(&["get", &url, "-o", "bg.bin"]);
    let id = env.first_task();
    env.wait_transferring(id);
    signal(child.id(), "INT");
    let out = finish(child);
    assert_eq!(out.status.code(), Some(130));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("ferry wait {id}")), "{stderr}");
    assert_ne!(env.task(id)["state"], "cancelled");

    let out = env.run(&["wait", &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{id} succeeded")));
    assert_eq!(
        std::fs::read(env.work().join("bg.bin")).unwrap(),
        data(5, 600_000)
    );
}

#[test]
fn detach_prints_ids_at_once_and_wait_collects_them() {
    let env = Env::new();
    let slow = env
        .server
        .url("/bytes/400000?seed=6&rate=200000&filename=a.bin");
    let other = env.server.url("/bytes/1000?seed=7&filename=b.bin");
    let ids = env.detach(&[&slow, &other]);
    assert_eq!(ids.len(), 2);
    assert_ne!(
        env.task(ids[0])["state"],
        "succeeded",
        "returned before the end"
    );

    let json = env.ok(&["get", "--detach", "--json", &other, "-o", "c.bin"]);
    let parsed: Vec<u64> = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.len(), 1);

    let out = env.run(&["wait", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(env.work().join("a.bin")).unwrap(),
        data(6, 400_000)
    );
    assert_eq!(
        std::fs::read(env.work().join("b.bin")).unwrap(),
        data(7, 1000)
    );
    assert_eq!(
        std::fs::read(env.work().join("c.bin")).unwrap(),
        data(7, 1000)
    );

    // wait on a failed task: exit 3.
    let bad = env.detach(&[&env.server.url("/bytes/10?status=404")]);
    let out = env.run(&["wait", &bad[0].to_string()]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn input_files_in_aria2_format() {
    let env = Env::new();
    let a = env.server.url("/bytes/3000?seed=8");
    let b = env.server.url("/bytes/4000?seed=9&filename=named.bin");
    let list = format!(
        "# two files\n{a}\n  out=first.bin\n  sha256={}\n\n{b}\n  dir=sub\n",
        sha256(&data(8, 3000))
    );
    std::fs::write(env.work().join("list.txt"), list).unwrap();
    env.ok(&["get", "-q", "-i", "list.txt"]);
    assert_eq!(
        std::fs::read(env.work().join("first.bin")).unwrap(),
        data(8, 3000)
    );
    assert_eq!(
        std::fs::read(env.work().join("sub/named.bin")).unwrap(),
        data(9, 4000)
    );

    // A bad line: exit 2, the file and line named, and not one of its downloads created.
    let bad = format!("{a}\n  out=x.bin\n  speed=fast\n{b}\n");
    std::fs::write(env.work().join("bad.txt"), bad).unwrap();
    let before = env.tasks(None).len();
    let out = env.run(&["get", "-i", "bad.txt"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.txt") && stderr.contains("line 3") && stderr.contains("speed"),
        "{stderr}"
    );
    assert_eq!(env.tasks(None).len(), before);

    // -o and checksums on the command line describe one URL, not a list.
    let out = env.run(&["get", "-i", "list.txt", "-o", "one.bin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--output"),
        "{}",
        text(&out.stderr)
    );

    // A line the daemon refuses (an unknown digest algorithm): named by file and line too.
    let refused = format!("{a}\n  out=y.bin\n{b}\n  checksum=crc32:abcd\n");
    std::fs::write(env.work().join("refused.txt"), refused).unwrap();
    let out = env.run(&["get", "-i", "refused.txt"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused.txt line 3") && stderr.contains("crc32"),
        "{stderr}"
    );
    assert_eq!(env.tasks(None).len(), before);
}

#[test]
fn a_terminal_gets_bars_redrawn_in_place_and_a_total_line() {
    let env = Env::new();
    let url = env
        .server
        .url("/bytes/1500000?seed=10&rate=1000000&filename=tty.bin");
    // `script` runs the command on a pseudo-terminal and copies what it draws.
    let command = format!(
        "{} get '{url}'",
        env!("CARGO_BIN_EXE_ferry") // no spaces in target paths
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .current_dir(env.work())
        .env("FERRY_HOME", env.home())
        .env("FERRY_DAEMON", ferryd_program())
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drawn = text(&out.stdout);
    assert!(
        drawn.contains('\x1b'),
        "redrawn with escape sequences: {drawn:?}"
    );
    assert!(drawn.contains("tty.bin"), "{drawn:?}");
    assert!(drawn.contains("total"), "{drawn:?}");
    assert!(drawn.contains("ETA"), "{drawn:?}");
    assert!(drawn.contains("succeeded"), "{drawn:?}");
    assert_eq!(
        std::fs::read(env.work().join("tty.bin")).unwrap(),
        data(10, 1_500_000)
    );
}

#[test]
fn plain_progress_lines_when_not_a_terminal() {
    let env = Env::new();
    let url = env
        .server
        .url("/bytes/800000?seed=11&rate=400000&filename=p.bin");
    let out = env.run(&["get", &url]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("1 transferring") && l.contains('%')),
        "{stdout}"
    );
    assert!(!stdout.contains('\r') && !stdout.contains('\x1b'));
}

#[test]
fn request_flags_reach_the_task_and_the_server() {
    let env = Env::new();
    let size = 400_000u64;
    let url = env.server.url("/bytes/400000?seed=12");
    let started = std::time::Instant::now();
    env.ok(&[
        "get",
        "-q",
        &url,
        "-o",
        "f.bin",
        "--header",
        "X-Ferry-Test: yes",
        "--priority",
        "high",
        "--connections",
        "1",
        "--limit",
        "200K",
        "--group",
        "flags",
    ]);
    // A limit only ever slows a download down: at 200 KiB/s, 400 kB cannot take less than
    // about 1.9 s, minus the limiter's burst (a fraction of a second).
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1200),
        "--limit was not applied: {:?}",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read(env.work().join("f.bin")).unwrap(),
        data(12, size)
    );
    let requests: Vec<_> = env
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/bytes/400000")
        .collect();
    assert_eq!(requests.len(), 1, "one connection: one GET");
    assert_eq!(requests[0].header("x-ferry-test"), Some("yes"));
    let task = &env.tasks(None)[0];
    assert_eq!(task["priority"], "high");
    assert_eq!(task["group"], "flags");
}

#[test]
fn watch_follows_tasks_until_they_complete() {
    let env = Env::new();
    let url = env.server.url("/bytes/600000?seed=13&rate=300000");
    let ids = env.detach(&["--session", "app.watched", &url, "-o", "w.bin"]);
    let out = env.run(&["watch", &ids[0].to_string()]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("transferring") && l.contains('%')),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with(&format!(
            "{} succeeded {}",
            ids[0],
            env.work().join("w.bin").display()
        )),
        "{stdout}"
    );

    // Without ids: every unfinished task (of --session), until none is left.
    let more = env.detach(&["--session", "app.watched", &url, "-o", "w2.bin"]);
    let out = env.run(&["watch", "--session", "app.watched"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(&format!("{} succeeded", more[0])));
    let out = env.run(&["wait", "--session", "app.watched", &more[0].to_string()]);
    assert_eq!(out.status.code(), Some(0));
}
