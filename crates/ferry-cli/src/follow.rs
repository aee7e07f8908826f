//! Watching tasks until they complete: polling the daemon and drawing their progress.
//!
//! The command never attaches to a session (the application owning it may be attached,
//! and two `ferry get`s may run at once in `ferry.cli`), so it reads task states — often at
//! first, then four times a second, and again around the time a transfer should end at
//! its current rate — instead of receiving events: cheap on a local socket.
//!
//! On a terminal: one bar per task and a total line, redrawn in place. Otherwise: plain
//! lines, one when a task changes state and one a second while it transfers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry::{Daemon, OutcomeKind, RemovedTask, TaskId, TaskInfo, TaskState, hide_url_password};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{client, exit, format};

/// Polls start fast (a small file is done in milliseconds) and slow down to four a second.
const FIRST_POLL: Duration = Duration::from_millis(10);
const POLL: Duration = Duration::from_millis(250);
/// Which tasks to follow.
pub enum Scope {
    /// These tasks, of any sessions.
    Tasks(Vec<TaskId>),
    /// Whatever is unfinished in this session (all sessions: `None`), until none is.
    Unfinished { session: Option<String> },
}

/// How the tasks ended.
pub enum Ending {
    /// Every followed task completed.
    Completed(Completed),
    /// Ctrl-C: the transfers go on.
    Interrupted,
}

/// The followed tasks once they have all completed.
#[derive(Default)]
pub struct Completed {
    /// The last state of each, in id order.
    pub tasks: Vec<TaskInfo>,
    /// Those another client removed meanwhile (or before): how each had ended.
    pub removed: Vec<RemovedTask>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Bars on a terminal, lines elsewhere.
    Auto,
    /// Only the result lines.
    Quiet,
    /// Nothing at all (`--json` prints at the end).
    Silent,
}

impl Style {
    /// The display `--json` and `-q` ask for: JSON is printed at the end, so nothing before.
    pub fn of(json: bool, quiet: bool) -> Style {
        match (json, quiet) {
            (true, _) => Style::Silent,
            (false, true) => Style::Quiet,
            (false, false) => Style::Auto,
        }
    }
}

pub async fn follow(daemon: &Daemon, scope: Scope, style: Style) -> Result<Ending> {
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("while watching Ctrl-C")?;
    let mut display = Display::new(style);
    let mut done: BTreeMap<TaskId, TaskInfo> = BTreeMap::new();
    let mut removed: BTreeMap<TaskId, RemovedTask> = BTreeMap::new();
    // Tasks seen unfinished: their completion is reported even when it falls between polls.
    let mut seen: HashSet<TaskId> = HashSet::new();
    let mut backoff = Duration::ZERO;
    let mut pause = Duration::ZERO;
    let mut ends = EndGuess::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = interrupt.recv() => {
                display.clear();
                return Ok(Ending::Interrupted);
            }
        }
        let Polled {
            tasks,
            removed: gone,
        } = read(daemon, &scope, &done, &removed, &seen).await?;
        for tombstone in gone {
            display.removed(&tombstone)?;
            removed.insert(tombstone.id, tombstone);
        }
        for task in &tasks {
            if matches!(task.state, TaskState::Completed { .. }) && !done.contains_key(&task.id) {
                display.finished(task)?;
                done.insert(task.id, task.clone());
            }
        }
        let open: Vec<TaskInfo> = tasks
            .into_iter()
            .filter(|t| !done.contains_key(&t.id))
            .collect();
        seen.extend(open.iter().map(|t| t.id));
        display.update(&open, &done);
        // Slow down while nothing is about to end, but look again when a transfer should
        // have finished: its end is then seen within a poll or two, not up to `POLL` late.
        backoff = (backoff * 2).clamp(FIRST_POLL, POLL);
        pause = match ends.soonest(&open, Instant::now()) {
            Some(eta) => backoff.min(eta.max(FIRST_POLL)),
            None => backoff,
        };
        let finished = match &scope {
            Scope::Tasks(ids) => ids
                .iter()
                .all(|id| done.contains_key(id) || removed.contains_key(id)),
            Scope::Unfinished { .. } => open.is_empty(),
        };
        if finished {
            display.clear();
            return Ok(Ending::Completed(Completed {
                tasks: done.into_values().collect(),
                removed: removed.into_values().collect(),
            }));
        }
    }
}

/// When the running tasks should end, from their byte counts at successive polls.
#[derive(Default)]
struct EndGuess {
    last: HashMap<TaskId, (Instant, u64)>,
}

impl EndGuess {
    /// Records this poll's counts; the shortest time until a task with a known size has all
    /// its bytes at the rate seen since the previous poll.
    fn soonest(&mut self, open: &[TaskInfo], now: Instant) -> Option<Duration> {
        let mut soonest: Option<Duration> = None;
        let mut last = HashMap::with_capacity(open.len());
        for task in open {
            if let (Some(total), Some(&(at, before))) = (task.bytes_total, self.last.get(&task.id))
            {
                let moved = task.bytes_done.saturating_sub(before);
                let elapsed = now.duration_since(at).as_secs_f64();
                if moved > 0 && elapsed > 0.0 {
                    let left = total.saturating_sub(task.bytes_done) as f64;
                    if let Ok(eta) = Duration::try_from_secs_f64(left * elapsed / moved as f64) {
                        soonest = Some(soonest.map_or(eta, |s| s.min(eta)));
                    }
                }
            }
            last.insert(task.id, (now, task.bytes_done));
        }
        self.last = last;
        soonest
    }
}

/// One look at the followed tasks.
struct Polled {
    /// Their current states (completed ones already reported are left out).
    tasks: Vec<TaskInfo>,
    /// Those found removed since the last look.
    removed: Vec<RemovedTask>,
}

async fn read(
    daemon: &Daemon,
    scope: &Scope,
    done: &BTreeMap<TaskId, TaskInfo>,
    removed: &BTreeMap<TaskId, RemovedTask>,
    seen: &HashSet<TaskId>,
) -> Result<Polled> {
    match scope {
        Scope::Tasks(ids) => {
            let open: Vec<TaskId> = ids
                .iter()
                .copied()
                .filter(|id| !done.contains_key(id) && !removed.contains_key(id))
                .collect();
            let found = daemon.tasks_by_id(&open).await?;
            // A task removed long ago, or never created, is a mistake in the command line.
            if let Some(id) = found.unknown.first() {
                anyhow::bail!("there is no task {id}");
            }
            Ok(Polled {
                tasks: found.tasks,
                removed: found.removed,
            })
        }
        Scope::Unfinished { session } => Ok(Polled {
            tasks: daemon
                .tasks(session.as_deref())
                .await?
                .into_iter()
                .filter(|t| {
                    let completed = matches!(t.state, TaskState::Completed { .. });
                    !completed || (seen.contains(&t.id) && !done.contains_key(&t.id))
                })
                .collect(),
            removed: Vec::new(),
        }),
    }
}

/// The exit status for tasks that completed: 0 if all succeeded.
pub fn exit_status(completed: &Completed) -> u8 {
    let outcome = |o| {
        let task = |t: &TaskInfo| t.state == TaskState::Completed { outcome: o };
        completed.tasks.iter().any(task) || completed.removed.iter().any(|r| r.outcome == o)
    };
    if outcome(OutcomeKind::Failed) {
        exit::FAILED
    } else if outcome(OutcomeKind::Cancelled) {
        exit::CANCELLED
    } else {
        0
    }
}

/// `3 succeeded /home/me/a.iso`, `4 failed HTTP 404 … [http_status]`,
/// `5 succeeded HTTP 201 → https://example.com/up`.
pub fn result_line(task: &TaskInfo) -> String {
    let state = task.state.name();
    if let (
        TaskState::Completed {
            outcome: OutcomeKind::Succeeded,
        },
        Some(reply),
    ) = (&task.state, &task.reply)
    {
        let url = hide_url_password(&task.url);
        return format!("{} {state} HTTP {} → {url}", task.id, reply.status);
    }
    match (&task.state, &task.error) {
        (
            TaskState::Completed {
                outcome: OutcomeKind::Succeeded,
            },
            _,
        ) => format!("{} {state} {}", task.id, format::destination(task)),
        // Bytes kept for resume data: say how to go on once the cause is fixed.
        (_, Some(error)) if task.resume_data.is_some() => format!(
            "{} {state} {} (bytes kept: `ferry resume {}` continues)",
            task.id,
            format::error(error),
            task.id
        ),
        (_, Some(error)) => format!("{} {state} {}", task.id, format::error(error)),
        _ => format!("{} {state} {}", task.id, hide_url_password(&task.url)),
    }
}

/// `7 succeeded (removed since)`: a followed task another client removed.
pub fn removed_line(tombstone: &RemovedTask) -> String {
    format!(
        "{} {} (removed since)",
        tombstone.id,
        tombstone.outcome.name()
    )
}

/// A short name for a task: its file's name, else the URL's last segment.
fn label(task: &TaskInfo) -> String {
    let path = task.location.as_deref().or(task.destination.as_deref());
    let from_path = path.and_then(|p| std::path::Path::new(p).file_name()?.to_str());
    let from_url = || {
        let url = hide_url_password(&task.url);
        let name = url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').find(|s| !s.is_empty()))
            .unwrap_or(&url);
        name.to_owned()
    };
    from_path.map_or_else(from_url, str::to_owned)
}

enum Display {
    Bars(Bars),
    Lines(Lines),
    Quiet,
    Silent,
}

impl Display {
    fn new(style: Style) -> Display {
        match style {
            Style::Silent => Display::Silent,
            Style::Quiet => Display::Quiet,
            Style::Auto if std::io::stdout().is_terminal() => Display::Bars(Bars::new()),
            Style::Auto => Display::Lines(Lines::default()),
        }
    }

    fn finished(&mut self, task: &TaskInfo) -> Result<()> {
        self.ended(task.id, result_line(task))
    }

    fn removed(&mut self, tombstone: &RemovedTask) -> Result<()> {
        self.ended(tombstone.id, removed_line(tombstone))
    }

    /// A task's result line, in place of its bar.
    fn ended(&mut self, id: TaskId, line: String) -> Result<()> {
        match self {
            Display::Silent => Ok(()),
            Display::Bars(bars) => {
                if let Some(bar) = bars.tasks.remove(&id) {
                    bar.finish_and_clear();
                    bars.multi.remove(&bar);
                }
                bars.multi.println(line).context("while drawing progress")
            }
            // A reader that went away (`ferry get … | head -1`) does not change the exit
            // status, which reports the tasks.
            Display::Lines(_) | Display::Quiet => {
                let _ = client::print(&format!("{line}\n"));
                Ok(())
            }
        }
    }

    fn update(&mut self, open: &[TaskInfo], done: &BTreeMap<TaskId, TaskInfo>) {
        match self {
            Display::Bars(bars) => bars.update(open, done),
            Display::Lines(lines) => lines.update(open, done),
            Display::Quiet | Display::Silent => {}
        }
    }

    fn clear(&mut self) {
        if let Display::Bars(bars) = self {
            for (_, bar) in bars.tasks.drain() {
                bar.finish_and_clear();
            }
            bars.total.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

/// Totals over the open and the completed tasks: bytes done, total if every size is known,
/// and how many completed.
fn totals(open: &[TaskInfo], done: &BTreeMap<TaskId, TaskInfo>) -> (u64, Option<u64>, usize) {
    let all = || open.iter().chain(done.values());
    let bytes: u64 = all().map(|t| t.bytes_done).sum();
    let total: Option<u64> = all().map(|t| t.bytes_total).sum();
    (bytes, total, done.len())
}

struct Bars {
    multi: MultiProgress,
    tasks: HashMap<TaskId, ProgressBar>,
    total: ProgressBar,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style(
            "{prefix:>5} {msg:24!} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}",
        ));
        total.set_prefix("total");
        Bars {
            multi,
            tasks: HashMap::new(),
            total,
        }
    }

    fn update(&mut self, open: &[TaskInfo], done: &BTreeMap<TaskId, TaskInfo>) {
        for task in open {
            let bar = self.tasks.entry(task.id).or_insert_with(|| {
                let bar = self.multi.insert_before(&self.total, ProgressBar::new(0));
                bar.set_style(style(
                    "{prefix:>5} {msg:24!} [{bar:20}] {bytes:>10}/{total_bytes:<10} \
                     {bytes_per_sec:>12} ETA {eta}",
                ));
                bar.set_prefix(task.id.to_string());
                bar
            });
            let state = task.state.name();
            let message = if state == "transferring" {
                label(task)
            } else {
                format!("{} ({state})", label(task))
            };
            bar.set_message(message);
            bar.set_length(task.bytes_total.unwrap_or(0));
            bar.set_position(task.bytes_done);
        }
        let (bytes, total, finished) = totals(open, done);
        self.total.set_length(total.unwrap_or(0));
        self.total.set_position(bytes);
        self.total
            .set_message(format!("{finished}/{} done", open.len() + done.len()));
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Plain progress for logs and pipes.
#[derive(Default)]
struct Lines {
    states: HashMap<TaskId, &'static str>,
    last_print: Option<Instant>,
}

impl Lines {
    fn update(&mut self, open: &[TaskInfo], done: &BTreeMap<TaskId, TaskInfo>) {
        let due = self
            .last_print
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        let mut out = String::new();
        for task in open {
            let state = task.state.name();
            let changed = self.states.insert(task.id, state) != Some(state);
            if changed || (due && state == "transferring") {
                out.push_str(&format!("{} {state} {}", task.id, label(task)));
                if task.bytes_done > 0 || task.bytes_total.is_some() {
                    out.push_str(&format!(
                        " {}/{} ({})",
                        format::bytes(task.bytes_done),
                        task.bytes_total
                            .map_or_else(|| "?".to_owned(), format::bytes),
                        format::progress(task.bytes_done, task.bytes_total),
                    ));
                }
                if let Some(speed) = task.bytes_per_second.filter(|s| *s > 0) {
                    out.push_str(&format!(" {}", format::rate(speed)));
                    if let Some(total) = task.bytes_total {
                        let left = total.saturating_sub(task.bytes_done).div_ceil(speed);
                        out.push_str(&format!(
                            " ETA {}",
                            format::duration(Duration::from_secs(left))
                        ));
                    }
                }
                out.push('\n');
            }
        }
        if due && open.len() + done.len() > 1 && !open.is_empty() {
            let (bytes, total, finished) = totals(open, done);
            out.push_str(&format!(
                "total {}/{} {finished}/{} done\n",
                format::bytes(bytes),
                total.map_or_else(|| "?".to_owned(), format::bytes),
                open.len() + done.len()
            ));
        }
        if due {
            self.last_print = Some(Instant::now());
        }
        if !out.is_empty() {
            // A closed pipe ends the command at the next result line.
            let _ = client::print(&out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: TaskId, done: u64, total: Option<u64>) -> TaskInfo {
        serde_json::from_value(serde_json::json!({
            "id": id, "session": "s", "url": "http://h/f", "current_url": null,
            "destination": null, "location": null, "state": "running",
            "phase": "transferring", "bytes_done": done, "bytes_total": total,
            "error": null, "tag": null, "priority": "normal"
        }))
        .unwrap()
    }

    #[test]
    fn the_end_is_guessed_from_the_rate_between_polls() {
        let mut ends = EndGuess::default();
        let t0 = Instant::now();
        // One poll tells nothing about the rate.
        assert_eq!(ends.soonest(&[task(1, 0, Some(10_000))], t0), None);
        // 1,000 bytes in 100 ms, 9,000 left: 0.9 s; the other task, of unknown size, none.
        let later = t0 + Duration::from_millis(100);
        let open = [task(1, 1_000, Some(10_000)), task(2, 500, None)];
        let eta = ends.soonest(&open, later).unwrap();
        assert!((eta.as_secs_f64() - 0.9).abs() < 1e-6, "{eta:?}");
        // A stalled task gives no guess; a task seen for the first time neither.
        let open = [task(1, 1_000, Some(10_000)), task(3, 10, Some(20))];
        assert_eq!(
            ends.soonest(&open, later + Duration::from_millis(100)),
            None
        );
    }
}
