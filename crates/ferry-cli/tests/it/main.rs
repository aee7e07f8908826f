//! `ferry get` as a person runs it: the real binary against the test origin.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_engine::Checkpoint;
use ferry_testserver::{TestServer, content};

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

    fn spawn(&self, args: &[&str]) -> Child {
        self.ferry(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The checkpoint file of the one download in progress, once it exists.
    fn checkpoint_file(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.home().join("staging"))
            .ok()?
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
    }

    fn read_checkpoint(&self) -> Option<Checkpoint> {
        let text = std::fs::read(self.checkpoint_file()?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Polls until a checkpoint records at least `bytes`.
    fn wait_for_checkpoint(&self, bytes: u64) -> Checkpoint {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(cp) = self.read_checkpoint().filter(|cp| cp.bytes() >= bytes) {
                return cp;
            }
            assert!(
                Instant::now() < deadline,
                "no checkpoint of {bytes} bytes within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn staging_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.home().join("staging")) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256(data: &[u8]) -> String {
    let mut h = ferry_engine::Algorithm::Sha256.hasher();
    h.update(data);
    h.finish_hex()
}

/// Sends `sig` (a name such as `KILL`) to a process this test started.
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {sig} {}", child.id());
}

#[test]
fn downloads_into_the_current_folder_and_prints_the_path() {
    let env = Env::new();
    let url = env.server.url("/bytes/300000?seed=1&filename=data.bin");
    let out = env.run(&["get", "--quiet", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = env.work().join("data.bin");
    assert_eq!(text(&out.stdout).trim(), path.display().to_string());
    assert_eq!(std::fs::read(path).unwrap(), content(1, 0, 300_000));
    assert!(env.checkpoint_file().is_none(), "nothing left in staging");
    assert!(env.staging_files().is_empty());
}

#[test]
fn output_path_and_checksum() {
    let env = Env::new();
    let url = env.server.url("/bytes/100000?seed=2");
    let good = sha256(&content(2, 0, 100_000));
    let target = env.work().join("sub.bin");
    let out = env.run(&["get", "-q", &url, "-o", "sub.bin", "--sha256", &good]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&target).unwrap(), content(2, 0, 100_000));

    let wrong = sha256(b"other");
    let out = env.run(&[
        "get",
        "-q",
        &url,
        "-o",
        "bad.bin",
        "--checksum",
        &format!("sha256:{wrong}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("checksum_mismatch") && err.contains(&wrong),
        "{err}"
    );
    assert!(!env.work().join("bad.bin").exists(), "nothing placed");
    assert!(
        env.staging_files().is_empty(),
        "the wrong bytes are not kept"
    );
}

#[test]
fn http_errors_exit_non_zero_and_write_nothing() {
    let env = Env::new();
    let out = env.run(&["get", "-q", &env.server.url("/bytes/100?status=404")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("404") && err.contains("http_status"), "{err}");
    assert!(std::fs::read_dir(env.work()).unwrap().next().is_none());
}

#[test]
fn bad_arguments_get_clear_errors() {
    let env = Env::new();
    let out = env.run(&["get", "ftp://example.com/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ftp://example.com/x"),
        "{}",
        text(&out.stderr)
    );

    let a = env.server.url("/bytes/1");
    let out = env.run(&["get", &a, &a, "-o", "x"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("-d DIR"),
        "{}",
        text(&out.stderr)
    );

    let out = env.run(&["get", &a, "--checksum", "sha256:nothex"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        text(&out.stderr).contains("64 hex digits"),
        "{}",
        text(&out.stderr)
    );
    assert!(env.server.requests().is_empty());
}

#[test]
fn several_urls_into_a_folder() {
    let env = Env::new();
    let urls: Vec<String> = (0..3)
        .map(|i| {
            env.server
                .url(&format!("/bytes/{}?seed={i}&filename=f{i}", 1000 + i))
        })
        .collect();
    let mut args = vec!["get", "-q", "-d", "out"];
    args.extend(urls.iter().map(String::as_str));
    std::fs::create_dir(env.work().join("out")).unwrap();
    let out = env.run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for i in 0..3u64 {
        let got = std::fs::read(env.work().join(format!("out/f{i}"))).unwrap();
        assert_eq!(got, content(i, 0, 1000 + i));
    }
}

/// Kill `ferry get` hard mid-transfer; the same command continues from the checkpoint and
/// fetches only what the checkpoint does not cover.
#[test]
fn killed_mid_transfer_resumes_fetching_only_the_missing_bytes() {
    let env = Env::new();
    let n: u64 = 4 * 1024 * 1024;
    let url = env.server.url(&format!("/bytes/{n}?seed=3&rate=2000000"));
    let args = ["get", "-q", "--connections", "1", &url];
    let mut child = env.spawn(&args);
    env.wait_for_checkpoint(n / 4);
    signal(&child, "KILL");
    child.wait().unwrap();
    let checkpoint = env.read_checkpoint().unwrap();
    let kept = checkpoint.bytes();
    assert!(kept < n);

    env.server.clear_log();
    let out = env.run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(env.work().join(n.to_string())).unwrap(),
        content(3, 0, n)
    );
    let requests = env.server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("range"),
        Some(format!("bytes={kept}-{}", n - 1).as_str())
    );
    assert_eq!(env.server.bytes_sent(), n - kept, "only the missing bytes");
}

#[test]
fn ctrl_c_saves_the_checkpoint_and_the_same_command_continues() {
    let env = Env::new();
    let n: u64 = 4 * 1024 * 1024;
    let url = env.server.url(&format!("/bytes/{n}?seed=4&rate=500000"));
    let args = ["get", "-q", &url, "-o", "file.bin", "--connections", "4"];
    let child = env.spawn(&args);
    env.wait_for_checkpoint(n / 4);
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        text(&out.stderr).contains("run the same command again"),
        "{}",
        text(&out.stderr)
    );
    assert!(!env.work().join("file.bin").exists());
    let checkpoint = env.read_checkpoint().unwrap();
    assert!(
        checkpoint.segments.len() > 1,
        "a segmented download: {checkpoint:?}"
    );

    env.server.clear_log();
    let out = env.run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(env.work().join("file.bin")).unwrap(),
        content(4, 0, n)
    );
    // Every unfinished segment continued where the checkpoint left it.
    let starts: Vec<u64> = env
        .server
        .requests()
        .iter()
        .filter_map(|r| {
            r.header("range")?
                .strip_prefix("bytes=")?
                .split('-')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    for seg in checkpoint.segments.iter().filter(|s| s.end != Some(s.pos)) {
        assert!(
            starts.contains(&seg.pos),
            "segment {seg:?} not resumed from {starts:?}"
        );
    }
    assert!(env.server.bytes_sent() >= n - checkpoint.bytes());
}

#[test]
fn no_progress_output_without_a_terminal() {
    // indicatif draws nothing when stderr is not a terminal: scripts get clean output.
    let env = Env::new();
    let out = env.run(&["get", &env.server.url("/bytes/200000?seed=5")]);
    assert!(out.status.success());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn progress_bar_shows_bytes_speed_and_eta_on_a_terminal() {
    // `script` gives the command a pseudo-terminal and records what it drew.
    let env = Env::new();
    let url = env
        .server
        .url("/bytes/3000000?seed=6&rate=2000000&filename=shown.bin");
    let command = format!("{} get '{url}'", env!("CARGO_BIN_EXE_ferry"));
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(env.work())
        .env("FERRY_HOME", env.home())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(screen.contains("shown.bin"), "{screen}");
    assert!(screen.contains("MiB/2.86 MiB"), "bytes of total: {screen}");
    assert!(screen.contains("/s"), "speed: {screen}");
    assert!(screen.contains("ETA"), "{screen}");
}

#[test]
fn honours_proxy_variables_from_the_environment() {
    let env = Env::new();
    let out = env
        .ferry(&[
            "get",
            "-q",
            "http://ferry-proxy-test.invalid/bytes/1000?seed=7",
            "-o",
            "p",
        ])
        .env("HTTP_PROXY", env.server.url(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(env.work().join("p")).unwrap(),
        content(7, 0, 1000)
    );
    assert_eq!(
        env.server.requests()[0].uri,
        "http://ferry-proxy-test.invalid/bytes/1000?seed=7"
    );

    let out = env
        .ferry(&["get", "-q", &env.server.url("/bytes/10"), "-o", "direct"])
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "NO_PROXY bypasses the dead proxy: {}",
        text(&out.stderr)
    );
}

#[test]
fn trusts_an_extra_root_certificate_only_when_given() {
    let tls = TestServer::start_tls().unwrap();
    let env = Env::new();
    let url = tls.url("/bytes/5000?seed=8");
    let out = env.run(&["get", "-q", &url, "-o", "t"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("[tls]"), "{}", text(&out.stderr));

    let pem = env.dir.path().join("root.pem");
    std::fs::write(&pem, tls.cert_pem().unwrap()).unwrap();
    let out = env.run(&[
        "get",
        "-q",
        &url,
        "-o",
        "t",
        "--cacert",
        pem.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(env.work().join("t")).unwrap(),
        content(8, 0, 5000)
    );
}
