//! Secrets, stored encrypted: the store sees only ciphertext and nonces; the server holds the key. Each secret
//! carries its policy (which tasks may use it, which agents may receive it); the claim statement in `runs.rs`
//! reads the agent part of it.

use serde_json::json;
use sqlx::{Transaction, types::Json};

use automa_core::InvalidField;

use crate::{
    Actor, AuditEvent, Listed, Page, SealedSecret, SecretInfo, SecretPolicy, Store, StoreError, StoreResult, WritePool,
    composed, dispatch, now, scripts::actor_user_id,
};

const SECRET_INFO: &str = "id, name, created_by, all_tasks, task_ids, agent_ids, agent_labels, created_at, updated_at";

/// Adds task `$1` to the policy of secret `$2`, per backend, returning the secret's id (none: no such secret).
const SQLITE_GRANT_TASK: &str =
    "UPDATE secrets SET task_ids = json_insert(task_ids, '$[#]', $1) WHERE name = $2 RETURNING id";
const POSTGRES_GRANT_TASK: &str =
    "UPDATE secrets SET task_ids = task_ids || to_jsonb($1::bigint) WHERE name = $2 RETURNING id";

/// Refuses a policy naming tasks or agents that do not exist, inside the write transaction; the error names
/// the field (`policy.task_ids[2]`).
async fn check_policy_references<DB>(tx: &mut Transaction<'_, DB>, policy: &SecretPolicy) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    for (table, field, ids) in [("tasks", "task_ids", &policy.task_ids), ("agents", "agent_ids", &policy.agent_ids)] {
        if ids.is_empty() {
            continue;
        }
        let mut select = sqlx::QueryBuilder::new(format!("SELECT id FROM {table} WHERE id IN ("));
        let mut list = select.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        select.push(")");
        let existing: Vec<i64> = select.build_query_scalar().fetch_all(&mut **tx).await?;
        if let Some((index, id)) = ids.iter().enumerate().find(|(_, id)| !existing.contains(id)) {
            let what = if table == "tasks" { "task" } else { "agent" };
            return Err(InvalidField::new(
                format!("policy.{field}[{index}]"),
                format!("there is no {what} with id {id}"),
            )
            .into());
        }
    }
    Ok(())
}

/// What a secret change did, for the audit log: never the value, only whether it changed.
fn audit_details(info: &SecretInfo, value_changed: bool, policy_changed: bool) -> serde_json::Value {
    let mut details = json!({"name": info.name, "value_changed": value_changed});
    if policy_changed {
        details["policy"] = json!(info.policy());
    }
    details
}

impl Store {
    /// Creates a secret owned by the actor, with its policy.
    pub async fn create_secret(
        &self,
        actor: &Actor,
        sealed: SealedSecret,
        policy: &SecretPolicy,
    ) -> StoreResult<SecretInfo> {
        let created_by = actor_user_id(actor);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_policy_references(&mut tx, policy).await?;
            let at = now();
            let info: SecretInfo = sqlx::query_as(crate::composed(format!(
                "INSERT INTO secrets (name, ciphertext, nonce, created_by, all_tasks, task_ids, agent_ids, agent_labels, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {SECRET_INFO}"
            )))
            .bind(&sealed.name)
            .bind(&sealed.ciphertext)
            .bind(&sealed.nonce)
            .bind(created_by)
            .bind(policy.all_tasks)
            .bind(Json(&policy.task_ids))
            .bind(Json(&policy.agent_ids))
            .bind(Json(&policy.agent_labels))
            .bind(at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a secret named '{}' already exists", sealed.name)))?;
            self.append_audit(&mut tx, actor, AuditEvent::new("secret.create", "secret", Some(info.id), audit_details(&info, true, true))).await?;
            tx.commit().await?;
            Ok(info)
        })
    }

    /// Replaces a secret's value, its policy, or both (a 404 when missing). A policy change is audited with
    /// the new policy, and on PostgreSQL wakes the claims waiting at every server: the claim gives a run only
    /// to an agent every one of its secrets' policies lets receive it, so a wider policy may free queued runs.
    pub async fn update_secret(
        &self,
        actor: &Actor,
        name: &str,
        sealed: Option<SealedSecret>,
        policy: Option<&SecretPolicy>,
    ) -> StoreResult<SecretInfo> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let at = now();
            if let Some(sealed) = &sealed {
                sqlx::query("UPDATE secrets SET ciphertext = $2, nonce = $3, updated_at = $4 WHERE name = $1")
                    .bind(name)
                    .bind(&sealed.ciphertext)
                    .bind(&sealed.nonce)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(policy) = policy {
                check_policy_references(&mut tx, policy).await?;
                sqlx::query(
                    "UPDATE secrets SET all_tasks = $2, task_ids = $3, agent_ids = $4, agent_labels = $5, updated_at = $6 \
                     WHERE name = $1",
                )
                .bind(name)
                .bind(policy.all_tasks)
                .bind(Json(&policy.task_ids))
                .bind(Json(&policy.agent_ids))
                .bind(Json(&policy.agent_labels))
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            let info: SecretInfo = sqlx::query_as(crate::composed(format!("SELECT {SECRET_INFO} FROM secrets WHERE name = $1")))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let details = audit_details(&info, sealed.is_some(), policy.is_some());
            self.append_audit(&mut tx, actor, AuditEvent::new("secret.update", "secret", Some(info.id), details)).await?;
            if postgres && policy.is_some() {
                sqlx::query("SELECT pg_notify($1, '')").bind(crate::WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(info)
        })
    }

    pub async fn get_secret(&self, name: &str) -> StoreResult<SecretInfo> {
        dispatch!(self, pool => {
            sqlx::query_as(crate::composed(format!("SELECT {SECRET_INFO} FROM secrets WHERE name = $1")))
                .bind(name)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
    }

    pub async fn list_secrets(&self, page: Page) -> StoreResult<Listed<SecretInfo>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM secrets").fetch_one(pool).await?;
            let items = sqlx::query_as(crate::composed(format!("SELECT {SECRET_INFO} FROM secrets ORDER BY name LIMIT $1 OFFSET $2")))
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(pool)
                .await?;
            Ok(Listed { items, total })
        })
    }

    /// The named secrets that exist, with their owners and policies.
    pub async fn secret_infos(&self, names: &[String]) -> StoreResult<Vec<SecretInfo>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, pool => {
            let mut select = sqlx::QueryBuilder::new(format!("SELECT {SECRET_INFO} FROM secrets WHERE name IN ("));
            let mut list = select.separated(", ");
            for name in names {
                list.push_bind(name.clone());
            }
            select.push(")");
            Ok(select.build_query_as().fetch_all(pool).await?)
        })
    }

    /// Secrets whose policy names any of `task_ids` (not those open to all tasks): their owners vetted what those
    /// tasks run, whether or not the tasks name the secret at the moment. Secrets are few and human-made, so
    /// the policies are read whole and matched here rather than in per-backend JSON SQL.
    pub async fn secrets_listing_tasks(&self, task_ids: &[i64]) -> StoreResult<Vec<SecretInfo>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let all: Vec<SecretInfo> = dispatch!(self, pool => {
            sqlx::query_as(composed(format!("SELECT {SECRET_INFO} FROM secrets"))).fetch_all(pool).await?
        });
        Ok(all
            .into_iter()
            .filter(|secret| {
                let policy = secret.policy();
                !policy.all_tasks && policy.task_ids.iter().any(|id| task_ids.contains(id))
            })
            .collect())
    }

    pub async fn delete_secret(&self, actor: &Actor, name: &str) -> StoreResult<()> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let id: i64 = sqlx::query_scalar("DELETE FROM secrets WHERE name = $1 RETURNING id")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            self.append_audit(&mut tx, actor, AuditEvent::new("secret.delete", "secret", Some(id), json!({"name": name}))).await?;
            if postgres {
                sqlx::query("SELECT pg_notify($1, '')").bind(crate::WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The sealed values of the named secrets that exist.
    pub async fn sealed_secrets(&self, names: &[String]) -> StoreResult<Vec<SealedSecret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, pool => {
            let mut select = sqlx::QueryBuilder::new("SELECT name, ciphertext, nonce FROM secrets WHERE name IN (");
            let mut list = select.separated(", ");
            for name in names {
                list.push_bind(name.clone());
            }
            select.push(")");
            Ok(select.build_query_as().fetch_all(pool).await?)
        })
    }

    /// The statement that adds a task to a secret's policy on this backend (`$1` task, `$2` secret name).
    pub(crate) fn grant_task_statement(&self) -> &'static str {
        if self.is_postgres() { POSTGRES_GRANT_TASK } else { SQLITE_GRANT_TASK }
    }
}
