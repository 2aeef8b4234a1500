//! Run-after links as the API takes them: `[{"task_id": 3, "on": ["succeeded"]}]`, validated into the store's
//! `RunAfter` (one entry per upstream task, each status once, only statuses a run ends in). Cycles and unknown
//! tasks are refused by the store, inside the transaction that saves the task.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{InvalidField, RunStatus};
use automa_store::RunAfter;

/// Start this task when a run of task `task_id` ends in one of `on`: once per such run, on its final outcome
/// (an attempt that is retried does not count).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAfterLink {
    pub task_id: i64,
    /// Any of `succeeded`, `failed`, `timed_out`, `cancelled`, `lost`; default `["succeeded"]`.
    #[serde(default = "succeeded")]
    #[schema(value_type = Vec<String>)]
    pub on: Vec<RunStatus>,
}

fn succeeded() -> Vec<RunStatus> {
    vec![RunStatus::Succeeded]
}

impl From<RunAfter> for RunAfterLink {
    fn from(link: RunAfter) -> Self {
        RunAfterLink { task_id: link.task_id, on: link.on }
    }
}

/// At most this many upstream tasks per task.
const MAX_RUN_AFTER: usize = 32;

/// One entry per upstream task, each naming a status at most once, and only statuses a run ends in.
pub(crate) fn check_run_after(links: Vec<RunAfterLink>) -> Result<Vec<RunAfter>, InvalidField> {
    if links.len() > MAX_RUN_AFTER {
        return Err(InvalidField::new("run_after", format!("at most {MAX_RUN_AFTER} tasks")));
    }
    let mut checked: Vec<RunAfter> = Vec::with_capacity(links.len());
    for (index, link) in links.into_iter().enumerate() {
        if checked.iter().any(|c| c.task_id == link.task_id) {
            let message = format!("task {} is listed twice; list its statuses in one entry", link.task_id);
            return Err(InvalidField::new(format!("run_after[{index}].task_id"), message));
        }
        let field = format!("run_after[{index}].on");
        if link.on.is_empty() {
            return Err(InvalidField::new(field, "names no status"));
        }
        for (at, status) in link.on.iter().enumerate() {
            if !RunAfter::STATUSES.contains(status) {
                return Err(InvalidField::new(
                    field,
                    format!("'{status}' is not how a run ends: succeeded, failed, timed_out, cancelled or lost"),
                ));
            }
            if link.on[..at].contains(status) {
                return Err(InvalidField::new(field, format!("'{status}' is listed twice")));
            }
        }
        let mut on = link.on;
        on.sort_by_key(|status| RunStatus::ALL.iter().position(|s| s == status));
        checked.push(RunAfter { task_id: link.task_id, on });
    }
    Ok(checked)
}
