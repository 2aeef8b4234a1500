//! Tasks: a script bound to arguments, environment, secrets, limits, a target and a schedule. Create and
//! update share one validation: an update is the current task with the given fields replaced, validated whole.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_core::{InvalidField, ResourceName, Schedule, schedule::ScheduleKind};
use automa_store::{Task, TaskFilter, TaskSpec};

use crate::{
    api::{
        Page,
        agents::parse_labels,
        grants, present,
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
            labels: task.labels.0,
            args: task.args.0,
            env: task.env.0,
            secrets: task.secrets.0,
            timeout_seconds: task.timeout_seconds,
            memory_mb: task.memory_mb,
            cpu_seconds: task.cpu_seconds,
            max_output_bytes: task.max_output_bytes,
            network: task.network,
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

pub(crate) const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
pub(crate) const DEFAULT_MEMORY_MB: i64 = 512;
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: i64 = 10 * 1024 * 1024;
const DEFAULT_RETRY_BACKOFF_SECONDS: i64 = 10;
pub(crate) const WEEK_SECONDS: i64 = 7 * 24 * 3600;
/// Variables the sandbox sets itself; a task may not replace them.
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "TMPDIR",
    automa_runner::TRIGGER_PAYLOAD_ENV,
];

pub(crate) fn in_range(field: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, InvalidField> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(InvalidField::new(field, format!("must be between {} and {}", range.start(), range.end())))
    }
}

/// Whether the sandbox sets this variable itself, so neither `env` nor a secret may name it.
pub(crate) fn is_reserved_env(name: &str) -> bool {
    RESERVED_ENV.contains(&name)
}

pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

pub(crate) fn check_args(args: &[String]) -> Result<(), InvalidField> {
    if args.len() > 256 {
        return Err(InvalidField::new("args", "at most 256 arguments"));
    }
    for (index, arg) in args.iter().enumerate() {
        if arg.contains('\0') || arg.len() > 8192 {
            return Err(InvalidField::new(format!("args[{index}]"), "must be at most 8192 bytes, without NUL"));
        }
    }
    Ok(())
}

pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if env.len() > 256 {
        return Err(InvalidField::new("env", "at most 256 variables"));
    }
    for (name, value) in env {
        if !is_env_name(name) {
            return Err(InvalidField::new(
                format!("env.{name}"),
                "is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
        if RESERVED_ENV.contains(&name.as_str()) {
            return Err(InvalidField::new(format!("env.{name}"), "is set by the sandbox and cannot be overridden"));
        }
        if value.contains('\0') || value.len() > 32 * 1024 {
            return Err(InvalidField::new(format!("env.{name}"), "must be at most 32 KiB, without NUL"));
        }
    }
    Ok(())
}

/// Secret names: each a variable name, once, and not also set in `env` (one would silently replace the other).
pub(crate) fn check_secret_names(secrets: &[String], env: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if secrets.len() > 64 {
        return Err(InvalidField::new("secrets", "at most 64 secrets"));
    }
    for (index, name) in secrets.iter().enumerate() {
        let field = format!("secrets[{index}]");
        if !is_env_name(name) || RESERVED_ENV.contains(&name.as_str()) {
            return Err(InvalidField::new(field, "must be a secret's name, usable as a variable name"));
        }
        if secrets[..index].contains(name) {
            return Err(InvalidField::new(field, format!("'{name}' is listed twice")));
        }
        if env.contains_key(name) {
            return Err(InvalidField::new(
                field,
                format!("'{name}' is also set in env; a variable comes from one place"),
            ));
        }
    }
    Ok(())
}

/// Whether a save changes what a task runs: the code, its inputs, or its reach. Such changes to a task that
/// uses secrets or network need the same rights as granting them.
fn changes_what_runs(before: &TaskSpec, after: &TaskSpec) -> bool {
    before.script_id != after.script_id
        || before.script_version != after.script_version
        || before.args != after.args
        || before.env != after.env
        || before.network != after.network
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
        Some(labels) => parse_labels("labels", labels)?,
        None => base.labels,
    };
    let args = input.args.unwrap_or(base.args);
    check_args(&args)?;
    let env = input.env.unwrap_or(base.env);
    check_env(&env)?;
    let secrets = input.secrets.unwrap_or(base.secrets);
    check_secret_names(&secrets, &env)?;
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
        args,
        env,
        secrets,
        timeout_seconds: in_range(
            "timeout_seconds",
            input.timeout_seconds.unwrap_or(base.timeout_seconds),
            1..=WEEK_SECONDS,
        )?,
        memory_mb: in_range("memory_mb", input.memory_mb.unwrap_or(base.memory_mb), 16..=65_536)?,
        cpu_seconds: in_range("cpu_seconds", input.cpu_seconds.unwrap_or(base.cpu_seconds), 1..=WEEK_SECONDS)?,
        max_output_bytes: in_range(
            "max_output_bytes",
            input.max_output_bytes.unwrap_or(base.max_output_bytes),
            1024..=1024 * 1024 * 1024,
        )?,
        network: input.network.unwrap_or(base.network),
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
    if after.network && changes_what_runs {
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
    let change = grants::TaskChange { task_id, secrets: &after.secrets, agent: agent.as_ref(), changes_what_runs };
    grants::authorize_task_secrets(state, principal, change).await
}

fn spec_of(task: Task) -> TaskSpec {
    TaskSpec {
        name: task.name,
        description: task.description,
        script_id: task.script_id,
        script_version: task.script_version,
        agent_id: task.agent_id,
        labels: task.labels.0,
        args: task.args.0,
        env: task.env.0,
        secrets: task.secrets.0,
        timeout_seconds: task.timeout_seconds,
        memory_mb: task.memory_mb,
        cpu_seconds: task.cpu_seconds,
        max_output_bytes: task.max_output_bytes,
        network: task.network,
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
        labels: Vec::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        secrets: Vec::new(),
        timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        memory_mb: DEFAULT_MEMORY_MB,
        cpu_seconds: DEFAULT_TIMEOUT_SECONDS,
        max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        network: false,
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
