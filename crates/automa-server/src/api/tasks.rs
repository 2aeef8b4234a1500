//! Tasks: a script bound to arguments, environment, secrets, limits, a target and a schedule. Create and
//! update share one validation: an update is the current task with the given fields replaced, validated whole.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_core::{
    Labels, ResourceName, RunParams, RunParamsChange, Schedule, params::in_range, schedule::ScheduleKind,
};
use automa_store::{Task, TaskFilter, TaskSpec};

use crate::{
    api::{
        Page, grants, present,
        run_after::{RunAfterLink, check_run_after},
    },
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    events::Event,
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskResponse {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub script_id: i64,
    /// The pinned version; null runs the latest.
    pub script_version: Option<i64>,
    /// The agent the task runs on; null: any agent whose labels include `labels`.
    pub agent_id: Option<i64>,
    pub labels: Vec<String>,
    /// `sys.argv[1:]` of the script.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names of secrets given to the run as environment variables.
    pub secrets: Vec<String>,
    pub timeout_seconds: i64,
    pub memory_mb: i64,
    pub cpu_seconds: i64,
    pub max_output_bytes: i64,
    /// Whether the script may use the network.
    pub network: bool,
    /// Whether its runs ask for a warm start (a sandbox prepared before the run came).
    pub warm: bool,
    pub retries: i64,
    pub retry_backoff_seconds: i64,
    pub schedule: Option<Schedule>,
    pub enabled: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tasks whose runs start this one, and on which outcomes.
    pub run_after: Vec<RunAfterLink>,
}

impl From<Task> for TaskResponse {
    fn from(task: Task) -> Self {
        TaskResponse {
            id: task.id,
            name: task.name,
            description: task.description,
            script_id: task.script_id,
            script_version: task.script_version,
            agent_id: task.agent_id,
            labels: task.labels.into_inner(),
            args: task.params.args().clone().into(),
            env: task.params.env().clone().into(),
            secrets: task.params.secrets().clone().into(),
            timeout_seconds: task.params.limits().timeout_seconds(),
            memory_mb: task.params.limits().memory_mb(),
            cpu_seconds: task.params.limits().cpu_seconds(),
            max_output_bytes: task.params.limits().max_output_bytes(),
            network: task.params.network(),
            warm: task.params.warm(),
            retries: task.retries,
            retry_backoff_seconds: task.retry_backoff_seconds,
            schedule: task.schedule.map(|s| s.0),
            enabled: task.enabled,
            next_fire_at: task.next_fire_at,
            created_by: task.created_by,
            created_at: task.created_at,
            updated_at: task.updated_at,
            run_after: task.run_after.into_iter().map(RunAfterLink::from).collect(),
        }
    }
}

/// The fields of a task. On create, `name` and `script_id` are required; on update every field is optional and
/// absent fields keep their value (`null` clears a nullable one).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub script_id: Option<i64>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub script_version: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub agent_id: Option<Option<i64>>,
    pub labels: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub secrets: Option<Vec<String>>,
    pub timeout_seconds: Option<i64>,
    pub memory_mb: Option<i64>,
    pub cpu_seconds: Option<i64>,
    pub max_output_bytes: Option<i64>,
    pub network: Option<bool>,
    /// Its runs ask for a warm start: handed to a sandbox the agent prepared before they came, isolated like
    /// any other run, when the agent can (not with network or packages).
    pub warm: Option<bool>,
    pub retries: Option<i64>,
    pub retry_backoff_seconds: Option<i64>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Schedule>)]
    pub schedule: Option<Option<Schedule>>,
    /// Shorthand for a one-off schedule at this time.
    pub scheduled_time: Option<DateTime<Utc>>,
    pub enabled: Option<bool>,
    /// Replaces the task's run-after links; `null` or `[]` removes them. A cycle is refused (422 naming it).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<RunAfterLink>>)]
    pub run_after: Option<Option<Vec<RunAfterLink>>>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    pub script_id: Option<i64>,
    pub agent_id: Option<i64>,
    pub enabled: Option<bool>,
    /// Only tasks with (true) or without (false) a schedule.
    pub scheduled: Option<bool>,
    /// Only tasks whose name contains this, case-insensitively.
    pub name: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

const DEFAULT_RETRY_BACKOFF_SECONDS: i64 = 10;

/// Whether a save changes what a task runs: the code, its inputs, or its reach. Such changes to a task that
/// uses secrets or network need the same rights as granting them.
fn changes_what_runs(before: &TaskSpec, after: &TaskSpec) -> bool {
    before.script_id != after.script_id
        || before.script_version != after.script_version
        || before.params.args() != after.params.args()
        || before.params.env() != after.params.env()
        || before.params.network() != after.params.network()
}

/// An interval without an anchor counts from when it was set; storing that anchor keeps the rhythm stable
/// across restarts and edits of other fields, and shows users where it starts.
fn anchor_interval(mut schedule: Schedule, now: DateTime<Utc>) -> Schedule {
    if schedule.kind == ScheduleKind::Interval && schedule.at.is_none() {
        schedule.at = Some(now);
    }
    schedule
}

/// A one-off fires at its time (even one a moment ago, within its grace); other kinds from the next tick on.
fn first_fire(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule.kind {
        ScheduleKind::Once => schedule.at,
        ScheduleKind::Cron | ScheduleKind::Interval => schedule.next_fire_after(now, now),
    }
}

/// Merges `input` over `base` (a new task's defaults or the current task) and validates the result whole.
fn merge(base: TaskSpec, input: TaskInput, schedule_changed_at: DateTime<Utc>) -> ApiResult<TaskSpec> {
    let name = match input.name {
        Some(name) => ResourceName::parse("name", &name)?.into_inner(),
        None => base.name,
    };
    let labels = match input.labels {
        Some(labels) => Labels::parse("labels", labels)?,
        None => base.labels,
    };
    let params = base.params.change(RunParamsChange {
        args: input.args,
        env: input.env,
        secrets: input.secrets,
        timeout_seconds: input.timeout_seconds,
        memory_mb: input.memory_mb,
        cpu_seconds: input.cpu_seconds,
        max_output_bytes: input.max_output_bytes,
        network: input.network,
        warm: input.warm,
    })?;
    let description = input.description.unwrap_or(base.description);
    if description.len() > 4096 {
        return Err(ApiError::invalid("description", "must be at most 4096 bytes"));
    }
    let schedule_given = input.schedule.is_some() || input.scheduled_time.is_some();
    let schedule = match (input.schedule, input.scheduled_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("scheduled_time", "give either schedule or scheduled_time, not both"));
        }
        (_, Some(at)) => Some(Schedule::once(at).validate()?),
        (Some(schedule), None) => schedule.map(|s| anchor_interval(s, schedule_changed_at).validate()).transpose()?,
        (None, None) => base.schedule,
    };
    if schedule_given
        && let Some(once) = schedule.as_ref().filter(|s| s.kind == ScheduleKind::Once)
        && once.at.is_some_and(|at| at < schedule_changed_at - chrono::Duration::seconds(once.misfire_grace_seconds))
    {
        return Err(ApiError::invalid("schedule.at", "is in the past"));
    }
    let run_after = match input.run_after {
        Some(links) => check_run_after(links.unwrap_or_default())?,
        None => base.run_after,
    };
    let enabled = input.enabled.unwrap_or(base.enabled);
    // The next fire is computed afresh only when the schedule is set or the task is switched back on; any other
    // edit keeps it, so that editing a task whose one-off already fired does not arm it again.
    let rearm = schedule_given || (enabled && !base.enabled);
    let next_fire_at = match (&schedule, enabled) {
        (Some(schedule), true) if rearm => first_fire(schedule, schedule_changed_at),
        (Some(_), true) => base.next_fire_at,
        _ => None,
    };
    Ok(TaskSpec {
        name,
        description,
        script_id: input.script_id.unwrap_or(base.script_id),
        script_version: input.script_version.unwrap_or(base.script_version),
        agent_id: input.agent_id.unwrap_or(base.agent_id),
        labels,
        params,
        retries: in_range("retries", input.retries.unwrap_or(base.retries), 0..=100)?,
        retry_backoff_seconds: in_range(
            "retry_backoff_seconds",
            input.retry_backoff_seconds.unwrap_or(base.retry_backoff_seconds),
            0..=86_400,
        )?,
        schedule,
        enabled,
        next_fire_at,
        run_after,
    })
}

/// Checks the rights a save needs beyond the operator role: network, and the secrets' policies (see
/// [`grants`]). Returns the secrets whose policies should take in the task. A newly pinned agent must exist
/// and be enabled; one pinned before is kept even if it was disabled since, so that other edits still work.
async fn authorize(
    state: &AppState,
    principal: &Principal,
    task_id: Option<i64>,
    before: &TaskSpec,
    after: &TaskSpec,
    sets_agent: bool,
) -> ApiResult<Vec<String>> {
    let changes_what_runs = task_id.is_none() || changes_what_runs(before, after);
    if after.params.network() && changes_what_runs {
        grants::authorize_network(state, principal)?;
    }
    let agent = if sets_agent {
        grants::pinned_agent(state, after.agent_id).await?
    } else {
        match after.agent_id {
            Some(agent_id) => state.store.get_agent(agent_id).await.ok(),
            None => None,
        }
    };
    let change = grants::TaskChange {
        task_id,
        secrets: after.params.secrets().as_slice(),
        agent: agent.as_ref(),
        changes_what_runs,
    };
    grants::authorize_task_secrets(state, principal, change).await
}

fn spec_of(task: Task) -> TaskSpec {
    TaskSpec {
        name: task.name,
        description: task.description,
        script_id: task.script_id,
        script_version: task.script_version,
        agent_id: task.agent_id,
        labels: task.labels,
        params: task.params,
        retries: task.retries,
        retry_backoff_seconds: task.retry_backoff_seconds,
        schedule: task.schedule.map(|s| s.0),
        enabled: task.enabled,
        next_fire_at: task.next_fire_at,
        run_after: task.run_after,
    }
}

/// List tasks.
#[utoipa::path(get, path = "/tasks", operation_id = "listTasks", tag = "tasks", params(TaskQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<TaskResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> ApiResult<Json<Page<TaskResponse>>> {
    let page = automa_store::Page::new(query.limit, query.offset);
    let filter = TaskFilter {
        script_id: query.script_id,
        agent_id: query.agent_id,
        enabled: query.enabled,
        scheduled: query.scheduled,
        name_contains: query.name,
    };
    Ok(Json(Page::from_listed(state.store.list_tasks(&filter, page).await?, page, TaskResponse::from)))
}

/// Create a task.
#[utoipa::path(post, path = "/tasks", operation_id = "createTask", tag = "tasks", request_body = TaskInput, security(("bearer" = ["operator"])),
    responses((status = 201, body = TaskResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<TaskInput>,
) -> ApiResult<(StatusCode, Json<TaskResponse>)> {
    if input.name.is_none() {
        return Err(ApiError::invalid("name", "is required"));
    }
    let script_id = input.script_id.ok_or_else(|| ApiError::invalid("script_id", "is required"))?;
    let defaults = TaskSpec {
        name: String::new(),
        description: String::new(),
        script_id,
        script_version: None,
        agent_id: None,
        labels: Labels::default(),
        params: RunParams::default(),
        retries: 0,
        retry_backoff_seconds: DEFAULT_RETRY_BACKOFF_SECONDS,
        schedule: None,
        enabled: true,
        next_fire_at: None,
        run_after: Vec::new(),
    };
    let sets_agent = input.agent_id.is_some();
    let spec = merge(defaults.clone(), input, automa_store::now())?;
    let grants = authorize(&state, &principal, None, &defaults, &spec, sets_agent).await?;
    let task = state.store.create_task(&principal.actor(), spec, &grants).await?;
    state.schedule_changed.notify_one();
    state.events.publish(Event::Task { id: task.id });
    Ok((StatusCode::CREATED, Json(task.into())))
}

/// A task.
#[utoipa::path(get, path = "/tasks/{id}", operation_id = "getTask", params(("id" = i64, Path, description = "The task's id")), tag = "tasks", security(("bearer" = ["viewer"])),
    responses((status = 200, body = TaskResponse)))]
pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<TaskResponse>> {
    Ok(Json(state.store.get_task(id).await.map_err(missing("task"))?.into()))
}

/// Update a task; absent fields keep their value.
#[utoipa::path(put, path = "/tasks/{id}", operation_id = "updateTask", params(("id" = i64, Path, description = "The task's id")), tag = "tasks", request_body = TaskInput, security(("bearer" = ["operator"])),
    responses((status = 200, body = TaskResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn update(
    state: State<AppState>,
    principal: Principal,
    id: ApiPath<i64>,
    ApiJson(input): ApiJson<TaskInput>,
) -> ApiResult<Json<TaskResponse>> {
    apply(state, principal, id, input).await
}

/// Merges `input` into task `id`, validates and stores it, and wakes the scheduler.
pub(crate) async fn apply(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    input: TaskInput,
) -> ApiResult<Json<TaskResponse>> {
    let current = spec_of(state.store.get_task(id).await.map_err(missing("task"))?);
    let sets_agent = input.agent_id.is_some_and(|agent_id| agent_id != current.agent_id);
    let spec = merge(current.clone(), input, automa_store::now())?;
    let grants = authorize(&state, &principal, Some(id), &current, &spec, sets_agent).await?;
    let task = state.store.update_task(&principal.actor(), id, spec, &grants).await.map_err(missing("task"))?;
    state.schedule_changed.notify_one();
    state.events.publish(Event::Task { id });
    Ok(Json(task.into()))
}

/// Delete a task. Refused (409, naming them) while other tasks run after it.
#[utoipa::path(delete, path = "/tasks/{id}", operation_id = "deleteTask", params(("id" = i64, Path, description = "The task's id")), tag = "tasks", security(("bearer" = ["operator"])),
    responses((status = 204), (status = 409, description = "Other tasks run after this one", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store.delete_task(&principal.actor(), id).await.map_err(missing("task"))?;
    state.events.publish(Event::Task { id });
    Ok(StatusCode::NO_CONTENT)
}
