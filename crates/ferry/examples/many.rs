//! Many downloads at once through the daemon, as an application would hand them over; the
//! small-files benchmark's client (`bench/daemon.sh`).
//!
//! ```text
//! many --urls LIST --out DIR [--session ID] [--concurrency N]
//! ```
//! Opens the background session `ID` (default `bench`) with at most `N` (default 16) tasks
//! running at once, creates one single-connection download per URL of `LIST` in one request
//! (destination `DIR/fNNNN`), takes every event until each task has completed, acknowledges
//! them, and fails unless every download succeeded. Timings go to stderr as `key=value` words.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use ferry::{EventKind, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let args = Args::parse()?;
    let urls: Vec<String> = std::fs::read_to_string(&args.urls)
        .map_err(|e| format!("cannot read {}: {e}", args.urls.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let session = Session::background(args.session.as_str())
        .max_concurrent(args.concurrency)
        .max_per_host(args.concurrency)
        .open()
        .await?;
    if session.backlog() > 0 {
        return Err(format!(
            "session {} has a backlog of {} events; use a fresh session",
            args.session,
            session.backlog()
        )
        .into());
    }
    let mut events = session.events()?;
    let t_attached = Instant::now();
    let downloads = urls.iter().enumerate().map(|(i, url)| {
        session
            .download(url)
            .destination(args.out.join(format!("f{i:04}")))
            .connections(1)
    });
    let tasks = session.start_downloads(downloads).await?;
    let t_created = Instant::now();
    let mut waiting: HashSet<_> = tasks.iter().map(|t| t.id()).collect();
    let mut failed = Vec::new();
    let mut last = None;
    while !waiting.is_empty() {
        let Some(event) = events.recv().await else {
            return Err("the session closed before every download completed".into());
        };
        let event = event?;
        if let (EventKind::Completed { .. }, Some(id)) = (event.kind(), event.task_id())
            && waiting.remove(&id)
            && let Some(Err(e)) = event.result()
        {
            failed.push(format!("task {id}: {e}"));
        }
        last = Some(event);
    }
    let t_done = Instant::now();
    if let Some(event) = &last {
        events.ack(event).await?;
    }
    if let Some(first) = failed.first() {
        return Err(format!(
            "{} of {} downloads did not succeed, e.g. {first}",
            failed.len(),
            tasks.len()
        )
        .into());
    }
    let secs = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
    eprintln!(
        "tasks={} attach_s={:.3} create_s={:.3} transfer_s={:.3} total_s={:.3}",
        tasks.len(),
        secs(t0, t_attached),
        secs(t_attached, t_created),
        secs(t_created, t_done),
        secs(t0, Instant::now()),
    );
    Ok(())
}

struct Args {
    urls: PathBuf,
    out: PathBuf,
    session: String,
    concurrency: u32,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let usage = "usage: many --urls LIST --out DIR [--session ID] [--concurrency N]";
        let (mut urls, mut out, mut session, mut concurrency) = (None, None, None, 16);
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {usage}"))?;
            match flag.as_str() {
                "--urls" => urls = Some(PathBuf::from(value)),
                "--out" => out = Some(PathBuf::from(value)),
                "--session" => session = Some(value),
                "--concurrency" => {
                    concurrency = value
                        .parse()
                        .map_err(|_| format!("--concurrency wants a number, not {value:?}"))?;
                }
                _ => return Err(format!("unknown argument {flag}; {usage}")),
            }
        }
        let out = std::path::absolute(out.ok_or(usage)?).map_err(|e| e.to_string())?;
        Ok(Args {
            urls: urls.ok_or(usage)?,
            out,
            session: session.unwrap_or_else(|| "bench".to_owned()),
            concurrency,
        })
    }
}
