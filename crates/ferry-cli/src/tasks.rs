//! Commands on tasks: `ls`, `watch`, `wait`, `pause`, `resume`, `cancel`, `rm`, `limit`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use ferry::{OutcomeKind, ResumeData, Session, TaskId, TaskInfo, TaskState};

use crate::client::{self, SessionArg, usage};
use crate::follow::{self, Ending, Scope, Style};
use crate::{exit, format, get};

/// Options of `ferry ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    session: SessionArg,
    /// Tasks of every session (with a SESSION column).
    #[arg(long, conflicts_with = "session")]
    all: bool,
    /// Print one JSON array of tasks (raw numbers).
    #[arg(long)]
    json: bool,
}

pub async fn ls(args: LsArgs) -> Result<ExitCode> {
    let daemon = client::daemon(true).await?;
    let scope = (!args.all).then_some(args.session.session.as_str());
    let tasks = daemon.tasks(scope).await?;
    if args.json {
        let list = tasks.iter().map(format::task_json).collect();
        client::print_json(&serde_json::Value::Array(list))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec!["ID"];
    if args.all {
        header.push("SESSION");
    }
    header.extend(["STATE", "PROGRESS", "SPEED", "SIZE", "DESTINATION", "ERROR"]);
    let mut table = format::Table::new(&header);
    for task in &tasks {
        let mut row = vec![task.id.to_string()];
        if args.all {
            row.push(task.session.clone());
        }
        row.extend([
            task.state.name().to_owned(),
            format::progress(task.bytes_done, task.bytes_total),
            task.bytes_per_second.map(format::rate).unwrap_or_default(),
            task.bytes_total
                .map_or_else(|| "?".to_owned(), format::bytes),
            format::destination(task),
            task.error.as_ref().map(format::error).unwrap_or_default(),
        ]);
        table.row(row);
    }
    client::print(&table.render())?;
    Ok(ExitCode::SUCCESS)
}

/// Options of `ferry watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Tasks to watch (default: every unfinished task, of --session if given).
    ids: Vec<TaskId>,
    /// Only this session's tasks.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
}

pub async fn watch(args: WatchArgs) -> Result<ExitCode> {
    let daemon = client::daemon(true).await?;
    let scope = if args.ids.is_empty() {
        Scope::Unfinished {
            session: args.session.clone(),
        }
    } else {
        Scope::Tasks(args.ids)
    };
    Ok(match follow::follow(&daemon, scope, Style::Auto).await? {
        Ending::Completed(_) => ExitCode::SUCCESS,
        Ending::Interrupted => ExitCode::from(exit::INTERRUPTED),
    })
}

/// Options of `ferry wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Tasks to wait for.
    #[arg(required_unless_present = "all")]
    ids: Vec<TaskId>,
    /// Every unfinished task of the session.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    session: SessionArg,
    /// Print the final states as JSON instead of a line per task.
    #[arg(long)]
    json: bool,
}

pub async fn wait(args: WaitArgs) -> Result<ExitCode> {
    let session = args.session.session;
    let ids = if args.all {
        let daemon = client::daemon(true).await?;
        daemon
            .tasks(Some(&session))
            .await?
            .into_iter()
            .filter(|t| !matches!(t.state, TaskState::Completed { .. }))
            .map(|t| t.id)
            .collect()
    } else {
        args.ids
    };
    get::watch_until_done(ids, &session, args.json, true).await
}

/// Task ids, or `--all` for every task of the session.
#[derive(Debug, Args)]
pub struct Targets {
    /// Task ids.
    #[arg(required_unless_present = "all")]
    ids: Vec<TaskId>,
    /// Every task of the session that the command applies to.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    session: SessionArg,
}

impl Targets {
    /// The session handle and the ids: the listed ones, or the session's tasks that
    /// `applies` to.
    async fn resolve(&self, applies: impl Fn(&TaskInfo) -> bool) -> Result<(Session, Vec<TaskId>)> {
        let session = client::session(&self.session.session).await?;
        let ids = if self.all {
            session
                .tasks()
                .await?
                .into_iter()
                .filter(|(_, info)| applies(info))
                .map(|(task, _)| task.id())
                .collect()
        } else {
            self.ids.clone()
        };
        Ok((session, ids))
    }
}

/// Options of `ferry limit`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Bytes per second (`500K`, `20M`, `1.5G`; K = 1024), or `none` (also `0`).
    #[arg(value_parser = parse_limit)]
    rate: Limit,
    /// Tasks whose own limit changes (default: the whole daemon, until it stops).
    #[arg(conflicts_with = "session")]
    ids: Vec<TaskId>,
    /// The session whose limit changes, for all its transfers together (stored in its
    /// configuration until the application attaches again with its own).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
}

/// A bandwidth limit given on the command line: `None` for `none`.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<u64>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("none") || text.trim() == "0" {
        return Ok(Limit(None));
    }
    client::parse_rate(text).map(|rate| Limit(Some(rate)))
}

/// Changes bandwidth limits, for running transfers too.
pub async fn limit(args: LimitArgs) -> Result<ExitCode> {
    let rate = args.rate.0;
    let shown = rate.map_or_else(|| "none".to_owned(), format::rate);
    if let Some(id) = &args.session {
        client::session(id).await?.set_rate_limit(rate).await?;
        client::print(&format!("session {id}: {shown}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.ids.is_empty() {
        client::daemon(true).await?.set_rate_limit(rate).await?;
        client::print(&format!("daemon: {shown}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Task ids are daemon-wide: any handle reaches them.
    let session = client::session(client::DEFAULT_SESSION).await?;
    each(&args.ids, |id| {
        let task = session.task(id);
        let shown = shown.clone();
        async move {
            task.set_rate_limit(rate).await?;
            Ok(shown)
        }
    })
    .await
}

fn unfinished(task: &TaskInfo) -> bool {
    !matches!(task.state, TaskState::Completed { .. })
}

/// Runs `action` on each task, printing `ID STATE` or the error, and fails at the end if
/// any failed (the others are still acted on).
async fn each<F, Fut>(ids: &[TaskId], action: F) -> Result<ExitCode>
where
    F: Fn(TaskId) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let mut failed = 0;
    for &id in ids {
        match action(id).await {
            Ok(line) => client::print(&format!("{id} {line}\n"))?,
            Err(e) => {
                failed += 1;
                eprintln!("ferry: task {id}: {e:#}");
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(exit::ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// Options of `ferry pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    targets: Targets,
}

pub async fn pause(args: PauseArgs) -> Result<ExitCode> {
    let (session, ids) = args.targets.resolve(unfinished).await?;
    each(&ids, |id| {
        let task = session.task(id);
        async move { Ok(task.suspend().await?.state.name().to_owned()) }
    })
    .await
}

/// Options of `ferry resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Task ids.
    #[arg(required_unless_present_any = ["all", "from"])]
    ids: Vec<TaskId>,
    /// Every paused task of the session.
    #[arg(long, conflicts_with_all = ["ids", "from"])]
    all: bool,
    #[command(flatten)]
    session: SessionArg,
    /// Continue a cancelled download from the resume data saved by
    /// `ferry cancel --keep-resume-data FILE`, as a new task.
    #[arg(long, value_name = "FILE", conflicts_with = "ids")]
    from: Option<PathBuf>,
    /// With --from: save here instead of the original destination.
    #[arg(short = 'o', long = "output", value_name = "PATH", requires = "from")]
    output: Option<PathBuf>,
    /// With --from: print the new task's id and return at once.
    #[arg(long, requires = "from")]
    detach: bool,
}

pub async fn resume(args: ResumeArgs) -> Result<ExitCode> {
    if let Some(file) = &args.from {
        return resume_from(&args, file).await;
    }
    let targets = Targets {
        ids: args.ids,
        all: args.all,
        session: args.session,
    };
    let (session, ids) = targets.resolve(|t| t.state == TaskState::Suspended).await?;
    let session = &session;
    each(&ids, |id| {
        let task = session.task(id);
        async move {
            // A download that failed or was cancelled with its bytes kept continues as a
            // new task from its resume data.
            let info = task.info().await?;
            if let (TaskState::Completed { .. }, Some(blob)) = (info.state, info.resume_data) {
                let data = ResumeData::from_bytes(blob)?;
                let continued = session.resume_download(&data, None).await?;
                return Ok(format!("continued as {}", continued.id()));
            }
            Ok(task.start().await?.state.name().to_owned())
        }
    })
    .await
}

async fn resume_from(args: &ResumeArgs, file: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let data = ResumeData::from_bytes(bytes)
        .with_context(|| format!("{} does not hold ferry resume data", file.display()))?;
    let session = client::session_for_new_tasks(&args.session.session).await?;
    let destination = match &args.output {
        Some(o) => Some(
            std::env::current_dir()
                .context("while reading the current folder")?
                .join(o),
        ),
        None => None,
    };
    let task = session
        .resume_download(&data, destination)
        .await
        .with_context(|| format!("cannot continue from {}", file.display()))?;
    if args.detach {
        client::print(&format!("{}\n", task.id()))?;
        return Ok(ExitCode::SUCCESS);
    }
    get::watch_until_done(vec![task.id()], &args.session.session, false, false).await
}

/// Options of `ferry cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    targets: Targets,
    /// Keep the bytes and write resume data to FILE (one task), for
    /// `ferry resume --from FILE`.
    #[arg(long, value_name = "FILE", conflicts_with = "all")]
    keep_resume_data: Option<PathBuf>,
}

pub async fn cancel(args: CancelArgs) -> Result<ExitCode> {
    let (session, ids) = args.targets.resolve(unfinished).await?;
    let Some(file) = &args.keep_resume_data else {
        return each(&ids, |id| {
            let task = session.task(id);
            async move { Ok(task.cancel().await?.state.name().to_owned()) }
        })
        .await;
    };
    let [id] = ids[..] else {
        return usage("--keep-resume-data saves one task's resume data: give one id");
    };
    // Created before the cancel: a file that cannot be written must not cost the blob.
    let out = PrivateFile::create(file)?;
    match session.task(id).cancel_with_resume_data().await? {
        Some(data) => {
            if let Err(e) = out.finish(data.as_bytes()) {
                eprintln!(
                    "ferry: task {id} is cancelled; its resume data could not be saved, here it \
                     is:\n{}",
                    String::from_utf8_lossy(data.as_bytes())
                );
                return Err(e);
            }
            client::print(&format!(
                "{id} cancelled; resume data in {} (continue with: ferry resume --from {})\n",
                file.display(),
                file.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "ferry: task {id} is cancelled, but it had no bytes to keep: no resume data written"
            );
            Ok(ExitCode::from(exit::ERROR))
        }
    }
}

/// A file only its owner can read, written whole or not at all (temporary file + rename).
struct PrivateFile {
    path: PathBuf,
    tmp: PathBuf,
    file: std::fs::File,
}

impl PrivateFile {
    fn create(path: &Path) -> Result<PrivateFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("ferry-tmp");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PrivateFile {
            path: path.to_owned(),
            tmp,
            file,
        })
    }

    fn finish(mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_all())
            .and_then(|()| std::fs::rename(&self.tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        written.with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Drop for PrivateFile {
    /// Not finished (the task had no bytes to keep): no empty file stays behind.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Options of `ferry rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    targets: Targets,
    /// Also delete the downloaded file (or the kept bytes of a cancelled download).
    #[arg(long)]
    delete_file: bool,
}

pub async fn rm(args: RmArgs) -> Result<ExitCode> {
    let (session, ids) = args.targets.resolve(|_| true).await?;
    let delete_file = args.delete_file;
    each(&ids, |id| {
        let task = session.task(id);
        async move {
            let info = task.info().await?;
            if unfinished(&info) {
                task.cancel().await?;
            }
            task.remove(delete_file).await?;
            Ok(match info.state {
                TaskState::Completed {
                    outcome: OutcomeKind::Succeeded,
                } if !delete_file => "removed (the file stays)".to_owned(),
                _ => "removed".to_owned(),
            })
        }
    })
    .await
}
