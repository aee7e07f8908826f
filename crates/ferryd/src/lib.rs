//! `ferryd`: the per-user daemon that owns background transfers.
//!
//! It keeps sessions, tasks, checkpoints and undelivered events in a SQLite store
//! ([`store`]), runs tasks on the engine ([`scheduler`]), and serves the local protocol
//! (`ferry-proto`) on a Unix socket ([`server`]). A client that is attached to a session
//! receives its events live; otherwise they wait in the journal until it attaches again.
//!
//! Start it with [`run`] (the `ferryd` binary does); it stops on SIGTERM, SIGINT or a
//! client's `shutdown` request after checkpointing every running transfer.

pub mod handlers;
pub mod home;
pub mod hub;
pub mod launcher;
pub mod resume;
pub mod retention;
pub mod scheduler;
pub mod server;
pub mod store;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use crate::handlers::Context;
use crate::home::Layout;
use crate::hub::Hub;
use crate::retention::RetentionConfig;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::Store;

/// Everything the daemon is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `FERRY_HOME`.
    pub layout: Layout,
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// How long kept bytes and completed tasks stay, and how often that is swept.
    pub retention: RetentionConfig,
}

impl DaemonConfig {
    /// From the environment: `FERRY_HOME`; `FERRY_RATE_LIMIT` (bytes per second for the whole
    /// daemon); `FERRY_RETENTION_SECS` (how long unused kept bytes and acknowledged completed
    /// tasks stay, default 7 days); and for tests and tuning `FERRY_CHECKPOINT_MS`
    /// (checkpoint interval), `FERRY_MAX_RUNNING` (transfers at once) and `FERRY_SWEEP_MS`
    /// (time between retention sweeps, default an hour).
    pub fn from_env() -> Result<DaemonConfig> {
        let mut scheduler = SchedulerConfig::default();
        if let Some(ms) = env_number("FERRY_CHECKPOINT_MS")? {
            scheduler.checkpoint_interval = Duration::from_millis(ms.max(10));
        }
        if let Some(rate) = env_number("FERRY_RATE_LIMIT")? {
            scheduler.rate_limit = rate;
        }
        if let Some(n) = env_number("FERRY_MAX_RUNNING")? {
            scheduler.max_running = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        }
        let mut retention = RetentionConfig::default();
        if let Some(secs) = env_number("FERRY_RETENTION_SECS")? {
            retention.period = Duration::from_secs(secs);
        }
        if let Some(ms) = env_number("FERRY_SWEEP_MS")? {
            retention.interval = Duration::from_millis(ms.max(10));
        }
        Ok(DaemonConfig {
            layout: Layout::from_env()?,
            scheduler,
            retention,
        })
    }
}

fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => {
            Ok(Some(v.trim().parse().with_context(|| {
                format!("{name}={v:?} is not a number")
            })?))
        }
        Err(_) => Ok(None),
    }
}

/// Runs the daemon until SIGTERM, SIGINT or a client's `shutdown` request.
///
/// # Errors
/// When another daemon serves the same `FERRY_HOME`, the store is unusable (the message says
/// how to recover), or the socket cannot be bound.
pub fn run(config: DaemonConfig) -> Result<()> {
    let lock = config.layout.prepare()?;
    let hub = Arc::new(Hub::default());
    let store = Arc::new(Store::open(&config.layout.database(), hub.clone())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let result = runtime.block_on(serve(config, store.clone(), hub));
    store.close();
    drop(lock);
    result
}

async fn serve(config: DaemonConfig, store: Arc<Store>, hub: Arc<Hub>) -> Result<()> {
    let layout = config.layout.clone();
    let engine = ferry_engine::Engine::new(&config.scheduler.client)?;
    let keeper = resume::Keeper::open(&layout)?.with_retention(config.retention.period);
    let scheduler = Arc::new(Scheduler::new(
        store.clone(),
        hub.clone(),
        layout.clone(),
        engine,
        config.scheduler,
        keeper.clone(),
    ));
    let configs = store.read(store::sessions::all)?;
    for (session, cfg) in &configs {
        scheduler.configure_session(session, cfg);
    }

    // Watched before the socket exists: a client that can connect can also stop the daemon
    // cleanly (a SIGTERM before this point would kill it without its clean stop).
    let mut stop_signals = StopSignals::watch()?;

    // We hold the lock, so a socket file left here is a dead daemon's.
    let socket = layout.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("while binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("while restricting {}", socket.display()))?;

    let shutdown = CancellationToken::new();
    let requested = CancellationToken::new();
    let ctx = Arc::new(Context {
        store,
        hub,
        scheduler: scheduler.clone(),
        layout: layout.clone(),
        keeper,
        stop: requested.clone(),
    });
    let launcher = Arc::new(launcher::Launcher::new(
        ctx.store.clone(),
        ctx.hub.clone(),
        layout.clone(),
    ));
    let launching = tokio::spawn(launcher.run(shutdown.clone()));
    let sweeping = tokio::spawn(retention::run(
        ctx.clone(),
        config.retention,
        shutdown.clone(),
    ));
    let accept = tokio::spawn(server::accept_loop(listener, ctx, shutdown.clone()));
    let scheduling = tokio::spawn(scheduler.run(shutdown.clone()));
    tracing::info!(home = %layout.root.display(), pid = std::process::id(), "ferryd ready");

    tokio::select! {
        () = stop_signals.recv() => {}
        () = requested.cancelled() => tracing::info!("a client asked ferryd to stop"),
    }
    tracing::info!("stopping: checkpointing running transfers");
    shutdown.cancel();
    let _ = accept.await;
    let _ = scheduling.await;
    let _ = launching.await;
    let _ = sweeping.await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, the requests to stop.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("while watching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("while watching SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
