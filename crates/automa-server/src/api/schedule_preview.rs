//! `GET /schedule/preview`: the next fires of a schedule that is still being edited, computed by the same code
//! the scheduler uses, so what an editor shows is what will happen, in the schedule's own time zone.

use axum::Json;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_core::{InvalidField, Schedule, schedule::ScheduleKind};

use crate::{
    error::{ApiError, ApiResult},
    extract::ApiQuery,
};

const DEFAULT_COUNT: usize = 5;
const MAX_COUNT: usize = 50;

/// A schedule's fields as query parameters, named as in a task's `schedule`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    /// `once`, `cron` or `interval`.
    #[param(value_type = String)]
    pub kind: ScheduleKind,
    pub cron: Option<String>,
    pub every_seconds: Option<i64>,
    /// The one-off time, or the anchor of an interval (default: now).
    pub at: Option<DateTime<Utc>>,
    /// IANA time zone (default `UTC`).
    pub timezone: Option<String>,
    /// How many fires, 1-50 (default 5).
    pub count: Option<usize>,
}

/// One upcoming fire.
#[derive(Debug, Serialize, ToSchema)]
pub struct Fire {
    pub at: DateTime<Utc>,
    /// The same instant on the schedule's wall clock, e.g. `Sun 2026-03-29 03:00:00 CEST`.
    pub local: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub timezone: String,
    /// Empty when the schedule will not fire again (a one-off in the past).
    pub fires: Vec<Fire>,
}

/// Preview the next fire times of a schedule without saving it. A bad field is a 422 naming the parameter.
#[utoipa::path(get, path = "/schedule/preview", operation_id = "previewSchedule", tag = "tasks", params(PreviewQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Preview), (status = 422, description = "A parameter is invalid; `field` names it", body = crate::error::ErrorBody)))]
pub async fn preview(ApiQuery(query): ApiQuery<PreviewQuery>) -> ApiResult<Json<Preview>> {
    let count = query.count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(ApiError::invalid("count", format!("must be between 1 and {MAX_COUNT}")));
    }
    let schedule = Schedule {
        kind: query.kind,
        at: query.at,
        cron: query.cron.filter(|cron| !cron.trim().is_empty()),
        every_seconds: query.every_seconds,
        timezone: query.timezone.filter(|tz| !tz.is_empty()).unwrap_or_else(|| "UTC".to_owned()),
        ..Schedule::once(Utc::now())
    };
    let schedule = schedule.validate().map_err(as_parameter)?;
    let tz: Tz = schedule.timezone.parse().map_err(|_| ApiError::invalid("timezone", "is not an IANA time zone"))?;
    let now = Utc::now();
    let fires = schedule
        .upcoming(now, now, count)
        .into_iter()
        .map(|at| Fire { at, local: at.with_timezone(&tz).format("%a %Y-%m-%d %H:%M:%S %Z").to_string() })
        .collect();
    Ok(Json(Preview { timezone: schedule.timezone, fires }))
}

/// `Schedule::validate` names fields as they sit in a task (`schedule.cron`); here they are query parameters.
fn as_parameter(invalid: InvalidField) -> ApiError {
    let field = invalid.field.strip_prefix("schedule.").unwrap_or(&invalid.field).to_owned();
    ApiError::invalid(&field, invalid.message)
}
