//! Agents: the records of execution agents, with their enrollment token's hash and admin state.

use serde_json::json;
use sqlx::types::Json;

use crate::{
    Actor, Agent, AgentUpdate, AuditEvent, Listed, NewAgent, Page, Store, StoreError, StoreResult, WritePool,
    audit::append_audit, dispatch, now,
};

pub(crate) const AGENT_COLUMNS: &str = "id, name, description, labels, max_concurrency, disabled, draining, embedded, hostname, \
                             version, capabilities, last_seen_at, created_at";

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
