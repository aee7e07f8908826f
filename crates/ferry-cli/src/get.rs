//! `ferry get`: download in the foreground, resumable by running the same command again.
//!
//! Each (URL, destination) pair has a staging file and a checkpoint file in
//! `$FERRY_HOME/staging/`, named by a hash of the pair. Interrupting (Ctrl-C, SIGTERM, a
//! closed terminal) saves the checkpoint; a `kill -9` leaves the last one written, at most
//! about a second old. The next run with the same arguments continues from there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_engine::http::{HeaderMap, HeaderName, HeaderValue};
use ferry_engine::{
    Algorithm, Checkpoint, Checksum, ClientConfig, Conflict, Destination, DownloadSpec, Engine,
    Event, Limits, Progress, RateLimiter, RetryPolicy,
};
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::home;

/// Downloads running at once when several URLs are given.
const PARALLEL_DOWNLOADS: usize = 4;

/// Options of `ferry get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// URLs to download (http or https).
    #[arg(required = true)]
    urls: Vec<String>,
    /// Save to this path (one URL only).
    #[arg(short = 'o', long = "output", conflicts_with = "dir")]
    output: Option<PathBuf>,
    /// Save into this folder under the server's file name (default: the current folder).
    #[arg(short = 'd', long = "dir")]
    dir: Option<PathBuf>,
    /// Expected SHA-256 of the file (one URL only).
    #[arg(long, conflicts_with = "checksum", value_name = "HEX")]
    sha256: Option<String>,
    /// Expected digest as ALGO:HEX; ALGO is md5, sha1, sha256, sha512 or blake3 (one URL only).
    #[arg(long, value_name = "ALGO:HEX")]
    checksum: Option<Checksum>,
    /// Connections per download (segmented when the server supports ranges).
    #[arg(short = 'c', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    connections: u16,
    /// Bandwidth limit for all downloads together, e.g. 500K or 20M (bytes per second).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    limit_rate: Option<u64>,
    /// When the destination exists: rename (keep both), overwrite, or fail.
    #[arg(long, value_enum, default_value = "rename")]
    conflict: ConflictArg,
    /// Give up after this many consecutive failed attempts.
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Extra request header, e.g. "Authorization: Bearer …" (repeatable; not sent to other
    /// origins after a redirect).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Extra trusted root certificate (PEM file), besides the system's.
    #[arg(long, value_name = "FILE")]
    cacert: Vec<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ConflictArg {
    Rename,
    Overwrite,
    Fail,
}

impl From<ConflictArg> for Conflict {
    fn from(c: ConflictArg) -> Conflict {
        match c {
            ConflictArg::Rename => Conflict::Rename,
            ConflictArg::Overwrite => Conflict::Overwrite,
            ConflictArg::Fail => Conflict::Fail,
        }
    }
}

/// `20M`, `500k`, `1.5G` or plain bytes per second (K = 1024).
fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("rate {text:?} must be a number with an optional K, M or G suffix"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("rate {text:?} must be positive"));
    }
    Ok((value * scale as f64) as u64)
}

/// One download to run.
struct Job {
    url: String,
    destination: Destination,
    checksum: Option<Checksum>,
    staging: PathBuf,
    checkpoint_file: PathBuf,
}

/// How one job ended.
enum Outcome {
    Done,
    Failed,
    Interrupted,
}

pub async fn run(args: GetArgs) -> Result<ExitCode> {
    let checksum = match (&args.sha256, &args.checksum) {
        (Some(hex), _) => Some(Checksum::new(Algorithm::Sha256, hex).map_err(anyhow::Error::msg)?),
        (None, c) => c.clone(),
    };
    if args.urls.len() > 1 && args.output.is_some() {
        bail!("-o names one file; with several URLs use -d DIR");
    }
    if args.urls.len() > 1 && checksum.is_some() {
        bail!("a checksum describes one file; give one URL with it");
    }
    let staging_dir = home::ferry_home()?.join("staging");
    home::create_private_dir(&staging_dir)?;
    let folder = match &args.dir {
        Some(d) => absolute(d)?,
        None => std::env::current_dir().context("while reading the current folder")?,
    };
    let jobs: Vec<Job> = args
        .urls
        .iter()
        .map(|url| {
            let destination = match &args.output {
                Some(o) => Destination::File(absolute(o)?),
                None => Destination::Folder(folder.clone()),
            };
            let key = job_key(url, &destination);
            Ok(Job {
                url: url.clone(),
                destination,
                checksum: checksum.clone(),
                staging: staging_dir.join(format!("get-{key}.part")),
                checkpoint_file: staging_dir.join(format!("get-{key}.json")),
            })
        })
        .collect::<Result<_>>()?;

    let mut client = ClientConfig::default();
    for path in &args.cacert {
        client.extra_roots_pem.push(
            std::fs::read(path).with_context(|| format!("while reading {}", path.display()))?,
        );
    }
    let engine = Engine::new(&client)?;
    let headers = parse_headers(&args.headers)?;
    let limits = match args.limit_rate {
        Some(rate) => Limits::none().with(RateLimiter::new(rate)),
        None => Limits::none(),
    };

    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signals(cancel.clone()));
    let bars = MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    let template = DownloadSpec {
        headers,
        conflict: args.conflict.into(),
        connections: usize::from(args.connections),
        limits,
        retry: RetryPolicy {
            max_attempts: Some(args.retries.max(1)),
            ..RetryPolicy::default()
        },
        ..DownloadSpec::new(String::new(), PathBuf::new(), Destination::Folder(folder))
    };
    let outcomes: Vec<Outcome> = futures_util::stream::iter(jobs)
        .map(|job| {
            // On a worker thread, next to the connection tasks that feed it: run on the
            // runtime's main thread, every chunk would cross threads on its way to disk.
            let (engine, template, bars, cancel) = (
                engine.clone(),
                template.clone(),
                bars.clone(),
                cancel.clone(),
            );
            let job =
                tokio::spawn(async move { run_job(&engine, &template, job, &bars, &cancel).await });
            async move { job.await.unwrap_or(Outcome::Failed) }
        })
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect()
        .await;

    let code = if outcomes.iter().any(|o| matches!(o, Outcome::Interrupted)) {
        eprintln!("ferry: interrupted; run the same command again to continue");
        ExitCode::from(130)
    } else if outcomes.iter().any(|o| matches!(o, Outcome::Failed)) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    Ok(code)
}

async fn run_job(
    engine: &Engine,
    template: &DownloadSpec,
    job: Job,
    bars: &MultiProgress,
    cancel: &CancellationToken,
) -> Outcome {
    let checkpoint = load_checkpoint(&job.checkpoint_file);
    let spec = DownloadSpec {
        url: job.url.clone(),
        staging: job.staging.clone(),
        destination: job.destination.clone(),
        checksum: job.checksum.clone(),
        checkpoint,
        ..template.clone()
    };
    let progress = Arc::new(Progress::default());
    let bar = bars.add(new_bar(&job.url));
    let ticker = tokio::spawn(tick(bar.clone(), progress.clone()));
    let observer = |event: Event<'_>| match event {
        Event::Checkpoint(cp) => save_checkpoint(&job.checkpoint_file, cp),
        Event::Retrying {
            attempt,
            delay,
            error,
        } => tracing::warn!(
            url = %job.url,
            attempt,
            "{}; retrying in {:.1}s",
            ferry_engine::display_chain(error),
            delay.as_secs_f64()
        ),
        _ => {}
    };
    let result = engine.download(&spec, &progress, &observer, cancel).await;
    ticker.abort();
    bar.finish_and_clear();
    match result {
        Ok(done) => {
            let _ = std::fs::remove_file(&job.checkpoint_file);
            println!("{}", done.path.display());
            Outcome::Done
        }
        Err(failure) => {
            match &failure.checkpoint {
                Some(cp) => save_checkpoint(&job.checkpoint_file, cp),
                None => {
                    let _ = std::fs::remove_file(&job.checkpoint_file);
                    let _ = std::fs::remove_file(&job.staging);
                }
            }
            if matches!(failure.error.kind(), ferry_engine::ErrorKind::Cancelled) {
                return Outcome::Interrupted;
            }
            eprintln!(
                "ferry: {}: {} [{}]",
                job.url,
                ferry_engine::display_chain(&failure.error),
                failure.error.kind().code()
            );
            Outcome::Failed
        }
    }
}

/// Staging files are keyed by what the command asked for, so the same command finds them.
fn job_key(url: &str, destination: &Destination) -> String {
    let target = match destination {
        Destination::File(p) => format!("file:{}", p.display()),
        Destination::Folder(p) => format!("dir:{}", p.display()),
    };
    let digest = sha2::Sha256::digest(format!("{url}\n{target}").as_bytes());
    hex::encode(&digest[..12])
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("while resolving {}", path.display()))
}

fn parse_headers(raw: &[String]) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for line in raw {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("header {line:?} must look like \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {line:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {line:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn load_checkpoint(path: &Path) -> Option<Checkpoint> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(cp) => Some(cp),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable checkpoint");
            None
        }
    }
}

/// Writes the checkpoint beside the staging file, atomically (temp file + rename), so a kill
/// at any moment leaves the old checkpoint or the new one.
fn save_checkpoint(path: &Path, checkpoint: &Checkpoint) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(checkpoint)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not save the checkpoint");
    }
}

fn new_bar(url: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg:30!} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(
        url.rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or(url)
            .to_owned(),
    );
    bar
}

/// Mirrors the engine's atomic counters into the bar ten times a second.
async fn tick(bar: ProgressBar, progress: Arc<Progress>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        if let Some(total) = progress.expected() {
            bar.set_length(total);
        }
        bar.set_position(progress.received());
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (terminal closed) stop the downloads with a checkpoint.
async fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        match signal(kind) {
            Ok(s) => streams.push(s),
            Err(e) => tracing::warn!(error = %e, "cannot watch a signal"),
        }
    }
    if streams.is_empty() {
        return;
    }
    futures_util::future::select_all(streams.iter_mut().map(|s| Box::pin(s.recv()))).await;
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("1.5k"), Ok(1536));
        assert!(parse_rate("fast").unwrap_err().contains("fast"));
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn job_keys_differ_by_destination() {
        let a = job_key("http://h/f", &Destination::Folder("/a".into()));
        let b = job_key("http://h/f", &Destination::Folder("/b".into()));
        let c = job_key("http://h/f", &Destination::File("/a".into()));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, job_key("http://h/f", &Destination::Folder("/a".into())));
    }
}
