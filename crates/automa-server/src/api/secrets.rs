//! Secrets: values are write-only. They are encrypted before they reach the store, given to runs as
//! environment variables by name, and masked in run output; no route ever returns one. Each secret has a
//! policy, set by its owner (the user who created it) or an admin: which tasks may use it and which agents may
//! receive it. The policy is the protection; masking only tidies logs (docs/security.md).

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{Labels, Role, params::check_secret_name};
use automa_store::{SecretInfo, SecretPolicy};

use crate::{
    api::{Page, Paging},
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

/// The largest secret value accepted.
const MAX_VALUE_BYTES: usize = 32 * 1024;
/// The most tasks or agents one policy names.
const MAX_POLICY_IDS: usize = 1000;

/// Who may use a secret. Absent fields take the safe default: no task, and the embedded agent only.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretPolicyBody {
    /// Every task may use the secret. Ad-hoc runs never may, unless an admin starts them.
    #[serde(default)]
    pub all_tasks: bool,
    /// The tasks that may use the secret (when not `all_tasks`). A task created or edited by the secret's
    /// owner or an admin to name the secret is added here.
    #[serde(default)]
    pub task_ids: Vec<i64>,
    /// Agents that may receive the secret, by id. With `agent_labels` empty too: the embedded agent only.
    #[serde(default)]
    pub agent_ids: Vec<i64>,
    /// Agents that may receive the secret: any agent with one of these labels.
    #[serde(default)]
    pub agent_labels: Vec<String>,
}

impl SecretPolicyBody {
    fn parse(self) -> ApiResult<SecretPolicy> {
        if self.all_tasks && !self.task_ids.is_empty() {
            return Err(ApiError::invalid("policy.task_ids", "give all_tasks or task_ids, not both"));
        }
        for (field, ids) in [("policy.task_ids", &self.task_ids), ("policy.agent_ids", &self.agent_ids)] {
            if ids.len() > MAX_POLICY_IDS {
                return Err(ApiError::invalid(field, format!("at most {MAX_POLICY_IDS} ids")));
            }
            if let Some(index) = ids.iter().enumerate().position(|(index, id)| ids[..index].contains(id)) {
                return Err(ApiError::invalid(&format!("{field}[{index}]"), "is listed twice"));
            }
        }
        Ok(SecretPolicy {
            all_tasks: self.all_tasks,
            task_ids: self.task_ids,
            agent_ids: self.agent_ids,
            agent_labels: Labels::parse("policy.agent_labels", self.agent_labels)?.into_inner(),
        })
    }
}

impl From<SecretPolicy> for SecretPolicyBody {
    fn from(policy: SecretPolicy) -> Self {
        SecretPolicyBody {
            all_tasks: policy.all_tasks,
            task_ids: policy.task_ids,
            agent_ids: policy.agent_ids,
            agent_labels: policy.agent_labels,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    /// The environment variable name runs see.
    pub name: String,
    pub value: String,
    /// Default: no task may use it yet, and only the embedded agent may receive it.
    pub policy: Option<SecretPolicyBody>,
}

/// A new value, a new policy (replacing the whole policy), or both.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSecret {
    pub value: Option<String>,
    pub policy: Option<SecretPolicyBody>,
}

/// A secret's name, owner, policy and dates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SecretResponse {
    pub id: i64,
    pub name: String,
    /// The owner: with admins, the only user who may change the secret, its policy, or delete it.
    pub created_by: Option<i64>,
    pub policy: SecretPolicyBody,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<SecretInfo> for SecretResponse {
    fn from(info: SecretInfo) -> Self {
        SecretResponse {
            policy: info.policy().into(),
            id: info.id,
            name: info.name,
            created_by: info.created_by,
            created_at: info.created_at,
            updated_at: info.updated_at,
        }
    }
}

fn check_value(value: &str) -> ApiResult<()> {
    if value.is_empty() || value.len() > MAX_VALUE_BYTES || value.contains('\0') {
        return Err(ApiError::invalid("value", format!("must be 1 to {MAX_VALUE_BYTES} bytes, without NUL")));
    }
    Ok(())
}

/// Whether the principal may change the secret, its policy, or delete it: its owner, or an admin.
pub(crate) fn may_manage(principal: &Principal, secret: &SecretInfo) -> bool {
    principal.role == Role::Admin || secret.created_by == Some(principal.user.id)
}

fn require_manager(principal: &Principal, secret: &SecretInfo) -> ApiResult<()> {
    if may_manage(principal, secret) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("only the owner of secret '{}' or an admin may change it", secret.name)))
    }
}

/// Secret names and policies (never values).
#[utoipa::path(get, path = "/secrets", operation_id = "listSecrets", tag = "secrets", params(Paging), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<SecretResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page<SecretResponse>>> {
    let page = paging.page();
    Ok(Json(Page::from_listed(state.store.list_secrets(page).await?, page, SecretResponse::from)))
}

/// Create a secret; the caller owns it.
#[utoipa::path(post, path = "/secrets", operation_id = "createSecret", tag = "secrets", request_body = CreateSecret, security(("bearer" = ["operator"])),
    responses((status = 201, body = SecretResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateSecret>,
) -> ApiResult<(StatusCode, Json<SecretResponse>)> {
    check_secret_name("name", &input.name)?;
    check_value(&input.value)?;
    let policy = input.policy.unwrap_or_default().parse()?;
    let sealed = state.execution.sealer().seal(&input.name, &input.value);
    let info = state.store.create_secret(&principal.actor(), sealed, &policy).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// A secret's name, owner and policy.
#[utoipa::path(get, path = "/secrets/{name}", operation_id = "getSecret", tag = "secrets", security(("bearer" = ["viewer"])),
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, body = SecretResponse)))]
pub async fn get(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> ApiResult<Json<SecretResponse>> {
    Ok(Json(state.store.get_secret(&name).await.map_err(missing("secret"))?.into()))
}

/// Replace a secret's value, its policy, or both (owner or admin).
#[utoipa::path(put, path = "/secrets/{name}", operation_id = "updateSecret", tag = "secrets", request_body = UpdateSecret, security(("bearer" = ["operator"])),
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, body = SecretResponse)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(input): ApiJson<UpdateSecret>,
) -> ApiResult<Json<SecretResponse>> {
    if input.value.is_none() && input.policy.is_none() {
        return Err(ApiError::invalid("value", "give a value, a policy, or both"));
    }
    let current = state.store.get_secret(&name).await.map_err(missing("secret"))?;
    require_manager(&principal, &current)?;
    let sealed = match &input.value {
        Some(value) => {
            check_value(value)?;
            Some(state.execution.sealer().seal(&name, value))
        }
        None => None,
    };
    let policy = input.policy.map(SecretPolicyBody::parse).transpose()?;
    let info = state
        .store
        .update_secret(&principal.actor(), &name, sealed, policy.as_ref())
        .await
        .map_err(missing("secret"))?;
    if policy.is_some() {
        // Queued runs naming the secret may now go to agents its old policy excluded.
        state.execution.wake_claimers();
    }
    Ok(Json(info.into()))
}

/// Delete a secret (owner or admin); runs that name it fail until it exists again.
#[utoipa::path(delete, path = "/secrets/{name}", operation_id = "deleteSecret", tag = "secrets", security(("bearer" = ["operator"])),
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 204)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let current = state.store.get_secret(&name).await.map_err(missing("secret"))?;
    require_manager(&principal, &current)?;
    state.store.delete_secret(&principal.actor(), &name).await.map_err(missing("secret"))?;
    // Queued runs naming it no longer wait for an agent its policy admits: any agent takes them, to fail them.
    state.execution.wake_claimers();
    Ok(StatusCode::NO_CONTENT)
}
