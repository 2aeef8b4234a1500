//! Webhook triggers: a hook per (task, name) with its own token (stored as its hash), its own rate limit, and an
//! audit entry for each creation, revocation and call. Calling a hook queues its task's run in one audited
//! transaction that also counts the hook's recent runs, so the limit holds across servers.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::{
    Actor, AuditEvent, Hook, HookTrigger, NewHook, Run, Store, StoreError, StoreResult, WritePool, dispatch, now,
    runs::WAKE_CHANNEL, scripts::actor_user_id,
};

const HOOK_COLUMNS: &str =
    "id, task_id, name, prefix, rate_per_minute, created_by, created_at, last_triggered_at, revoked_at";

/// A hook acts for its creator: it is live only while that user is an active operator or admin, so a token
/// does not outlive its creator's right to run tasks (a deleted creator leaves `created_by` NULL: not live).
const LIVE_HOOK: &str = "token_hash = $1 AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM users u \
     WHERE u.id = hooks.created_by AND u.active AND u.role IN ('operator', 'admin'))";

/// The rate limit's window.
const WINDOW_SECONDS: i64 = 60;

/// Queues a run of task `$1` for hook `$2` at `$3`, copying the task's fields as the scheduler does.
const QUEUE_HOOK_RUN: &str = "INSERT INTO runs (task_id, script_id, script_version, filename, target_agent_id, labels, \
     trigger, hook_id, retries, retry_backoff_seconds, status, queued_at, not_before, args, env, secrets, \
     timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm) \
     SELECT t.id, t.script_id, COALESCE(t.script_version, s.current_version), s.filename, t.agent_id, t.labels, \
     'hook', $2, t.retries, t.retry_backoff_seconds, 'queued', $3, $3, t.args, t.env, t.secrets, t.timeout_seconds, \
     t.memory_mb, t.cpu_seconds, t.max_output_bytes, t.network, t.warm \
     FROM tasks t JOIN scripts s ON s.id = t.script_id WHERE t.id = $1 RETURNING *";

/// When the oldest of `count` runs in the window leaves it, if the hook is at its limit.
fn limited(count: i64, oldest: Option<DateTime<Utc>>, limit: i64, at: DateTime<Utc>) -> Option<i64> {
    if count < limit {
        return None;
    }
    let frees_at = oldest.unwrap_or(at) + Duration::seconds(WINDOW_SECONDS);
    Some(((frees_at - at).num_milliseconds() + 999).div_euclid(1000).max(1))
}

impl Store {
    pub async fn create_hook(&self, actor: &Actor, new: NewHook) -> StoreResult<Hook> {
        let created_by = actor_user_id(actor);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let task: Option<i64> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1").bind(new.task_id).fetch_optional(&mut *tx).await?;
            task.ok_or(StoreError::NotFound)?;
            let hook: Hook = sqlx::query_as(crate::composed(format!(
                "INSERT INTO hooks (task_id, name, token_hash, prefix, rate_per_minute, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {HOOK_COLUMNS}"
            )))
            .bind(new.task_id)
            .bind(&new.name)
            .bind(&new.token_hash)
            .bind(&new.prefix)
            .bind(new.rate_per_minute)
            .bind(created_by)
            .bind(now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("this task already has a hook named '{}'", new.name)))?;
            let details = json!({"task_id": hook.task_id, "name": hook.name, "prefix": hook.prefix,
                "rate_per_minute": hook.rate_per_minute});
            self.append_audit(&mut tx, actor, AuditEvent::new("hook.create", "hook", Some(hook.id), details)).await?;
            tx.commit().await?;
            Ok(hook)
        })
    }

    /// A task's hooks, revoked ones included.
    pub async fn list_hooks(&self, task_id: i64) -> StoreResult<Vec<Hook>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(crate::composed(format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE task_id = $1 ORDER BY id")))
                .bind(task_id)
                .fetch_all(pool)
                .await?)
        })
    }

    /// Revokes one of `task_id`'s hooks. Revoking twice is harmless and keeps the first revocation time.
    pub async fn revoke_hook(&self, actor: &Actor, task_id: i64, hook_id: i64) -> StoreResult<Hook> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let hook: Hook = sqlx::query_as(crate::composed(format!(
                "UPDATE hooks SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND task_id = $3 RETURNING {HOOK_COLUMNS}"
            )))
            .bind(now())
            .bind(hook_id)
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let details = json!({"task_id": task_id, "name": hook.name, "prefix": hook.prefix});
            self.append_audit(&mut tx, actor, AuditEvent::new("hook.revoke", "hook", Some(hook_id), details)).await?;
            tx.commit().await?;
            Ok(hook)
        })
    }

    /// The unrevoked hook with this token hash whose creator may still run tasks. A revoked hook, one whose
    /// creator was deleted, deactivated or demoted to viewer, and one that never existed all give `None`.
    pub async fn live_hook(&self, token_hash: &str) -> StoreResult<Option<Hook>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(crate::composed(format!(
                "SELECT {HOOK_COLUMNS} FROM hooks WHERE {LIVE_HOOK}"
            )))
            .bind(token_hash)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// Calls the live hook with this token hash: within its rate limit, queues its task's run with `payload`
    /// and records the call, actor the hook. The count and the insert share the audit lock, so two servers
    /// cannot both let the last call of a minute through.
    pub async fn trigger_hook(
        &self,
        token_hash: &str,
        payload: Option<&str>,
        ip: Option<String>,
    ) -> StoreResult<HookTrigger> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let hook: Option<Hook> = sqlx::query_as(crate::composed(format!(
                "SELECT {HOOK_COLUMNS} FROM hooks WHERE {LIVE_HOOK}"
            )))
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(hook) = hook else { return Ok(HookTrigger::Unknown) };
            let at = now();
            let (count, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(queued_at) FROM runs WHERE hook_id = $1 AND trigger = 'hook' AND queued_at > $2",
            )
            .bind(hook.id)
            .bind(at - Duration::seconds(WINDOW_SECONDS))
            .fetch_one(&mut *tx)
            .await?;
            if let Some(retry_after_seconds) = limited(count, oldest, hook.rate_per_minute, at) {
                return Ok(HookTrigger::Limited { retry_after_seconds });
            }
            let run: Run = sqlx::query_as(QUEUE_HOOK_RUN)
                .bind(hook.task_id)
                .bind(hook.id)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            if let Some(payload) = payload {
                sqlx::query("INSERT INTO run_payloads (run_id, payload) VALUES ($1, $2)")
                    .bind(run.id)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE hooks SET last_triggered_at = $1 WHERE id = $2").bind(at).bind(hook.id).execute(&mut *tx).await?;
            let details = json!({"task_id": hook.task_id, "name": hook.name, "run_id": run.id,
                "payload_bytes": payload.map(str::len)});
            self.append_audit(&mut tx, &Actor::hook(hook.id, ip), AuditEvent::new("hook.trigger", "hook", Some(hook.id), details)).await?;
            if postgres {
                sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(HookTrigger::Queued(Box::new(run)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_frees_when_the_oldest_run_leaves_the_window() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(limited(2, Some(at), 3, at), None, "below the limit");
        assert_eq!(limited(3, Some(at - Duration::seconds(15)), 3, at), Some(45));
        assert_eq!(limited(3, Some(at - Duration::milliseconds(59_500)), 3, at), Some(1), "never 0");
        assert_eq!(limited(5, Some(at - Duration::milliseconds(100)), 3, at), Some(60), "rounded up");
    }
}
