//! Starting runs by hand: a task now (`POST /tasks/{id}/execute`), or a script or inline code with ad-hoc
//! parameters (`POST /execute`). Both answer 202 with the queued run; the run freezes the script version and
//! every parameter at this moment.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{InvalidField, Labels, RunParams, RunParamsChange, Trigger};
use automa_store::NewRun;

use crate::{
    api::{grants, runs::RunResponse, scripts},
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath},
    state::AppState,
};

/// Run a task now, with its parameters. Refused while a secret the task names no longer allows it, or while the
/// agent it is pinned to is disabled.
#[utoipa::path(post, path = "/tasks/{id}/execute", operation_id = "executeTask", params(("id" = i64, Path, description = "The task's id")), tag = "runs", security(("bearer" = ["operator"])),
    responses((status = 202, body = RunResponse),
        (status = 409, description = "The task names a secret that does not exist, or is pinned to a disabled agent", body = crate::error::ErrorBody)))]
pub async fn task(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<RunResponse>)> {
    let task = state.store.get_task(id).await.map_err(missing("task"))?;
    grants::check_task_may_run(&state, &task).await?;
    grants::run_agent(&state, task.agent_id).await?;
    let script = state.store.get_script(task.script_id).await.map_err(missing("script"))?;
    let new = NewRun {
        task_id: Some(task.id),
        script_id: Some(script.id),
        script_version: Some(task.script_version.unwrap_or(script.version)),
        content: None,
        filename: script.filename,
        target_agent_id: task.agent_id,
        labels: task.labels,
        trigger: Trigger::Manual,
        scheduled_for: None,
        retries: task.retries,
        retry_backoff_seconds: task.retry_backoff_seconds,
        params: task.params,
    };
    let run = state.execution.enqueue(Some(&principal.actor()), new).await?;
    Ok((StatusCode::ACCEPTED, Json(run.into())))
}

/// An ad-hoc run: `script_id` (its current version) or inline `content`, with optional parameters.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub script_id: Option<i64>,
    /// Python source to run once, instead of a stored script; syntax-checked like a script.
    pub content: Option<String>,
    /// File name of inline content (default `main.py`); not with `script_id`.
    pub filename: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets to give the run as environment variables. Admins only.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Run on this agent; default: any agent.
    pub agent_id: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub memory_mb: Option<i64>,
    /// Network access; granted by admins (or operators, with `AUTOMA_NETWORK_GRANT=operator`).
    #[serde(default)]
    pub network: bool,
    /// Ask for a warm start: the agent hands the run to a sandbox it prepared before the run came (isolated
    /// like any other), when it can; the run's `warm_start` says whether it did.
    #[serde(default)]
    pub warm: bool,
}

/// Run a script, or inline code, once.
#[utoipa::path(post, path = "/execute", operation_id = "executeAdhoc", tag = "runs", request_body = ExecuteRequest, security(("bearer" = ["operator"])),
    responses((status = 202, body = RunResponse),
        (status = 409, description = "`agent_id` names a disabled or retired agent", body = crate::error::ErrorBody)))]
pub async fn adhoc(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<ExecuteRequest>,
) -> ApiResult<(StatusCode, Json<RunResponse>)> {
    let params = RunParams::default().change(RunParamsChange {
        args: Some(input.args),
        env: Some(input.env),
        secrets: Some(input.secrets),
        timeout_seconds: input.timeout_seconds,
        memory_mb: input.memory_mb,
        // An ad-hoc run's CPU time is bounded by its time limit, as a one-off has no separate budget to set.
        cpu_seconds: input.timeout_seconds,
        max_output_bytes: None,
        network: Some(input.network),
        warm: Some(input.warm),
    })?;
    if params.network() {
        grants::authorize_network(&state, &principal)?;
    }
    let agent = grants::run_agent(&state, input.agent_id).await?;
    grants::authorize_adhoc_secrets(&state, &principal, params.secrets().as_slice(), agent.as_ref()).await?;
    let (script_id, script_version, content, filename) = match (input.script_id, input.content) {
        (Some(script_id), None) => {
            if input.filename.is_some() {
                return Err(ApiError::invalid(
                    "filename",
                    "only for inline content; a script runs as its own file name",
                ));
            }
            let script = state.store.get_script(script_id).await.map_err(|error| match error {
                automa_store::StoreError::NotFound => {
                    ApiError::invalid("script_id", format!("there is no script with id {script_id}"))
                }
                other => other.into(),
            })?;
            (Some(script.id), Some(script.version), None, script.filename)
        }
        (None, Some(content)) => {
            let filename = inline_filename(input.filename)?;
            let content = scripts::check_content(&state, &filename, content).await?;
            (None, None, Some(content), filename)
        }
        (Some(_), Some(_)) => return Err(ApiError::invalid("content", "give either script_id or content, not both")),
        (None, None) => return Err(ApiError::invalid("script_id", "give either script_id or content")),
    };
    let new = NewRun {
        task_id: None,
        script_id,
        script_version,
        content,
        filename,
        target_agent_id: input.agent_id,
        labels: Labels::default(),
        trigger: Trigger::Api,
        scheduled_for: None,
        retries: 0,
        retry_backoff_seconds: 0,
        params,
    };
    let run = state.execution.enqueue(Some(&principal.actor()), new).await?;
    Ok((StatusCode::ACCEPTED, Json(run.into())))
}

fn inline_filename(filename: Option<String>) -> Result<String, InvalidField> {
    let filename = filename.unwrap_or_else(|| "main.py".into());
    let valid = (4..=128).contains(&filename.len())
        && filename.ends_with(".py")
        && filename.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !filename.starts_with('.');
    if valid { Ok(filename) } else { Err(InvalidField::new("filename", "must be a plain file name ending in .py")) }
}
