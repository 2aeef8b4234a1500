//! The scheduler's writes: firing every task that is due, in one transaction per batch. Each fire inserts its
//! run (or its `skipped` record) and advances the task's `next_fire_at` together; the unique
//! (task_id, scheduled_for) index makes a second run for the same tick impossible however many servers race,
//! and on PostgreSQL `FOR UPDATE SKIP LOCKED` lets them split the due tasks instead of queueing behind each
//! other. A fire of a task that names a secret whose policy no longer allows it (or that no longer exists) is
//! recorded as a failed run saying so: the policy is checked when the run is made, not only when the task was
//! saved.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use automa_core::{FireOutcome, RunStatus, Schedule};

use crate::{Backend, Run, SecretInfo, Store, StoreResult, WritePool, dispatch, now, runs::WAKE_CHANNEL};

/// Tells every server's scheduler that a task's schedule changed (PostgreSQL only; in one process the server
/// wakes its scheduler directly).
pub const TASKS_CHANNEL: &str = "automa_tasks";

/// Fires per multi-row INSERT: 6 parameters a fire stays far below SQLite's 32766.
const INSERT_CHUNK: usize = 1000;

/// Inserts the planned fires (`VALUES (task_id, scheduled_for, status, not_before, finished_at, error)`),
/// copying everything else from each task and its script inside the database. `$1` is `queued_at`. The
/// `WHERE true` lets SQLite tell the upsert's `ON CONFLICT` from a join constraint.
const INSERT_FIRES_HEAD: &str = "INSERT INTO runs (task_id, script_id, script_version, filename, target_agent_id, \
     labels, trigger, scheduled_for, retries, retry_backoff_seconds, status, queued_at, not_before, finished_at, error, \
     args, env, secrets, timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm) \
     SELECT t.id, t.script_id, COALESCE(t.script_version, s.current_version), s.filename, t.agent_id, t.labels, \
     'schedule', v.column2, t.retries, t.retry_backoff_seconds, v.column3, ";
const INSERT_FIRES_MIDDLE: &str = ", v.column4, v.column5, v.column6, t.args, t.env, t.secrets, t.timeout_seconds, \
     t.memory_mb, t.cpu_seconds, t.max_output_bytes, t.network, t.warm FROM (";
const INSERT_FIRES_TAIL: &str = ") AS v JOIN tasks t ON t.id = v.column1 JOIN scripts s ON s.id = t.script_id WHERE true \
     ON CONFLICT (task_id, scheduled_for) WHERE scheduled_for IS NOT NULL DO NOTHING RETURNING *";

/// What planning needs of a due task; the rest of the task is copied into its runs by the database.
#[derive(sqlx::FromRow)]
struct DueTask {
    id: i64,
    schedule: Option<Json<Schedule>>,
    next_fire_at: Option<DateTime<Utc>>,
    secrets: Json<Vec<String>>,
}

/// What one batch of fires did.
#[derive(Debug, Default)]
pub struct Fired {
    /// The runs and skipped records inserted, in order.
    pub runs: Vec<Run>,
    /// How many due tasks the batch handled; a full batch means more may be due.
    pub tasks: usize,
}

/// One fire to record: its queued run, or its skipped or failed record with the reason.
struct FireRow {
    task_id: i64,
    scheduled_for: DateTime<Utc>,
    not_before: DateTime<Utc>,
    status: &'static str,
    error: Option<String>,
}

/// Why a task may not receive its secrets now, if it may not.
fn secret_refusal(task: &DueTask, secrets: &[SecretInfo]) -> Option<String> {
    task.secrets.0.iter().find_map(|name| match secrets.iter().find(|s| &s.name == name) {
        None => Some(format!("secret '{name}' does not exist")),
        Some(secret) if !secret.policy().allows_task(task.id) => {
            Some(format!("secret '{name}' does not allow task {}; its owner or an admin can allow it", task.id))
        }
        Some(_) => None,
    })
}

/// A fire's delay within the task's jitter, derived from the task and tick so that every server computes the
/// same one and fires spread evenly.
fn jitter(task_id: i64, tick: DateTime<Utc>, jitter_seconds: i64) -> Duration {
    if jitter_seconds <= 0 {
        return Duration::zero();
    }
    let digest = Sha256::digest(format!("{task_id}/{}", tick.timestamp_micros()).as_bytes());
    let value = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    Duration::milliseconds((value % (jitter_seconds as u64 * 1000)) as i64)
}

impl Store {
    /// Calls `wake` whenever another server changes a task's schedule (PostgreSQL only).
    pub async fn listen_for_task_changes(&self, wake: impl Fn() + Send + 'static) -> StoreResult<()> {
        self.listen(TASKS_CHANNEL, wake).await
    }

    /// The earliest `next_fire_at` of any enabled task, for the scheduler's sleep.
    pub async fn earliest_fire(&self) -> StoreResult<Option<DateTime<Utc>>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_scalar("SELECT MIN(next_fire_at) FROM tasks WHERE enabled AND next_fire_at IS NOT NULL")
                .fetch_one(pool)
                .await?)
        })
    }

    /// Fires up to `limit` tasks due at `at`.
    pub async fn fire_due_tasks(&self, at: DateTime<Utc>, limit: i64) -> StoreResult<Fired> {
        let postgres = matches!(&*self.backend, Backend::Postgres(_));
        let lock = if postgres { " FOR UPDATE OF t SKIP LOCKED" } else { "" };
        dispatch!(self, pool => {
            let mut tx = pool.begin_with_lock().await?;
            let due: Vec<DueTask> = sqlx::query_as(crate::composed(format!(
                "SELECT t.id, t.schedule, t.next_fire_at, t.secrets FROM tasks t \
                 WHERE t.enabled AND t.next_fire_at IS NOT NULL AND t.next_fire_at <= $1 \
                 ORDER BY t.next_fire_at, t.id LIMIT $2{lock}"
            )))
            .bind(at)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            if due.is_empty() {
                return Ok(Fired::default());
            }
            let mut count = sqlx::QueryBuilder::new(
                "SELECT task_id, COUNT(*) FROM runs WHERE status IN ('queued', 'running') AND task_id IN (",
            );
            let mut ids = count.separated(", ");
            for task in &due {
                ids.push_bind(task.id);
            }
            count.push(") GROUP BY task_id");
            let active: HashMap<i64, i64> = count.build_query_as::<(i64, i64)>().fetch_all(&mut *tx).await?.into_iter().collect();
            let mut names: Vec<&String> = due.iter().flat_map(|task| task.secrets.0.iter()).collect();
            names.sort();
            names.dedup();
            let secrets: Vec<SecretInfo> = if names.is_empty() {
                Vec::new()
            } else {
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT id, name, created_by, all_tasks, task_ids, agent_ids, agent_labels, created_at, updated_at \
                     FROM secrets WHERE name IN (",
                );
                let mut list = select.separated(", ");
                for name in names {
                    list.push_bind(name.clone());
                }
                select.push(")");
                select.build_query_as().fetch_all(&mut *tx).await?
            };

            let mut rows = Vec::new();
            let mut next_fires = Vec::with_capacity(due.len());
            for task in &due {
                let (Some(schedule), Some(next_fire_at)) = (task.schedule.as_ref().map(|s| &s.0), task.next_fire_at) else {
                    next_fires.push((task.id, None));
                    continue;
                };
                let plan = plan(schedule, next_fire_at, at, *active.get(&task.id).unwrap_or(&0));
                let refusal = secret_refusal(task, &secrets);
                for fire in plan.fires {
                    let (status, error) = match (fire.outcome, &refusal) {
                        (FireOutcome::Skip(reason), _) => ("skipped", Some(reason.describe())),
                        (FireOutcome::Run, Some(refusal)) => ("failed", Some(refusal.clone())),
                        (FireOutcome::Run, None) => ("queued", None),
                    };
                    rows.push(FireRow {
                        task_id: task.id,
                        scheduled_for: fire.scheduled_for,
                        not_before: fire.scheduled_for + jitter(task.id, fire.scheduled_for, schedule.jitter_seconds),
                        status,
                        error,
                    });
                }
                next_fires.push((task.id, plan.next_fire_at));
            }

            let mut runs: Vec<Run> = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(INSERT_CHUNK) {
                let queued_at = now();
                let mut insert = sqlx::QueryBuilder::new(INSERT_FIRES_HEAD);
                insert.push_bind(queued_at).push(INSERT_FIRES_MIDDLE);
                insert.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(row.task_id)
                        .push_bind(row.scheduled_for)
                        .push_bind(row.status)
                        .push_bind(row.not_before)
                        .push_bind(row.error.as_ref().map(|_| queued_at))
                        .push_bind(row.error.clone());
                });
                insert.push(INSERT_FIRES_TAIL);
                runs.extend(insert.build_query_as::<Run>().fetch_all(&mut *tx).await?);
            }
            for run in runs.iter().filter(|run| run.status != RunStatus::Queued) {
                crate::notifications::queue_run_notices(&mut tx, run, false).await?;
            }

            let mut advance = sqlx::QueryBuilder::new("UPDATE tasks SET next_fire_at = v.column2 FROM (");
            advance.push_values(&next_fires, |mut values, (task_id, next)| {
                values.push_bind(*task_id).push_bind(*next);
            });
            advance.push(") AS v WHERE tasks.id = v.column1");
            advance.build().execute(&mut *tx).await?;
            if postgres && runs.iter().any(|run| run.status == RunStatus::Queued) {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Fired { runs, tasks: due.len() })
        })
    }
}

/// Plans a task's due fires. An interval's anchor is stored with its schedule; for one without, the pending
/// fire itself keeps the rhythm.
fn plan(schedule: &Schedule, next_fire_at: DateTime<Utc>, at: DateTime<Utc>, active: i64) -> automa_core::FirePlan {
    schedule.plan_fires(next_fire_at, at, next_fire_at, active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound_and_every_server_agrees() {
        let tick = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(jitter(7, tick, 0), Duration::zero());
        let delays: Vec<Duration> = (0..200).map(|task| jitter(task, tick, 30)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::zero() && *d < Duration::seconds(30)));
        assert_eq!(jitter(7, tick, 30), jitter(7, tick, 30), "the same task and tick give the same delay");
        let spread = delays.iter().max().unwrap().num_milliseconds() - delays.iter().min().unwrap().num_milliseconds();
        assert!(spread > 20_000, "fires spread over the window: {spread} ms");
    }
}
