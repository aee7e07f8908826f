//! The staging file and placing the finished file at its destination (SPEC §10).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FallocateFlags, RenameFlags};
use rustix::io::Errno;

use crate::checksum::Hasher;
use crate::dirsync::{Announcement, FolderSyncer};
use crate::error::{Error, ErrorKind};
use crate::filename;

/// The file the bytes go to before they are verified and placed; written with positioned I/O
/// so any number of segments can write at once without sharing a cursor.
#[derive(Debug, Clone)]
pub(crate) struct Staging {
    file: Arc<File>,
    path: Arc<PathBuf>,
}

impl Staging {
    pub fn open(path: &Path) -> Result<Staging, Error> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        };
        // The folder usually exists: create it only when the open says it is missing.
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
                }
                open()
            }
            other => other,
        }
        .map_err(|e| Error::io("open staging file", path, e))?;
        Ok(Staging {
            file: Arc::new(file),
            path: Arc::new(path.to_owned()),
        })
    }

    pub fn len(&self) -> Result<u64, Error> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", self.path.as_path(), e))?
            .len())
    }

    /// Sets the length: 0 for a restart from zero, the real size when preallocation
    /// reserved more than a body that turned out shorter.
    pub fn set_len(&self, len: u64) -> Result<(), Error> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io("truncate", self.path.as_path(), e))
    }

    /// Reserves `len` bytes so a full disk shows now rather than mid-way, and the file does
    /// not fragment. File systems without `fallocate` just get the length set.
    pub fn preallocate(&self, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(&*self.file, FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => self
                .file
                .set_len(len.max(self.len()?))
                .map_err(|e| Error::io("extend", self.path.as_path(), e)),
            Err(e) => Err(Error::io("preallocate", self.path.as_path(), e.into())),
        }
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write to", self.path.as_path(), e))
    }

    /// Makes the written bytes durable (blocking: run it off the async workers).
    pub fn sync_data(&self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync", self.path.as_path(), e))
    }

    /// Feeds bytes `[from, to)` of the file into `hasher` (blocking).
    pub fn hash_range(&self, hasher: &mut Hasher, from: u64, to: u64) -> Result<(), Error> {
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = from;
        while offset < to {
            let want = ((to - offset) as usize).min(buf.len());
            let n = self
                .file
                .read_at(&mut buf[..want], offset)
                .map_err(|e| Error::io("read back", self.path.as_path(), e))?;
            if n == 0 {
                return Err(Error::io(
                    "read back",
                    self.path.as_path(),
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What to do when the destination already exists (SPEC §4 `destination_conflict`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// Keep both: save as `name (1).ext`, `name (2).ext`, …
    #[default]
    Rename,
    /// Replace the existing file.
    Overwrite,
    /// Fail with `destination_exists`.
    Fail,
}

/// Moves the finished, synced staging file to `target` atomically and syncs the folder, so a
/// crash leaves either no file or the whole file there. Returns the path used (which differs
/// from `target` when `Conflict::Rename` picked a numbered name), once a folder sync that
/// started after the rename has finished — one sync may cover several files placed into the
/// same folder at once (`folders`; `announced`: this file's announcement there, if any).
pub(crate) fn place(
    staging: &Path,
    target: &Path,
    conflict: Conflict,
    folders: &FolderSyncer,
    announced: Option<Announcement>,
) -> Result<PathBuf, Error> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ErrorKind::Destination {
            path: target.to_owned(),
            reason: "the destination has no file name".into(),
        })?;
    check_folder(dir)?;

    // A staging file on another file system is first copied next to the target, so the final
    // step is still one atomic rename.
    let local_copy = dir.join(format!(".{name}.ferry-copy"));
    let source = if same_filesystem(staging, dir) {
        staging.to_owned()
    } else {
        copy_synced(staging, &local_copy)?;
        local_copy
    };

    let placed = rename_into(&source, target, conflict, &name);
    if source != staging {
        // Keep exactly one copy: the staging file until the copy is placed, then none.
        let _ = std::fs::remove_file(if placed.is_ok() { staging } else { &source });
    }
    let placed = placed?;
    folders
        .sync(dir, announced)
        .map_err(|e| Error::io("sync folder", dir, e))?;
    Ok(placed)
}

fn check_folder(dir: &Path) -> Result<(), Error> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ErrorKind::Destination {
            path: dir.to_owned(),
            reason: "it is not a folder".into(),
        }
        .into()),
        Err(e) => Err(Error::with_source(
            ErrorKind::Destination {
                path: dir.to_owned(),
                reason: e.to_string(),
            },
            e,
        )),
    }
}

fn same_filesystem(a: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), Error> {
    // A staging file that cannot be read is not the destination's fault.
    let mut src = File::open(from).map_err(|e| Error::io("read", from, e))?;
    let copied = File::create(to)
        .and_then(|mut dst| {
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()
        })
        .map_err(|e| not_placed("copy to", to, e));
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied
}

/// Renames `source` to `target` (or a numbered sibling) without ever clobbering a file the
/// policy says to keep: `RENAME_NOREPLACE` makes the existence check and the rename one step.
fn rename_into(
    source: &Path,
    target: &Path,
    conflict: Conflict,
    name: &str,
) -> Result<PathBuf, Error> {
    if conflict == Conflict::Overwrite {
        std::fs::rename(source, target).map_err(|e| not_placed("move into place", target, e))?;
        return Ok(target.to_owned());
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            target.to_owned()
        } else {
            dir.join(filename::numbered(name, n))
        };
        match rename_noreplace(source, &candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if conflict == Conflict::Fail {
                    return Err(ErrorKind::DestinationExists(candidate).into());
                }
            }
            Err(e) => return Err(not_placed("move into place", &candidate, e)),
        }
    }
    Err(ErrorKind::DestinationExists(target.to_owned()).into())
}

/// A file that could not be put at `target` (`op`: moved, copied): a folder that is not
/// writable (or went away) is a destination problem, like a missing one; other failures are
/// I/O errors (a full disk: `no_space`).
fn not_placed(op: &'static str, target: &Path, e: io::Error) -> Error {
    let folder_problem = matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied
            | io::ErrorKind::NotFound
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::ReadOnlyFilesystem
    );
    if !folder_problem {
        return Error::io(op, target, e);
    }
    let reason = e.to_string();
    Error::with_source(
        ErrorKind::Destination {
            path: target.parent().unwrap_or(Path::new(".")).to_owned(),
            reason,
        },
        e,
    )
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        // File systems without RENAME_NOREPLACE: a hard link fails if the name exists.
        Err(Errno::INVAL | Errno::NOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}
