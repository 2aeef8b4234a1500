//! Agents: create (the response carries the enrollment token, once), list, inspect, drain, disable, retire,
//! and each agent's recent events.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_core::{Labels, ResourceName};
use automa_store::{Agent, AgentEvent, AgentUpdate, NewAgent};

use crate::{
    api::{Page, Paging},
    auth::{self, Principal},
    error::{ApiError, ApiResult, missing},
    events::Event,
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

/// An agent is offline when no heartbeat came for this long.
pub const OFFLINE_AFTER_SECONDS: i64 = 90;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentResponse {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub labels: Vec<String>,
    /// The admin's cap on runs at once (1024: no cap beyond the agent's own concurrency).
    pub max_concurrency: i64,
    /// The runs at once the agent reports it executes (`--concurrency`); null until it reported them.
    pub concurrency: Option<i64>,
    /// The runs it is given at once: `concurrency` within `max_concurrency` (the cap alone while
    /// `concurrency` is null).
    pub effective_concurrency: i64,
    /// `online`, `offline`, `draining`, `disabled` or `retired`.
    pub status: String,
    /// Whether this is the agent inside `automa serve`.
    pub embedded: bool,
    pub hostname: Option<String>,
    pub version: Option<String>,
    /// The sandbox layers its host offers, as it last reported them.
    #[schema(value_type = Object)]
    pub capabilities: serde_json::Value,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// When the agent was retired (`DELETE /agents/{id}`); its runs keep naming it.
    pub retired_at: Option<DateTime<Utc>>,
}

impl From<Agent> for AgentResponse {
    fn from(agent: Agent) -> Self {
        AgentResponse {
            status: agent.status(Utc::now(), chrono::Duration::seconds(OFFLINE_AFTER_SECONDS)).to_owned(),
            effective_concurrency: agent.effective_concurrency(),
            concurrency: agent.slots,
            retired_at: agent.retired_at,
            id: agent.id,
            name: agent.name,
            description: agent.description,
            labels: agent.labels.0,
            max_concurrency: agent.max_concurrency,
            embedded: agent.embedded,
            hostname: agent.hostname,
            version: agent.version,
            capabilities: agent.capabilities.0,
            last_seen_at: agent.last_seen_at,
            created_at: agent.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedAgent {
    #[serde(flatten)]
    pub agent: AgentResponse,
    /// The enrollment token for `automa agent --token`. Shown only in this response.
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// The admin's cap on runs at once, 1-1024. Default 1024: no cap beyond the concurrency the agent reports
    /// (`automa agent --concurrency`, by default its number of cores).
    pub max_concurrency: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Vec<String>>,
    /// The admin's cap on runs at once, 1-1024 (1024: no cap beyond the agent's own concurrency).
    pub max_concurrency: Option<i64>,
    /// A disabled agent is refused by the server; disabling one ends its running runs `cancelled`.
    pub disabled: Option<bool>,
    /// A draining agent finishes its runs and takes no new ones.
    pub draining: Option<bool>,
}

fn parse_concurrency(value: i64) -> ApiResult<i64> {
    if (1..=1024).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid("max_concurrency", "must be between 1 and 1024"))
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    /// Also list retired agents (default false: only agents that are not retired).
    pub retired: Option<bool>,
    /// Items per page (default 50); a value outside 1-500 is clamped to that range.
    pub limit: Option<i64>,
    /// Items to skip (default 0); a negative value counts as 0.
    pub offset: Option<i64>,
}

/// List agents; retired ones only with `retired=true`.
#[utoipa::path(get, path = "/agents", operation_id = "listAgents", tag = "agents", params(AgentQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<AgentResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AgentQuery>,
) -> ApiResult<Json<Page<AgentResponse>>> {
    let page = automa_store::Page::new(query.limit, query.offset);
    let listed = state.store.list_agents(page, query.retired.unwrap_or(false)).await?;
    Ok(Json(Page::from_listed(listed, page, AgentResponse::from)))
}

/// Register an agent; the response carries its enrollment token, once.
#[utoipa::path(post, path = "/agents", operation_id = "createAgent", tag = "agents", request_body = CreateAgent, security(("bearer" = ["admin"])),
    responses((status = 201, body = CreatedAgent),
        (status = 409, description = "Name taken, by an agent or by a retired agent (renaming that one frees it)", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateAgent>,
) -> ApiResult<(StatusCode, Json<CreatedAgent>)> {
    let name = ResourceName::parse("name", &input.name)?;
    let labels = Labels::parse("labels", input.labels)?.into_inner();
    let max_concurrency = parse_concurrency(input.max_concurrency.unwrap_or(automa_store::NO_CAP))?;
    let token = auth::random_token(auth::AGENT_TOKEN_PREFIX);
    let new = NewAgent {
        name: name.into_inner(),
        description: input.description,
        labels,
        max_concurrency,
        token_hash: auth::token_hash(&token),
        embedded: false,
    };
    let agent = state.store.create_agent(&principal.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(CreatedAgent { agent: agent.into(), token })))
}

/// An agent, retired or not.
#[utoipa::path(get, path = "/agents/{id}", operation_id = "getAgent", params(("id" = i64, Path, description = "The agent's id")), tag = "agents", security(("bearer" = ["viewer"])),
    responses((status = 200, body = AgentResponse)))]
pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<AgentResponse>> {
    Ok(Json(state.store.get_agent(id).await.map_err(missing("agent"))?.into()))
}

/// Rename, relabel, cap, drain or disable an agent. Disabling ends its running runs `cancelled` (not retried),
/// saying who disabled it. A retired agent can only be renamed, which frees its name.
#[utoipa::path(put, path = "/agents/{id}", operation_id = "updateAgent", params(("id" = i64, Path, description = "The agent's id")), tag = "agents", request_body = UpdateAgent, security(("bearer" = ["admin"])),
    responses((status = 200, body = AgentResponse),
        (status = 409, description = "Name taken, or a change other than the name to a retired agent", body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<UpdateAgent>,
) -> ApiResult<Json<AgentResponse>> {
    let update = AgentUpdate {
        name: input.name.map(|name| ResourceName::parse("name", &name).map(ResourceName::into_inner)).transpose()?,
        description: input.description,
        labels: input.labels.map(|labels| Labels::parse("labels", labels).map(Labels::into_inner)).transpose()?,
        max_concurrency: input.max_concurrency.map(parse_concurrency).transpose()?,
        disabled: input.disabled,
        draining: input.draining,
    };
    let updated = state.store.update_agent(&principal.actor(), id, update).await.map_err(missing("agent"))?;
    for cancelled in &updated.cancelled {
        state.execution.publish_finish(cancelled);
    }
    if updated.may_take_more {
        state.execution.wake_claimers();
    }
    state.events.publish(Event::Agent { id });
    Ok(Json(updated.agent.into()))
}

/// Retire an agent: its token stops working, tasks and queued runs pinned to it fall back to label matching,
/// and it leaves the list (`GET /agents?retired=true` shows it), while the runs it executed keep naming it.
/// Refused while it is running runs: drain or disable it first.
#[utoipa::path(delete, path = "/agents/{id}", operation_id = "deleteAgent", params(("id" = i64, Path, description = "The agent's id")), tag = "agents", security(("bearer" = ["admin"])),
    responses((status = 204),
        (status = 409, description = "The agent is running runs: drain or disable it first", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store.retire_agent(&principal.actor(), id).await.map_err(missing("agent"))?;
    // Queued runs that were pinned to it may now go to any agent with their labels.
    state.execution.wake_claimers();
    state.events.publish(Event::Agent { id });
    Ok(StatusCode::NO_CONTENT)
}

/// Something that happened to an agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentEventResponse {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `online` (it started), `reconnected` (heartbeats resumed after it was offline), `offline` (no heartbeat
    /// past the offline threshold), `goodbye` (it stopped cleanly), `refused` (its token was refused: disabled
    /// or retired), `run_lost` (a run it held was marked lost).
    pub kind: String,
    pub detail: String,
}

impl From<AgentEvent> for AgentEventResponse {
    fn from(event: AgentEvent) -> Self {
        AgentEventResponse { id: event.id, at: event.at, kind: event.kind, detail: event.detail }
    }
}

/// An agent's recent events, newest first (the newest 100 are kept).
#[utoipa::path(get, path = "/agents/{id}/events", operation_id = "listAgentEvents", params(("id" = i64, Path, description = "The agent's id"), Paging), tag = "agents", security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<AgentEventResponse>), (status = 404, description = "No such agent", body = crate::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page<AgentEventResponse>>> {
    state.store.get_agent(id).await.map_err(missing("agent"))?;
    let page = paging.page();
    Ok(Json(Page::from_listed(state.store.list_agent_events(id, page).await?, page, AgentEventResponse::from)))
}
