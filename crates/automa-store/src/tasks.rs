//! Tasks: a script bound to arguments, environment, secrets, limits, a target and a schedule.

use serde_json::json;
use sqlx::{Transaction, types::Json};

use automa_core::{InvalidField, RunStatus};

use crate::models::BindRunParams;
use crate::{
    Actor, AuditEvent, Listed, Page, RunAfter, ScriptReach, Store, StoreError, StoreResult, Task, TaskFilter, TaskSpec,
    WritePool, dispatch, now,
    scripts::{actor_user_id, like_pattern},
};

/// Turns references to missing rows into a validation error naming the field, checked inside the write
/// transaction so that the answer cannot go stale before the insert.
async fn check_task_references<DB>(tx: &mut Transaction<'_, DB>, spec: &TaskSpec) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let script: Option<i64> = sqlx::query_scalar("SELECT current_version FROM scripts WHERE id = $1")
        .bind(spec.script_id)
        .fetch_optional(&mut **tx)
        .await?;
    let current_version = script
        .ok_or_else(|| InvalidField::new("script_id", format!("there is no script with id {}", spec.script_id)))?;
    if let Some(pinned) = spec.script_version
        && !(1..=current_version).contains(&pinned)
    {
        return Err(InvalidField::new(
            "script_version",
            format!("the script has versions 1 to {current_version}, not {pinned}"),
        )
        .into());
    }
    if let Some(agent_id) = spec.agent_id {
        let agent: Option<i64> =
            sqlx::query_scalar("SELECT id FROM agents WHERE id = $1").bind(agent_id).fetch_optional(&mut **tx).await?;
        agent.ok_or_else(|| InvalidField::new("agent_id", format!("there is no agent with id {agent_id}")))?;
    }
    Ok(())
}

impl Store {
    /// Adds the task to each named secret's policy, audited as a change of that secret.
    async fn grant_secrets<DB>(
        &self,
        tx: &mut Transaction<'_, DB>,
        actor: &Actor,
        task_id: i64,
        names: &[String],
    ) -> StoreResult<()>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        (i64, String): for<'r> sqlx::FromRow<'r, DB::Row>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
        for<'q> chrono::DateTime<chrono::Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
        str: sqlx::Type<DB>,
        for<'a, 'q> Json<&'a serde_json::Value>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        for name in names {
            let granted: Option<i64> = sqlx::query_scalar(self.grant_task_statement())
                .bind(task_id)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
            if granted.is_none() {
                return Err(InvalidField::new("secrets", format!("there is no secret named '{name}'")).into());
            }
            let details = json!({"name": name, "granted_task_id": task_id});
            self.append_audit(tx, actor, AuditEvent::new("secret.grant", "secret", None, details)).await?;
        }
        Ok(())
    }

    /// On PostgreSQL, tells every server's scheduler, at commit, that a schedule may have changed.
    async fn notify_schedulers<DB>(&self, tx: &mut Transaction<'_, DB>) -> StoreResult<()>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
        str: sqlx::Type<DB>,
    {
        if self.is_postgres() {
            sqlx::query("SELECT pg_notify($1, '')").bind(crate::TASKS_CHANNEL).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Replaces the task's run-after links with `links` and refuses (422, naming the tasks) an upstream task that
/// does not exist or a cycle. Checked inside the write transaction, which serialises every task save, so two
/// saves cannot each close half of a cycle.
async fn set_run_after<DB>(tx: &mut Transaction<'_, DB>, task_id: i64, links: &[RunAfter]) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    (i64, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'a, 'q> &'a str: sqlx::Encode<'q, DB>,
    str: sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    sqlx::query("DELETE FROM task_run_after WHERE task_id = $1").bind(task_id).execute(&mut **tx).await?;
    for (index, link) in links.iter().enumerate() {
        let upstream: Option<i64> = sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1")
            .bind(link.task_id)
            .fetch_optional(&mut **tx)
            .await?;
        if upstream.is_none() {
            let field = format!("run_after[{index}].task_id");
            return Err(InvalidField::new(field, format!("there is no task with id {}", link.task_id)).into());
        }
        for status in &link.on {
            sqlx::query("INSERT INTO task_run_after (task_id, after_task_id, on_status) VALUES ($1, $2, $3)")
                .bind(task_id)
                .bind(link.task_id)
                .bind(status.as_str())
                .execute(&mut **tx)
                .await?;
        }
    }
    if !links.is_empty() {
        let edges: Vec<(i64, i64)> =
            sqlx::query_as("SELECT DISTINCT task_id, after_task_id FROM task_run_after").fetch_all(&mut **tx).await?;
        if let Some(cycle) = find_cycle(task_id, &edges) {
            let mut names = Vec::with_capacity(cycle.len());
            for id in &cycle {
                let name: String =
                    sqlx::query_scalar("SELECT name FROM tasks WHERE id = $1").bind(id).fetch_one(&mut **tx).await?;
                names.push(format!("'{name}'"));
            }
            let message = format!("would make a cycle: {} (each runs after the next)", names.join(" → "));
            return Err(InvalidField::new("run_after", message).into());
        }
    }
    Ok(())
}

impl Store {
    /// Creates a task. `grants` names secrets whose policies the actor may change and that should allow the
    /// new task: its id exists only inside this transaction.
    pub async fn create_task(&self, actor: &Actor, spec: TaskSpec, grants: &[String]) -> StoreResult<Task> {
        let created_by = actor_user_id(actor);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_task_references(&mut tx, &spec).await?;
            let at = now();
            let task: Task = sqlx::query_as(
                "INSERT INTO tasks (name, description, script_id, script_version, agent_id, labels, args, env, secrets, \
                 timeout_seconds, memory_mb, cpu_seconds, max_output_bytes, network, warm, retries, \
                 retry_backoff_seconds, schedule, enabled, next_fire_at, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
                 $22, $22) \
                 RETURNING *",
            )
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(spec.script_id)
            .bind(spec.script_version)
            .bind(spec.agent_id)
            .bind(Json(&spec.labels))
            .bind_run_params(&spec.params)
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
            set_run_after(&mut tx, task.id, &spec.run_after).await?;
            self.append_audit(&mut tx, actor, AuditEvent::new("task.create", "task", Some(task.id), audit_details(&spec))).await?;
            self.grant_secrets(&mut tx, actor, task.id, grants).await?;
            self.notify_schedulers(&mut tx).await?;
            tx.commit().await?;
            Ok(Task { run_after: spec.run_after, ..task })
        })
    }

    pub async fn get_task(&self, id: i64) -> StoreResult<Task> {
        let task: Task = dispatch!(self, pool => {
            sqlx::query_as("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(pool).await?.ok_or(StoreError::NotFound)
        })?;
        self.with_run_after(vec![task]).await.map(|mut tasks| tasks.remove(0))
    }

    /// Fills in the tasks' run-after links, each link's statuses in `RunStatus` order.
    async fn with_run_after(&self, mut tasks: Vec<Task>) -> StoreResult<Vec<Task>> {
        if tasks.is_empty() {
            return Ok(tasks);
        }
        let rows: Vec<(i64, i64, String)> = dispatch!(self, pool => {
            let mut select =
                sqlx::QueryBuilder::new("SELECT task_id, after_task_id, on_status FROM task_run_after WHERE task_id IN (");
            let mut ids = select.separated(", ");
            for task in &tasks {
                ids.push_bind(task.id);
            }
            select.push(") ORDER BY task_id, after_task_id");
            select.build_query_as().fetch_all(pool).await?
        });
        for (task_id, after_task_id, status) in rows {
            let Ok(status) = status.parse::<RunStatus>() else { continue };
            let Some(task) = tasks.iter_mut().find(|task| task.id == task_id) else { continue };
            match task.run_after.iter_mut().find(|link| link.task_id == after_task_id) {
                Some(link) => link.on.push(status),
                None => task.run_after.push(RunAfter { task_id: after_task_id, on: vec![status] }),
            }
        }
        for task in &mut tasks {
            for link in &mut task.run_after {
                link.on.sort_by_key(|status| RunStatus::ALL.iter().position(|s| s == status));
            }
        }
        Ok(tasks)
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
        let task: Task = dispatch!(self, pool => {
            sqlx::query_as("SELECT * FROM tasks WHERE name = $1").bind(name).fetch_optional(pool).await?.ok_or(StoreError::NotFound)
        })?;
        self.with_run_after(vec![task]).await.map(|mut tasks| tasks.remove(0))
    }

    pub async fn list_tasks(&self, filter: &TaskFilter, page: Page) -> StoreResult<Listed<Task>> {
        dispatch!(self, pool => {
            let mut count = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM tasks WHERE 1=1");
            push_task_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let mut select = sqlx::QueryBuilder::new("SELECT * FROM tasks WHERE 1=1");
            push_task_filter(&mut select, filter);
            select.push(" ORDER BY id LIMIT ").push_bind(page.limit).push(" OFFSET ").push_bind(page.offset);
            let items: Vec<Task> = select.build_query_as().fetch_all(pool).await?;
            Ok(Listed { items: self.with_run_after(items).await?, total })
        })
    }

    /// Replaces every settable field with `spec` (the server has merged the client's partial update into it),
    /// and adds the task to the policies of the secrets in `grants`.
    pub async fn update_task(&self, actor: &Actor, id: i64, spec: TaskSpec, grants: &[String]) -> StoreResult<Task> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_task_references(&mut tx, &spec).await?;
            let task: Task = sqlx::query_as(
                "UPDATE tasks SET name = $1, description = $2, script_id = $3, script_version = $4, agent_id = $5, \
                 labels = $6, args = $7, env = $8, secrets = $9, timeout_seconds = $10, memory_mb = $11, \
                 cpu_seconds = $12, max_output_bytes = $13, network = $14, warm = $15, retries = $16, \
                 retry_backoff_seconds = $17, schedule = $18, enabled = $19, next_fire_at = $20, updated_at = $21 \
                 WHERE id = $22 RETURNING *",
            )
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(spec.script_id)
            .bind(spec.script_version)
            .bind(spec.agent_id)
            .bind(Json(&spec.labels))
            .bind_run_params(&spec.params)
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
            set_run_after(&mut tx, id, &spec.run_after).await?;
            self.append_audit(&mut tx, actor, AuditEvent::new("task.update", "task", Some(id), audit_details(&spec))).await?;
            self.grant_secrets(&mut tx, actor, id, grants).await?;
            self.notify_schedulers(&mut tx).await?;
            tx.commit().await?;
            Ok(Task { run_after: spec.run_after, ..task })
        })
    }

    /// Deletes a task. Refused (`InUse`, naming them) while other tasks run after it: they would silently never
    /// run again.
    pub async fn delete_task(&self, actor: &Actor, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let dependants: Vec<(i64, String)> = sqlx::query_as(
                "SELECT DISTINCT t.id, t.name FROM task_run_after a JOIN tasks t ON t.id = a.task_id \
                 WHERE a.after_task_id = $1 AND a.task_id <> $1 ORDER BY t.id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            if !dependants.is_empty() {
                let named: Vec<String> = dependants.iter().map(|(id, name)| format!("'{name}' (id {id})")).collect();
                return Err(StoreError::InUse(format!(
                    "tasks run after this task: {}; remove it from their run_after first",
                    named.join(", ")
                )));
            }
            let name: String = sqlx::query_scalar("DELETE FROM tasks WHERE id = $1 RETURNING name")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            self.append_audit(&mut tx, actor, AuditEvent::new("task.delete", "task", Some(id), json!({"name": name}))).await?;
            tx.commit().await?;
            Ok(())
        })
    }
}

/// The path from `start` back to itself along "runs after" edges `(task, upstream)`, if the edges hold one.
/// Every cycle a save can make passes through the saved task, so starting there finds it.
fn find_cycle(start: i64, edges: &[(i64, i64)]) -> Option<Vec<i64>> {
    // Iterative over an adjacency map built once: a chain of any length neither grows the call stack nor
    // rescans every link at each step.
    let mut upstreams: std::collections::HashMap<i64, Vec<i64>> = std::collections::HashMap::new();
    for &(task, upstream) in edges {
        upstreams.entry(task).or_default().push(upstream);
    }
    let none: &[i64] = &[];
    let next = |node: i64| upstreams.get(&node).map_or(none, Vec::as_slice);
    let mut visited = std::collections::HashSet::new();
    // The path so far, each node with how many of its upstreams have been tried.
    let mut stack: Vec<(i64, usize)> = vec![(start, 0)];
    while let Some((node, tried)) = stack.last_mut() {
        let Some(&upstream) = next(*node).get(*tried) else {
            stack.pop();
            continue;
        };
        *tried += 1;
        if upstream == start {
            let mut path: Vec<i64> = stack.iter().map(|(node, _)| *node).collect();
            path.push(start);
            return Some(path);
        }
        if visited.insert(upstream) {
            stack.push((upstream, 0));
        }
    }
    None
}

/// What the audit log keeps of a task: everything but the environment's values, which may be sensitive.
fn audit_details(spec: &TaskSpec) -> serde_json::Value {
    json!({
        "run_after": spec.run_after,
        "name": spec.name, "script_id": spec.script_id, "script_version": spec.script_version,
        "agent_id": spec.agent_id, "labels": spec.labels, "args": spec.params.args(),
        "env_keys": spec.params.env().as_map().keys().collect::<Vec<_>>(), "secrets": spec.params.secrets(),
        "timeout_seconds": spec.params.limits().timeout_seconds(), "memory_mb": spec.params.limits().memory_mb(),
        "network": spec.params.network(), "warm": spec.params.warm(),
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

#[cfg(test)]
mod tests {
    use super::find_cycle;

    #[test]
    fn cycles_through_the_saved_task_are_found_and_named_in_order() {
        assert_eq!(find_cycle(1, &[(1, 1)]), Some(vec![1, 1]), "a task after itself");
        assert_eq!(find_cycle(1, &[(1, 2), (2, 3), (3, 1)]), Some(vec![1, 2, 3, 1]));
        assert_eq!(find_cycle(1, &[(1, 2), (2, 3), (4, 1)]), None, "a chain is not a cycle");
        assert_eq!(find_cycle(1, &[(1, 2), (1, 3), (3, 2), (2, 4)]), None, "a diamond is not a cycle");
        assert_eq!(find_cycle(1, &[(1, 2), (2, 3), (3, 2)]), None, "a cycle elsewhere is another save's");
        assert_eq!(find_cycle(1, &[(1, 2), (1, 3), (3, 4), (4, 1)]), Some(vec![1, 3, 4, 1]));
    }

    /// A long chain on a small stack: a recursive walk would overflow it, and one rescanning every link per
    /// step would take 10^10 steps.
    #[test]
    fn a_long_chain_is_walked_without_recursion() {
        const LENGTH: i64 = 100_000;
        let chain: Vec<(i64, i64)> = (1..LENGTH).map(|task| (task, task + 1)).collect();
        let mut cycle = chain.clone();
        cycle.push((LENGTH, 1));
        let found = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || (find_cycle(1, &chain), find_cycle(1, &cycle)))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(found.0, None);
        let path = found.1.expect("the closed chain is a cycle");
        assert_eq!(path.len(), LENGTH as usize + 1);
        assert_eq!((path[0], path[1], path[path.len() - 2], path[path.len() - 1]), (1, 2, LENGTH, 1));
    }
}
