//! `ferry get`: hand downloads to the daemon, then watch them until they finish.
//!
//! The tasks belong to ferryd from the moment they are created (all of a command's
//! downloads in one step: all or none). Watching is only watching: Ctrl-C or a closed
//! terminal stops this command, never a transfer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use ferry::{DownloadBuilder, Session, Task};

use crate::client::{self, PriorityArg, usage};
use crate::follow::{self, Completed, Ending, Scope, Style};
use crate::{exit, format, input};

/// Options of `ferry get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// URLs to download (http or https).
    #[arg(required_unless_present = "input_file")]
    urls: Vec<String>,
    /// Save to this path (one URL only; in -i files, out= lines).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PATH",
        conflicts_with_all = ["dir", "input_file"]
    )]
    output: Option<PathBuf>,
    /// Save into this folder under the server's file name (default: the current folder).
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Read URLs from FILE ('-': stdin), one per line, each optionally followed by indented
    /// `out=PATH`, `dir=DIR`, `sha256=HEX` or `checksum=ALGO:HEX` lines (as aria2's input files).
    #[arg(short = 'i', long = "input-file", value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Expected SHA-256 of the file (one URL only; in -i files, sha256= lines).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["checksum", "input_file"])]
    sha256: Option<String>,
    /// Expected digest as ALGO:HEX; ALGO is md5, sha1, sha256, sha512 or blake3 (one URL
    /// only; in -i files, checksum= lines).
    #[arg(long, value_name = "ALGO:HEX", conflicts_with = "input_file")]
    checksum: Option<String>,
    #[command(flatten)]
    session: client::SessionArg,
    /// Put the downloads in this group (see `ferry group`).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Priority class; a higher one may pause lower ones while it runs.
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// Connections per download (segmented when the server supports ranges; default 8).
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: Option<u32>,
    /// Bandwidth limit per download, e.g. 500K or 20M (bytes per second).
    #[arg(long, value_name = "RATE", value_parser = client::parse_rate)]
    limit: Option<u64>,
    /// Extra request header (repeatable; not sent to other origins after a redirect).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = client::parse_header)]
    headers: Vec<(String, String)>,
    /// Print the new task ids, one per line, and return at once.
    #[arg(long)]
    detach: bool,
    /// Print the tasks as JSON (the ids with --detach; the final states otherwise).
    #[arg(long)]
    json: bool,
    /// No progress display; only a line per finished task.
    #[arg(short, long)]
    quiet: bool,
}

/// One download to create, before it is made into a request.
struct Job {
    url: String,
    /// The file (relative: to the current folder, or to `dir` for `-i` lines).
    out: Option<PathBuf>,
    /// The folder to save into under the server's name.
    dir: PathBuf,
    checksum: Option<String>,
    /// Where it was asked for, for messages: `URL …` or `FILE line N`.
    origin: String,
}

pub async fn run(args: GetArgs) -> Result<ExitCode> {
    let jobs = jobs(&args)?;
    let session = client::session_for_new_tasks(&args.session.session).await?;
    let origins: Vec<String> = jobs.iter().map(|job| job.origin.clone()).collect();
    let builders = jobs.into_iter().map(|job| builder(&session, &args, job));
    let tasks = session
        .start_downloads(builders)
        .await
        .map_err(|e| name_the_download(e, &origins))?;
    let ids: Vec<_> = tasks.iter().map(Task::id).collect();
    if args.detach {
        let text = if args.json {
            format!("{}\n", serde_json::to_string(&ids)?)
        } else {
            ids.iter().map(|id| format!("{id}\n")).collect()
        };
        client::print(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    watch_until_done(ids, &args.session.session, args.json, args.quiet).await
}

/// Follows new tasks to the end (shared by `get` and `resume --from`).
pub async fn watch_until_done(
    ids: Vec<ferry::TaskId>,
    session: &str,
    json: bool,
    quiet: bool,
) -> Result<ExitCode> {
    match watch(ids.clone(), Style::of(json, quiet)).await? {
        Watched::Completed(done) => report(&done, json),
        Watched::Interrupted => Ok(interrupted(&ids, session)),
    }
}

/// How watching ended.
pub enum Watched {
    /// Every task completed; their final states.
    Completed(Completed),
    /// Ctrl-C: the command stops watching, the transfers go on.
    Interrupted,
}

/// Shows the tasks' progress until they have all completed (or Ctrl-C).
pub async fn watch(ids: Vec<ferry::TaskId>, style: Style) -> Result<Watched> {
    let daemon = client::daemon(true).await?;
    Ok(
        match follow::follow(&daemon, Scope::Tasks(ids), style).await? {
            Ending::Completed(done) => Watched::Completed(done),
            Ending::Interrupted => Watched::Interrupted,
        },
    )
}

/// Prints the final states (with `--json`) and gives the exit status they mean.
pub fn report(done: &Completed, json: bool) -> Result<ExitCode> {
    if json {
        let mut list: Vec<_> = done
            .tasks
            .iter()
            .map(|t| (t.id, format::task_json(t)))
            .chain(done.removed.iter().map(|r| (r.id, format::removed_json(r))))
            .collect();
        list.sort_by_key(|(id, _)| *id);
        let list = list.into_iter().map(|(_, json)| json).collect();
        client::print_json(&serde_json::Value::Array(list))?;
    }
    Ok(ExitCode::from(follow::exit_status(done)))
}

/// Says how to find the tasks again after Ctrl-C; the exit status for it.
pub fn interrupted(ids: &[ferry::TaskId], session: &str) -> ExitCode {
    let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let session_flag = if session == client::DEFAULT_SESSION {
        String::new()
    } else {
        format!(" --session {session}")
    };
    eprintln!(
        "\nferry: detached; the transfers go on in ferryd.\n  \
         see them:  ferry ls{session_flag}\n  \
         wait:      ferry wait{session_flag} {list}"
    );
    ExitCode::from(exit::INTERRUPTED)
}

fn jobs(args: &GetArgs) -> Result<Vec<Job>> {
    let cwd = std::env::current_dir().context("while reading the current folder")?;
    let dir = match &args.dir {
        Some(d) => cwd.join(d),
        None => cwd.clone(),
    };
    let mut jobs: Vec<Job> = args
        .urls
        .iter()
        .map(|url| Job {
            url: url.clone(),
            out: args.output.as_ref().map(|o| cwd.join(o)),
            dir: dir.clone(),
            checksum: None,
            origin: format!("URL {url}"),
        })
        .collect();
    if let Some(path) = &args.input_file {
        jobs.extend(read_input(path, &dir)?);
    }
    if jobs.len() > 1 && args.output.is_some() {
        return usage("-o names one file; with several URLs use -d DIR (or out= lines in -i FILE)");
    }
    let checksum = match (&args.sha256, &args.checksum) {
        (Some(hex), _) => Some(format!("sha256:{hex}")),
        (None, c) => c.clone(),
    };
    if let Some(checksum) = checksum {
        if jobs.len() > 1 {
            return usage(
                "a checksum describes one file; give one URL with it (or sha256= lines in -i FILE)",
            );
        }
        for job in &mut jobs {
            job.checksum = Some(checksum.clone());
        }
    }
    if jobs.is_empty() {
        return usage("nothing to download: the input file holds no URL");
    }
    Ok(jobs)
}

fn read_input(path: &Path, dir: &Path) -> Result<Vec<Job>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("while reading URLs from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let entries = input::parse(&text).with_context(|| format!("in {}", path.display()))?;
    Ok(entries
        .into_iter()
        .map(|entry| {
            let dir = entry.dir.map_or_else(|| dir.to_owned(), |d| dir.join(d));
            Job {
                origin: format!("{} line {}", path.display(), entry.line),
                url: entry.url,
                out: entry.out.map(|o| dir.join(o)),
                dir,
                checksum: entry.checksum,
            }
        })
        .collect())
}

/// The daemon names a refused download of a batch by its index (`request 3: …`); say which
/// URL or line of the input file that was.
fn name_the_download(error: ferry::Error, origins: &[String]) -> anyhow::Error {
    let text = error.to_string();
    let index = text
        .strip_prefix("request ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok());
    match index.and_then(|i| origins.get(i)) {
        Some(origin) => anyhow::Error::new(error).context(origin.clone()),
        None => error.into(),
    }
}

fn builder(session: &Session, args: &GetArgs, job: Job) -> DownloadBuilder {
    let mut download = session.download(job.url);
    download = match job.out {
        Some(out) => download.destination(out),
        None => download.directory(job.dir),
    };
    if let Some(checksum) = job.checksum {
        download = download.checksum(checksum);
    }
    if let Some(group) = &args.group {
        download = download.group(group.clone());
    }
    if let Some(priority) = args.priority {
        download = download.priority(priority.into());
    }
    if let Some(connections) = args.connections {
        download = download.connections(connections);
    }
    if let Some(limit) = args.limit {
        download = download.rate_limit(limit);
    }
    for (name, value) in &args.headers {
        download = download.header(name.clone(), value.clone());
    }
    download
}
