//! The scheduler (DESIGN §5): sleeps until the earliest `next_fire_at` or until a task changes — never on a
//! fixed tick — then fires every due task through the store, which inserts each fire's run and advances the
//! task in one transaction. Every `automa serve` runs one; on a shared PostgreSQL database they split the due
//! tasks and the unique (task, tick) key keeps each tick to one run.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};

use automa_core::RunStatus;
use automa_store::Store;

use crate::{
    events::{Event, Hub},
    execution::Execution,
    notify::Notifier,
};

/// Tasks fired per transaction: large enough that a thousand tasks due in the same second cost a few
/// transactions, small enough that one transaction never holds the write lock for long.
const BATCH: i64 = 2000;

/// How long to wait after a database error before trying again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

pub struct Scheduler {
    store: Store,
    execution: Arc<Execution>,
    /// Told of the tasks a fire advanced (their next fire, or a one-off schedule spent).
    events: Hub,
    /// Woken when a task is created or changed here or (PostgreSQL) on another server.
    changed: Arc<Notify>,
    /// Told of every batch of fires, to report a scheduler falling behind.
    notifier: Option<Arc<Notifier>>,
}

impl Scheduler {
    pub fn new(store: Store, execution: Arc<Execution>, events: Hub, changed: Arc<Notify>) -> Scheduler {
        Scheduler { store, execution, events, changed, notifier: None }
    }

    pub fn with_notifier(self, notifier: Arc<Notifier>) -> Scheduler {
        Scheduler { notifier: Some(notifier), ..self }
    }

    /// Runs until `stopping` turns true.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        let changed = self.changed.clone();
        if let Err(error) = self.store.listen_for_task_changes(move || changed.notify_one()).await {
            // Firing does not depend on the listener: without it, a schedule changed on another server is
            // picked up there, or here at this scheduler's next wake-up.
            tracing::warn!(%error, "cannot listen for other servers' task changes; scheduling continues");
        }
        while !*stopping.borrow() {
            let wait = match self.fire_due().await {
                Ok(()) => self.time_to_next_fire().await,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "the scheduler could not fire due tasks");
                    Some(RETRY_AFTER_ERROR)
                }
            };
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.changed.notified() => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Fires every task due now, batch after batch.
    async fn fire_due(&self) -> anyhow::Result<()> {
        loop {
            let fired = self.store.fire_due_tasks(automa_store::now(), BATCH).await?;
            self.execution.publish_runs(&fired.runs);
            let advanced: BTreeSet<i64> = fired.runs.iter().filter_map(|run| run.task_id).collect();
            advanced.into_iter().for_each(|id| self.events.publish(Event::Task { id }));
            fired.runs.iter().for_each(|run| self.execution.metrics.fired(run));
            if let Some(notifier) = &self.notifier {
                notifier.check_lateness(&fired.runs).await;
            }
            for run in fired.runs.iter().filter(|run| run.status == RunStatus::Skipped) {
                tracing::info!(task_id = run.task_id, scheduled_for = ?run.scheduled_for, reason = run.error.as_deref(), "fire skipped");
            }
            for run in fired.runs.iter().filter(|run| run.status == RunStatus::Failed) {
                tracing::warn!(task_id = run.task_id, scheduled_for = ?run.scheduled_for, reason = run.error.as_deref(), "fire refused");
            }
            if fired.tasks < BATCH as usize {
                return Ok(());
            }
        }
    }

    /// How long until the earliest fire; `None` when nothing is scheduled.
    async fn time_to_next_fire(&self) -> Option<Duration> {
        match self.store.earliest_fire().await {
            Ok(next) => next.map(|at| (at - automa_store::now()).to_std().unwrap_or(Duration::ZERO)),
            Err(error) => {
                tracing::error!(%error, "the scheduler could not read the next fire time");
                Some(RETRY_AFTER_ERROR)
            }
        }
    }
}
