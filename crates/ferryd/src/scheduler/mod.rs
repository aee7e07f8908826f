//! Decides which waiting tasks run, runs them on the engine, and records how they end.
//!
//! A task runs when the daemon-wide and its session's limits allow, highest priority first,
//! then oldest. While it runs, the engine's checkpoints and events are written through the
//! store's writer in order; when it ends, its final state and its last events are written in
//! one transaction. Stopping a running task (suspend, cancel, shutdown) cancels the engine,
//! which hands back a synced checkpoint, and the task's end is recorded by its own runner —
//! so exactly one place writes a task's end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferry_engine::http::{HeaderMap, HeaderName, HeaderValue};
use ferry_engine::{
    Destination, DownloadSpec, Downloaded, Engine, Failure, Limits, Progress, RateLimiter,
    TlsFiles, UploadSpec,
};
use ferry_proto::{
    CancelReason, ErrorInfo, Event, EventFrame, Outcome, OutcomeKind, Priority, RunPhase,
    ServerFrame, SessionConfig, TaskState,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::home::Layout;
use crate::hub::Hub;
use crate::resume::Keeper;
use crate::store::{Store, StoreError, TaskRequest, TaskRow, sessions, tasks};

mod control;
mod end;
mod observer;
mod upload;

pub use control::{GroupAction, invalid_state, unknown_task};
use end::EndError;
use observer::TaskObserver;
pub use upload::engine_body;

const WAITING: TaskState = TaskState::Running {
    phase: RunPhase::Waiting,
};
const CONNECTING: TaskState = TaskState::Running {
    phase: RunPhase::Connecting,
};
const TRANSFERRING: TaskState = TaskState::Running {
    phase: RunPhase::Transferring,
};
const RETRY_WAIT: TaskState = TaskState::Running {
    phase: RunPhase::RetryWait,
};
/// The states of a task the engine is working on.
const ACTIVE: [TaskState; 3] = [CONNECTING, TRANSFERRING, RETRY_WAIT];

/// Daemon-wide settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Transfers running at once in the whole daemon.
    pub max_running: usize,
    /// Connections per download unless the task says otherwise.
    pub default_connections: usize,
    /// How often running tasks checkpoint.
    pub checkpoint_interval: Duration,
    /// Bytes per second for the whole daemon (0: unlimited).
    pub rate_limit: u64,
    /// The HTTP client's settings (proxies…); a session's TLS material is added to them.
    pub client: ferry_engine::ClientConfig,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            max_running: 16,
            default_connections: 8,
            checkpoint_interval: Duration::from_secs(1),
            rate_limit: 0,
            client: ferry_engine::ClientConfig::default(),
        }
    }
}

/// Waiting tasks read per session and round.
const WAITING_PER_SESSION: usize = 64;

/// Waiting tasks read per session beyond the free slots in a round's first, short read.
const SHORT_READ_EXTRA: usize = 4;

/// A short read is made on the loop's own task instead of the blocking pool when the last
/// round saw at most this many sessions (one small query each): a read of well under a
/// millisecond.
const INLINE_ROUND_SESSIONS: usize = 16;

/// Why a running task is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Suspend,
    Shutdown,
    /// Paused for a task of a higher priority: it waits again.
    Preempt,
    /// Its URL changed: it waits again, to continue from the new one.
    Restart,
    /// Cancel; `keep`: with resume data.
    Cancel {
        reason: CancelReason,
        keep: bool,
    },
}

struct Running {
    session: String,
    /// The client's tag, sent with every event (progress too).
    tag: Option<String>,
    group: Option<String>,
    host: String,
    priority: Priority,
    cancel: CancellationToken,
    stop: Arc<Mutex<Option<Stop>>>,
    progress: Arc<Progress>,
    /// Samples of `progress`, for the transfer rate.
    rate: ferry_engine::RateMeter,
    /// The transfer's own bandwidth limit (`set_rate_limit` changes it while it runs).
    limit: RateLimiter,
    /// Cancelled when the task's end has been recorded.
    finished: CancellationToken,
    /// The engine has returned and the run's end is being recorded: the run no longer counts
    /// against the limits (a waiting task may take its place), but a stop still finds it and
    /// waits for `finished`.
    ending: bool,
    /// An upload: never paused for a task of a higher class, since a paused upload keeps
    /// nothing and would send its whole body again (a stream of urgent tasks could starve it).
    upload: bool,
}

/// A running task's live numbers.
#[derive(Debug, Clone, Copy)]
pub struct LiveProgress {
    /// Bytes present.
    pub received: u64,
    /// The size, if known.
    pub expected: Option<u64>,
    /// Bytes per second over the last ~3 s, once that much has been seen.
    pub bytes_per_second: Option<u64>,
}

/// The scheduler; shared by the connections (control requests) and its own loop.
pub struct Scheduler {
    store: Arc<Store>,
    hub: Arc<Hub>,
    layout: Layout,
    engine: Engine,
    config: SchedulerConfig,
    running: Mutex<HashMap<u64, Running>>,
    session_limits: Mutex<HashMap<String, RateLimiter>>,
    global_limit: RateLimiter,
    wake: Notify,
    keeper: Keeper,
    /// Sessions the last round read.
    last_sessions: AtomicUsize,
    /// Engines for sessions with TLS material of their own (see `engine_for`).
    tls_engines: Mutex<TlsEngines>,
}

/// Engines for sessions' TLS material.
#[derive(Default)]
struct TlsEngines {
    /// By the material (read from its files again at each start, so a renewed certificate
    /// makes a new engine).
    by_material: HashMap<TlsFiles, Engine>,
    /// Each session's last engine built from its files, with the paths it was read from.
    last_good: HashMap<String, (ferry_proto::TlsConfig, Engine)>,
}

/// Engines kept for sessions' TLS material; beyond this many, the cache starts afresh.
const MAX_TLS_ENGINES: usize = 16;

/// A control request could not be carried out.
#[derive(Debug)]
pub enum ControlError {
    /// The store failed.
    Store(StoreError),
    /// The request does not fit the task (unknown task, wrong state…).
    Refused(ErrorInfo),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> ControlError {
        ControlError::Store(e)
    }
}

impl Scheduler {
    /// A scheduler over the store.
    pub fn new(
        store: Arc<Store>,
        hub: Arc<Hub>,
        layout: Layout,
        engine: Engine,
        config: SchedulerConfig,
        keeper: Keeper,
    ) -> Scheduler {
        Scheduler {
            keeper,
            global_limit: RateLimiter::new(config.rate_limit),
            store,
            hub,
            layout,
            engine,
            config,
            running: Mutex::new(HashMap::new()),
            session_limits: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            last_sessions: AtomicUsize::new(0),
            tls_engines: Mutex::default(),
        }
    }

    /// The engine for runs of `session` configured with `config`: the shared one, or one
    /// with the session's TLS material (SPEC §4 TLS: extra roots, a client identity), read
    /// from its files now — on the blocking pool, as is building a client — so a renewed
    /// certificate is picked up. When the files cannot be used now (being replaced, say),
    /// the session's last good engine serves, with a warning, rather than failing its tasks.
    ///
    /// # Errors
    /// `config` with what is wrong (a file that cannot be read, material that does not
    /// parse) when the session has no last good engine.
    pub async fn engine_for(
        &self,
        session: &str,
        config: &SessionConfig,
    ) -> Result<Engine, ErrorInfo> {
        let tls = config.tls.clone();
        if tls.extra_roots.is_empty() && tls.client_identity.is_none() {
            return Ok(self.engine.clone());
        }
        let fresh = self.tls_engine(tls.clone()).await;
        let mut engines = self.tls_engines();
        match fresh {
            Ok(engine) => {
                engines
                    .last_good
                    .insert(session.to_owned(), (tls, engine.clone()));
                Ok(engine)
            }
            Err(error) => match engines.last_good.get(session).filter(|(t, _)| *t == tls) {
                Some((_, engine)) => {
                    tracing::warn!(session, error = %error.message,
                        "the session's TLS files cannot be used now; keeping the last good ones");
                    Ok(engine.clone())
                }
                None => Err(error),
            },
        }
    }

    /// An engine with the TLS material in `tls`'s files, from the cache or built.
    async fn tls_engine(&self, tls: ferry_proto::TlsConfig) -> Result<Engine, ErrorInfo> {
        let read = tokio::task::spawn_blocking(move || {
            TlsFiles::read(
                &tls.extra_roots,
                tls.client_identity.as_deref().map(Path::new),
            )
        });
        let files = read
            .await
            .map_err(|e| ErrorInfo::new("internal", e.to_string()))?
            .map_err(|e| error_info(&e))?;
        if let Some(engine) = self.tls_engines().by_material.get(&files) {
            return Ok(engine.clone());
        }
        let (base, client) = (self.engine.clone(), files.apply(&self.config.client));
        let engine = tokio::task::spawn_blocking(move || base.with_client(&client))
            .await
            .map_err(|e| ErrorInfo::new("internal", e.to_string()))?
            .map_err(|e| error_info(&e))?;
        let mut engines = self.tls_engines();
        if engines.by_material.len() >= MAX_TLS_ENGINES {
            engines.by_material.clear();
        }
        engines.by_material.insert(files, engine.clone());
        Ok(engine)
    }

    fn tls_engines(&self) -> MutexGuard<'_, TlsEngines> {
        self.tls_engines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn running(&self) -> MutexGuard<'_, HashMap<u64, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the loop to look for work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Applies a session's (new) rate limit to its running and future tasks.
    pub fn configure_session(&self, session: &str, config: &SessionConfig) {
        let mut limits = self
            .session_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rate = config.rate_limit.unwrap_or(0);
        limits
            .entry(session.to_owned())
            .or_insert_with(RateLimiter::unlimited)
            .set_rate(rate);
    }

    fn session_limit(&self, session: &str) -> RateLimiter {
        self.session_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(session.to_owned())
            .or_insert_with(RateLimiter::unlimited)
            .clone()
    }

    /// Live bytes and rate of a running task (fresher than the last checkpoint).
    pub fn live_progress(&self, task: u64) -> Option<LiveProgress> {
        self.running().get_mut(&task).map(|r| {
            let received = r.progress.received();
            LiveProgress {
                received,
                expected: r.progress.expected(),
                bytes_per_second: r.rate.sample(Instant::now(), received),
            }
        })
    }

    /// Progress events for every running task of `session` (the snapshot sent on attach).
    pub fn progress_snapshot(&self, session: &str) -> Vec<EventFrame> {
        let running = self.running();
        let mut ids: Vec<_> = running
            .iter()
            .filter(|(_, r)| r.session == session)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let r = running.get(&id)?;
                Some(EventFrame {
                    session: session.to_owned(),
                    seq: None,
                    task: Some(id),
                    tag: r.tag.clone(),
                    event: Event::Progress {
                        written: 0,
                        total_written: r.progress.received(),
                        expected: r.progress.expected(),
                    },
                })
            })
            .collect()
    }

    /// Runs the loop until `shutdown`, then stops every running task with a checkpoint and
    /// waits until their state is recorded.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let progress = tokio::spawn(self.clone().progress_loop(shutdown.clone()));
        loop {
            // Rounds run when woken, every second (for tasks that become due), and when the
            // next retry seen is due, if that is sooner.
            let mut pause = Duration::from_secs(1);
            match self.schedule().await {
                Ok(Some(retry_at)) => {
                    let until = u64::try_from(retry_at - now_ms()).unwrap_or(0);
                    pause = pause.min(Duration::from_millis(until));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "scheduling failed"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => break,
            }
        }
        let finishing: Vec<CancellationToken> = self
            .running()
            .values()
            .map(|r| {
                set_stop(&r.stop, Stop::Shutdown);
                r.cancel.cancel();
                r.finished.clone()
            })
            .collect();
        for f in finishing {
            f.cancelled().await;
        }
        let _ = progress.await;
    }

    /// Sends coalesced progress (at most 4 per second per task) to attached sessions.
    async fn progress_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let frames: Vec<(String, ServerFrame)> = {
                let mut running = self.running();
                last.retain(|id, _| running.contains_key(id));
                let at = Instant::now();
                running
                    .iter_mut()
                    .filter_map(|(id, r)| {
                        let now = r.progress.received();
                        r.rate.record(at, now);
                        let before = last.insert(*id, now).unwrap_or(0);
                        (now != before).then(|| {
                            let frame = ServerFrame::Event(EventFrame {
                                session: r.session.clone(),
                                seq: None,
                                task: Some(*id),
                                tag: r.tag.clone(),
                                event: Event::Progress {
                                    written: now.saturating_sub(before),
                                    total_written: now,
                                    expected: r.progress.expected(),
                                },
                            });
                            (r.session.clone(), frame)
                        })
                    })
                    .collect()
            };
            for (session, frame) in frames {
                self.hub.send_to(&session, frame);
            }
        }
    }

    /// Starts what the limits allow, highest priority first, then oldest. A task held back by
    /// the daemon-wide or its session's limit while a lower class runs in that scope pauses
    /// the lowest such task (which waits again, with its checkpoint) — one per round.
    ///
    /// Most rounds can start a task or two (one has just ended): they read only a few more
    /// waiting tasks per session than there are free slots. When that read was cut short and
    /// the round met a task it could not start for another reason than a full slot count
    /// (not due yet, a group or host limit, a discretionary task, a possible preemption), the
    /// tasks behind it might have mattered: the round is planned again from the full read
    /// ([`WAITING_PER_SESSION`]), so its outcome is the full read's.
    ///
    /// Returns when the soonest task waiting out a retry that was not due yet is due (unix
    /// ms), if any.
    async fn schedule(self: &Arc<Self>) -> Result<Option<i64>, StoreError> {
        let mut load = Load::default();
        let mut lowest_running = None;
        for r in self.running().values().filter(|r| !r.ending) {
            load.add(&r.session, r.group.as_deref(), &r.host);
            // Only what preemption may pause (not uploads) can make a later task matter.
            if !r.upload {
                lowest_running =
                    Some(lowest_running.map_or(r.priority, |p: Priority| p.min(r.priority)));
            }
        }
        let free = self.config.max_running.saturating_sub(load.total);
        let short = (free + SHORT_READ_EXTRA).min(WAITING_PER_SESSION);
        let round = self.read_round(short).await?;
        let mut next_retry = round.next_retry;
        let mut plan = self.plan(
            round.candidates,
            &round.configs,
            load.clone(),
            lowest_running,
        );
        if round.cut && plan.doubtful {
            let round = self.read_round(WAITING_PER_SESSION).await?;
            next_retry = round.next_retry;
            plan = self.plan(round.candidates, &round.configs, load, lowest_running);
        }
        if let Some(victim) = plan.victim {
            self.preempt(victim);
        }
        // Started together, their first writes share a commit.
        let starting = plan
            .starts
            .into_iter()
            .map(|(row, config, host)| self.start(row, config, host));
        for started in futures_util::future::join_all(starting).await {
            started?;
        }
        Ok(next_retry)
    }

    /// Reads every session and up to `limit` of each one's next waiting tasks, and as many of
    /// its tasks waiting out a retry without a run that are due; also says whether a session
    /// had more than that (the read was cut short), and when the next retry not yet due is.
    async fn read_round(&self, limit: usize) -> Result<Round, StoreError> {
        let round = move |c: &rusqlite::Connection| {
            let sessions = sessions::all(c)?;
            let now_ms = now_ms();
            // Tasks waiting out a retry are looked for only when one is due.
            let (first_retry, next_retry) = tasks::retries_due(c, now_ms)?;
            let retry_due = first_retry.is_some_and(|t| t <= now_ms);
            // A few more than can start from each session: a deep queue in one session
            // costs nothing here and cannot hide another session's tasks.
            let mut waiting = Vec::new();
            let mut cut = false;
            for (id, _) in &sessions {
                let mut rows = tasks::waiting(c, id, limit)?;
                cut |= rows.len() >= limit && limit < WAITING_PER_SESSION;
                if retry_due {
                    let parked = tasks::parked_due(c, id, now_ms, limit)?;
                    cut |= parked.len() >= limit && limit < WAITING_PER_SESSION;
                    rows.extend(parked);
                }
                waiting.extend(rows);
            }
            Ok((waiting, sessions, cut, next_retry))
        };
        // A short read over few sessions is made here, saving two thread hand-offs; the
        // full read, a read over many sessions, or one that would wait for another read, on
        // the blocking pool.
        let small = limit < WAITING_PER_SESSION
            && self.last_sessions.load(Ordering::Relaxed) <= INLINE_ROUND_SESSIONS;
        let read = if small {
            self.store.try_read(round)
        } else {
            Err(round)
        };
        let (candidates, configs, cut, next_retry) = match read {
            Ok(read) => read?,
            Err(round) => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.read(round))
                    .await
                    .map_err(|e| StoreError::Unusable(e.to_string()))??
            }
        };
        self.last_sessions.store(configs.len(), Ordering::Relaxed);
        Ok(Round {
            candidates,
            configs: configs.into_iter().collect(),
            cut,
            next_retry,
        })
    }

    /// Decides which of `candidates` start and which running task (if any) is paused for
    /// them, given the `load` of the runs that hold a slot and the lowest priority among them.
    fn plan(
        &self,
        mut candidates: Vec<TaskRow>,
        configs: &HashMap<String, SessionConfig>,
        mut load: Load,
        lowest_running: Option<Priority>,
    ) -> Plan {
        candidates.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
        let (now, now_ms) = (crate::store::now(), now_ms());
        let due = |row: &TaskRow| {
            row.request.earliest_begin().is_none_or(|t| t <= now)
                && row.retry_at.is_none_or(|t| t <= now_ms)
        };
        // Discretionary (low) tasks wait while anything of a higher class is waiting.
        let urgent_waiting = candidates
            .iter()
            .any(|r| r.priority > Priority::Low && due(r));
        let mut plan = Plan::default();
        for row in candidates {
            if !due(&row)
                || (row.priority == Priority::Low && urgent_waiting)
                || self.running().contains_key(&row.id)
            {
                plan.doubtful = true;
                continue;
            }
            let config = configs.get(&row.session).cloned().unwrap_or_default();
            let scope = if load.total >= self.config.max_running {
                Some(None)
            } else if load.session(&row.session) >= config.max_concurrent as usize {
                Some(Some(row.session.as_str()))
            } else {
                None
            };
            if let Some(scope) = scope {
                if plan.victim.is_none() {
                    plan.victim = self.victim_below(row.priority, scope);
                    // Some run of a lower class holds a slot: a later task might pause it.
                    plan.doubtful |= lowest_running.is_some_and(|p| p < row.priority);
                }
                continue;
            }
            let host = host_of(row.request.url());
            if config
                .group_max_concurrent
                .zip(row.request.group())
                .is_some_and(|(max, g)| load.group(&row.session, g) >= max as usize)
                || load.host(&host) >= config.max_per_host as usize
            {
                plan.doubtful = true;
                continue;
            }
            load.add(&row.session, row.request.group(), &host);
            plan.starts.push((row, config, host));
        }
        plan
    }

    /// The lowest-priority running download below `priority` (in `session`, or anywhere),
    /// newest first among equals (uploads are not paused: see `Running::upload`).
    fn victim_below(&self, priority: Priority, session: Option<&str>) -> Option<u64> {
        self.running()
            .iter()
            .filter(|(_, r)| {
                !r.ending
                    && !r.upload
                    && r.priority < priority
                    && session.is_none_or(|s| r.session == s)
            })
            .min_by_key(|(id, r)| (r.priority, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Pauses running task `id` for a task of a higher priority (it waits again).
    fn preempt(&self, id: u64) {
        if let Some(r) = self.running().get(&id).filter(|r| !r.ending) {
            tracing::info!(task = id, "paused for a task of a higher priority");
            set_stop(&r.stop, Stop::Preempt);
            r.cancel.cancel();
        }
    }

    /// Moves a waiting task to connecting and spawns its runner.
    async fn start(
        self: &Arc<Self>,
        row: TaskRow,
        config: SessionConfig,
        host: String,
    ) -> Result<bool, StoreError> {
        let id = row.id;
        // Registered before the state changes: a suspend or cancel that arrives while the task
        // is being started finds it here and stops it, instead of missing it.
        let running = Running {
            session: row.session.clone(),
            tag: row.request.tag().map(str::to_owned),
            group: row.request.group().map(str::to_owned),
            host,
            priority: row.priority,
            cancel: CancellationToken::new(),
            stop: Arc::new(Mutex::new(None)),
            progress: Arc::new(Progress::default()),
            rate: ferry_engine::RateMeter::default(),
            limit: RateLimiter::unlimited(),
            finished: CancellationToken::new(),
            ending: false,
            upload: matches!(row.request, TaskRequest::Upload(_)),
        };
        let (cancel, progress, finished, stop) = (
            running.cancel.clone(),
            running.progress.clone(),
            running.finished.clone(),
            running.stop.clone(),
        );
        self.running().insert(id, running);
        let unregister = || {
            self.running().remove(&id);
            finished.cancel();
            self.wake();
        };
        let this = self.clone();
        // Relaxed: no client is told a task started (no event), and a crash that loses this
        // commit leaves the task waiting — as the restart's normalisation would anyway.
        let moved = self
            .store
            .write_relaxed(move |c| {
                let moved = tasks::transition(c, id, &[WAITING], CONNECTING, None)?
                    || tasks::unpark(c, id, CONNECTING)?;
                if !moved {
                    return Ok(None);
                }
                // The row as of this commit, not as the round read it: a priority or URL
                // changed meanwhile applies to this run, and a change committed after this
                // finds the task running.
                let row = tasks::get(c, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("task {id} vanished")))?;
                this.refresh_running(&row);
                let started_at = tasks::mark_started(c, id)?;
                Ok(Some((row, tasks::checkpoint(c, id)?, started_at)))
            })
            .await;
        let (row, checkpoint, started_at) = match moved {
            Ok(Some(moved)) => moved,
            Ok(None) => {
                unregister();
                return Ok(false);
            }
            Err(e) => {
                unregister();
                return Err(e);
            }
        };
        // The resource timeout counts from the first start, across pauses and restarts.
        let spent = u64::try_from(crate::store::now() - started_at).unwrap_or(0);
        let job = match &row.request {
            TaskRequest::Download(request) => self
                .spec(&row, request, &config, checkpoint, spent)
                .map(|spec| Job::Download(Box::new(spec))),
            TaskRequest::Upload(request) => self
                .upload_spec(&row, request, &config, spent)
                .map(|spec| Job::Upload(Box::new(spec))),
        };
        let job = match job {
            Ok(job) => self
                .engine_for(&row.session, &config)
                .await
                .map(|engine| (engine, job)),
            Err(e) => Err(e),
        };
        let (engine, job) = match job {
            Ok(job) => job,
            Err(error) => {
                // A request that cannot even be built fails at once, with its events.
                self.record_end(&row, Err(EndError::Setup(error)), None)
                    .await;
                unregister();
                return Ok(true);
            }
        };
        let this = self.clone();
        tokio::spawn(async move {
            let observer = TaskObserver {
                store: this.store.clone(),
                task: id,
                session: row.session.clone(),
                tag: row.request.tag().map(str::to_owned),
            };
            // A stop that came during the start has already cancelled `cancel`: the engine
            // returns at once, with nothing sent or fetched.
            let stopped = || *stop.lock().unwrap_or_else(PoisonError::into_inner);
            let parked = match job {
                Job::Download(spec) => {
                    let result = engine.download(&spec, &progress, &observer, &cancel).await;
                    let parked = matches!(&result, Err(f) if f.retry.is_some());
                    // Read once: a stop that comes later finds the run ending and waits.
                    let stop = stopped();
                    this.release_slot(id, stop);
                    let result = result.map_err(|f| EndError::Engine(Box::new(f)));
                    this.record_end(&row, result, stop).await;
                    parked
                }
                Job::Upload(spec) => {
                    let result = engine.upload(&spec, &progress, &observer, &cancel).await;
                    let parked = matches!(&result, Err(f) if f.retry.is_some());
                    let stop = stopped();
                    this.release_slot(id, stop);
                    this.record_upload_end(&row, result, stop).await;
                    parked
                }
            };
            this.running().remove(&id);
            finished.cancel();
            // The slot was freed (and the loop woken) when the engine returned; look again
            // for a run that was stopped — it may wait again, and is startable only now that
            // it has left `running` — and for one that waits out a retry, so that the loop
            // learns when it is due.
            if parked || stopped().is_some() {
                this.wake();
            }
        });
        Ok(true)
    }

    /// The run of `id` has left the engine: its slot is free for a waiting task while its end
    /// is committed (its entry stays until then, so a stop still finds it). Not for a run
    /// stopped to start over from a new URL: it keeps its slot, and takes it again when it
    /// waits (a younger task of the same class must not take it meanwhile).
    fn release_slot(&self, id: u64, stop: Option<Stop>) {
        if stop == Some(Stop::Restart) {
            return;
        }
        if let Some(r) = self.running().get_mut(&id) {
            r.ending = true;
        }
        self.wake();
    }

    /// Brings a running task's entry up to date with its row: the priority preemption reads,
    /// the host the per-host limit counts, and its own bandwidth limit.
    fn refresh_running(&self, row: &TaskRow) {
        if let Some(r) = self.running().get_mut(&row.id) {
            r.priority = row.priority;
            r.host = host_of(row.request.url());
            r.limit.set_rate(row.request.rate_limit().unwrap_or(0));
        }
    }

    /// The bandwidth limits of task `id`'s transfer: the daemon's, its session's and its own
    /// (the one `set_rate_limit` changes while it runs).
    /// Its own limit was set from its row by the start's commit (`refresh_running`), in
    /// commit order with `set_rate_limit`.
    fn limits(&self, id: u64, session: &str) -> Limits {
        let limit = self
            .running()
            .get(&id)
            .map_or_else(RateLimiter::unlimited, |r| r.limit.clone());
        Limits::none()
            .with(self.global_limit.clone())
            .with(self.session_limit(session))
            .with(limit)
    }

    /// Changes the daemon-wide bandwidth limit, for running transfers too (until the daemon
    /// stops: `FERRY_RATE_LIMIT` is its value at start). 0: none.
    pub fn set_daemon_rate_limit(&self, bytes_per_second: u64) {
        self.global_limit.set_rate(bytes_per_second);
    }

    fn spec(
        &self,
        row: &TaskRow,
        request: &ferry_proto::DownloadRequest,
        config: &SessionConfig,
        checkpoint: Option<ferry_engine::Checkpoint>,
        spent_secs: u64,
    ) -> Result<DownloadSpec, ErrorInfo> {
        let folder = |path: PathBuf, what: &str| {
            std::fs::create_dir_all(&path).map_err(|e| {
                ErrorInfo::new(
                    "io",
                    format!("cannot create {what} {}: {e}", path.display()),
                )
            })?;
            Ok::<_, ErrorInfo>(Destination::Folder(path))
        };
        let destination = match (&request.destination, &request.directory) {
            (Some(path), _) => Destination::File(path.into()),
            (None, Some(dir)) => folder(dir.into(), "the folder")?,
            (None, None) => folder(self.layout.inbox(&row.session), "the inbox")?,
        };
        let mut spec = DownloadSpec::new(&request.url, self.layout.staging(row.id), destination);
        spec.headers = ferry_engine::layered_headers(
            session_headers(config)?,
            headers(request.headers.0.iter())?,
        );
        spec.retry = retry_policy(config);
        spec.allow_insecure_redirects = config.allow_insecure_redirects;
        spec.conflict = match config.destination_conflict {
            ferry_proto::Conflict::Rename => ferry_engine::Conflict::Rename,
            ferry_proto::Conflict::Overwrite => ferry_engine::Conflict::Overwrite,
            ferry_proto::Conflict::Fail => ferry_engine::Conflict::Fail,
        };
        spec.checksum = request
            .checksum
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| ErrorInfo::new("invalid_request", e))?;
        spec.connections = request
            .connections
            .map_or(self.config.default_connections, |c| c as usize)
            .max(1);
        spec.checkpoint = checkpoint;
        spec.failed_attempts = row.failed_attempts;
        // A task waiting out a retry gives its slot back (see `end::park`).
        spec.hand_back_retries = true;
        spec.limits = self.limits(row.id, &row.session);
        spec.request_timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let left = config.resource_timeout_secs.saturating_sub(spent_secs);
        spec.resource_timeout = Some(Duration::from_secs(left).max(Duration::from_millis(1)));
        spec.checkpoint_interval = self.config.checkpoint_interval;
        Ok(spec)
    }
}

/// What a scheduling round decided.
#[derive(Default)]
struct Plan {
    /// The tasks to start, with their session's configuration and host.
    starts: Vec<(TaskRow, SessionConfig, String)>,
    /// The running task to pause for them.
    victim: Option<u64>,
    /// Whether tasks behind those read might have changed the decision (see `schedule`).
    doubtful: bool,
}

/// What a round read.
struct Round {
    /// Waiting tasks, and tasks waiting out a retry that are due.
    candidates: Vec<TaskRow>,
    configs: HashMap<String, SessionConfig>,
    /// A session had more of them than were read.
    cut: bool,
    /// When the soonest task waiting out a retry that is not due yet is due (unix ms).
    next_retry: Option<i64>,
}

/// What a run hands to the engine.
enum Job {
    Download(Box<DownloadSpec>),
    Upload(Box<UploadSpec>),
}

/// Running transfers counted by the scopes that limit them.
#[derive(Debug, Default, Clone)]
struct Load {
    total: usize,
    sessions: HashMap<String, usize>,
    groups: HashMap<(String, String), usize>,
    hosts: HashMap<String, usize>,
}

impl Load {
    fn add(&mut self, session: &str, group: Option<&str>, host: &str) {
        self.total += 1;
        *self.sessions.entry(session.to_owned()).or_default() += 1;
        if let Some(g) = group {
            *self
                .groups
                .entry((session.to_owned(), g.to_owned()))
                .or_default() += 1;
        }
        *self.hosts.entry(host.to_owned()).or_default() += 1;
    }

    fn session(&self, session: &str) -> usize {
        self.sessions.get(session).copied().unwrap_or(0)
    }

    fn group(&self, session: &str, group: &str) -> usize {
        self.groups
            .get(&(session.to_owned(), group.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn host(&self, host: &str) -> usize {
        self.hosts.get(host).copied().unwrap_or(0)
    }
}

/// The host (and port) a URL connects to, for the per-host limit.
fn host_of(url: &str) -> String {
    ferry_engine::parse_url(url)
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or(""),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_default()
}

/// Now, in milliseconds since the Unix epoch (the unit of `retry_at`).
fn now_ms() -> i64 {
    i64::try_from(ferry_proto::due_in(Duration::ZERO)).unwrap_or(i64::MAX)
}

fn set_stop(stop: &Mutex<Option<Stop>>, value: Stop) {
    let mut s = stop.lock().unwrap_or_else(PoisonError::into_inner);
    // The first reason wins: a cancel during shutdown stays a cancel.
    s.get_or_insert(value);
}

fn succeeded() -> TaskState {
    TaskState::Completed {
        outcome: OutcomeKind::Succeeded,
    }
}

fn failed() -> TaskState {
    TaskState::Completed {
        outcome: OutcomeKind::Failed,
    }
}

fn cancelled() -> TaskState {
    TaskState::Completed {
        outcome: OutcomeKind::Cancelled,
    }
}

/// The wire form of an engine error, with its cause chain.
pub fn error_info(error: &ferry_engine::Error) -> ErrorInfo {
    ErrorInfo {
        code: error.kind().code().to_owned(),
        // What a client shows and the daemon logs: no password written into a URL.
        message: ferry_proto::hide_url_passwords(&ferry_engine::display_chain(error)).into_owned(),
        transient: error.is_transient(),
        status: error.status(),
    }
}

/// The headers a session sends with every request: its `headers`, and its `user_agent`
/// unless they name one; a task's headers override them.
pub fn session_headers(config: &SessionConfig) -> Result<HeaderMap, ErrorInfo> {
    let mut map = headers(config.headers.0.iter())?;
    if let Some(agent) = &config.user_agent {
        ferry_engine::add_user_agent(&mut map, agent)
            .map_err(|e| ErrorInfo::new("invalid_request", e.to_string()))?;
    }
    Ok(map)
}

/// The engine's retry policy for a session's configuration.
pub fn retry_policy(config: &SessionConfig) -> ferry_engine::RetryPolicy {
    ferry_engine::RetryPolicy::from_millis(
        config.retry.initial_ms,
        config.retry.max_ms,
        config.retry.max_attempts,
        config.waits_for_connectivity,
    )
}

/// Header pairs as a map; a bad name or value is an `invalid_request`.
pub fn headers<'a>(
    pairs: impl Iterator<Item = &'a (String, String)>,
) -> Result<HeaderMap, ErrorInfo> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ErrorInfo::new("invalid_request", format!("bad header name {name:?}")))?;
        let v = HeaderValue::from_str(value).map_err(|_| {
            ErrorInfo::new("invalid_request", format!("bad value for header {name}"))
        })?;
        map.append(n, v);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewTask;

    /// Bytes moved into the resume area by a write job go back to staging when the job does
    /// not commit (its rolled-back checkpoint names them there), and stay when it does.
    #[test]
    fn kept_bytes_go_back_to_staging_when_their_job_does_not_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, kept) = (dir.path().join("7.part"), dir.path().join("k.part"));
        for committed in [false, true] {
            std::fs::write(&kept, b"bytes").unwrap();
            let moves = end::KeptMoves::default();
            moves.record(kept.clone(), staging.clone());
            let result: Result<(), StoreError> = if committed {
                Ok(())
            } else {
                Err(StoreError::Closed)
            };
            moves.settle(&result);
            assert_eq!(staging.exists(), !committed, "committed: {committed}");
            assert_eq!(kept.exists(), committed, "committed: {committed}");
            let _ = std::fs::remove_file(&staging);
        }
    }

    /// A run's start is committed relaxed (no fsync; nobody is told), its end durably — and
    /// the file is placed (its folder synced) before the end is recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_commits_relaxed_and_the_end_durably() {
        let server = ferry_testserver::TestServer::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().join("home"),
        };
        std::fs::create_dir_all(&layout.root).unwrap();
        let hub = Arc::new(Hub::default());
        let store = Arc::new(Store::open(&layout.database(), hub.clone()).unwrap());
        let out = dir.path().join("f");
        let request: ferry_proto::DownloadRequest = serde_json::from_value(serde_json::json!({
            "url": server.url("/bytes/1000"),
            "destination": out.to_str().unwrap(),
            "start": true,
        }))
        .unwrap();
        let id = store
            .write(move |c| {
                sessions::ensure(c, "s")?;
                let task = NewTask {
                    session: "s".into(),
                    request: TaskRequest::Download(request),
                    sources: None,
                    priority: Priority::Normal,
                    state: WAITING,
                };
                Ok((tasks::insert(c, &task)?.id, Vec::new()))
            })
            .await
            .unwrap();
        let before = store.commit_counts();
        let scheduler = Arc::new(Scheduler::new(
            store.clone(),
            hub,
            layout.clone(),
            Engine::new(&ferry_engine::ClientConfig::default()).unwrap(),
            SchedulerConfig::default(),
            Keeper::open(&layout).unwrap(),
        ));
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(scheduler.run(shutdown.clone()));
        loop {
            let row = store.read(|c| tasks::get(c, id)).unwrap().unwrap();
            if row.state == succeeded() {
                break;
            }
            assert!(!matches!(row.state, TaskState::Completed { .. }), "{row:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 1000);
        // Once the loop has stopped, the run's end has been answered (and so counted).
        shutdown.cancel();
        running.await.unwrap();
        let after = store.commit_counts();
        assert!(after.relaxed > before.relaxed, "the start was relaxed");
        assert!(after.full > before.full, "the end was durable");
        store.close();
    }
}
