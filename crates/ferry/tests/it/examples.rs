//! The examples, run as the README says: real processes against the test server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_testserver::{TestServer, content};

use crate::fixture::{Home, ferryd_program, wait_until};

/// `target/debug/examples/<name>`, which `cargo test` builds.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let program = dir.join(name);
    if !program.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "ferry", "--example", name])
            .status()
            .unwrap();
        assert!(status.success(), "building example {name}");
    }
    program
}

/// Processes running `program` (the relaunched example).
fn running_instances(program: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path().join("exe")).ok())
        .filter(|exe| exe == program)
        .count()
}

/// The example `name` with `args`, against the daemon of `home`.
fn command(name: &str, home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(example(name));
    command
        .args(args)
        .env("FERRY_HOME", home)
        .env("FERRY_DAEMON", ferryd_program());
    command
}

fn run(name: &str, home: &Path, args: &[&str]) -> Output {
    let out = command(name, home, args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn background_example_is_relaunched_and_collects_what_finished() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let out = tempfile::tempdir().unwrap();
    let a = server.url("/bytes/300000?seed=21&rate=1000000&filename=a.bin");
    let b = server.url("/bytes/200000?seed=22&filename=b.bin");
    let started = run(
        "background",
        home.path(),
        &["--out", out.path().to_str().unwrap(), &a, &b],
    );
    assert!(String::from_utf8_lossy(&started.stdout).contains("started task"));
    // The program has exited; the daemon finishes, then runs it again to collect.
    wait_until(|| async {
        let a = std::fs::read(out.path().join("a.bin")).unwrap_or_default();
        let b = std::fs::read(out.path().join("b.bin")).unwrap_or_default();
        a == content(21, 0, 300_000) && b == content(22, 0, 200_000)
    })
    .await;
    // It acknowledged the backlog and removed the tasks, then exited.
    let log = home.path().join("logs/launch-com.example.background.log");
    wait_until(|| async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("backlog handled"))
            && running_instances(&example("background")) == 0
    })
    .await;
    let control = home.control("com.example.background").await;
    assert!(control.tasks().await.unwrap().is_empty());
    let again = run(
        "background",
        home.path(),
        &["--out", out.path().to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(
        text.contains("nothing happened while away"),
        "nothing delivered twice: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn group_example_acts_once_all_have_finished() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let out = tempfile::tempdir().unwrap();
    let urls: Vec<String> = (0..6)
        .map(|i| server.url(&format!("/bytes/{}?seed={i}", 10_000 * (i + 1))))
        .collect();
    let mut args = vec!["--out", out.path().to_str().unwrap()];
    args.extend(urls.iter().map(String::as_str));
    let done = run("group", home.path(), &args);
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("done: 6 succeeded, 0 failed"),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );
    let manifest = std::fs::read_to_string(out.path().join("MANIFEST")).unwrap();
    assert_eq!(manifest.lines().count(), 6, "{manifest}");
    for i in 0..6u64 {
        let file = out.path().join(format!("{i:04}"));
        assert_eq!(
            std::fs::read(&file).unwrap(),
            content(i, 0, 10_000 * (i + 1))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_example_needs_no_daemon() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("file");
    let done = run(
        "in_process",
        home.path(),
        &[
            &server.url("/bytes/1234"),
            &server.url("/bytes/50000?seed=3"),
            dest.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&done.stdout).to_string();
    assert!(text.contains("data: 1234 bytes"), "{text}");
    assert_eq!(std::fs::read(&dest).unwrap(), content(3, 0, 50_000));
    assert!(home.daemons().is_empty(), "no daemon was started");
}

/// The small-files benchmark's client: every file in place, and every event acknowledged —
/// a second run in the same session refuses to start if any was left in the journal.
#[tokio::test(flavor = "multi_thread")]
async fn many_example_downloads_everything_and_acknowledges_it() {
    let server = TestServer::start().unwrap();
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    let urls: Vec<String> = (0..40u64)
        .map(|i| server.url(&format!("/bytes/{}?seed={i}", 1000 + i)))
        .collect();
    std::fs::write(&list, urls.join("\n")).unwrap();
    for round in 0..2 {
        let out = dir.path().join(format!("out{round}"));
        std::fs::create_dir(&out).unwrap();
        let args = [
            "--urls",
            list.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        let done = run("many", home.path(), &args);
        let report = String::from_utf8_lossy(&done.stderr);
        assert!(report.contains("tasks=40 "), "{report}");
        for i in 0..40u64 {
            let file = out.join(format!("f{i:04}"));
            assert_eq!(std::fs::read(&file).unwrap(), content(i, 0, 1000 + i));
        }
    }

    // A download that fails makes the client fail, naming it.
    std::fs::write(&list, server.url("/bytes/10?status=404")).unwrap();
    let out = dir.path().join("out-bad");
    std::fs::create_dir(&out).unwrap();
    let args = [
        "--urls",
        list.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--session",
        "bad",
    ];
    let failed = command("many", home.path(), &args).output().unwrap();
    assert!(!failed.status.success());
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(
        message.contains("1 of 1 downloads did not succeed"),
        "{message}"
    );
}
