//! ferry's transfer engine: downloads one HTTP(S) URL to a file, correctly and fast, and
//! uploads files (raw or as a multipart form) keeping the server's reply.
//!
//! The engine moves bytes and nothing else: it knows nothing of sessions, databases or
//! sockets. A caller (the `ferry get` command, the daemon's scheduler) gives it a
//! [`DownloadSpec`], polls a [`Progress`], listens to [`Event`]s — among them durable
//! [`Checkpoint`]s to persist — and gets back a placed file or a [`Failure`] carrying the
//! checkpoint to resume from.
//!
//! # Downloading a file
//! ```no_run
//! use ferry_engine::{ClientConfig, Destination, DownloadSpec, Engine, Progress};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(&ClientConfig::default())?;
//! let mut spec = DownloadSpec::new(
//!     "https://example.com/big.iso",
//!     "/tmp/big.iso.part".into(),
//!     Destination::Folder("/tmp".into()),
//! );
//! spec.connections = 8;
//! spec.checksum = Some("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?);
//! let done = engine
//!     .download(&spec, &Progress::default(), &(), &CancellationToken::new())
//!     .await?;
//! println!("saved {} bytes at {}", done.bytes, done.path.display());
//! # Ok(()) }
//! ```
//!
//! # Resuming
//! Persist the last [`Event::Checkpoint`] (or [`Failure::checkpoint`]) and set it as
//! [`DownloadSpec::checkpoint`] with the same staging file: the engine continues with
//! `Range` + `If-Range`, and restarts from zero if the resource changed, the server ignores
//! ranges, or the staging file is missing or shorter than the checkpoint says.

mod checkpoint;
mod checksum;
mod client;
mod dirsync;
mod download;
mod error;
pub mod filename;
mod meter;
mod progress;
mod rate;
mod retry;
mod staging;
mod upload;

/// The `http` crate, whose header types the engine's API uses.
pub use http;

pub use checkpoint::{Checkpoint, Segment, Validators};
pub use checksum::{Algorithm, Checksum, Hasher};
pub use client::{ClientConfig, MAX_TLS_FILE_BYTES, ProxyConfig, TlsFiles};
pub use download::{
    DEFAULT_CHECKPOINT_BYTES, Destination, DownloadSpec, Downloaded, Engine, Event, Failure,
    MAX_REDIRECTS, Observer, Redirect, add_user_agent, header_pairs, layered_headers, parse_url,
};
pub use error::{Error, ErrorKind, display_chain};
pub use meter::RateMeter;
pub use progress::Progress;
pub use rate::{Limits, RateLimiter};
pub use retry::{RetryLater, RetryPolicy};
pub use staging::Conflict;
pub use upload::{
    DEFAULT_MAX_REPLY_BYTES, MultipartFile, ServerReply, SourceIdentity, UploadBody, UploadFailure,
    UploadMethod, UploadSpec, Uploaded,
};
