//! `ferry session`: every application's sessions in the daemon.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::{client, format};

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions: attached client, tasks, undelivered events, state.
    Ls {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Force-quit a session as a user would (SPEC §6): its unfinished tasks are cancelled,
    /// keeping resume data, and its launch command is not run.
    Terminate {
        /// The session id.
        id: String,
    },
    /// Take no new tasks in a session and invalidate it once its tasks have completed
    /// (with --cancel: cancel them now).
    Invalidate {
        /// The session id.
        id: String,
        /// Cancel the unfinished tasks instead of letting them finish.
        #[arg(long)]
        cancel: bool,
    },
}

pub async fn run(command: SessionCommand) -> Result<ExitCode> {
    match command {
        SessionCommand::Ls { json } => ls(json).await,
        SessionCommand::Terminate { id } => {
            client::session(&id).await?.terminate().await?;
            client::print(&format!("{id} terminated\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Invalidate { id, cancel } => {
            let session = client::session(&id).await?;
            if cancel {
                session.invalidate_and_cancel().await?;
                client::print(&format!("{id} invalidated; its tasks are cancelled\n"))?;
            } else {
                session.finish_tasks_and_invalidate().await?;
                client::print(&format!(
                    "{id} takes no new tasks; it is invalidated when its tasks have completed\n"
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn ls(json: bool) -> Result<ExitCode> {
    let sessions = client::daemon(true).await?.sessions().await?;
    if json {
        let list = sessions
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "attached_pid": s.attached_pid,
                    "tasks": s.tasks,
                    "unfinished": s.unfinished,
                    "undelivered": s.undelivered,
                    "invalidating": s.invalidating,
                    "terminated": s.terminated,
                    "launch_command": s.launch_command,
                })
            })
            .collect();
        client::print_json(&serde_json::Value::Array(list))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = format::Table::new(&[
        "SESSION",
        "ATTACHED",
        "TASKS",
        "UNFINISHED",
        "UNDELIVERED",
        "STATE",
    ]);
    for s in &sessions {
        let state = if s.terminated {
            "terminated"
        } else if s.invalidating {
            "invalidating"
        } else {
            "active"
        };
        table.row(vec![
            s.id.clone(),
            s.attached_pid
                .map_or_else(|| "-".to_owned(), |pid| format!("pid {pid}")),
            s.tasks.to_string(),
            s.unfinished.to_string(),
            s.undelivered.to_string(),
            state.to_owned(),
        ]);
    }
    client::print(&table.render())?;
    Ok(ExitCode::SUCCESS)
}
