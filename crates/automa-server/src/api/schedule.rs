//! Upcoming fires across tasks, and pausing or resuming a task's schedule.

use axum::{Json, extract::State};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_store::{Page, TaskFilter};

use crate::{
    api::tasks::{self, TaskInput, TaskResponse},
    auth::Principal,
    error::{ApiError, ApiResult},
    extract::{ApiPath, ApiQuery},
    state::AppState,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct UpcomingFire {
    pub task_id: i64,
    pub task_name: String,
    pub fire_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// The next this many fires (1-500, default 20).
    pub limit: Option<usize>,
    /// Only fires before this time (at most 31 days ahead).
    pub until: Option<DateTime<Utc>>,
}

/// Tasks looked at; each contributes at most `limit` fires, so the list is exact for any task among these.
const MAX_TASKS: i64 = 500;

/// Upcoming fires of enabled tasks, soonest first.
#[utoipa::path(get, path = "/schedule", operation_id = "listUpcomingFires", tag = "schedule", params(ScheduleQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<UpcomingFire>)))]
pub async fn upcoming(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ScheduleQuery>,
) -> ApiResult<Json<Vec<UpcomingFire>>> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let now = automa_store::now();
    if query.until.is_some_and(|until| until > now + Duration::days(31)) {
        return Err(ApiError::invalid("until", "must be at most 31 days ahead"));
    }
    let filter = TaskFilter { enabled: Some(true), scheduled: Some(true), ..TaskFilter::default() };
    let tasks = state.store.list_tasks(&filter, Page::new(Some(MAX_TASKS), None)).await?.items;
    let mut fires: Vec<UpcomingFire> = Vec::new();
    for task in tasks {
        let (Some(schedule), Some(next)) = (task.schedule.as_ref(), task.next_fire_at) else { continue };
        let mut times = vec![next];
        times.extend(schedule.0.upcoming(next, next, limit - 1));
        fires.extend(
            times.into_iter().filter(|at| query.until.is_none_or(|until| *at < until)).map(|fire_at| UpcomingFire {
                task_id: task.id,
                task_name: task.name.clone(),
                fire_at,
            }),
        );
    }
    fires.sort_by_key(|fire| (fire.fire_at, fire.task_id));
    fires.truncate(limit);
    Ok(Json(fires))
}

/// Pause a task's schedule: it stops firing until resumed (it can still be run by hand).
#[utoipa::path(post, path = "/tasks/{id}/pause", operation_id = "pauseTask", params(("id" = i64, Path, description = "The task's id")), tag = "schedule", security(("bearer" = ["operator"])),
    responses((status = 200, body = TaskResponse)))]
pub async fn pause(state: State<AppState>, principal: Principal, id: ApiPath<i64>) -> ApiResult<Json<TaskResponse>> {
    tasks::apply(state, principal, id, TaskInput { enabled: Some(false), ..TaskInput::default() }).await
}

/// Resume a paused schedule from its next tick (missed ticks while paused are not run).
#[utoipa::path(post, path = "/tasks/{id}/resume", operation_id = "resumeTask", params(("id" = i64, Path, description = "The task's id")), tag = "schedule", security(("bearer" = ["operator"])),
    responses((status = 200, body = TaskResponse)))]
pub async fn resume(state: State<AppState>, principal: Principal, id: ApiPath<i64>) -> ApiResult<Json<TaskResponse>> {
    tasks::apply(state, principal, id, TaskInput { enabled: Some(true), ..TaskInput::default() }).await
}
