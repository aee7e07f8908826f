//! Folder syncs shared by the files placed into one folder at about the same time.
//!
//! Placing a file ends with an `fsync` of its folder, so the rename survives a crash. When
//! many small files land in one folder at once, one sync can cover several renames: a sync
//! covers every rename that happened before it *started*. Each folder has at most one sync
//! running; a file placed while it runs joins the next round, which starts when the running
//! one ends and covers everything that joined meanwhile (group commit, as databases do with
//! their log). No caller returns before a sync that started after its rename has finished,
//! so a caller that reports its file after `sync` returns still reports a durable file.
//!
//! Files that are about to arrive are announced ([`FolderSyncer::announce`], when a transfer
//! starts syncing its data): a round's leader waits for the files announced for its folder
//! before it began leading to join — at most [`GATHER`] — so files finishing together share
//! one sync instead of each starting its own; files announced while it gathers join the next
//! round, so a steady stream of files does not hold every leader for the whole `GATHER`. A
//! lone file is not announced by anyone else and pays one sync at once.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a round's leader waits at most for announced files to join it.
pub(crate) const GATHER: Duration = Duration::from_millis(2);

/// The result of one round, handed to every caller it covered.
type RoundResult = Result<(), (io::ErrorKind, String)>;

/// One sync of a folder, and the callers it covers.
#[derive(Default)]
struct Round {
    result: Mutex<Option<RoundResult>>,
}

#[derive(Default)]
struct FolderState {
    /// Whether a sync of this folder is running (or its leader is gathering).
    running: bool,
    /// Files announced for this folder that have not joined a round yet, by the epoch they
    /// were announced in.
    arriving: BTreeMap<u64, usize>,
    /// The epoch announcements get now. A leader that starts gathering closes it and waits
    /// only for the files announced before: one announced later joins the next round, so a
    /// steady stream of files cannot keep a leader waiting for the whole gathering time.
    epoch: u64,
    /// Whether a leader is gathering (waiting for announced files).
    gathering: bool,
    /// The round that starts when the running one ends (joined by callers meanwhile).
    next: Option<Arc<Round>>,
}

impl FolderState {
    /// An announced file of `epoch` joined or was withdrawn. Returns whether a gathering
    /// leader may now stop waiting (it waits for nothing else).
    fn arrived(&mut self, epoch: u64) -> bool {
        if let Some(n) = self.arriving.get_mut(&epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.arriving.remove(&epoch);
            }
        }
        self.gathering && epoch < self.epoch && !self.awaits(self.epoch)
    }

    /// Whether files announced before `epoch` have yet to join.
    fn awaits(&self, epoch: u64) -> bool {
        self.arriving.range(..epoch).next().is_some()
    }

    /// Nothing runs, nobody waits, nothing is announced: the entry can go.
    fn idle(&self) -> bool {
        !self.running && self.next.is_none() && self.arriving.is_empty()
    }
}

/// How a folder is synced (the real one opens and `fsync`s it; tests count and block).
type SyncFn = Box<dyn Fn(&Path) -> io::Result<()> + Send + Sync>;

/// Syncs folders, sharing each sync among the callers that asked before it started.
pub(crate) struct FolderSyncer {
    folders: Mutex<HashMap<PathBuf, FolderState>>,
    changed: Condvar,
    /// How long a leader waits for announced files ([`GATHER`]).
    gather: Duration,
    sync: SyncFn,
}

impl std::fmt::Debug for FolderSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderSyncer").finish_non_exhaustive()
    }
}

impl Default for FolderSyncer {
    fn default() -> FolderSyncer {
        FolderSyncer::with(GATHER, |dir| std::fs::File::open(dir)?.sync_all())
    }
}

impl FolderSyncer {
    /// A syncer that runs `sync` for a folder (the real one opens and `fsync`s it).
    fn with(
        gather: Duration,
        sync: impl Fn(&Path) -> io::Result<()> + Send + Sync + 'static,
    ) -> FolderSyncer {
        FolderSyncer {
            folders: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            gather,
            sync: Box::new(sync),
        }
    }

    /// Says a file will soon be placed into `dir`; the announcement ends when the returned
    /// value is passed to [`FolderSyncer::sync`] or dropped.
    pub(crate) fn announce(self: &Arc<Self>, dir: &Path) -> Announcement {
        let mut folders = self.folders.lock().unwrap_or_else(PoisonError::into_inner);
        let state = folders.entry(dir.to_owned()).or_default();
        *state.arriving.entry(state.epoch).or_default() += 1;
        Announcement {
            syncer: self.clone(),
            dir: dir.to_owned(),
            epoch: state.epoch,
            joined: false,
        }
    }

    /// Returns once a sync of `dir` that started after this call began has finished (blocking:
    /// run it on the blocking pool). Every change made to `dir` before the call is then durable.
    /// `announced` is this file's announcement, if it made one.
    ///
    /// # Errors
    /// The error of the sync that covered this call.
    pub(crate) fn sync(&self, dir: &Path, announced: Option<Announcement>) -> io::Result<()> {
        let mut folders = self.folders.lock().unwrap_or_else(PoisonError::into_inner);
        let round = {
            let state = folders.entry(dir.to_owned()).or_default();
            if let Some(mut a) = announced {
                a.joined = true; // counted here: its drop has nothing left to do
                // A leader may be waiting for this file (woken only when it was the last).
                if state.arrived(a.epoch) {
                    self.changed.notify_all();
                }
            }
            state.next.get_or_insert_with(Arc::default).clone()
        };
        loop {
            if let Some(result) = round_result(&round) {
                return result.map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            let state = folders.entry(dir.to_owned()).or_default();
            let ours_is_next = state.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, &round));
            if !state.running && ours_is_next {
                // Lead our round: first give the files announced for this folder a moment to
                // join it, then sync; it covers every caller that joined it by then, all of
                // which made their change before joining.
                state.running = true;
                state.gathering = true;
                state.epoch += 1;
                let awaited = state.epoch;
                let deadline = Instant::now() + self.gather;
                loop {
                    let state = folders.entry(dir.to_owned()).or_default();
                    let now = Instant::now();
                    if !state.awaits(awaited) || now >= deadline {
                        state.next = None;
                        state.gathering = false;
                        break;
                    }
                    folders = self
                        .changed
                        .wait_timeout(folders, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                drop(folders);
                let result = (self.sync)(dir).map_err(|e| (e.kind(), e.to_string()));
                *round.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result.clone());
                folders = self.folders.lock().unwrap_or_else(PoisonError::into_inner);
                let state = folders.entry(dir.to_owned()).or_default();
                state.running = false;
                if state.idle() {
                    folders.remove(dir);
                }
                drop(folders);
                self.changed.notify_all();
                return result.map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            folders = self
                .changed
                .wait(folders)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A file announced for a folder ([`FolderSyncer::announce`]); dropping it without syncing
/// (the transfer failed) withdraws it.
pub(crate) struct Announcement {
    syncer: Arc<FolderSyncer>,
    dir: PathBuf,
    /// The folder's epoch when it was announced.
    epoch: u64,
    joined: bool,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if self.joined {
            return;
        }
        let mut folders = self
            .syncer
            .folders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut wake = false;
        if let Some(state) = folders.get_mut(&self.dir) {
            wake = state.arrived(self.epoch);
            if state.idle() {
                folders.remove(&self.dir);
            }
        }
        drop(folders);
        if wake {
            self.syncer.changed.notify_all();
        }
    }
}

fn round_result(round: &Round) -> Option<RoundResult> {
    round
        .result
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A file placed while a sync of its folder runs is not covered by that sync (it may have
    /// started before the rename): it waits for the next one, which covers all such files at
    /// once.
    #[test]
    fn a_caller_waits_for_a_sync_that_started_after_it() {
        let (started_tx, started_rx) = mpsc::channel::<usize>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let count = Arc::new(AtomicUsize::new(0));
        let syncs = count.clone();
        let syncer = Arc::new(FolderSyncer::with(GATHER, move |_| {
            let n = syncs.fetch_add(1, Ordering::SeqCst) + 1;
            started_tx.send(n).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
            Ok(())
        }));
        let dir = PathBuf::from("/d");
        let (done_tx, done_rx) = mpsc::channel::<&'static str>();
        let spawn = |name: &'static str| {
            let (syncer, dir, done) = (syncer.clone(), dir.clone(), done_tx.clone());
            std::thread::spawn(move || {
                syncer.sync(&dir, None).unwrap();
                done.send(name).unwrap();
            })
        };
        let a = spawn("a");
        assert_eq!(started_rx.recv().unwrap(), 1, "a leads the first sync");
        let (b, c) = (spawn("b"), spawn("c"));
        // Wait until b and c joined the next round while sync 1 runs (each holds a handle on
        // it): they must not return when sync 1 ends.
        while syncer.folders.lock().unwrap()[&dir]
            .next
            .as_ref()
            .is_none_or(|r| Arc::strong_count(r) < 3)
        {
            std::thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(done_rx.recv().unwrap(), "a");
        assert!(
            done_rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "b and c returned before the sync that covers them finished"
        );
        assert_eq!(
            started_rx.recv().unwrap(),
            2,
            "b and c need a sync of their own"
        );
        release_tx.send(()).unwrap();
        let mut rest = [done_rx.recv().unwrap(), done_rx.recv().unwrap()];
        rest.sort_unstable();
        assert_eq!(rest, ["b", "c"]);
        for t in [a, b, c] {
            t.join().unwrap();
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "one sync covered b and c together"
        );
        assert!(
            syncer.folders.lock().unwrap().is_empty(),
            "idle folders are forgotten"
        );
    }

    /// Every caller a failed sync covered sees its error; the next caller syncs again.
    #[test]
    fn a_failed_sync_fails_every_caller_it_covered() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let failing = fail.clone();
        let syncer = FolderSyncer::with(GATHER, move |_| {
            if failing.load(Ordering::SeqCst) {
                Err(io::Error::other("disk gone"))
            } else {
                Ok(())
            }
        });
        let err = syncer.sync(Path::new("/d"), None).unwrap_err();
        assert!(err.to_string().contains("disk gone"));
        fail.store(false, Ordering::SeqCst);
        syncer.sync(Path::new("/d"), None).unwrap();
    }

    /// Different folders do not wait for each other.
    #[test]
    fn folders_sync_independently() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let syncer = Arc::new(FolderSyncer::with(GATHER, move |dir| {
            if dir == Path::new("/slow") {
                release_rx.lock().unwrap().recv().unwrap();
            }
            Ok(())
        }));
        let slow = {
            let syncer = syncer.clone();
            std::thread::spawn(move || syncer.sync(Path::new("/slow"), None).unwrap())
        };
        syncer.sync(Path::new("/fast"), None).unwrap();
        release_tx.send(()).unwrap();
        slow.join().unwrap();
    }

    /// A leader waits for the files announced for its folder, so files finishing together
    /// share one sync; a withdrawn announcement (a failed transfer) does not hold it up.
    #[test]
    fn a_leader_gathers_announced_files_into_one_sync() {
        let count = Arc::new(AtomicUsize::new(0));
        let syncs = count.clone();
        // A long gathering time: the test does not depend on how fast the threads run.
        let syncer = Arc::new(FolderSyncer::with(Duration::from_secs(600), move |_| {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        let dir = PathBuf::from("/d");
        let (a, b, gone) = (
            syncer.announce(&dir),
            syncer.announce(&dir),
            syncer.announce(&dir),
        );
        let leader = {
            let (syncer, dir) = (syncer.clone(), dir.clone());
            std::thread::spawn(move || syncer.sync(&dir, Some(a)).unwrap())
        };
        drop(gone);
        syncer.sync(&dir, Some(b)).unwrap();
        leader.join().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1, "a and b shared one sync");
        assert!(syncer.folders.lock().unwrap().is_empty());
    }

    /// A leader waits for the files announced before it began gathering, not for one
    /// announced while it gathers: that one joins the next round. (Were it awaited, this test
    /// would hang for the ten minutes of gathering time.)
    #[test]
    fn a_leader_does_not_wait_for_files_announced_while_it_gathers() {
        let count = Arc::new(AtomicUsize::new(0));
        let syncs = count.clone();
        let syncer = Arc::new(FolderSyncer::with(Duration::from_secs(600), move |_| {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        let dir = PathBuf::from("/d");
        let (a, b) = (syncer.announce(&dir), syncer.announce(&dir));
        let leader = {
            let (syncer, dir) = (syncer.clone(), dir.clone());
            std::thread::spawn(move || syncer.sync(&dir, Some(a)).unwrap())
        };
        while !syncer.folders.lock().unwrap()[&dir].gathering {
            std::thread::yield_now();
        }
        let late = syncer.announce(&dir);
        syncer.sync(&dir, Some(b)).unwrap();
        leader.join().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1, "a and b shared one sync");
        // The late file is placed alone: nothing announced before it, no one to wait for.
        syncer.sync(&dir, Some(late)).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(syncer.folders.lock().unwrap().is_empty());
    }
}
