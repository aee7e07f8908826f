//! `ferry`: background downloads for people at a terminal.
//!
//! The command is a client of the `ferry` library like any other application: `ferry get`
//! (and `ferry put`, `ferry post-form` for uploads) hands transfers to the per-user daemon
//! `ferryd` (started if needed) and only watches them, so Ctrl-C or a closed terminal never
//! stops a transfer. Its own tasks live in the
//! background session `ferry.cli`; every command takes `--session` to look at another.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod client;
mod daemon;
mod follow;
mod format;
mod get;
mod groups;
mod input;
mod put;
mod sessions;
mod tasks;

/// Exit statuses scripts can rely on (also listed in `ferry --help`).
pub mod exit {
    /// An error stopped the command; stderr says which.
    pub const ERROR: u8 = 1;
    /// Bad usage or input: an unknown flag, a bad URL, a bad line of `-i FILE`.
    pub const USAGE: u8 = 2;
    /// A task failed (HTTP error, checksum mismatch, …).
    pub const FAILED: u8 = 3;
    /// A task was cancelled (and none failed).
    pub const CANCELLED: u8 = 4;
    /// Interrupted by Ctrl-C: the command stopped watching; the transfers go on.
    pub const INTERRUPTED: u8 = 130;
}

const EXIT_STATUSES: &str = "\
Exit status:
  0    every task succeeded (or the command did what it was asked)
  1    an error stopped the command (one line on stderr says why)
  2    bad usage or input
  3    a task failed
  4    a task was cancelled
  130  interrupted (Ctrl-C): ferry stopped watching, the transfers go on

Environment:
  FERRY_HOME    where ferryd keeps its state (default: $XDG_STATE_HOME/ferry)
  FERRY_DAEMON  the ferryd program to start (default: next to ferry, then $PATH)";

/// ferry — downloads and uploads that cannot be lost.
///
/// Transfers are handed to the per-user daemon ferryd, which owns them: they go on when
/// this command exits or the terminal closes, and survive a restart of the machine.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about, after_help = EXIT_STATUSES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download URLs in the background and show their progress until they finish.
    Get(get::GetArgs),
    /// Upload a file (PUT, or POST with -X post) in the background and show its progress
    /// until it finishes.
    Put(put::PutArgs),
    /// Upload a multipart/form-data form (text fields and files) in the background.
    PostForm(put::PostFormArgs),
    /// List tasks: id, state, progress, speed, size, destination, error.
    Ls(tasks::LsArgs),
    /// Show live progress of running tasks.
    Watch(tasks::WatchArgs),
    /// Wait until tasks complete; exit 0 only if all succeeded.
    Wait(tasks::WaitArgs),
    /// Pause tasks, keeping their bytes.
    Pause(tasks::PauseArgs),
    /// Resume paused tasks (a failed or cancelled download whose bytes were kept continues as
    /// a new task), or continue a download from a resume-data file.
    Resume(tasks::ResumeArgs),
    /// Cancel tasks (deleting their bytes unless --keep-resume-data).
    Cancel(tasks::CancelArgs),
    /// Remove tasks from the list (cancelling unfinished ones first).
    Rm(tasks::RmArgs),
    /// Change a bandwidth limit, also of running transfers: the daemon's (default), a
    /// session's (--session) or tasks' own (IDS).
    Limit(tasks::LimitArgs),
    /// Groups of tasks: list, pause, resume, cancel.
    #[command(subcommand)]
    Group(groups::GroupCommand),
    /// Sessions: list, terminate, invalidate.
    #[command(subcommand)]
    Session(sessions::SessionCommand),
    /// The ferryd daemon: start, stop, status.
    #[command(subcommand)]
    Daemon(daemon::DaemonCommand),
    /// Print a shell completion script (e.g. `ferry completions bash > ~/.local/share/bash-completion/completions/ferry`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `ferry man > ferry.1 && man ./ferry.1`, or write a
    /// page per command into a folder.
    Man {
        /// Write ferry.1 and a page per command (ferry-get.1, ferry-group-ls.1, …) here.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Get(args) => get::run(args).await,
            Command::Put(args) => put::put(args).await,
            Command::PostForm(args) => put::post_form(args).await,
            Command::Ls(args) => tasks::ls(args).await,
            Command::Watch(args) => tasks::watch(args).await,
            Command::Wait(args) => tasks::wait(args).await,
            Command::Limit(args) => tasks::limit(args).await,
            Command::Pause(args) => tasks::pause(args).await,
            Command::Resume(args) => tasks::resume(args).await,
            Command::Cancel(args) => tasks::cancel(args).await,
            Command::Rm(args) => tasks::rm(args).await,
            Command::Group(command) => groups::run(command).await,
            Command::Session(command) => sessions::run(command).await,
            Command::Daemon(command) => daemon::run(command).await,
            Command::Completions { shell } => {
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut out);
                client::print_bytes(&out).map(|()| ExitCode::SUCCESS)
            }
            Command::Man { dir: None } => {
                let mut out = Vec::new();
                match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                    Ok(()) => client::print_bytes(&out).map(|()| ExitCode::SUCCESS),
                    Err(e) => Err(anyhow::Error::new(e).context("while rendering the man page")),
                }
            }
            Command::Man { dir: Some(dir) } => man_pages(&dir),
        }
    });
    match result {
        Ok(code) => code,
        // `ferry ls | head`: the reader went away; nothing is wrong.
        Err(e) if client::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // An error may quote a URL the user gave, password and all (SPEC §14).
            eprintln!("ferry: {}", ferry::hide_url_passwords(&one_line(&e)));
            ExitCode::from(client::exit_status(&e))
        }
    }
}

/// Writes ferry.1 and one page per command into `dir`, and lists them.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| Some(entry.ok()?.path().display().to_string()))
        .filter(|path| path.ends_with(".1"))
        .collect();
    pages.sort();
    client::print(&pages.iter().map(|p| format!("{p}\n")).collect::<String>())?;
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes on one line, each cause once (a library error often repeats
/// its source's text in its own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
