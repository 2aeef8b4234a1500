//! `GET /metrics`: the Prometheus exposition (see `crate::metrics`). On the API's address it needs a token
//! like any read (an API token of a viewer is what a Prometheus server is given); `AUTOMA_METRICS_BIND`
//! serves the same document without one on an address of its own, meant for a private network.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use chrono::Utc;

use crate::{
    api::agents::OFFLINE_AFTER_SECONDS,
    error::ApiResult,
    metrics::{escape, header, write_gauge},
    state::AppState,
};

/// The text format's media type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The agent states reported, every one of them even at zero so that a state that empties shows as 0.
const AGENT_STATES: [&str; 4] = ["online", "offline", "draining", "disabled"];

/// Metrics in the Prometheus text format: this server's counters and histograms (runs, scheduler, HTTP,
/// sandbox), and gauges of the shared database (queued runs, agents by state, its size) and of this server's
/// connection pool.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", security(("bearer" = ["viewer"])), tag = "health",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn scrape(State(state): State<AppState>) -> ApiResult<Response> {
    let store = &state.store;
    let mut out = String::with_capacity(16 * 1024);
    header(&mut out, "automa_build_info", "gauge", "This server's build; the value is always 1.");
    out.push_str(&format!(
        "automa_build_info{{version=\"{}\",commit=\"{}\",rustc=\"{}\"}} 1\n",
        escape(env!("CARGO_PKG_VERSION")),
        escape(option_env!("AUTOMA_GIT_COMMIT").unwrap_or("unknown")),
        escape(env!("AUTOMA_RUSTC_VERSION")),
    ));
    let queued = store.queued_runs().await? as f64;
    write_gauge(
        &mut out,
        "automa_runs_queued",
        "Runs waiting for an agent, in the shared database.",
        "",
        &[("", queued)],
    );
    let now = Utc::now();
    let offline_after = chrono::Duration::seconds(OFFLINE_AFTER_SECONDS);
    let agents = store.all_agents().await?;
    let by_state: Vec<(&str, f64)> = AGENT_STATES
        .iter()
        .map(|s| (*s, agents.iter().filter(|a| a.status(now, offline_after) == *s).count() as f64))
        .collect();
    write_gauge(&mut out, "automa_agents", "Agents by state, in the shared database.", "state", &by_state);
    let pool = store.pool_use();
    write_gauge(
        &mut out,
        "automa_db_pool_connections",
        "This server's database connections: idle, or in use by a query.",
        "state",
        &[("idle", f64::from(pool.idle)), ("in_use", f64::from(pool.open.saturating_sub(pool.idle)))],
    );
    write_gauge(
        &mut out,
        "automa_db_pool_max_connections",
        "The most connections this server's pool opens.",
        "",
        &[("", f64::from(pool.max))],
    );
    if let Some(size) = state.database_size.get(store).await {
        write_gauge(
            &mut out,
            "automa_database_size_bytes",
            "The database's size in bytes, as /ready reports it (read at most every 30 seconds).",
            "",
            &[("", size as f64)],
        );
    }
    let metrics = &state.execution.metrics;
    let names = store.task_names(&metrics.labelled_tasks()).await?;
    metrics.render(&mut out, &names);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response())
}
