//! The audit log: filtered, paginated reading, and verification of the hash chain.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_store::{AuditEntry, AuditFilter, AuditVerification};

use crate::{api::Page, error::ApiResult, extract::ApiQuery, state::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    pub id: i64,
    pub ts: DateTime<Utc>,
    /// `user`, `agent`, `system` or `anonymous`.
    pub actor_type: String,
    pub actor_id: Option<String>,
    /// What happened, e.g. `script.update` or `auth.login_failed`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub ip: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryResponse {
    fn from(entry: AuditEntry) -> Self {
        AuditEntryResponse {
            id: entry.id,
            ts: entry.ts,
            actor_type: entry.actor_type,
            actor_id: entry.actor_id,
            action: entry.action,
            resource_type: entry.resource_type,
            resource_id: entry.resource_id,
            ip: entry.ip,
            details: entry.details.0,
            prev_hash: entry.prev_hash,
            hash: entry.hash,
        }
    }
}

/// Filters of the audit log, newest entries first.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor_type: Option<String>,
    pub actor_id: Option<String>,
    /// A user id; shorthand for `actor_type=user&actor_id=`.
    pub user_id: Option<i64>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time.
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse {
    /// Whether every entry's hash matches its content and its predecessor.
    pub ok: bool,
    pub checked: i64,
    pub first_bad_id: Option<i64>,
}

impl From<AuditVerification> for VerifyResponse {
    fn from(result: AuditVerification) -> Self {
        VerifyResponse { ok: result.ok, checked: result.checked, first_bad_id: result.first_bad_id }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/audit", operation_id = "listAuditEntries", tag = "audit", params(AuditQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<AuditEntryResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntryResponse>>> {
    let page = automa_store::Page::new(query.limit, query.offset);
    let (actor_type, actor_id) = match query.user_id {
        Some(user_id) => (Some("user".to_owned()), Some(user_id.to_string())),
        None => (query.actor_type, query.actor_id),
    };
    let filter = AuditFilter {
        actor_type,
        actor_id,
        action: query.action,
        resource_type: query.resource_type,
        resource_id: query.resource_id,
        since: query.since,
        until: query.until,
    };
    Ok(Json(Page::from_listed(state.store.list_audit(&filter, page).await?, page, AuditEntryResponse::from)))
}

/// The audit log under the seed's name; the same as `GET /audit`.
#[utoipa::path(get, path = "/logs", operation_id = "listAuditEntriesAtLogs", tag = "audit", params(AuditQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<AuditEntryResponse>)))]
pub async fn list_alias(
    state: State<AppState>,
    query: ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntryResponse>>> {
    list(state, query).await
}

/// Recompute the hash chain and name the first entry that does not match.
#[utoipa::path(get, path = "/audit/verify", operation_id = "verifyAuditChain", tag = "audit", security(("bearer" = ["admin"])),
    responses((status = 200, body = VerifyResponse)))]
pub async fn verify(State(state): State<AppState>) -> ApiResult<Json<VerifyResponse>> {
    Ok(Json(state.store.verify_audit().await?.into()))
}
