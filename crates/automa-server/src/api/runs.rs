//! Runs: history with filters, one run, its output (JSON pages, plain text, or a live SSE stream that follows
//! the run to its end), and cancelling.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response, Sse, sse},
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use automa_core::{RunStatus, Trigger};
use automa_store::{LogChunk, Run, RunFilter, RunPage, Store};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{
    api::agents::OFFLINE_AFTER_SECONDS,
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    events::Event,
    extract::{ApiPath, ApiQuery},
    state::AppState,
};

/// A run (DESIGN §8).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunResponse {
    pub id: i64,
    pub task_id: Option<i64>,
    /// Null for a run of inline content.
    pub script_id: Option<i64>,
    pub script_version: Option<i64>,
    /// The agent that ran (or runs) it.
    pub agent_id: Option<i64>,
    pub trigger: Trigger,
    /// The hook that started the run (`hook`), kept by its retries.
    pub hook_id: Option<i64>,
    /// The run whose end started this one (`after`), kept by its retries.
    pub upstream_run_id: Option<i64>,
    pub status: RunStatus,
    pub attempt: i64,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub queued_at: DateTime<Utc>,
    /// A retry is not started before this.
    pub not_before: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub duration_ms: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub max_rss_kb: Option<i64>,
    /// Milliseconds the agent spent preparing the run's packages before the script started (0: they were
    /// cached); null for runs without dependencies.
    pub environment_ms: Option<i64>,
    /// The run asked for a warm start (its task's or the ad-hoc request's `warm`).
    pub warm: bool,
    /// The agent handed the run to a sandbox prepared before it came, so its `duration_ms` has no sandbox or
    /// interpreter start in it. False for a cold start: one not asked for, or one the agent could not give
    /// (no pool, network, packages, variables that change how Python starts).
    pub warm_start: bool,
    pub cpu_ms: Option<i64>,
    pub output_bytes: Option<i64>,
    pub truncated: bool,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub args: Vec<String>,
    /// The agent the run is pinned to; null: any agent with `labels`.
    pub target_agent_id: Option<i64>,
    pub labels: Vec<String>,
    /// Why a queued run is not starting, when the server can tell (its pinned agent is disabled, retired,
    /// draining or offline; no online, enabled agent has its labels; none that may take it may receive one of
    /// its secrets; it waits for its retry delay). Only in `GET /runs/{id}`, never in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
}

impl From<Run> for RunResponse {
    fn from(run: Run) -> Self {
        let duration_ms = run.started_at.zip(run.finished_at).map(|(start, end)| (end - start).num_milliseconds());
        RunResponse {
            id: run.id,
            task_id: run.task_id,
            script_id: run.script_id,
            script_version: run.script_version,
            agent_id: run.agent_id,
            trigger: run.trigger,
            hook_id: run.hook_id,
            upstream_run_id: run.upstream_run_id,
            status: run.status,
            attempt: run.attempt,
            scheduled_for: run.scheduled_for,
            queued_at: run.queued_at,
            not_before: run.not_before,
            started_at: run.started_at,
            finished_at: run.finished_at,
            exit_code: run.exit_code,
            signal: run.signal,
            duration_ms,
            timed_out: run.timed_out,
            oom_killed: run.oom_killed,
            max_rss_kb: run.max_rss_kb,
            environment_ms: run.environment_ms,
            warm: run.params.warm(),
            warm_start: run.warm_start,
            cpu_ms: run.cpu_ms,
            output_bytes: run.output_bytes,
            truncated: run.truncated,
            error: run.error,
            cancel_requested: run.cancel_requested,
            args: run.params.args().clone().into(),
            target_agent_id: run.target_agent_id,
            labels: run.labels.0,
            waiting_reason: None,
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    pub task_id: Option<i64>,
    pub script_id: Option<i64>,
    pub agent_id: Option<i64>,
    pub status: Option<String>,
    pub trigger: Option<String>,
    /// Runs queued at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Runs queued before this time. A window with an end is read through an index on the queue time and
    /// sorted: its cost grows with the runs inside it.
    pub until: Option<DateTime<Utc>>,
    /// Runs per page (1-500, default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page: the next page, older, at the same cost however deep. Opaque.
    pub cursor: Option<String>,
    /// Runs to skip (not with `cursor`), at most 10,000. Kept for compatibility: the skipped runs are read, so
    /// a deep offset is slow on a long history; page with `cursor` instead, which also goes past 10,000.
    pub offset: Option<i64>,
    /// Count every matching run for `total` instead of stopping past 10,000. Costly on a long history: the
    /// count reads every matching entry of an index, millions of them, so ask for it once, not on every page.
    pub count: Option<bool>,
}

/// A page of run history, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub items: Vec<RunResponse>,
    /// The runs matching the filters, on every page. Counting stops past 10,000 unless `count=true` was
    /// asked: then `total` is 10,000 and `total_exact` false, meaning more than that.
    pub total: i64,
    pub total_exact: bool,
    pub limit: i64,
    pub offset: i64,
    /// The `cursor` of the next, older page; null on the last page.
    pub next_cursor: Option<String>,
}

/// What a cursor says: "runs older than this id". Encoded so that clients pass it back rather than build it.
const CURSOR_PREFIX: &str = "before:";

fn encode_cursor(before: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{before}"))
}

/// The run id a cursor names; anything this server did not give out is refused.
fn decode_cursor(cursor: &str) -> ApiResult<i64> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        .filter(|before| *before > 0)
        .ok_or_else(|| {
            ApiError::invalid("cursor", "is not a cursor this server gave out; pass a next_cursor as it came")
        })
}

/// Run history, newest first, by pages: follow `next_cursor` to go further back.
#[utoipa::path(get, path = "/runs", operation_id = "listRuns", tag = "runs", params(RunQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = RunList),
        (status = 422, description = "A parameter is invalid (a cursor this server did not give out, `cursor` with `offset`, an `offset` past 10,000, an unknown status or trigger); `field` names it", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>, ApiQuery(query): ApiQuery<RunQuery>) -> ApiResult<Json<RunList>> {
    let before = query.cursor.as_deref().map(decode_cursor).transpose()?;
    if before.is_some() && query.offset.is_some() {
        return Err(ApiError::invalid(
            "offset",
            "cannot be combined with cursor, which already says where the page starts",
        ));
    }
    let bounds = automa_store::Page::new(query.limit, query.offset);
    let page =
        RunPage { limit: bounds.limit, before, offset: bounds.offset, exact_total: query.count.unwrap_or(false) };
    let filter = RunFilter {
        task_id: query.task_id,
        script_id: query.script_id,
        agent_id: query.agent_id,
        status: query.status.map(|status| status.parse()).transpose().map_err(|e| ApiError::invalid("status", e))?,
        trigger: query
            .trigger
            .map(|trigger| trigger.parse())
            .transpose()
            .map_err(|e| ApiError::invalid("trigger", e))?,
        since: query.since,
        until: query.until,
    };
    let listed = state.store.list_runs(&filter, page).await?;
    Ok(Json(RunList {
        items: listed.items.into_iter().map(RunResponse::from).collect(),
        total: listed.total,
        total_exact: listed.total_exact,
        limit: page.limit,
        offset: page.offset,
        next_cursor: listed.next_before.map(encode_cursor),
    }))
}

/// A run.
#[utoipa::path(get, path = "/runs/{id}", operation_id = "getRun", params(("id" = i64, Path, description = "The run's id")), tag = "runs", security(("bearer" = ["viewer"])),
    responses((status = 200, body = RunResponse)))]
pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<RunResponse>> {
    let run = state.store.get_run(id).await.map_err(missing("run"))?;
    let waiting_reason = if run.status == RunStatus::Queued { waiting_reason(&state.store, &run).await? } else { None };
    Ok(Json(RunResponse { waiting_reason, ..run.into() }))
}

/// Why a queued run is not starting, as far as the agents' records tell: a run that would be claimed at once
/// by an online agent has none. Read for one run at a time: it costs a look at the agents.
async fn waiting_reason(store: &Store, run: &Run) -> ApiResult<Option<String>> {
    let now = Utc::now();
    if run.not_before > now {
        return Ok(Some(format!("waiting for its retry delay, until {}", run.not_before.to_rfc3339())));
    }
    let offline_after = chrono::Duration::seconds(OFFLINE_AFTER_SECONDS);
    // The claim statement's secret rule: every secret the run names must admit the agent.
    let policies: Vec<_> = store
        .secret_infos(run.params.secrets().as_slice())
        .await?
        .iter()
        .map(|info| (info.name.clone(), info.policy()))
        .collect();
    let refusing = |agent: &automa_store::Agent| {
        policies.iter().find(|(_, policy)| !policy.allows_agent(agent)).map(|(name, _)| name.clone())
    };
    // The claim statement's package rule: a run whose script version has a lock needs an agent with uv.
    let needs_packages = match (run.script_id, run.script_version) {
        (Some(script_id), Some(version)) => match store.get_script_version(script_id, version).await {
            Ok(version) => version.packages.lock.is_some(),
            Err(automa_store::StoreError::NotFound) => false,
            Err(error) => return Err(error.into()),
        },
        _ => false,
    };
    const NO_UV: &str = "this run needs packages, but no online agent that may take it has uv to build them (set \
                         AUTOMA_UV on an agent)";
    if let Some(agent_id) = run.target_agent_id {
        let agent = store.get_agent(agent_id).await?;
        return Ok(match (agent.status(now, offline_after), refusing(&agent)) {
            ("online", None) if needs_packages && !agent.builds_environments() => Some(format!(
                "pinned to agent '{}', which has no uv to build the packages this run needs (set AUTOMA_UV on it)",
                agent.name
            )),
            ("online", None) => None,
            ("online", Some(secret)) => {
                Some(format!("pinned to agent '{}', but secret '{secret}' may not be given to it", agent.name))
            }
            (why, _) => Some(format!("pinned to agent '{}', which is {why}", agent.name)),
        });
    }
    let agents = store.all_agents().await?;
    let labels = &run.labels.0;
    let able: Vec<_> = agents
        .iter()
        .filter(|agent| {
            agent.status(now, offline_after) == "online" && labels.iter().all(|label| agent.labels.0.contains(label))
        })
        .collect();
    if let Some(agent) = able.first() {
        let admitted: Vec<_> = able.iter().filter(|agent| refusing(agent).is_none()).collect();
        if admitted.is_empty() {
            let secret = refusing(agent).unwrap_or_default();
            return Ok(Some(format!("secret '{secret}' may not be given to any online agent that may take the run")));
        }
        if needs_packages && !admitted.iter().any(|agent| agent.builds_environments()) {
            return Ok(Some(NO_UV.to_owned()));
        }
        return Ok(None);
    }
    Ok(Some(if labels.is_empty() {
        "no agent is online and enabled".to_owned()
    } else {
        format!("no online, enabled agent has the labels {}", labels.join(", "))
    }))
}

/// Cancel a run: a queued run ends at once; a running one is killed by its agent (status 202 either way).
#[utoipa::path(post, path = "/runs/{id}/cancel", operation_id = "cancelRun", params(("id" = i64, Path, description = "The run's id")), tag = "runs", security(("bearer" = ["operator"])),
    responses((status = 202, body = RunResponse), (status = 409, description = "The run already ended", body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<RunResponse>)> {
    let cancelled = state.store.cancel_run(&principal.actor(), id).await.map_err(missing("run"))?;
    state.execution.publish_finish(&cancelled);
    Ok((StatusCode::ACCEPTED, Json(cancelled.run.into())))
}

/// A page of a run's output.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunLogs {
    pub run_id: i64,
    /// `{seq, stream, ts, data}`, in order.
    #[schema(value_type = Vec<Object>)]
    pub chunks: Vec<LogChunk>,
    /// Pass as `after` for the next page.
    pub next_seq: i64,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only chunks with a greater sequence number.
    pub after: Option<i64>,
    /// Chunks per page, 1-5000 (default 1000).
    pub limit: Option<i64>,
    /// `json` (default) or `text`: the chunks' data concatenated, as `text/plain`.
    pub format: Option<String>,
}

/// A run's output, in order.
#[utoipa::path(get, path = "/runs/{id}/logs", operation_id = "getRunLogs", tag = "runs", params(("id" = i64, Path, description = "The run's id"), LogQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, description = "The output: a page of chunks, or with format=text all of it as plain text",
        content((RunLogs = "application/json"), (String = "text/plain")))))]
pub async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> ApiResult<Response> {
    state.store.get_run(id).await.map_err(missing("run"))?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(1000).clamp(1, 5000);
    match query.format.as_deref().unwrap_or("json") {
        "json" => {
            let chunks = state.store.run_logs(id, after, limit).await?;
            let next_seq = chunks.last().map_or(after, |chunk| chunk.seq);
            Ok(Json(RunLogs { run_id: id, chunks, next_seq }).into_response())
        }
        "text" => {
            let mut text = String::new();
            let mut after = after;
            loop {
                let chunks = state.store.run_logs(id, after, 5000).await?;
                let Some(last) = chunks.last() else { break };
                after = last.seq;
                chunks.iter().for_each(|chunk| text.push_str(&chunk.data));
            }
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        _ => Err(ApiError::invalid("format", "must be json or text")),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this sequence number (the `Last-Event-ID` header does the same).
    pub after: Option<i64>,
}

/// Follow a run's output live (Server-Sent Events): `log` events (id = sequence number, data = a chunk) until
/// the run ends, then one `end` event with the run. The stream also ends, without an `end` event, when the
/// credentials it was opened with expire or are revoked, and when the server shuts down.
#[utoipa::path(get, path = "/runs/{id}/logs/stream", operation_id = "streamRunLogs", tag = "runs", params(("id" = i64, Path, description = "The run's id"), StreamQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = crate::api::ServerSentEvent)))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>> {
    let events = state.events.subscribe();
    state.store.get_run(id).await.map_err(missing("run"))?;
    let resume =
        headers.get("last-event-id").and_then(|value| value.to_str().ok()).and_then(|value| value.parse().ok());
    let follower = Follower {
        store: state.store.clone(),
        events,
        run_id: id,
        after: resume.or(query.after).unwrap_or(0),
        pending: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(follower, |mut follower| async move {
        follower.next_event().await.map(|event| (Ok(event), follower))
    })
    .take_until(crate::api::events::stream_end(&state, &principal));
    Ok(Sse::new(stream).keep_alive(sse::KeepAlive::default()))
}

/// How long the follower trusts the hub before re-reading the database: output stored by another server on
/// the same PostgreSQL database does not pass through this server's hub.
const RECHECK: Duration = Duration::from_secs(2);

struct Follower {
    store: Store,
    events: broadcast::Receiver<Arc<Event>>,
    run_id: i64,
    after: i64,
    pending: VecDeque<LogChunk>,
    done: bool,
}

impl Follower {
    async fn next_event(&mut self) -> Option<sse::Event> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                let data = serde_json::to_string(&chunk).unwrap_or_default();
                return Some(sse::Event::default().event("log").id(chunk.seq.to_string()).data(data));
            }
            if self.done {
                return None;
            }
            if self.fetch().await {
                continue;
            }
            let run = self.store.get_run(self.run_id).await.ok()?;
            if run.status.is_terminal() {
                // An agent stores all output before it finishes a run, so one more read gets the rest.
                if self.fetch().await {
                    continue;
                }
                self.done = true;
                let data = serde_json::to_string(&RunResponse::from(run)).unwrap_or_default();
                return Some(sse::Event::default().event("end").data(data));
            }
            self.wait().await;
        }
    }

    async fn fetch(&mut self) -> bool {
        let chunks = self.store.run_logs(self.run_id, self.after, 1000).await.unwrap_or_default();
        if let Some(last) = chunks.last() {
            self.after = last.seq;
        }
        self.pending.extend(chunks);
        !self.pending.is_empty()
    }

    async fn wait(&mut self) {
        let run_id = self.run_id;
        let relevant = async {
            loop {
                match self.events.recv().await {
                    Ok(event) if event.run_id() == Some(run_id) => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(RECHECK, relevant).await;
    }
}
