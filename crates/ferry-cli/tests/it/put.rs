//! `ferry put` and `ferry post-form`: uploads through the daemon, the reply, exit statuses.

use serde_json::Value;

use crate::{Env, data, sha256, text};

#[test]
fn put_sends_the_file_and_saves_the_reply() {
    let env = Env::new();
    let body = data(31, 400_000);
    std::fs::write(env.work().join("report.bin"), &body).unwrap();
    let url = env.server.url("/upload/report");
    let out = env.run(&["put", "report.bin", &url, "-o", "reply.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        env.server.upload("report").unwrap() == body,
        "the server holds other bytes"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("succeeded HTTP 201"), "{stdout}");
    let reply: Value =
        serde_json::from_slice(&std::fs::read(env.work().join("reply.json")).unwrap()).unwrap();
    assert_eq!(reply["sha256"], sha256(&body));
    let put = env
        .server
        .requests()
        .into_iter()
        .find(|r| r.path == "/upload/report")
        .unwrap();
    assert_eq!(put.method, "PUT");

    // The task is the daemon's: listed as an upload with the server's answer.
    let tasks = env.tasks(None);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["kind"], "upload");
    assert_eq!(tasks[0]["state"], "succeeded");
    assert_eq!(tasks[0]["reply"]["status"], 201);
    assert_eq!(tasks[0]["bytes_done"], 400_000);

    // `-X post -o -`: the reply alone on stdout.
    let reply = env.ok(&["put", "-X", "post", "-o", "-", "report.bin", &url]);
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["bytes"], 400_000);
    assert!(env.server.requests().iter().any(|r| r.method == "POST"));
}

#[test]
fn a_refused_upload_exits_3_and_keeps_the_reply() {
    let env = Env::new();
    std::fs::write(env.work().join("big.iso"), data(32, 50_000)).unwrap();
    let url = env.server.url("/upload/big?status=413");
    let out = env.run(&["put", "big.iso", &url, "-o", "why.txt", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(env.work().join("why.txt")).unwrap(),
        "error 413"
    );
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done[0]["state"], "failed");
    assert_eq!(done[0]["error"]["code"], "http_status");
    assert_eq!(done[0]["reply"]["status"], 413);
    assert!(env.server.upload("big").is_none());
}

#[test]
fn post_form_sends_fields_and_files_part_by_part() {
    let env = Env::new();
    let (a, b) = (data(33, 120_000), data(34, 3_000));
    std::fs::write(env.work().join("a.bin"), &a).unwrap();
    std::fs::write(env.work().join("b.txt"), &b).unwrap();
    let url = env.server.url("/upload/form");
    let out = env.ok(&[
        "post-form",
        &url,
        "-F",
        "title=summer trip",
        "-F",
        "first=@a.bin",
        "-F",
        "second=@b.txt;type=text/plain;filename=notes.txt",
        "-o",
        "reply.json",
    ]);
    assert!(out.contains("succeeded HTTP 201"), "{out}");
    assert!(env.server.upload("form/first").unwrap() == a);
    assert!(env.server.upload("form/second").unwrap() == b);
    assert_eq!(env.server.upload("form/title").unwrap(), b"summer trip");
    let reply: Value =
        serde_json::from_slice(&std::fs::read(env.work().join("reply.json")).unwrap()).unwrap();
    let parts = reply["parts"].as_array().unwrap();
    assert_eq!(parts[2]["file_name"], "notes.txt");
    assert_eq!(parts[2]["content_type"], "text/plain");
    assert_eq!(parts[1]["sha256"], sha256(&a));
}

#[test]
fn detach_returns_the_id_and_wait_follows_it() {
    let env = Env::new();
    std::fs::write(env.work().join("x.bin"), data(35, 300_000)).unwrap();
    let url = env.server.url("/upload/x");
    let id = env.ok(&["put", "--detach", "--limit", "1M", "x.bin", &url]);
    let id = id.trim().to_owned();
    id.parse::<u64>().unwrap();
    env.ok(&["wait", &id]);
    assert!(env.server.upload("x").unwrap() == data(35, 300_000));
}

#[test]
fn bad_uploads_are_refused_with_exit_2_and_create_nothing() {
    let env = Env::new();
    let url = env.server.url("/upload/none");
    let out = env.run(&["put", "missing.bin", &url]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("missing.bin"),
        "{}",
        text(&out.stderr)
    );

    let out = env.run(&["post-form", &url, "-F", "novalue"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("NAME=VALUE"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(env.work().join("ok.bin"), b"ok").unwrap();
    let out = env.run(&["put", "ok.bin", "ftp://example.com/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let out = env.run(&["put", "-o", "-", "--json", "ok.bin", &url]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--json"),
        "{}",
        text(&out.stderr)
    );

    assert!(env.server.requests().is_empty(), "nothing was sent");
    if env.daemon_pid().is_some() {
        assert!(env.tasks(None).is_empty(), "nothing was created");
    }
}
