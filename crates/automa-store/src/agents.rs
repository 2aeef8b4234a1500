//! Agents: the records of execution agents, with their enrollment token's hash and admin state.

use serde_json::json;
use sqlx::types::Json;

use chrono::{DateTime, Utc};

use crate::{
    Actor, Agent, AgentEvent, AgentEventKind, AgentUpdate, AuditEvent, Listed, NewAgent, Page, Store, StoreError,
    StoreResult, WritePool, audit::append_audit, dispatch, now,
};

pub(crate) const AGENT_COLUMNS: &str = "id, name, description, labels, max_concurrency, disabled, draining, embedded, hostname, \
                             version, capabilities, last_seen_at, created_at, disconnected_at";
/// The newest events kept per agent.
const EVENTS_KEPT: i64 = 100;

impl Store {
    pub async fn create_agent(&self, actor: &Actor, new: NewAgent) -> StoreResult<Agent> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
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
            append_audit!(self, tx, actor, AuditEvent::new("agent.create", "agent", Some(agent.id), details));
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

    pub async fn list_agents(&self, page: Page) -> StoreResult<Listed<Agent>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM agents").fetch_one(pool).await?;
            let items =
                sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id LIMIT $1 OFFSET $2")))
                    .bind(page.limit)
                    .bind(page.offset)
                    .fetch_all(pool)
                    .await?;
            Ok(Listed { items, total })
        })
    }

    /// The agent an enrollment token belongs to, unless it is disabled.
    pub async fn authenticate_agent(&self, token_hash: &str) -> StoreResult<Option<Agent>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(crate::composed(format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE token_hash = $1 AND NOT disabled"
            )))
            .bind(token_hash)
            .fetch_optional(pool)
            .await?)
        })
    }

    pub async fn update_agent(&self, actor: &Actor, id: i64, update: AgentUpdate) -> StoreResult<Agent> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let current: Agent = sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let name = update.name.clone().unwrap_or(current.name);
            let agent: Agent = sqlx::query_as(crate::composed(format!(
                "UPDATE agents SET name = $1, description = $2, labels = $3, max_concurrency = $4, disabled = $5, \
                 draining = $6 WHERE id = $7 RETURNING {AGENT_COLUMNS}"
            )))
            .bind(&name)
            .bind(update.description.clone().unwrap_or(current.description))
            .bind(Json(update.labels.clone().unwrap_or(current.labels.0)))
            .bind(update.max_concurrency.unwrap_or(current.max_concurrency))
            .bind(update.disabled.unwrap_or(current.disabled))
            .bind(update.draining.unwrap_or(current.draining))
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("an agent named '{name}' already exists")))?;
            let details = json!({"name": update.name, "description": update.description, "labels": update.labels,
                "max_concurrency": update.max_concurrency, "disabled": update.disabled, "draining": update.draining});
            append_audit!(self, tx, actor, AuditEvent::new("agent.update", "agent", Some(id), details));
            tx.commit().await?;
            Ok(agent)
        })
    }

    pub async fn delete_agent(&self, actor: &Actor, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let name: Option<String> = sqlx::query_scalar("DELETE FROM agents WHERE id = $1 RETURNING name")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| StoreError::from_constraint(e, || "the agent still has runs".into()))?;
            let name = name.ok_or(StoreError::NotFound)?;
            append_audit!(self, tx, actor, AuditEvent::new("agent.delete", "agent", Some(id), json!({"name": name})));
            tx.commit().await?;
            Ok(())
        })
    }
}

impl Store {
    /// The embedded agent's record, created on first start and given the current token hash and concurrency
    /// on every start (the token lives only in the server's memory).
    pub async fn ensure_embedded_agent(
        &self,
        name: &str,
        token_hash: &str,
        max_concurrency: i64,
    ) -> StoreResult<Agent> {
        let existing: Option<Agent> = dispatch!(self, pool => {
            sqlx::query_as(crate::composed(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = $1")))
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        match existing {
            Some(agent) if agent.embedded => dispatch!(self, pool => {
                Ok(sqlx::query_as(crate::composed(format!(
                    "UPDATE agents SET token_hash = $2, max_concurrency = $3 WHERE id = $1 RETURNING {AGENT_COLUMNS}"
                )))
                .bind(agent.id)
                .bind(token_hash)
                .bind(max_concurrency)
                .fetch_one(pool)
                .await?)
            }),
            Some(_) => Err(StoreError::Conflict(format!("an agent named '{name}' exists and is not embedded"))),
            None => {
                let new = NewAgent {
                    name: name.to_owned(),
                    description: "the agent inside automa serve".into(),
                    labels: Vec::new(),
                    max_concurrency,
                    token_hash: token_hash.to_owned(),
                    embedded: true,
                };
                self.create_agent(&Actor::system(), new).await
            }
        }
    }

    /// Records a heartbeat: the agent is alive, on this host, with this version and these capabilities.
    pub async fn agent_seen(
        &self,
        id: i64,
        hostname: &str,
        version: &str,
        capabilities: &serde_json::Value,
    ) -> StoreResult<()> {
        dispatch!(self, pool => {
            sqlx::query("UPDATE agents SET last_seen_at = $2, hostname = $3, version = $4, capabilities = $5 WHERE id = $1")
                .bind(id)
                .bind(now())
                .bind(hostname)
                .bind(version)
                .bind(Json(capabilities))
                .execute(pool)
                .await?;
            Ok(())
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

    /// Called before recording a heartbeat: true when the agent is coming back (it said goodbye, was found
    /// silent, or was last seen before `offline_since`), in which case its disconnection is cleared. One
    /// statement, so of two servers receiving heartbeats at once only one sees the return.
    pub async fn agent_returns(&self, id: i64, offline_since: DateTime<Utc>) -> StoreResult<bool> {
        dispatch!(self, pool => {
            let returned = sqlx::query(
                "UPDATE agents SET disconnected_at = NULL WHERE id = $1 \
                 AND (disconnected_at IS NOT NULL OR last_seen_at IS NULL OR last_seen_at < $2)",
            )
            .bind(id)
            .bind(offline_since)
            .execute(pool)
            .await?;
            Ok(returned.rows_affected() > 0)
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
                "UPDATE agents SET disconnected_at = $1 WHERE disconnected_at IS NULL AND NOT disabled \
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
