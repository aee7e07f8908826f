//! Which waiting task runs next, and starting it.
//!
//! One loop per runtime: it starts what the limits allow, then sleeps until something may
//! have changed — a wake-up (a task created, resumed or ended, a priority changed) or the
//! next `earliest_begin` — or until shutdown. Tasks start highest priority first, then in id
//! order; `low` ones only while nothing more urgent waits. The limits are the session's:
//! `max_concurrent`, `group_max_concurrent` and `max_per_host` (host and port, counted in this
//! session, since the process has no daemon-wide view).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_engine::{Destination, DownloadSpec, Limits, UploadSpec};
use ferry_proto::{ErrorInfo, Outcome, Priority, TaskId};

use super::run;
use super::state::{CONNECTING, Kind, Run, Shared, State, Stop, Task, Upload, WAITING};
use super::validate;

/// Connections per download unless the task says otherwise (the daemon's default).
const DEFAULT_CONNECTIONS: usize = 8;

/// Runs the scheduling loop until shutdown.
pub(super) async fn run_loop(shared: Arc<Shared>) {
    loop {
        let next = shared.schedule();
        let timer = async {
            match next {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = timer => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Running transfers counted by the scopes that limit them.
#[derive(Debug, Default)]
struct Load {
    total: usize,
    groups: HashMap<String, usize>,
    hosts: HashMap<String, usize>,
}

impl Load {
    fn add(&mut self, group: Option<&str>, host: &str) {
        self.total += 1;
        if let Some(g) = group {
            *self.groups.entry(g.to_owned()).or_default() += 1;
        }
        *self.hosts.entry(host.to_owned()).or_default() += 1;
    }

    fn group(&self, group: &str) -> usize {
        self.groups.get(group).copied().unwrap_or(0)
    }

    fn host(&self, host: &str) -> usize {
        self.hosts.get(host).copied().unwrap_or(0)
    }
}

/// The host and port a URL connects to, for `max_per_host`.
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

impl Shared {
    /// Starts what the limits allow; returns how long until a task's `earliest_begin` or
    /// retry comes, if one is waiting for it.
    fn schedule(self: &Arc<Self>) -> Option<Duration> {
        let mut state = self.state();
        let (now, instant) = (unix_now(), Instant::now());
        let mut waiting: Vec<(Priority, TaskId, Option<i64>, Option<Instant>)> = state
            .tasks
            .iter()
            .filter(|(_, t)| t.info.state == WAITING || t.is_parked())
            .map(|(id, t)| (t.info.priority, *id, t.request.earliest_begin, t.retry_due))
            .collect();
        waiting.sort_by_key(|(priority, id, _, _)| (Reverse(*priority), *id));
        let due = |begin: Option<i64>, retry: Option<Instant>| {
            begin.is_none_or(|t| t <= now) && retry.is_none_or(|t| t <= instant)
        };
        let next_begin = waiting
            .iter()
            .filter_map(|(_, _, begin, _)| begin.filter(|t| *t > now))
            .min()
            .map(|t| Duration::from_secs(u64::try_from(t - now).unwrap_or(0)));
        let next_retry = waiting
            .iter()
            .filter_map(|(_, _, _, retry)| retry.filter(|t| *t > instant))
            .min()
            .map(|t| t - instant);
        let next = next_begin.into_iter().chain(next_retry).min();
        // Discretionary (low) tasks wait while anything of a higher class is waiting.
        let urgent_waiting = waiting
            .iter()
            .any(|(p, _, begin, retry)| *p > Priority::Low && due(*begin, *retry));
        let mut load = Load::default();
        for task in state.tasks.values() {
            if let Some(run) = &task.run {
                load.add(task.info.group.as_deref(), &run.host);
            }
        }
        let mut preempted = false;
        for (priority, id, begin, retry) in waiting {
            if !due(begin, retry) || (priority == Priority::Low && urgent_waiting) {
                continue;
            }
            if load.total >= self.config.max_concurrent as usize {
                if !preempted {
                    preempted = preempt_below(&mut state, priority);
                }
                continue;
            }
            let Some(task) = state.tasks.get(&id) else {
                continue;
            };
            let host = host_of(&task.request.url);
            let group = task.info.group.clone();
            let group_full = self
                .config
                .group_max_concurrent
                .zip(group.as_deref())
                .is_some_and(|(max, g)| load.group(g) >= max as usize);
            if group_full || load.host(&host) >= self.config.max_per_host as usize {
                continue;
            }
            load.add(group.as_deref(), &host);
            self.start(&mut state, id, host);
        }
        next
    }

    /// Moves a waiting task to `connecting` and spawns its transfer.
    fn start(self: &Arc<Self>, state: &mut State, id: TaskId, host: String) {
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        task.first_start.get_or_insert_with(Instant::now);
        task.retry_due = None;
        let spec = match &task.kind {
            Kind::Upload(upload) => self
                .upload_spec(id, task, upload)
                .map(|spec| run::Spec::Upload(Box::new(spec))),
            Kind::Download | Kind::Data(_) => self
                .spec(id, task)
                .map(|spec| run::Spec::Download(Box::new(spec))),
        };
        let spec = match spec {
            Ok(spec) => spec,
            Err(error) => {
                // A request that cannot even be built fails at once, with its events.
                let status = error.status;
                let failed = Outcome::Failed {
                    error,
                    resume_data: None,
                };
                state.complete(id, failed, status);
                return;
            }
        };
        let run = Run {
            cancel: self.shutdown.child_token(),
            stop: None,
            progress: Arc::default(),
            ended: Default::default(),
            host,
            url: task.request.url.clone(),
            rate: Default::default(),
        };
        let handles = run::Handles {
            cancel: run.cancel.clone(),
            progress: run.progress.clone(),
            ended: run.ended.clone(),
            data: task.is_data(),
        };
        task.run = Some(run);
        task.set_phase(CONNECTING, None);
        tokio::spawn(run::drive(self.clone(), id, spec, handles));
    }

    /// The engine's view of a download or data task: session and task settings, and its
    /// checkpoint.
    fn spec(&self, id: TaskId, task: &Task) -> Result<DownloadSpec, ErrorInfo> {
        let request = &task.request;
        let (destination, conflict) = match (&task.kind, &request.destination) {
            (Kind::Data(_), _) => (
                Destination::File(self.folder.data(id)),
                ferry_engine::Conflict::Overwrite,
            ),
            (_, Some(path)) => (
                Destination::File(path.into()),
                conflict(self.config.destination_conflict),
            ),
            (_, None) => {
                let folder: std::path::PathBuf = match &request.directory {
                    Some(dir) => {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            ErrorInfo::new("io", format!("cannot create the folder {dir}: {e}"))
                        })?;
                        dir.into()
                    }
                    None => self.folder.inbox(),
                };
                (
                    Destination::Folder(folder),
                    conflict(self.config.destination_conflict),
                )
            }
        };
        let mut spec = DownloadSpec::new(&request.url, self.folder.staging(id), destination);
        spec.conflict = conflict;
        spec.headers = ferry_engine::layered_headers(
            validate::session_headers(&self.config)?,
            validate::headers(request.headers.0.iter())?,
        );
        spec.retry = self.retry_policy();
        spec.allow_insecure_redirects = self.config.allow_insecure_redirects;
        spec.checksum = request
            .checksum
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(validate::invalid)?;
        spec.connections = request
            .connections
            .map_or(DEFAULT_CONNECTIONS, |c| c as usize)
            .max(1);
        spec.checkpoint = task.checkpoint.clone().map(|mut cp| {
            // Bytes fetched from an older URL (`update_url`): the validators decide
            // whether they still count.
            if cp.url != request.url {
                cp.url.clone_from(&request.url);
                cp.current_url.clone_from(&request.url);
            }
            cp
        });
        spec.limits = self.limits(task);
        spec.request_timeout = self.request_timeout();
        spec.resource_timeout = Some(self.resource_timeout_left(task));
        spec.failed_attempts = task.failed_attempts;
        // A task waiting out a retry gives its slot back (see `run::park`).
        spec.hand_back_retries = true;
        Ok(spec)
    }

    /// The engine's view of an upload. Each run sends the body from byte zero; the reply
    /// goes to the task's file in the replies folder (truncated by a new run).
    fn upload_spec(
        &self,
        id: TaskId,
        task: &Task,
        upload: &Upload,
    ) -> Result<UploadSpec, ErrorInfo> {
        let request = &task.request;
        let mut spec = UploadSpec::new(&request.url, upload.body.clone(), self.folder.reply(id));
        spec.method = upload.method;
        spec.headers = ferry_engine::layered_headers(
            validate::session_headers(&self.config)?,
            validate::headers(request.headers.0.iter())?,
        );
        spec.retry = self.retry_policy();
        spec.allow_insecure_redirects = self.config.allow_insecure_redirects;
        spec.limits = self.limits(task);
        spec.request_timeout = self.request_timeout();
        spec.resource_timeout = Some(self.resource_timeout_left(task));
        spec.sources = Some(upload.sources.clone());
        spec.failed_attempts = task.failed_attempts;
        spec.hand_back_retries = true;
        Ok(spec)
    }

    /// The session's rate limit and the task's own.
    fn limits(&self, task: &Task) -> Limits {
        Limits::none()
            .with(self.session_limit.clone())
            .with(task.limit.clone())
    }

    fn retry_policy(&self) -> ferry_engine::RetryPolicy {
        let retry = &self.config.retry;
        ferry_engine::RetryPolicy::from_millis(
            retry.initial_ms,
            retry.max_ms,
            retry.max_attempts,
            self.config.waits_for_connectivity,
        )
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.config.request_timeout_secs.max(1))
    }

    /// What is left of the resource timeout, which counts from the first start.
    fn resource_timeout_left(&self, task: &Task) -> Duration {
        let spent = task.first_start.map_or(Duration::ZERO, |t| t.elapsed());
        let left = Duration::from_secs(self.config.resource_timeout_secs).saturating_sub(spent);
        left.max(Duration::from_millis(1))
    }
}

fn conflict(policy: ferry_proto::Conflict) -> ferry_engine::Conflict {
    match policy {
        ferry_proto::Conflict::Rename => ferry_engine::Conflict::Rename,
        ferry_proto::Conflict::Overwrite => ferry_engine::Conflict::Overwrite,
        ferry_proto::Conflict::Fail => ferry_engine::Conflict::Fail,
    }
}

/// Pauses the lowest-priority running task below `priority` (the newest among equals), which
/// then waits again with its bytes kept. One preemption at a time: none while an earlier one
/// is still stopping. Returns whether one was paused.
fn preempt_below(state: &mut State, priority: Priority) -> bool {
    let stopping = state.tasks.values().any(|t| {
        t.run
            .as_ref()
            .is_some_and(|r| r.stop == Some(Stop::Preempt))
    });
    if stopping {
        return false;
    }
    let victim = state
        .tasks
        .iter_mut()
        .filter(|(_, t)| {
            t.info.priority < priority && t.run.as_ref().is_some_and(|r| r.stop.is_none())
        })
        .min_by_key(|(id, t)| (t.info.priority, Reverse(**id)));
    match victim.and_then(|(_, t)| t.run.as_mut()) {
        Some(run) => {
            run.stop(Stop::Preempt);
            true
        }
        None => false,
    }
}
