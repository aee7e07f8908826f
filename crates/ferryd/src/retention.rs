//! Retention (SPEC §5, §6): what the daemon keeps only for a while.
//!
//! A sweep runs when the daemon starts and then every [`RetentionConfig::interval`] (an hour
//! unless configured), until shutdown. With the retention period `P` (7 days unless
//! configured) it
//! - deletes kept bytes in the resume area kept more than `P` ago, not used by
//!   `create_from_resume_data` and named by no task row or unacknowledged event any more
//!   ([`Keeper::reclaim`](crate::resume::Keeper::reclaim)); their resume data is then
//!   refused with `invalid_resume_data`, saying they expired;
//! - forgets completed tasks that completed more than `P` ago and have no unacknowledged
//!   event, as `remove` does without `delete_file` (a placed file stays where it is);
//! - forgets the tombstones of tasks removed more than `P` ago (`get_tasks` then calls them
//!   unknown);
//! - deletes upload replies nothing names any more: no unfinished task, no task row holding
//!   it, no unacknowledged event of its task (a crash between an acknowledgement and the
//!   deletion it causes, say).
//!
//! A failing sweep is logged and tried again at the next one; it never stops the daemon.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::handlers::{self, Context};
use crate::store::tasks;

/// How long things are kept, and how often the sweep looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// The retention period.
    pub period: Duration,
    /// Time between sweeps.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig {
            period: crate::resume::DEFAULT_RETENTION,
            interval: Duration::from_secs(3600),
        }
    }
}

/// Sweeps at once, then every `config.interval`, until `shutdown`.
pub async fn run(ctx: Arc<Context>, config: RetentionConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = sweep(&ctx, config.period) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One sweep: the resume area, then completed tasks.
pub async fn sweep(ctx: &Context, period: Duration) {
    let (keeper, store) = (ctx.keeper.clone(), ctx.store.clone());
    let reclaim = move || {
        // Kept bytes a task row or an undelivered event still names stay (SPEC §6).
        let held = store
            .read(tasks::held_resume_data)
            .map_err(std::io::Error::other)?;
        let in_use = held.iter().filter_map(|b| keeper.file_id(b)).collect();
        keeper.reclaim(SystemTime::now(), &in_use)
    };
    match tokio::task::spawn_blocking(reclaim).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(files = n, "reclaimed expired kept bytes"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep the resume area"),
        Err(e) => tracing::error!(error = %e, "the resume-area sweep stopped"),
    }

    let before =
        crate::store::now().saturating_sub(i64::try_from(period.as_secs()).unwrap_or(i64::MAX));
    let store = ctx.store.clone();
    let expired = match tokio::task::spawn_blocking(move || {
        store.read(|c| tasks::expired_completed(c, before))
    })
    .await
    {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot look for expired completed tasks");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "the task sweep stopped");
            return;
        }
    };
    let mut forgotten = 0usize;
    for task in expired {
        match handlers::remove(ctx, task, false).await {
            Ok(_) => forgotten += 1,
            Err(e) => tracing::warn!(task, error = %e.message, "cannot forget an expired task"),
        }
    }
    if forgotten > 0 {
        tracing::info!(
            tasks = forgotten,
            "forgot completed tasks past the retention period"
        );
    }
    match ctx
        .store
        .write_relaxed(move |c| tasks::forget_removed(c, before))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            tombstones = n,
            "forgot tombstones past the retention period"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot forget old tombstones"),
    }
    sweep_replies(ctx).await;
}

/// Deletes the reply files of `replies/` that no task or event names.
async fn sweep_replies(ctx: &Context) {
    let (store, folder) = (ctx.store.clone(), ctx.layout.replies());
    let swept = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let mut deleted = 0;
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            let Some(task) = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_suffix(".reply")?.parse::<u64>().ok())
            else {
                continue;
            };
            match store.read(|c| tasks::reply_in_use(c, task)) {
                Ok(true) => {}
                Ok(false) => {
                    std::fs::remove_file(&path)?;
                    deleted += 1;
                }
                Err(e) => tracing::warn!(task, error = %e, "cannot tell whether a reply is used"),
            }
        }
        Ok(deleted)
    })
    .await;
    match swept {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(files = n, "deleted replies nothing names"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep the replies"),
        Err(e) => tracing::error!(error = %e, "the reply sweep stopped"),
    }
}
