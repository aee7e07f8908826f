//! A data task and a download in the foreground, no daemon: an in-process session.
//!
//! ```text
//! in_process DATA_URL FILE_URL DESTINATION
//! ```

use ferry::{EventKind, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_url, file_url, destination] = args.as_slice() else {
        return Err("usage: in_process DATA_URL FILE_URL DESTINATION".into());
    };
    let session = Session::in_process().open().await?;

    // URL → bytes in memory.
    let body = session.data(data_url).fetch().await?;
    println!("data: {} bytes", body.len());

    // URL → file, with progress.
    let mut events = session.events()?;
    let task = session
        .download(file_url)
        .destination(destination)
        .start()
        .await?;
    while let Some(event) = events.recv().await {
        let event = event?;
        match event.kind() {
            EventKind::Progress {
                total_written,
                expected,
                ..
            } => {
                eprint!(
                    "\r{total_written} of {}",
                    expected.map_or("?".into(), |e| e.to_string())
                );
            }
            EventKind::Completed { .. } if event.task_id() == Some(task.id()) => {
                eprintln!();
                if let Some(result) = event.result() {
                    result?;
                }
                println!("file: {destination}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
