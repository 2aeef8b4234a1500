//! The agent protocol over HTTP (DESIGN §6), for remote agents with an agent token. Each route is a thin
//! wrapper over the same `Execution` operations the embedded agent calls, so both follow the same rules.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use automa_agent::{ClaimRequest, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome};

use crate::{
    auth::AgentPrincipal,
    error::{ApiError, ApiResult},
    execution::MAX_CLAIM_WAIT,
    extract::{ApiJson, ApiPath},
    state::AppState,
};

/// Register (with `initial`) or heartbeat: report capabilities, concurrency and running runs; renews their
/// leases, returns cancel requests and grants the agent its effective concurrency.
#[utoipa::path(post, path = "/agent/heartbeat", operation_id = "agentHeartbeat", tag = "agent protocol", request_body = Heartbeat, security(("agent" = [])),
    responses((status = 200, body = HeartbeatReply),
        (status = 422, description = "A field out of bounds (`concurrency` outside 1-1024, an oversized report)", body = crate::error::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    principal: AgentPrincipal,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    check_heartbeat(&heartbeat)?;
    Ok(Json(state.execution.heartbeat(principal.agent.id, heartbeat).await?))
}

/// The largest capabilities report stored, serialised; a real one is a few hundred bytes.
const MAX_CAPABILITIES_BYTES: usize = 16 * 1024;
/// Numbers beyond ±2^53 do not survive the trip through PostgreSQL's JSONB and back exactly, and some not at
/// all (a value read back as out of range would fail every later read of the agent).
const MAX_SAFE_NUMBER: f64 = 9_007_199_254_740_991.0;

/// What an agent says about itself is stored and shown to every user: bounded, and made of values every backend
/// stores and returns unchanged.
fn check_heartbeat(heartbeat: &Heartbeat) -> ApiResult<()> {
    if heartbeat.hostname.chars().count() > 253 {
        return Err(ApiError::invalid("hostname", "must be at most 253 characters"));
    }
    if heartbeat.version.chars().count() > 64 {
        return Err(ApiError::invalid("version", "must be at most 64 characters"));
    }
    if !heartbeat.capabilities.is_object() {
        return Err(ApiError::invalid("capabilities", "must be an object"));
    }
    if heartbeat.capabilities.to_string().len() > MAX_CAPABILITIES_BYTES {
        return Err(ApiError::invalid("capabilities", format!("must be at most {MAX_CAPABILITIES_BYTES} bytes")));
    }
    if !numbers_are_safe(&heartbeat.capabilities) {
        return Err(ApiError::invalid("capabilities", "numbers must be within ±2^53"));
    }
    if heartbeat.concurrency.is_some_and(|slots| !(1..=1024).contains(&slots)) {
        return Err(ApiError::invalid("concurrency", "must be between 1 and 1024"));
    }
    Ok(())
}

fn numbers_are_safe(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(number) => number.as_f64().is_some_and(|n| n.abs() <= MAX_SAFE_NUMBER),
        serde_json::Value::Array(items) => items.iter().all(numbers_are_safe),
        serde_json::Value::Object(fields) => fields.values().all(numbers_are_safe),
        _ => true,
    }
}

/// Claim a run (long-poll): answers at once when a run is waiting, else within `wait_seconds` with 204. An
/// agent that already holds as many runs as the server grants it (`HeartbeatReply.max_concurrency`) is answered
/// at once with 409: it should claim again when one of its runs ends or a heartbeat grants it more.
#[utoipa::path(post, path = "/agent/claim", operation_id = "agentClaim", tag = "agent protocol", request_body = ClaimRequest, security(("agent" = [])),
    responses((status = 200, body = automa_agent::Assignment), (status = 204, description = "No run came within the wait"),
        (status = 409, description = "At capacity: the agent holds as many runs as it may", body = crate::error::ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    principal: AgentPrincipal,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> ApiResult<Response> {
    let wait = Duration::from_secs(request.wait_seconds).min(MAX_CLAIM_WAIT);
    let claimed = state.execution.claim(principal.agent.id, wait).await?;
    Ok(match claimed {
        Some(assignment) => Json(assignment).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Append numbered output chunks; chunks already stored are skipped. Only to a run that is running and held by
/// this agent: output for a run that ended or went to another agent is refused, and the agent should stop it.
#[utoipa::path(post, path = "/agent/runs/{id}/logs", operation_id = "agentAppendLogs", params(("id" = i64, Path, description = "The run's id")), tag = "agent protocol", request_body = LogBatch, security(("agent" = [])),
    responses((status = 200, body = LogsReply),
        (status = 409, description = "The run is not running or not held by this agent: stop it", body = crate::error::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    principal: AgentPrincipal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(batch): ApiJson<LogBatch>,
) -> ApiResult<Json<LogsReply>> {
    Ok(Json(state.execution.append_logs(principal.agent.id, id, batch).await?))
}

/// Report how a run ended; a repeated or late report changes nothing. `abandoned: true` (what agents before the
/// hand-back route sent at shutdown) is a hand-back.
#[utoipa::path(post, path = "/agent/runs/{id}/finish", operation_id = "agentFinishRun", params(("id" = i64, Path, description = "The run's id")), tag = "agent protocol", request_body = Outcome, security(("agent" = [])),
    responses((status = 200, body = FinishReply),
        (status = 409, description = "`abandoned: true` for a run this agent does not hold", body = crate::error::ErrorBody),
        (status = 422, description = "`elapsed_ms` or `ended_ms_ago` outside 0 to ten years", body = crate::error::ErrorBody)))]
pub async fn finish(
    State(state): State<AppState>,
    principal: AgentPrincipal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(outcome): ApiJson<Outcome>,
) -> ApiResult<Json<FinishReply>> {
    Ok(Json(state.execution.finish(principal.agent.id, id, outcome).await?))
}

/// Give back a run this agent stopped because it is shutting down: the run is queued again for any agent,
/// keeping its id, its output so far (followed by a `system` line saying why) and its attempt, so its retries
/// are not spent. A run whose cancellation was requested ends `cancelled` instead. Repeating it changes nothing
/// (409: the run is no longer this agent's).
#[utoipa::path(post, path = "/agent/runs/{id}/hand-back", operation_id = "agentHandBackRun", params(("id" = i64, Path, description = "The run's id")), tag = "agent protocol", security(("agent" = [])),
    responses((status = 200, body = FinishReply),
        (status = 409, description = "The run is not held by this agent (another agent's, or already handed back)", body = crate::error::ErrorBody)))]
pub async fn hand_back(
    State(state): State<AppState>,
    principal: AgentPrincipal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<FinishReply>> {
    Ok(Json(state.execution.hand_back(principal.agent.id, id).await?))
}

/// Say goodbye: the agent stopped cleanly (after finishing or handing back its runs) and is shown offline at
/// once, until its next heartbeat.
#[utoipa::path(post, path = "/agent/goodbye", operation_id = "agentGoodbye", tag = "agent protocol", security(("agent" = [])),
    responses((status = 204, description = "The agent is marked offline")))]
pub async fn goodbye(State(state): State<AppState>, principal: AgentPrincipal) -> ApiResult<StatusCode> {
    state.execution.goodbye(principal.agent.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
