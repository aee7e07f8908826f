//! `ferry daemon`: start, stop and look at ferryd.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use ferry::ErrorKind;

use crate::client;

/// Exit status of `ferry daemon status` when no daemon runs (as LSB init scripts do).
const NOT_RUNNING: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start ferryd for FERRY_HOME unless it runs already.
    Start,
    /// Stop ferryd: running transfers are checkpointed and continue at its next start.
    Stop,
    /// Show ferryd's pid, FERRY_HOME, version and task counts by state (exit 3 when it is
    /// not running).
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: DaemonCommand) -> Result<ExitCode> {
    match command {
        DaemonCommand::Start => {
            let status = client::daemon(true).await?.status().await?;
            client::print(&format!(
                "ferryd {} running, pid {}, FERRY_HOME {}\n",
                status.version,
                status.pid,
                status.home.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Stop => match client::daemon(false).await {
            Ok(daemon) => {
                let pid = daemon.pid();
                daemon.shutdown().await?;
                let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                client::print(&format!("ferryd{pid} stopped\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if not_running(&e) => {
                client::print("ferryd is not running\n")?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e),
        },
        DaemonCommand::Status { json } => match client::daemon(false).await {
            Ok(daemon) => {
                let status = daemon.status().await?;
                if json {
                    client::print_json(&serde_json::json!({
                        "running": true,
                        "pid": status.pid,
                        "home": status.home.display().to_string(),
                        "version": status.version,
                        "tasks": status.tasks,
                    }))?;
                } else {
                    let mut text = format!(
                        "ferryd {} running\n  pid         {}\n  FERRY_HOME  {}\n  tasks\n",
                        status.version,
                        status.pid,
                        status.home.display()
                    );
                    if status.tasks.is_empty() {
                        text.push_str("    (none)\n");
                    }
                    for (state, count) in &status.tasks {
                        text.push_str(&format!("    {state:<13}{count}\n"));
                    }
                    client::print(&text)?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if not_running(&e) => {
                if json {
                    client::print_json(&serde_json::json!({ "running": false }))?;
                } else {
                    client::print(&format!("{}\n", e.root_cause()))?;
                }
                Ok(ExitCode::from(NOT_RUNNING))
            }
            Err(e) => Err(e),
        },
    }
}

fn not_running(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ferry::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::NotRunning)
}
