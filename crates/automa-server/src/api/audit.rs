//! The audit log: filtered, paginated reading, and verification of the hash chain. Admins read the log whole;
//! everyone else reads it with failed logins, other users' e-mail addresses and other actors' addresses
//! redacted, because a failed login's details hold whatever was typed (sometimes a password in the wrong
//! field) and where from, and a login's address says where someone is. Nor do they get the chain's hashes:
//! verification is for admins, and an entry's hash from before the chain was keyed is a plain SHA-256 of its
//! whole content, against which a redacted value could be guessed offline.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use automa_core::Role;
use automa_store::{AuditCheckpoint, AuditEntry, AuditFilter, AuditVerification};

use crate::{
    api::Page,
    auth::Principal,
    error::{ApiError, ApiResult},
    extract::ApiQuery,
    state::AppState,
};

/// What a redacted value reads as.
const REDACTED: &str = "***";

#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    /// The actor's address; for readers other than admins only on their own entries.
    pub ip: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The previous entry's hash; `null` for readers other than admins.
    pub prev_hash: Option<String>,
    /// This entry's hash; `null` for readers other than admins.
    pub hash: Option<String>,
    /// `hmac-sha256` (keyed with the server's key), or `sha256` for entries from before the chain was keyed.
    pub scheme: String,
    /// Whether parts of `details` or `ip` are hidden from the reader (only admins read every entry whole).
    pub redacted: bool,
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
            prev_hash: Some(entry.prev_hash),
            hash: Some(entry.hash),
            scheme: entry.scheme,
            redacted: false,
        }
    }
}

impl AuditEntryResponse {
    /// The entry as `reader` may see it. Only admins get hashes. Failed authentication attempts lose their
    /// details and address entirely; elsewhere the address is kept only on the reader's own entries, and
    /// every `email` in the details other than the reader's own is replaced.
    fn redacted_for(mut self, reader: &Principal) -> AuditEntryResponse {
        if reader.role.allows(Role::Admin) {
            return self;
        }
        self.prev_hash = None;
        self.hash = None;
        if self.action.starts_with("auth.") && self.action.contains("fail") {
            self.details = Value::Object(Default::default());
            self.ip = None;
            self.redacted = true;
            return self;
        }
        let own = self.actor_type == "user" && self.actor_id == Some(reader.user.id.to_string());
        let hides_address = !own && self.ip.is_some();
        if hides_address {
            self.ip = None;
        }
        self.redacted = redact_emails(&mut self.details, &reader.user.email) | hides_address;
        self
    }
}

/// Replaces every string under an `email` key, at any depth, unless it is `own`; true if any was replaced.
fn redact_emails(value: &mut Value, own: &str) -> bool {
    match value {
        Value::Object(map) => {
            let mut redacted = false;
            for (key, member) in map.iter_mut() {
                match member {
                    Value::String(email) if key == "email" && !email.eq_ignore_ascii_case(own) => {
                        *member = Value::String(REDACTED.into());
                        redacted = true;
                    }
                    other => redacted |= redact_emails(other, own),
                }
            }
            redacted
        }
        Value::Array(items) => items.iter_mut().fold(false, |redacted, item| redact_emails(item, own) | redacted),
        _ => false,
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

/// An entry's id and hash as `automa audit checkpoint` prints them, to keep outside the database.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckpointResponse {
    pub id: i64,
    pub hash: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    /// Whether every entry's hash matches its content and its predecessor (and the checkpoint, if given).
    pub ok: bool,
    pub checked: i64,
    pub first_bad_id: Option<i64>,
    /// Why verification failed.
    pub problem: Option<String>,
    /// The first entry keyed with the server's key. Entries before it carry plain SHA-256 hashes from before
    /// keying, which anyone able to write the database could have recomputed; `null` if none is keyed.
    pub keyed_from_id: Option<i64>,
    /// The last entry checked (id 0 and the genesis hash for an empty log): a checkpoint to keep elsewhere.
    pub head: CheckpointResponse,
    /// Where verification started when audit retention has deleted the oldest entries: the last deleted
    /// entry, vouched for by the keyed `audit.prune` entry that deleted it; `null` when it started at genesis.
    pub pruned_through: Option<CheckpointResponse>,
}

impl From<AuditVerification> for VerifyResponse {
    fn from(result: AuditVerification) -> Self {
        VerifyResponse {
            ok: result.ok,
            checked: result.checked,
            first_bad_id: result.first_bad_id,
            problem: result.problem,
            keyed_from_id: result.keyed_from_id,
            head: CheckpointResponse { id: result.head.id, hash: result.head.hash },
            pruned_through: result.pruned_through.map(|c| CheckpointResponse { id: c.id, hash: c.hash }),
        }
    }
}

/// A checkpoint kept from an earlier verification: the chain must still hold this entry with this hash.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// The checkpoint's entry id; give it with `checkpoint_hash`.
    pub checkpoint_id: Option<i64>,
    /// The checkpoint's hash (64 hex digits); give it with `checkpoint_id`.
    pub checkpoint_hash: Option<String>,
}

impl VerifyQuery {
    fn checkpoint(self) -> ApiResult<Option<AuditCheckpoint>> {
        match (self.checkpoint_id, self.checkpoint_hash) {
            (None, None) => Ok(None),
            (Some(id), Some(hash)) => {
                if id < 0 {
                    return Err(ApiError::invalid("checkpoint_id", "must be 0 or more"));
                }
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::invalid("checkpoint_hash", "must be 64 hexadecimal digits"));
                }
                Ok(Some(AuditCheckpoint { id, hash: hash.to_ascii_lowercase() }))
            }
            (None, Some(_)) => Err(ApiError::invalid("checkpoint_id", "is needed with checkpoint_hash")),
            (Some(_), None) => Err(ApiError::invalid("checkpoint_hash", "is needed with checkpoint_id")),
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/audit", operation_id = "listAuditEntries", tag = "audit", params(AuditQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<AuditEntryResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    reader: Principal,
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
    let listed = state.store.list_audit(&filter, page).await?;
    Ok(Json(Page::from_listed(listed, page, |entry| AuditEntryResponse::from(entry).redacted_for(&reader))))
}

/// The audit log under the seed's name; the same as `GET /audit`.
#[utoipa::path(get, path = "/logs", operation_id = "listAuditEntriesAtLogs", tag = "audit", params(AuditQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<AuditEntryResponse>)))]
pub async fn list_alias(
    state: State<AppState>,
    reader: Principal,
    query: ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntryResponse>>> {
    list(state, reader, query).await
}

/// Recompute the hash chain and name the first entry that does not match; with a checkpoint, also fail when
/// the chain no longer holds that entry with that hash (e.g. the newest entries were deleted).
#[utoipa::path(get, path = "/audit/verify", operation_id = "verifyAuditChain", tag = "audit", params(VerifyQuery), security(("bearer" = ["admin"])),
    responses((status = 200, body = VerifyResponse)))]
pub async fn verify(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<VerifyQuery>,
) -> ApiResult<Json<VerifyResponse>> {
    let checkpoint = query.checkpoint()?;
    Ok(Json(state.store.verify_audit(checkpoint.as_ref()).await?.into()))
}
