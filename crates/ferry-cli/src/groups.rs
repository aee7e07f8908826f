//! `ferry group`: groups of tasks in a session (SPEC §12).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ferry::GroupInfo;
use serde_json::json;

use crate::client::{self, SessionArg};
use crate::format;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List the session's groups with their progress.
    Ls {
        #[command(flatten)]
        session: SessionArg,
        /// Print one JSON array (raw numbers).
        #[arg(long)]
        json: bool,
    },
    /// Pause every unfinished task of a group.
    Pause(GroupName),
    /// Resume every paused task of a group.
    Resume(GroupName),
    /// Cancel every unfinished task of a group.
    Cancel(GroupName),
}

#[derive(Debug, Args)]
pub struct GroupName {
    /// The group's name (as given to `ferry get --group`).
    name: String,
    #[command(flatten)]
    session: SessionArg,
}

pub async fn run(command: GroupCommand) -> Result<ExitCode> {
    let (name, session, action) = match command {
        GroupCommand::Ls { session, json } => return ls(&session.session, json).await,
        GroupCommand::Pause(g) => (g.name, g.session, Action::Pause),
        GroupCommand::Resume(g) => (g.name, g.session, Action::Resume),
        GroupCommand::Cancel(g) => (g.name, g.session, Action::Cancel),
    };
    let session = client::session(&session.session).await?;
    let group = session.group(name);
    let info = match action {
        Action::Pause => group.suspend().await?,
        Action::Resume => group.resume().await?,
        Action::Cancel => group.cancel().await?,
    };
    client::print(&table(&[info]))?;
    Ok(ExitCode::SUCCESS)
}

enum Action {
    Pause,
    Resume,
    Cancel,
}

async fn ls(session: &str, json: bool) -> Result<ExitCode> {
    let groups = client::session(session).await?.groups().await?;
    if json {
        let list = groups
            .iter()
            .map(|g| {
                json!({
                    "session": g.session,
                    "name": g.name,
                    "tasks": g.tasks,
                    "completed": g.completed,
                    "succeeded": g.succeeded,
                    "failed": g.failed,
                    "cancelled": g.cancelled,
                    "bytes_done": g.bytes_done,
                    "bytes_total": g.bytes_total,
                })
            })
            .collect();
        client::print_json(&serde_json::Value::Array(list))?;
    } else {
        client::print(&table(&groups))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn table(groups: &[GroupInfo]) -> String {
    let mut table = format::Table::new(&[
        "GROUP",
        "TASKS",
        "DONE",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "PROGRESS",
        "SIZE",
    ]);
    for g in groups {
        table.row(vec![
            g.name.clone(),
            g.tasks.to_string(),
            g.completed.to_string(),
            g.succeeded.to_string(),
            g.failed.to_string(),
            g.cancelled.to_string(),
            format::progress(g.bytes_done, g.bytes_total),
            g.bytes_total.map_or_else(|| "?".to_owned(), format::bytes),
        ]);
    }
    table.render()
}
