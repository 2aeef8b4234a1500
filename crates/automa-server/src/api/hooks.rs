//! Webhook triggers. Operators create hooks under a task (`/tasks/{id}/hooks`), each with its own token, shown
//! once, and its own rate limit; anyone holding the token starts the task with `POST /hooks/{token}`, whose
//! optional JSON body reaches the script as a read-only file named by `AUTOMA_TRIGGER_PAYLOAD`. The token in
//! the path is the credential: an unknown, malformed and revoked token all get the same 404, found by a hash
//! look-up (no comparison of secrets whose timing could leak), and the body is read only once the token is
//! known to be live.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::ResourceName;
use automa_store::{Hook, HookTrigger, NewHook};

use crate::{
    api::grants,
    auth::{self, ClientIp, Principal},
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath},
    state::AppState,
};

/// Hook tokens start with this, so a leaked one is recognisable.
pub const HOOK_TOKEN_PREFIX: &str = "atmh_";

#[derive(Debug, Serialize, ToSchema)]
pub struct HookInfo {
    pub id: i64,
    pub task_id: i64,
    pub name: String,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    /// Runs the hook may start per rolling minute; beyond it, 429.
    pub rate_per_minute: i64,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub last_triggered_at: Option<DateTime<Utc>>,
    /// Set once revoked: the token is then refused like one that never existed.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<Hook> for HookInfo {
    fn from(hook: Hook) -> Self {
        HookInfo {
            id: hook.id,
            task_id: hook.task_id,
            name: hook.name,
            prefix: hook.prefix,
            rate_per_minute: hook.rate_per_minute,
            created_by: hook.created_by,
            created_at: hook.created_at,
            last_triggered_at: hook.last_triggered_at,
            revoked_at: hook.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedHook {
    #[serde(flatten)]
    pub info: HookInfo,
    /// The token. It is shown only in this response.
    pub token: String,
    /// Where to send `POST` requests: `/hooks/{token}`, relative to the server's address.
    pub path: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHook {
    /// Unique within the task, e.g. the system that will call it.
    pub name: String,
    /// Runs per rolling minute, 1 to `AUTOMA_HOOK_MAX_RATE_PER_MINUTE`; default `AUTOMA_HOOK_RATE_PER_MINUTE`.
    pub rate_per_minute: Option<i64>,
}

/// What a hook call queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookRun {
    pub run_id: i64,
    pub queued_at: DateTime<Utc>,
}

/// A task's hooks, revoked ones included.
#[utoipa::path(get, path = "/tasks/{id}/hooks", operation_id = "listHooks", params(("id" = i64, Path, description = "The task's id")), tag = "hooks", security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<HookInfo>)))]
pub async fn list(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<Vec<HookInfo>>> {
    state.store.get_task(id).await.map_err(missing("task"))?;
    Ok(Json(state.store.list_hooks(id).await?.into_iter().map(HookInfo::from).collect()))
}

/// Create a hook that starts the task; the response is the only time its token is shown.
#[utoipa::path(post, path = "/tasks/{id}/hooks", operation_id = "createHook", params(("id" = i64, Path, description = "The task's id")), tag = "hooks", request_body = CreateHook, security(("bearer" = ["operator"])),
    responses((status = 201, body = CreatedHook), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<CreateHook>,
) -> ApiResult<(StatusCode, Json<CreatedHook>)> {
    let name = ResourceName::parse("name", &input.name)?.into_inner();
    let max = i64::from(state.config.hook_max_rate_per_minute.max(1));
    let rate_per_minute = input.rate_per_minute.unwrap_or(i64::from(state.config.hook_rate_per_minute).min(max));
    if !(1..=max).contains(&rate_per_minute) {
        return Err(ApiError::invalid("rate_per_minute", format!("must be between 1 and {max}")));
    }
    let token = auth::random_token(HOOK_TOKEN_PREFIX);
    let new = NewHook {
        task_id: id,
        name,
        token_hash: auth::token_hash(&token),
        prefix: token[..HOOK_TOKEN_PREFIX.len() + 6].to_owned(),
        rate_per_minute,
    };
    let hook = state.store.create_hook(&principal.actor(), new).await.map_err(missing("task"))?;
    let path = format!("/hooks/{token}");
    Ok((StatusCode::CREATED, Json(CreatedHook { info: hook.into(), token, path })))
}

/// Revoke a hook: its token is refused from now on, exactly like one that never existed. Revoking twice is
/// harmless.
#[utoipa::path(delete, path = "/tasks/{id}/hooks/{hook_id}", operation_id = "revokeHook", params(("id" = i64, Path, description = "The task's id"), ("hook_id" = i64, Path, description = "The hook's id")), tag = "hooks", security(("bearer" = ["operator"])),
    responses((status = 200, body = HookInfo)))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, hook_id)): ApiPath<(i64, i64)>,
) -> ApiResult<Json<HookInfo>> {
    Ok(Json(state.store.revoke_hook(&principal.actor(), id, hook_id).await.map_err(missing("hook"))?.into()))
}

/// Start the hook's task. The token is the credential. An optional JSON body (`Content-Type:
/// application/json`, at most `AUTOMA_HOOK_MAX_PAYLOAD_BYTES`, 1 MiB by default) is given to the run as a
/// read-only file whose path is in `AUTOMA_TRIGGER_PAYLOAD`. 404 alike for a token that is unknown, revoked, or
/// whose creator is no longer an active operator or admin; 429 past the hook's rate.
#[utoipa::path(post, path = "/hooks/{token}", operation_id = "triggerHook", params(("token" = String, Path, description = "The hook's token")), tag = "hooks",
    request_body(content = Object, description = "Any JSON value, handed to the script as it was sent", content_type = "application/json"),
    security(()),
    responses((status = 202, body = HookRun),
        (status = 409, description = "The task is disabled, or its secrets' policies refuse it now", body = crate::error::ErrorBody),
        (status = 415, description = "A body that is not `application/json`", body = crate::error::ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<HookRun>)> {
    let unknown = || ApiError::NotFound("no such hook".into());
    if !is_hook_token(&token) {
        return Err(unknown());
    }
    let token_hash = auth::token_hash(&token);
    let hook = state.store.live_hook(&token_hash).await?.ok_or_else(unknown)?;
    let payload = read_payload(&headers, body, state.config.hook_max_payload_bytes).await?;
    let task = state.store.get_task(hook.task_id).await.map_err(|error| match error {
        // Deleted since the look-up, with its hooks.
        automa_store::StoreError::NotFound => unknown(),
        other => other.into(),
    })?;
    if !task.enabled {
        return Err(ApiError::Conflict("the hook's task is disabled".into()));
    }
    // The caller is outside: it learns that the task cannot start, not which secret or policy is why.
    if grants::check_task_may_run(&state, &task).await.is_err() {
        return Err(ApiError::Conflict(
            "the hook's task cannot start now: its secrets' policies refuse it; its operators can see why".into(),
        ));
    }
    match state.store.trigger_hook(&token_hash, payload.as_deref(), ip).await? {
        HookTrigger::Queued(run) => {
            state.execution.publish_runs(std::slice::from_ref(&run));
            Ok((StatusCode::ACCEPTED, Json(HookRun { run_id: run.id, queued_at: run.queued_at })))
        }
        HookTrigger::Unknown => Err(unknown()),
        HookTrigger::Limited { retry_after_seconds } => Err(ApiError::TooManyRequests {
            detail: format!("this hook started {} runs in the last minute, its limit", hook.rate_per_minute),
            retry_after_seconds: u64::try_from(retry_after_seconds).unwrap_or(60),
        }),
    }
}

/// Whether `token` has the shape of a hook token; anything else is not looked up.
fn is_hook_token(token: &str) -> bool {
    token.strip_prefix(HOOK_TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The body as JSON text, if there is one: at most `max_bytes` (413), declared `application/json` (415) and
/// well-formed (422). Read chunk by chunk so a larger body is refused without being kept.
async fn read_payload(headers: &HeaderMap, body: Body, max_bytes: usize) -> ApiResult<Option<String>> {
    let too_large = || ApiError::PayloadTooLarge(format!("a hook's body is at most {max_bytes} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > max_bytes) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        if bytes.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|value| {
        value.split(';').next().is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType("a hook's body must be JSON, sent as application/json".into()));
    }
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return Err(ApiError::invalid("body", format!("is not JSON: {error}")));
    }
    // Well-formed JSON is UTF-8 (serde_json checks it), so this never fails.
    String::from_utf8(bytes).map(Some).map_err(|_| ApiError::invalid("body", "is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shape_of_a_hook_token_is_looked_up() {
        let token = auth::random_token(HOOK_TOKEN_PREFIX);
        assert!(is_hook_token(&token), "{token}");
        assert!(!is_hook_token(&token[..token.len() - 1]));
        assert!(!is_hook_token(&format!("{token}x")));
        assert!(!is_hook_token(&token.replace(HOOK_TOKEN_PREFIX, "atm_x")));
        assert!(!is_hook_token(&format!("{}.{}", &token[..10], &token[11..])));
    }
}
