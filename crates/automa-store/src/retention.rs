//! Retention: deleting finished runs (with their output) and the oldest audit entries in small transactions,
//! and the database's size.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::{
    Actor, AuditEvent, Backend, Store, StoreResult, WritePool,
    audit::{AuditCheckpoint, PRUNE_ACTION},
    dispatch,
};

/// Which finished runs are kept. A run is deleted when either rule says so; queued and running runs never are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunRetention {
    /// Runs that finished more than this long ago are deleted (runs of tasks and ad-hoc runs alike).
    pub max_age: Option<chrono::Duration>,
    /// Of each task's finished runs, only the newest this many (by id, i.e. by when they were queued) are kept.
    /// Ad-hoc runs, and runs whose task was deleted, have no task and follow the age rule only.
    pub per_task: Option<i64>,
}

/// How much one transaction may delete: a bounded number of runs and of output bytes, so that a pass over a
/// large backlog never holds the write lock for long.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub runs: i64,
    /// Output bytes (`runs.log_bytes`) per transaction; a single larger run still goes alone.
    pub log_bytes: i64,
    /// Audit entries per transaction.
    pub audit_entries: i64,
    /// A pause between transactions, so other writers get the lock.
    pub pause: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { runs: 500, log_bytes: 32 * 1024 * 1024, audit_entries: 1000, pause: Duration::from_millis(5) }
    }
}

/// What a pass over the runs deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunPruneSummary {
    pub runs: i64,
    /// Deleted because they finished before the cut-off.
    pub by_age: i64,
    /// Deleted because newer runs of their task filled its quota.
    pub by_count: i64,
    pub log_chunks: i64,
    pub first_id: Option<i64>,
    pub last_id: Option<i64>,
    pub oldest_finished_at: Option<DateTime<Utc>>,
    pub newest_finished_at: Option<DateTime<Utc>>,
    pub batches: i64,
    /// The longest single deleting transaction (for logs and measurements; not recorded in the audit log).
    #[serde(skip)]
    pub longest_batch: Duration,
}

/// What a pass over the audit log deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditPruneSummary {
    pub entries: i64,
    pub batches: i64,
    /// The checkpoint verification now starts from: the last entry deleted.
    pub checkpoint: Option<AuditCheckpoint>,
}

/// The candidates of one transaction and which rule chose them.
#[derive(Clone, Copy)]
enum Selection {
    FinishedBefore(DateTime<Utc>),
    /// A task's finished runs older (by id) than its `keep`-th newest finished run.
    TaskBelow {
        task_id: i64,
        below_id: i64,
    },
}

/// Never a candidate, whatever the policy.
const ACTIVE: &str = "status NOT IN ('queued', 'running')";

impl RunPruneSummary {
    fn add(&mut self, rows: &[(i64, i64, Option<DateTime<Utc>>)], deleted: i64, chunks: i64, by_age: bool) {
        self.runs += deleted;
        if by_age {
            self.by_age += deleted;
        } else {
            self.by_count += deleted;
        }
        self.log_chunks += chunks;
        self.batches += 1;
        for &(id, _, finished_at) in rows {
            self.first_id = Some(self.first_id.map_or(id, |first| first.min(id)));
            self.last_id = Some(self.last_id.map_or(id, |last| last.max(id)));
            if let Some(at) = finished_at {
                self.oldest_finished_at = Some(self.oldest_finished_at.map_or(at, |oldest| oldest.min(at)));
                self.newest_finished_at = Some(self.newest_finished_at.map_or(at, |newest| newest.max(at)));
            }
        }
    }
}

impl Store {
    /// Deletes the finished runs `policy` no longer keeps, with their output, in transactions bounded by
    /// `limits`, and records one `retention.runs` audit entry summing up what went, if anything did. Safe to run
    /// on several servers at once: every batch re-selects what is still there and deletes by id, so a run
    /// deleted by another server is simply not counted twice. `keep_going` is asked before every transaction;
    /// when it says no (the server is stopping), the pass ends early and still records what it deleted.
    pub async fn prune_runs(
        &self,
        policy: &RunRetention,
        now: DateTime<Utc>,
        limits: &BatchLimits,
        keep_going: &(dyn Fn() -> bool + Sync),
    ) -> StoreResult<RunPruneSummary> {
        let mut summary = RunPruneSummary::default();
        // Each task's cut-off is fixed before anything is deleted, so that a run the age rule deletes still
        // counts among its task's newest: the two rules are independent.
        let mut cutoffs = Vec::new();
        if let Some(keep) = policy.per_task.filter(|keep| *keep > 0) {
            let tasks: Vec<i64> = dispatch!(self, pool => {
                sqlx::query_scalar("SELECT id FROM tasks ORDER BY id").fetch_all(pool).await?
            });
            for task_id in tasks {
                let cutoff: Option<i64> = dispatch!(self, pool => {
                    sqlx::query_scalar(crate::composed(format!(
                        "SELECT id FROM runs WHERE task_id = $1 AND {ACTIVE} ORDER BY id DESC LIMIT 1 OFFSET $2"
                    )))
                    .bind(task_id)
                    .bind(keep - 1)
                    .fetch_optional(pool)
                    .await?
                });
                if let Some(below_id) = cutoff {
                    cutoffs.push(Selection::TaskBelow { task_id, below_id });
                }
            }
        }
        let deleting: StoreResult<()> = async {
            if let Some(max_age) = policy.max_age {
                self.prune_selection(Selection::FinishedBefore(now - max_age), limits, keep_going, &mut summary)
                    .await?;
            }
            for selection in cutoffs {
                if !keep_going() {
                    break;
                }
                self.prune_selection(selection, limits, keep_going, &mut summary).await?;
            }
            Ok(())
        }
        .await;
        // Batches already committed are recorded even when a later one failed.
        if summary.runs > 0 {
            let details = json!({
                "runs": summary.runs,
                "by_age": summary.by_age,
                "by_count": summary.by_count,
                "log_chunks": summary.log_chunks,
                "first_id": summary.first_id,
                "last_id": summary.last_id,
                "oldest_finished_at": summary.oldest_finished_at,
                "newest_finished_at": summary.newest_finished_at,
                "policy": {
                    "max_age_days": policy.max_age.map(|age| age.num_days()),
                    "runs_per_task": policy.per_task,
                },
            });
            self.record_event(&Actor::system(), AuditEvent::new("retention.runs", "run", None, details)).await?;
        }
        deleting?;
        Ok(summary)
    }

    /// Deletes what `selection` picks, batch after batch, until nothing is left.
    async fn prune_selection(
        &self,
        selection: Selection,
        limits: &BatchLimits,
        keep_going: &(dyn Fn() -> bool + Sync),
        summary: &mut RunPruneSummary,
    ) -> StoreResult<()> {
        while keep_going() {
            let started = Instant::now();
            let (rows, deleted, chunks, complete) = dispatch!(self, pool => {
                let mut tx = pool.begin_with_lock().await?;
                let rows: Vec<(i64, i64, Option<DateTime<Utc>>)> = match selection {
                    Selection::FinishedBefore(cutoff) => sqlx::query_as(crate::composed(format!(
                        "SELECT id, log_bytes, finished_at FROM runs WHERE {ACTIVE} AND finished_at < $1 \
                         ORDER BY finished_at LIMIT $2"
                    )))
                    .bind(cutoff)
                    .bind(limits.runs)
                    .fetch_all(&mut *tx)
                    .await?,
                    Selection::TaskBelow { task_id, below_id } => sqlx::query_as(crate::composed(format!(
                        "SELECT id, log_bytes, finished_at FROM runs WHERE task_id = $1 AND {ACTIVE} AND id < $2 \
                         ORDER BY id LIMIT $3"
                    )))
                    .bind(task_id)
                    .bind(below_id)
                    .bind(limits.runs)
                    .fetch_all(&mut *tx)
                    .await?,
                };
                let selected = rows.len();
                let rows = within_bytes(rows, limits.log_bytes);
                // Nothing left beyond this batch: fewer candidates than asked for, and none held back for size.
                let complete = (selected as i64) < limits.runs && rows.len() == selected;
                if rows.is_empty() {
                    (rows, 0, 0, true)
                } else {
                    let mut logs = sqlx::QueryBuilder::new("DELETE FROM run_logs WHERE run_id IN (");
                    let mut ids = logs.separated(", ");
                    for (id, _, _) in &rows {
                        ids.push_bind(*id);
                    }
                    logs.push(")");
                    let chunks = logs.build().execute(&mut *tx).await?.rows_affected() as i64;
                    let mut runs = sqlx::QueryBuilder::new("DELETE FROM runs WHERE ");
                    runs.push(ACTIVE).push(" AND id IN (");
                    let mut ids = runs.separated(", ");
                    for (id, _, _) in &rows {
                        ids.push_bind(*id);
                    }
                    runs.push(")");
                    let deleted = runs.build().execute(&mut *tx).await?.rows_affected() as i64;
                    tx.commit().await?;
                    (rows, deleted, chunks, complete)
                }
            });
            if rows.is_empty() {
                return Ok(());
            }
            summary.longest_batch = summary.longest_batch.max(started.elapsed());
            summary.add(&rows, deleted, chunks, matches!(selection, Selection::FinishedBefore(_)));
            if complete {
                return Ok(());
            }
            tokio::time::sleep(limits.pause).await;
        }
        Ok(())
    }

    /// Deletes the audit entries written before `before`, oldest first, in transactions of at most
    /// `limits.audit_entries`. Each transaction first appends an `audit.prune` entry naming what it deletes and
    /// the checkpoint it leaves (the last deleted entry's id and hash), then deletes, then stores that
    /// checkpoint: verification starts from the stored checkpoint and accepts it only if that keyed entry,
    /// which nobody without the key can forge, vouches for it. Only a prefix of the chain is ever deleted.
    /// `keep_going` is asked before every transaction.
    pub async fn prune_audit(
        &self,
        before: DateTime<Utc>,
        limits: &BatchLimits,
        keep_going: &(dyn Fn() -> bool + Sync),
    ) -> StoreResult<AuditPruneSummary> {
        let mut summary = AuditPruneSummary::default();
        while keep_going() {
            let done = dispatch!(self, pool => {
                let mut tx = pool.begin_write().await?;
                let oldest: Vec<(i64, String, DateTime<Utc>)> =
                    sqlx::query_as("SELECT id, hash, ts FROM audit_log ORDER BY id LIMIT $1")
                        .bind(limits.audit_entries)
                        .fetch_all(&mut *tx)
                        .await?;
                let exhausted = (oldest.len() as i64) < limits.audit_entries;
                let prefix: Vec<_> = oldest.into_iter().take_while(|(_, _, ts)| *ts < before).collect();
                let whole_batch = prefix.len() as i64 == limits.audit_entries;
                match (prefix.first(), prefix.last()) {
                    (Some(first), Some(last)) => {
                        let checkpoint = AuditCheckpoint { id: last.0, hash: last.1.clone() };
                        let details = json!({
                            "entries": prefix.len(),
                            "first_id": first.0,
                            "last_id": last.0,
                            "oldest_ts": first.2,
                            "newest_ts": last.2,
                            "checkpoint": &checkpoint,
                        });
                        // Appended before the delete: the new entry must link to the current head, which the
                        // delete may remove when every entry is old enough.
                        self.append_audit(&mut tx, &Actor::system(), AuditEvent::new(PRUNE_ACTION, "audit", None, details)).await?;
                        sqlx::query("DELETE FROM audit_log WHERE id <= $1").bind(last.0).execute(&mut *tx).await?;
                        sqlx::query(
                            "INSERT INTO audit_checkpoint (singleton, entry_id, entry_hash, pruned_at) \
                             VALUES (1, $1, $2, $3) ON CONFLICT (singleton) DO UPDATE SET \
                             entry_id = excluded.entry_id, entry_hash = excluded.entry_hash, pruned_at = excluded.pruned_at",
                        )
                        .bind(checkpoint.id)
                        .bind(&checkpoint.hash)
                        .bind(crate::now())
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        summary.entries += prefix.len() as i64;
                        summary.batches += 1;
                        summary.checkpoint = Some(checkpoint);
                        exhausted || !whole_batch
                    }
                    _ => true,
                }
            });
            if done {
                break;
            }
            tokio::time::sleep(limits.pause).await;
        }
        Ok(summary)
    }

    /// The checkpoint audit retention left, if it ever deleted entries.
    pub async fn stored_audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        let row: Option<(i64, String)> = dispatch!(self, pool => {
            sqlx::query_as("SELECT entry_id, entry_hash FROM audit_checkpoint WHERE singleton = 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(id, hash)| AuditCheckpoint { id, hash }))
    }

    /// The database's size in bytes: on SQLite its pages plus the write-ahead log not yet checkpointed into
    /// them; on PostgreSQL `pg_database_size`.
    pub async fn database_size(&self) -> StoreResult<i64> {
        match &*self.backend {
            Backend::Sqlite(pool) => {
                let pages: i64 = sqlx::query_scalar(
                    "SELECT p.page_count * s.page_size FROM pragma_page_count() p, pragma_page_size() s",
                )
                .fetch_one(pool)
                .await?;
                let mut wal = pool.connect_options().get_filename().as_os_str().to_owned();
                wal.push("-wal");
                let wal = std::fs::metadata(wal).map_or(0, |m| m.len() as i64);
                Ok(pages + wal)
            }
            Backend::Postgres(pool) => {
                Ok(sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(pool).await?)
            }
        }
    }
}

/// The longest prefix of `rows` whose output stays within `max_bytes`, and always the first row.
fn within_bytes(
    rows: Vec<(i64, i64, Option<DateTime<Utc>>)>,
    max_bytes: i64,
) -> Vec<(i64, i64, Option<DateTime<Utc>>)> {
    let mut total = 0;
    let mut taken = Vec::with_capacity(rows.len());
    for row in rows {
        total += row.1;
        if total > max_bytes && !taken.is_empty() {
            break;
        }
        taken.push(row);
    }
    taken
}
