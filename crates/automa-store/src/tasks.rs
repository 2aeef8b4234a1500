//! Tasks: a script bound to arguments, environment, secrets, limits, a target and a schedule.

use serde_json::json;
use sqlx::types::Json;

use automa_core::InvalidField;

use crate::{
    Actor, AuditEvent, Listed, Page, ScriptReach, Store, StoreError, StoreResult, Task, TaskFilter, TaskSpec,
    WritePool,
    audit::append_audit,
    dispatch, now,
    scripts::{actor_user_id, like_pattern},
};

/// Turns references to missing rows into a validation error naming the field, checked inside the write
/// transaction so that the answer cannot go stale before the insert.
macro_rules! check_task_references {
    ($tx:expr, $spec:expr) => {{
        let script: Option<i64> = sqlx::query_scalar("SELECT current_version FROM scripts WHERE id = $1")
            .bind($spec.script_id)
            .fetch_optional(&mut *$tx)
            .await?;
        let current_version = script
            .ok_or_else(|| InvalidField::new("script_id", format!("there is no script with id {}", $spec.script_id)))?;
        if let Some(pinned) = $spec.script_version {
            if !(1..=current_version).contains(&pinned) {
                return Err(InvalidField::new(
                    "script_version",
                    format!("the script has versions 1 to {current_version}, not {pinned}"),
                )
                .into());
            }
        }
        if let Some(agent_id) = $spec.agent_id {
            let agent: Option<i64> = sqlx::query_scalar("SELECT id FROM agents WHERE id = $1")
                .bind(agent_id)
                .fetch_optional(&mut *$tx)
                .await?;
            agent.ok_or_else(|| InvalidField::new("agent_id", format!("there is no agent with id {agent_id}")))?;
        }
    }};
}

/// Adds the task to each named secret's policy, audited as a change of that secret.
macro_rules! grant_secrets {
    ($store:expr, $tx:expr, $actor:expr, $statement:expr, $task_id:expr, $names:expr) => {{
        for name in $names {
            let granted = sqlx::query($statement).bind($task_id).bind(name).execute(&mut *$tx).await?;
            if granted.rows_affected() == 0 {
                return Err(InvalidField::new("secrets", format!("there is no secret named '{name}'")).into());
            }
            let details = json!({"name": name, "granted_task_id": $task_id});
            append_audit!($store, $tx, $actor, AuditEvent::new("secret.grant", "secret", None, details));
        }
    }};
}

/// On PostgreSQL, tells every server's scheduler, at commit, that a schedule may have changed.
macro_rules! notify_schedulers {
    ($store:expr, $tx:expr) => {
        if matches!(&*$store.backend, crate::Backend::Postgres(_)) {
            sqlx::query("SELECT pg_notify($1, '')").bind(crate::TASKS_CHANNEL).execute(&mut *$tx).await?;
        }
    };
}

impl Store {
    /// Creates a task. `grants` names secrets whose policies the actor may change and that should allow the
    /// new task: its id exists only inside this transaction.
    pub async fn create_task(&self, actor: &Actor, spec: TaskSpec, grants: &[String]) -> StoreResult<Task> {
        let created_by = actor_user_id(actor);
        let grant = self.grant_task_statement();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_task_references!(tx, spec);
            let at = now();
            let task: Task = sqlx::query_as(
                "INSERT INTO tasks (name, description, script_id, script_version, agent_id, labels, args, env, secrets, \
                 timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, retries, retry_backoff_seconds, \
                 schedule, enabled, next_fire_at, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $21) \
                 RETURNING *",
            )
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(spec.script_id)
            .bind(spec.script_version)
            .bind(spec.agent_id)
            .bind(Json(&spec.labels))
            .bind(Json(&spec.args))
            .bind(Json(&spec.env))
            .bind(Json(&spec.secrets))
            .bind(spec.timeout_seconds)
            .bind(spec.memory_mb)
            .bind(spec.cpu_seconds)
            .bind(spec.max_output_bytes)
            .bind(spec.network)
            .bind(spec.retries)
            .bind(spec.retry_backoff_seconds)
            .bind(spec.schedule.as_ref().map(Json))
            .bind(spec.enabled)
            .bind(spec.next_fire_at)
            .bind(created_by)
            .bind(at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a task named '{}' already exists", spec.name)))?;
            append_audit!(self, tx, actor, AuditEvent::new("task.create", "task", Some(task.id), audit_details(&spec)));
            grant_secrets!(self, tx, actor, grant, task.id, grants);
            notify_schedulers!(self, tx);
            tx.commit().await?;
            Ok(task)
        })
    }

    pub async fn get_task(&self, id: i64) -> StoreResult<Task> {
        dispatch!(self, pool => {
            sqlx::query_as("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(pool).await?.ok_or(StoreError::NotFound)
        })
    }

    /// What a new version of a script reaches: the tasks that run its latest version, the secrets they name, and
    /// whether any of them has network.
    pub async fn script_reach(&self, script_id: i64) -> StoreResult<ScriptReach> {
        let followers: Vec<(i64, Json<Vec<String>>, bool)> = dispatch!(self, pool => {
            sqlx::query_as("SELECT id, secrets, network FROM tasks WHERE script_id = $1 AND script_version IS NULL")
                .bind(script_id)
                .fetch_all(pool)
                .await?
        });
        let mut secrets: Vec<String> = followers.iter().flat_map(|(_, names, _)| names.0.iter().cloned()).collect();
        secrets.sort();
        secrets.dedup();
        Ok(ScriptReach {
            task_ids: followers.iter().map(|(id, _, _)| *id).collect(),
            secrets,
            network: followers.iter().any(|(_, _, network)| *network),
        })
    }

    pub async fn get_task_by_name(&self, name: &str) -> StoreResult<Task> {
        dispatch!(self, pool => {
            sqlx::query_as("SELECT * FROM tasks WHERE name = $1").bind(name).fetch_optional(pool).await?.ok_or(StoreError::NotFound)
        })
    }

    pub async fn list_tasks(&self, filter: &TaskFilter, page: Page) -> StoreResult<Listed<Task>> {
        dispatch!(self, pool => {
            let mut count = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM tasks WHERE 1=1");
            push_task_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let mut select = sqlx::QueryBuilder::new("SELECT * FROM tasks WHERE 1=1");
            push_task_filter(&mut select, filter);
            select.push(" ORDER BY id LIMIT ").push_bind(page.limit).push(" OFFSET ").push_bind(page.offset);
            let items = select.build_query_as().fetch_all(pool).await?;
            Ok(Listed { items, total })
        })
    }

    /// Replaces every settable field with `spec` (the server has merged the client's partial update into it),
    /// and adds the task to the policies of the secrets in `grants`.
    pub async fn update_task(&self, actor: &Actor, id: i64, spec: TaskSpec, grants: &[String]) -> StoreResult<Task> {
        let grant = self.grant_task_statement();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_task_references!(tx, spec);
            let task: Task = sqlx::query_as(
                "UPDATE tasks SET name = $1, description = $2, script_id = $3, script_version = $4, agent_id = $5, \
                 labels = $6, args = $7, env = $8, secrets = $9, timeout_seconds = $10, memory_mb = $11, \
                 cpu_seconds = $12, max_output_bytes = $13, network = $14, retries = $15, retry_backoff_seconds = $16, \
                 schedule = $17, enabled = $18, next_fire_at = $19, updated_at = $20 WHERE id = $21 RETURNING *",
            )
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(spec.script_id)
            .bind(spec.script_version)
            .bind(spec.agent_id)
            .bind(Json(&spec.labels))
            .bind(Json(&spec.args))
            .bind(Json(&spec.env))
            .bind(Json(&spec.secrets))
            .bind(spec.timeout_seconds)
            .bind(spec.memory_mb)
            .bind(spec.cpu_seconds)
            .bind(spec.max_output_bytes)
            .bind(spec.network)
            .bind(spec.retries)
            .bind(spec.retry_backoff_seconds)
            .bind(spec.schedule.as_ref().map(Json))
            .bind(spec.enabled)
            .bind(spec.next_fire_at)
            .bind(now())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a task named '{}' already exists", spec.name)))?
            .ok_or(StoreError::NotFound)?;
            append_audit!(self, tx, actor, AuditEvent::new("task.update", "task", Some(id), audit_details(&spec)));
            grant_secrets!(self, tx, actor, grant, id, grants);
            notify_schedulers!(self, tx);
            tx.commit().await?;
            Ok(task)
        })
    }

    pub async fn delete_task(&self, actor: &Actor, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let name: String = sqlx::query_scalar("DELETE FROM tasks WHERE id = $1 RETURNING name")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            append_audit!(self, tx, actor, AuditEvent::new("task.delete", "task", Some(id), json!({"name": name})));
            tx.commit().await?;
            Ok(())
        })
    }
}

/// What the audit log keeps of a task: everything but the environment's values, which may be sensitive.
fn audit_details(spec: &TaskSpec) -> serde_json::Value {
    json!({
        "name": spec.name, "script_id": spec.script_id, "script_version": spec.script_version,
        "agent_id": spec.agent_id, "labels": spec.labels, "args": spec.args,
        "env_keys": spec.env.keys().collect::<Vec<_>>(), "secrets": spec.secrets,
        "timeout_seconds": spec.timeout_seconds, "memory_mb": spec.memory_mb, "network": spec.network,
        "retries": spec.retries, "schedule": spec.schedule, "enabled": spec.enabled,
    })
}

fn push_task_filter<DB>(builder: &mut sqlx::QueryBuilder<DB>, filter: &TaskFilter)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> bool: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    if let Some(script_id) = filter.script_id {
        builder.push(" AND script_id = ").push_bind(script_id);
    }
    if let Some(agent_id) = filter.agent_id {
        builder.push(" AND agent_id = ").push_bind(agent_id);
    }
    if let Some(enabled) = filter.enabled {
        builder.push(" AND enabled = ").push_bind(enabled);
    }
    match filter.scheduled {
        Some(true) => builder.push(" AND schedule IS NOT NULL"),
        Some(false) => builder.push(" AND schedule IS NULL"),
        None => builder,
    };
    if let Some(needle) = &filter.name_contains {
        builder.push(" AND lower(name) LIKE ").push_bind(like_pattern(needle)).push(" ESCAPE '\\'");
    }
}
