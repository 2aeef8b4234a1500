//! Agents: the records of execution agents, with their enrollment token's hash and admin state.

use serde_json::json;
use sqlx::{FromRow, Row, types::Json};

use chrono::{DateTime, Utc};

use crate::{
    Actor, Agent, AgentEvent, AgentEventKind, AgentSeen, AuditEvent, Backend, Listed, NewAgent, Page, Store,
    StoreError, StoreResult, WritePool, dispatch, now,
};

pub(crate) const AGENT_COLUMNS: &str = "id, name, description, labels, max_concurrency, disabled, draining, embedded, hostname, \
                             version, capabilities, last_seen_at, created_at, disconnected_at, slots, retired_at";
/// The newest events kept per agent.
const EVENTS_KEPT: i64 = 100;

/// What `max_concurrency` holds when the admin sets no cap: the agent's own slots decide.
pub const NO_CAP: i64 = 1024;

/// The runs agent `$1` may hold at once: the slots it reports, within the admin's cap (`Agent::effective_concurrency`
/// in SQL, which both backends evaluate alike).
pub(crate) const EFFECTIVE_CONCURRENCY: &str =
    "CASE WHEN a.slots IS NULL OR a.slots > a.max_concurrency THEN a.max_concurrency ELSE a.slots END";

impl Store {
    pub async fn create_agent(&self, actor: &Actor, new: NewAgent) -> StoreResult<Agent> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let retired: Option<i64> =
                sqlx::query_scalar("SELECT id FROM agents WHERE name = $1 AND retired_at IS NOT NULL")
                    .bind(&new.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(retired) = retired {
                return Err(name_of_retired_agent(&new.name, retired));
            }
            let agent: Agent = sqlx::query_as(crate::composed(format!(
                "INSERT INTO agents (name, description, labels, max_concurrency, token_hash, embedded, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {AGENT_COLUMNS}"
            )))
            .bind(&new.name)
            .bind(&new.description)
            .bind(Json(&new.labels))
            .bind(new.max_concurrency)
            .bind(&new.token_hash)
            .bind(new.embedded)
            .bind(now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("an agent named '{}' already exists", new.name)))?;
            let details = json!({"name": agent.name, "labels": new.labels, "max_concurrency": new.max_concurrency});
            self.append_audit(&mut tx, actor, AuditEvent::new("agent.create", "agent", Some(agent.id), details)).await?;
            tx.commit().await?;
            Ok(agent)
        })
    }

    pub async fn get_agent(&self, id: i64) -> StoreResult<Agent> {
        dispatch!(self, pool => {
            sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
    }

    /// Agents by id; retired ones only with `include_retired`.
    pub async fn list_agents(&self, page: Page, include_retired: bool) -> StoreResult<Listed<Agent>> {
        let filter = if include_retired { "" } else { " WHERE retired_at IS NULL" };
        dispatch!(self, pool => {
            let total = sqlx::query_scalar(crate::composed(format!("SELECT COUNT(*) FROM agents{filter}")))
                .fetch_one(pool)
                .await?;
            let items = sqlx::query_as(crate::composed(format!(
                "SELECT {AGENT_COLUMNS} FROM agents{filter} ORDER BY id LIMIT $1 OFFSET $2"
            )))
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
            Ok(Listed { items, total })
        })
    }

    /// The agent an enrollment token belongs to, unless it is disabled or retired.
    pub async fn authenticate_agent(&self, token_hash: &str) -> StoreResult<Option<Agent>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(crate::composed(format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE token_hash = $1 AND NOT disabled AND retired_at IS NULL"
            )))
            .bind(token_hash)
            .fetch_optional(pool)
            .await?)
        })
    }
}

impl Store {
    /// The embedded agent's record, created on first start (without a cap: it reports its slots like any
    /// agent) and given the current token hash on every start (the token lives only in the server's memory).
    /// An admin's cap stays. A retired embedded agent comes back: the server was started with it again.
    pub async fn ensure_embedded_agent(&self, name: &str, token_hash: &str) -> StoreResult<Agent> {
        let existing: Option<Agent> = dispatch!(self, pool => {
            sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = $1")))
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        match existing {
            Some(agent) if agent.embedded => dispatch!(self, pool => {
                Ok(sqlx::query_as(crate::composed(format!(
                    "UPDATE agents SET token_hash = $2, retired_at = NULL WHERE id = $1 RETURNING {AGENT_COLUMNS}"
                )))
                .bind(agent.id)
                .bind(token_hash)
                .fetch_one(pool)
                .await?)
            }),
            Some(_) => Err(StoreError::Conflict(format!("an agent named '{name}' exists and is not embedded"))),
            None => {
                let new = NewAgent {
                    name: name.to_owned(),
                    description: "the agent inside automa serve".into(),
                    labels: Vec::new(),
                    max_concurrency: NO_CAP,
                    token_hash: token_hash.to_owned(),
                    embedded: true,
                };
                self.create_agent(&Actor::system(), new).await
            }
        }
    }

    /// Records a heartbeat: the agent is alive, on this host, with this version, these capabilities and these
    /// slots (`None` from agents that do not report them). Also says whether the agent is coming back (it said
    /// goodbye, was found silent, or was last seen before `offline_since`), and clears its disconnection. One
    /// write: one statement on PostgreSQL, one transaction on SQLite; so of two servers receiving heartbeats at
    /// once only one sees the return. On SQLite the heartbeat of an agent already online, nearly every one, is
    /// a single guarded statement, without the transaction's three more round trips to the database thread.
    pub async fn agent_seen(
        &self,
        id: i64,
        offline_since: DateTime<Utc>,
        hostname: &str,
        version: &str,
        capabilities: &serde_json::Value,
        slots: Option<i64>,
    ) -> StoreResult<AgentSeen> {
        const RETURNS: &str = "disconnected_at IS NOT NULL OR last_seen_at IS NULL OR last_seen_at < $2";
        let update = format!(
            "UPDATE agents SET last_seen_at = $3, hostname = $4, version = $5, capabilities = $6, slots = $7, \
             disconnected_at = NULL {{from}} RETURNING {AGENT_COLUMNS}{{returned}}"
        );
        let seen: Option<AgentSeen> = match &*self.backend {
            Backend::Sqlite(pool) => {
                let seen_update = |condition: &str| {
                    let sql = update.replace("{from}", condition).replace("{returned}", "");
                    sqlx::query_as::<_, Agent>(crate::composed(sql))
                        .bind(id)
                        .bind(offline_since)
                        .bind(now())
                        .bind(hostname)
                        .bind(version)
                        .bind(Json(capabilities))
                        .bind(slots)
                };
                // Changes nothing when the agent is coming back (or gone): the transaction below then tells which.
                let staying = seen_update(&format!("WHERE id = $1 AND NOT ({RETURNS})")).fetch_optional(pool).await?;
                if let Some(agent) = staying {
                    return Ok(AgentSeen { agent, returned: false });
                }
                let mut tx = pool.begin_with_lock().await?;
                let returned: Option<bool> =
                    sqlx::query_scalar(crate::composed(format!("SELECT {RETURNS} FROM agents WHERE id = $1")))
                        .bind(id)
                        .bind(offline_since)
                        .fetch_optional(&mut *tx)
                        .await?;
                // `$2` is unused here; binding it keeps the parameters those of the PostgreSQL statement.
                let agent = seen_update("WHERE id = $1").fetch_optional(&mut *tx).await?;
                tx.commit().await?;
                agent.zip(returned).map(|(agent, returned)| AgentSeen { agent, returned })
            }
            Backend::Postgres(pool) => {
                // The row lock makes a second server's heartbeat wait and then read the cleared disconnection.
                let sql = format!(
                    "WITH before AS (SELECT id AS before_id, ({RETURNS}) AS returned FROM agents WHERE id = $1 \
                     FOR UPDATE) {}",
                    update
                        .replace("{from}", "FROM before WHERE agents.id = before.before_id")
                        .replace("{returned}", ", before.returned")
                );
                let row: Option<sqlx::postgres::PgRow> = sqlx::query(crate::composed(sql))
                    .bind(id)
                    .bind(offline_since)
                    .bind(now())
                    .bind(hostname)
                    .bind(version)
                    .bind(Json(capabilities))
                    .bind(slots)
                    .fetch_optional(pool)
                    .await?;
                row.map(|row| {
                    Ok::<_, sqlx::Error>(AgentSeen {
                        agent: Agent::from_row(&row)?,
                        returned: row.try_get("returned")?,
                    })
                })
                .transpose()?
            }
        };
        seen.ok_or(StoreError::NotFound)
    }

    /// Whether agent `id` holds as many running runs as it may (or more, after its cap was lowered).
    pub async fn agent_at_capacity(&self, id: i64) -> StoreResult<bool> {
        dispatch!(self, pool => {
            Ok(sqlx::query_scalar(crate::composed(format!(
                "SELECT {EFFECTIVE_CONCURRENCY} <= (SELECT COUNT(*) FROM runs x WHERE x.agent_id = a.id \
                 AND x.status = 'running') FROM agents a WHERE a.id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .unwrap_or(false))
        })
    }

    /// Retires an agent: refused while it runs runs; otherwise, in one transaction, its token stops working,
    /// the tasks and queued runs pinned to it fall back to label matching, and the record stays, so the runs
    /// it executed keep naming it. Retiring a retired agent changes nothing.
    pub async fn retire_agent(&self, actor: &Actor, id: i64) -> StoreResult<Agent> {
        let postgres = self.is_postgres();
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let agent: Agent = sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            if agent.retired_at.is_some() {
                return Ok(agent);
            }
            // The agent's row is written first: on PostgreSQL a claim locks that row (FOR SHARE), so a claim
            // racing this transaction has either committed before the count below (which then sees its run) or
            // waits and finds the agent retired. Its token hash stays, refused, so a refusal names the agent.
            let retired: Agent = sqlx::query_as(crate::composed(format!(
                "UPDATE agents SET retired_at = $2 WHERE id = $1 RETURNING {AGENT_COLUMNS}"
            )))
            .bind(id)
            .bind(now())
            .fetch_one(&mut *tx)
            .await?;
            let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE agent_id = $1 AND status = 'running'")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if running > 0 {
                return Err(StoreError::Conflict(format!(
                    "agent '{}' is running {running} run{}: drain or disable it first",
                    agent.name,
                    if running == 1 { "" } else { "s" }
                )));
            }
            let tasks = sqlx::query("UPDATE tasks SET agent_id = NULL WHERE agent_id = $1").bind(id).execute(&mut *tx).await?;
            let queued = sqlx::query("UPDATE runs SET target_agent_id = NULL WHERE target_agent_id = $1 AND status = 'queued'")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let details = json!({"name": agent.name, "tasks_unpinned": tasks.rows_affected(),
                "queued_runs_unpinned": queued.rows_affected()});
            self.append_audit(&mut tx, actor, AuditEvent::new("agent.retire", "agent", Some(id), details)).await?;
            if postgres && queued.rows_affected() > 0 {
                sqlx::query("SELECT pg_notify($1, '')").bind(crate::WAKE_CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(retired)
        })
    }
}

/// An agent's presence and history: goodbyes, silences, returns, and the events operators see.
impl Store {
    /// The agent a token belongs to, disabled or not: to say whom the server refused, never to let it in.
    pub async fn agent_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Agent>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE token_hash = $1")))
                .bind(token_hash)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// The agent stopped cleanly: it is offline from now until its next heartbeat.
    pub async fn agent_goodbye(&self, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let updated = sqlx::query("UPDATE agents SET disconnected_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now())
                .execute(pool)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    /// Marks agents silent since before `silent_since` disconnected and returns them (id, name, last seen). Each
    /// silence is returned once, by whichever server looks first.
    pub async fn disconnect_silent_agents(
        &self,
        silent_since: DateTime<Utc>,
    ) -> StoreResult<Vec<(i64, String, DateTime<Utc>)>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(
                "UPDATE agents SET disconnected_at = $1 WHERE disconnected_at IS NULL AND NOT disabled AND retired_at IS NULL \
                 AND last_seen_at IS NOT NULL AND last_seen_at < $2 RETURNING id, name, last_seen_at",
            )
            .bind(now())
            .bind(silent_since)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Records an event in the agent's history, keeping its newest [`EVENTS_KEPT`].
    pub async fn record_agent_event(&self, agent_id: i64, kind: AgentEventKind, detail: &str) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO agent_events (agent_id, at, kind, detail) VALUES ($1, $2, $3, $4)")
                .bind(agent_id)
                .bind(now())
                .bind(kind.as_str())
                .bind(detail)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM agent_events WHERE agent_id = $1 AND id <= \
                 (SELECT id FROM agent_events WHERE agent_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            )
            .bind(agent_id)
            .bind(EVENTS_KEPT)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// An agent's events, newest first.
    pub async fn list_agent_events(&self, agent_id: i64, page: Page) -> StoreResult<Listed<AgentEvent>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM agent_events WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_one(pool)
                .await?;
            let items = sqlx::query_as(
                "SELECT id, agent_id, at, kind, detail FROM agent_events WHERE agent_id = $1 \
                 ORDER BY id DESC LIMIT $2 OFFSET $3",
            )
            .bind(agent_id)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
            Ok(Listed { items, total })
        })
    }
}

/// Names stay unique across retired agents (SQLite cannot drop the inline constraint, and history reads better
/// when a name means one machine); the message says how to free the name.
pub(crate) fn name_of_retired_agent(name: &str, retired_id: i64) -> StoreError {
    StoreError::Conflict(format!(
        "the name '{name}' belongs to retired agent {retired_id}; rename that agent (PUT /agents/{retired_id} with a \
         new name) to free it"
    ))
}
