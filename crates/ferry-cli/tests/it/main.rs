//! The `ferry` command as a person or a script runs it: the real binary, a real `ferryd`
//! it starts, and the test origin.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_testserver::{TestServer, content};
use serde_json::Value;

mod commands;
mod get;
mod put;

/// A home, a working folder and an origin; the daemon the commands start is stopped on drop.
struct Env {
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        Env {
            dir,
            server: TestServer::start().unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn ferry(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(args)
            .current_dir(self.work())
            .env("FERRY_HOME", self.home())
            .env("FERRY_DAEMON", ferryd_program())
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ferry(args).output().unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?}: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.ferry(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `ferry ls --json` of a session (default: the command's own).
    fn tasks(&self, session: Option<&str>) -> Vec<Value> {
        let mut args = vec!["ls", "--json"];
        if let Some(s) = session {
            args.extend(["--session", s]);
        }
        let v: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        v.as_array().unwrap().clone()
    }

    fn task(&self, id: u64) -> Value {
        let all: Value = serde_json::from_str(&self.ok(&["ls", "--all", "--json"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("task {id} not listed"))
            .clone()
    }

    /// Polls until task `id` satisfies `pred`.
    fn wait_task(&self, id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task = self.task(id);
            if pred(&task) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {id} never {what}: {task}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the command's session has a task (a spawned `ferry get` created it).
    fn first_task(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(task) = self.tasks(None).first() {
                return task["id"].as_u64().unwrap();
            }
            assert!(Instant::now() < deadline, "no task created within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until task `id` has received some bytes (and is still unfinished).
    fn wait_transferring(&self, id: u64) -> Value {
        self.wait_task(id, "transferring", |t| {
            t["state"] == "transferring" && t["bytes_done"].as_u64().unwrap() > 0
        })
    }

    /// `ferry get --detach`: the new ids.
    fn detach(&self, args: &[&str]) -> Vec<u64> {
        let mut all = vec!["get", "--detach"];
        all.extend_from_slice(args);
        self.ok(&all)
            .lines()
            .map(|l| l.parse().unwrap_or_else(|_| panic!("not an id: {l:?}")))
            .collect()
    }

    /// The daemon's pid, from its pid file.
    fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home().join("ferryd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop the daemon the commands started (ours, found by its pid file), whatever
        // state the test left.
        if let Some(pid) = self.daemon_pid() {
            if alive(pid) && is_ferryd(pid) {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/pid; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn is_ferryd(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ferryd")
}

/// The workspace's `ferryd`, built if `cargo test -p ferry-cli` did not build it.
fn ferryd_program() -> PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_BIN_EXE_ferry")).parent().unwrap();
            let program = dir.join("ferryd");
            if !program.exists() {
                let status = Command::new(env!("CARGO"))
                    .args(["build", "-p", "ferryd", "--bin", "ferryd"])
                    .status()
                    .unwrap();
                assert!(status.success(), "building ferryd");
            }
            program
        })
        .clone()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn data(seed: u64, len: u64) -> Vec<u8> {
    content(seed, 0, len)
}

/// Sends `sig` (a name such as `INT`) to a process this test started.
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {sig} {pid}");
}

/// Waits for a child with a bound, killing it if it overruns.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
