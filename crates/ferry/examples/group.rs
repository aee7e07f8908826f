//! Download a list of URLs concurrently, then do something once all have finished — the
//! question that started Tiercel.
//!
//! ```text
//! group --out DIR URL...
//! ```
//! The downloads form one group of a background session; the program waits for the
//! group's `group_completed` event, then writes `DIR/MANIFEST` with each file and its size.

use std::path::PathBuf;

use ferry::{EventKind, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: group --out DIR URL...";
    if args.next().as_deref() != Some("--out") {
        return Err(usage.into());
    }
    let out = std::path::absolute(PathBuf::from(args.next().ok_or(usage)?))?;
    let urls: Vec<String> = args.collect();
    if urls.is_empty() {
        return Err(usage.into());
    }
    std::fs::create_dir_all(&out)?;

    let session = Session::background("com.example.group")
        .max_concurrent(4)
        .open()
        .await?;
    let mut events = session.events()?;
    let group = session.group(format!("batch-{}", std::process::id()));
    let files: Vec<PathBuf> = (0..urls.len())
        .map(|i| out.join(format!("{i:04}")))
        .collect();
    // All in one request: a group whose first file finished before the next was added would
    // complete early (and again later).
    let downloads = urls
        .iter()
        .zip(&files)
        .map(|(url, file)| group.download(url).destination(file));
    session.start_downloads(downloads).await?;

    while let Some(event) = events.recv().await {
        let event = event?;
        match event.kind() {
            EventKind::Progress { .. } => {
                let p = group.progress().await?;
                eprint!(
                    "\r{}/{} files, {} bytes",
                    p.completed, p.tasks, p.bytes_done
                );
            }
            EventKind::GroupCompleted {
                group: name,
                succeeded,
                failed,
                cancelled,
            } if name == group.name() => {
                eprintln!();
                // Everything is in place: now the "something".
                let mut manifest = String::new();
                for file in &files {
                    if let Ok(meta) = std::fs::metadata(file) {
                        manifest.push_str(&format!("{} {}\n", file.display(), meta.len()));
                    }
                }
                std::fs::write(out.join("MANIFEST"), manifest)?;
                println!("done: {succeeded} succeeded, {failed} failed, {cancelled} cancelled");
                events.ack(&event).await?;
                return Ok(());
            }
            _ => {}
        }
    }
    Err("the session ended before the group completed".into())
}
