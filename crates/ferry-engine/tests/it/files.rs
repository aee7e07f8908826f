//! The file system side: a full disk, staging on another file system.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_engine::Destination;

use crate::fixture::{Env, content};

/// A small tmpfs, mounted for one test and unmounted when dropped. Needs root (tests and CI
/// run as root on this project's machines).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs { path, _dir: dir }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_only(self) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remounting read-only");
        self
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_no_space_and_keeps_the_bytes() {
    let env = Env::new();
    let disk = Tmpfs::mount("512k");
    // Unknown length: nothing to preallocate, so the disk fills mid-way.
    let mut spec = env.spec("/bytes/2000000?seed=41&chunked=1");
    spec.staging = disk.path().join("task.part");
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "no_space", "{}", failure.error);
    assert!(!failure.error.is_transient());
    assert!(failure.error.to_string().contains("task.part"));
    let checkpoint = failure.checkpoint.expect("the bytes so far are kept");
    assert!(checkpoint.bytes() > 100_000, "{}", checkpoint.bytes());
    let kept = std::fs::read(&spec.staging).unwrap();
    assert!(kept.len() as u64 >= checkpoint.bytes());
    assert_eq!(
        &kept[..checkpoint.bytes() as usize],
        &content(41, 2_000_000)[..checkpoint.bytes() as usize]
    );
    assert!(env.out_files().is_empty());
}

/// A destination folder that cannot be written (a read-only file system here) is a
/// `destination` error once the bytes are in, and they are kept (SPEC §15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_destination_folder_is_a_destination_error_and_keeps_the_bytes() {
    let env = Env::new();
    let folder = Tmpfs::mount("1m").read_only();
    let mut spec = env.spec("/bytes/100000?seed=44");
    spec.destination = Destination::File(folder.path().join("f.bin"));
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(
        failure.error.kind().code(),
        "destination",
        "{}",
        failure.error
    );
    assert!(failure.error.kind().keeps_bytes());
    let checkpoint = failure.checkpoint.expect("a checkpoint of the bytes");
    assert_eq!(checkpoint.bytes(), 100_000);
    assert_eq!(std::fs::read(&spec.staging).unwrap(), content(44, 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_size_that_does_not_fit_fails_before_downloading() {
    let env = Env::new();
    let disk = Tmpfs::mount("512k");
    let mut spec = env.spec("/bytes/2000000?seed=42");
    spec.staging = disk.path().join("task.part");
    let (result, _) = env.run(&spec).await;
    let failure = result.unwrap_err();
    assert_eq!(failure.error.kind().code(), "no_space", "{}", failure.error);
    assert!(env.server.requests()[0].body_bytes_sent < 2_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_on_another_file_system_is_copied_then_renamed() {
    let env = Env::new();
    let disk = Tmpfs::mount("8m");
    let mut spec = env.spec("/bytes/1000000?seed=43");
    spec.staging = disk.path().join("task.part");
    spec.destination = Destination::File(env.out().join("f.bin"));
    let (result, _) = env.run(&spec).await;
    let done = result.unwrap();
    assert_eq!(std::fs::read(&done.path).unwrap(), content(43, 1_000_000));
    assert!(
        !spec.staging.exists(),
        "the staging file is gone after the copy"
    );
    assert_eq!(
        env.out_files(),
        vec!["f.bin".to_owned()],
        "no temporary copy left behind"
    );
}
