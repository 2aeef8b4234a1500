//! Liveness and readiness, for orchestrators and load balancers.

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use automa_agent::SandboxStatus;

use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    /// Whether the database answers and is fully migrated.
    pub database_ready: bool,
    /// The database's size in bytes (SQLite: its pages plus the write-ahead log; PostgreSQL:
    /// `pg_database_size`); null when it cannot be read. Read at most every 30 seconds and shared by all
    /// callers, so it may be that old.
    pub database_size_bytes: Option<i64>,
    /// Whether scripts can be syntax-checked (an interpreter was found).
    pub python: bool,
    /// The version of the uv that locks scripts' dependencies; null when none was found, and scripts that have
    /// dependencies cannot be saved.
    pub uv: Option<String>,
    /// The embedded agent's sandbox: its layers and warnings, or why it refuses to run scripts. Null when the
    /// server runs without an agent.
    #[schema(value_type = Option<Object>)]
    pub sandbox: Option<SandboxStatus>,
}

/// The process is up.
#[utoipa::path(get, path = "/health", operation_id = "getHealth", security(()), tag = "health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

/// The server can serve requests: the database answers and is migrated.
#[utoipa::path(get, path = "/ready", operation_id = "getReadiness", security(()), tag = "health",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database_ready = state.store.is_ready().await;
    let status = if database_ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let readiness = Readiness {
        status: if database_ready { "ready" } else { "not ready" },
        database: state.store.backend_name(),
        database_ready,
        database_size_bytes: state.database_size.get(&state.store).await,
        python: state.syntax.is_available(),
        uv: state.locker.uv_version().map(str::to_owned),
        sandbox: state.sandbox.get().cloned(),
    };
    (status, Json(readiness))
}
