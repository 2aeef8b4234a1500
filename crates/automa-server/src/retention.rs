//! The retention job: at start and then every `retention_interval_seconds`, deletes the finished runs and the
//! audit entries the configured retention no longer keeps. Every server runs it; the store's passes are
//! idempotent (runs are re-selected and deleted by id in each transaction; audit pruning takes the audit write
//! lock and re-reads the oldest entries), so two servers on one PostgreSQL database at worst find nothing left
//! to do.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use automa_store::{BatchLimits, Store};

use crate::config::Config;

/// Runs until `stopping` turns true; returns at once when no retention is configured.
pub async fn run(store: Store, config: Arc<Config>, mut stopping: watch::Receiver<bool>) {
    // Validated when the server was built.
    let Ok(runs) = config.run_retention() else { return };
    let audit_days = config.retention_audit_days;
    if runs.max_age.is_none() && runs.per_task.is_none() && audit_days.is_none() {
        return;
    }
    let interval = Duration::from_secs(config.retention_interval_seconds);
    let limits = BatchLimits::default();
    while !*stopping.borrow() {
        let now = automa_store::now();
        let keep_going = || !*stopping.borrow();
        match store.prune_runs(&runs, now, &limits, &keep_going).await {
            Ok(summary) if summary.runs > 0 => tracing::info!(
                runs = summary.runs,
                by_age = summary.by_age,
                by_count = summary.by_count,
                log_chunks = summary.log_chunks,
                batches = summary.batches,
                longest_batch_ms = summary.longest_batch.as_millis() as u64,
                "retention deleted finished runs"
            ),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "retention could not delete finished runs"),
        }
        if let Some(days) = audit_days {
            match store.prune_audit(now - chrono::Duration::days(days.into()), &limits, &keep_going).await {
                Ok(summary) if summary.entries > 0 => tracing::info!(
                    entries = summary.entries,
                    checkpoint_id = summary.checkpoint.as_ref().map(|c| c.id),
                    "retention deleted old audit entries"
                ),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "retention could not delete old audit entries"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.changed() => {}
        }
    }
}
