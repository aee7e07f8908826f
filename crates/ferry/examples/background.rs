//! The seeds' flow: hand downloads to the daemon and exit; be run again when they are done.
//!
//! ```text
//! background --out DIR URL...   start the downloads, then exit at once
//! background --out DIR          collect: move what finished into DIR, acknowledge, exit
//! ```
//! The first form opens the session `com.example.background` with a launch command that
//! is this program in the second form, so the daemon runs it when every download has
//! finished (with `FERRY_SESSION` set). Run it yourself in the second form any time: it
//! receives whatever finished while it was gone, in order, exactly as the launched run would.

use std::path::{Path, PathBuf};

use ferry::{EventKind, Session};

const SESSION: &str = "com.example.background";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (out, urls) = parse_args()?;
    std::fs::create_dir_all(&out)?;
    let out = std::path::absolute(&out)?;
    let me = std::env::current_exe()?;
    let session = Session::background(SESSION)
        .launch_command([
            me.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ])
        .open()
        .await?;
    if !urls.is_empty() {
        for url in &urls {
            // No destination: the file waits in the session's inbox until collected.
            let task = session.download(url).tag(url.as_str()).start().await?;
            println!("started task {} for {url}", task.id());
        }
        return Ok(()); // the daemon takes it from here
    }
    collect(&session, &out).await
}

/// Receives what happened while this program was away and moves finished files to `out`.
async fn collect(session: &Session, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if session.backlog() == 0 {
        println!("nothing happened while away");
        return Ok(());
    }
    let mut events = session.events()?;
    let unfinished = session
        .tasks()
        .await?
        .iter()
        .filter(|(_, info)| !matches!(info.state, ferry::TaskState::Completed { .. }))
        .count();
    if unfinished > 0 {
        println!("{unfinished} download(s) still running; collecting what finished");
    }
    while let Some(event) = events.recv().await {
        let event = event?;
        match event.kind() {
            EventKind::FinishedDownloading { location } => {
                let name = Path::new(location)
                    .file_name()
                    .ok_or("inbox file without a name")?;
                std::fs::rename(location, out.join(name))?;
                println!("saved {}", out.join(name).display());
            }
            EventKind::Completed { .. } => {
                if let Some(Err(e)) = event.result() {
                    println!("failed {}: {e}", event.tag().unwrap_or("?"));
                }
                if let Some(task) = events.task(&event) {
                    task.remove(false).await?;
                }
            }
            EventKind::BacklogDelivered => {
                // URLSession's urlSessionDidFinishEvents: call the completion handler.
                events.ack_backlog().await?;
                println!("backlog handled");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_args() -> Result<(PathBuf, Vec<String>), String> {
    let mut out = None;
    let mut urls = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--out" {
            out = Some(PathBuf::from(args.next().ok_or("--out needs a folder")?));
        } else {
            urls.push(arg);
        }
    }
    Ok((out.ok_or("usage: background --out DIR [URL...]")?, urls))
}
