//! Secrets: values are write-only. They are encrypted before they reach the store, given to runs as
//! environment variables by name, and masked in run output; no route ever returns one.

use axum::{Json, extract::State, http::StatusCode};
use serde::Deserialize;
use utoipa::ToSchema;

use automa_store::SecretInfo;

use crate::{
    api::{Page, Paging, tasks::is_env_name},
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

/// The largest secret value accepted.
const MAX_VALUE_BYTES: usize = 32 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    /// The environment variable name runs see.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSecret {
    pub value: String,
}

/// A secret's name and dates.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct SecretResponse {
    pub id: i64,
    pub name: String,
    pub created_by: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<SecretInfo> for SecretResponse {
    fn from(info: SecretInfo) -> Self {
        SecretResponse {
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

/// Secret names (never values).
#[utoipa::path(get, path = "/secrets", operation_id = "listSecrets", tag = "secrets", params(Paging), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<SecretResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page<SecretResponse>>> {
    let page = paging.page();
    Ok(Json(Page::from_listed(state.store.list_secrets(page).await?, page, SecretResponse::from)))
}

/// Create a secret.
#[utoipa::path(post, path = "/secrets", operation_id = "createSecret", tag = "secrets", request_body = CreateSecret, security(("bearer" = ["operator"])),
    responses((status = 201, body = SecretResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateSecret>,
) -> ApiResult<(StatusCode, Json<SecretResponse>)> {
    if !is_env_name(&input.name) {
        return Err(ApiError::invalid("name", "must be usable as a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
    }
    check_value(&input.value)?;
    let sealed = state.execution.sealer().seal(&input.name, &input.value);
    let info = state.store.put_secret(&principal.actor(), sealed, false).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Replace a secret's value.
#[utoipa::path(put, path = "/secrets/{name}", operation_id = "updateSecret", params(("name" = String, Path, description = "The secret's name")), tag = "secrets", request_body = UpdateSecret, security(("bearer" = ["operator"])),
    responses((status = 200, body = SecretResponse)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(input): ApiJson<UpdateSecret>,
) -> ApiResult<Json<SecretResponse>> {
    check_value(&input.value)?;
    let sealed = state.execution.sealer().seal(&name, &input.value);
    Ok(Json(state.store.put_secret(&principal.actor(), sealed, true).await.map_err(missing("secret"))?.into()))
}

/// Delete a secret; runs that name it fail until it exists again.
#[utoipa::path(delete, path = "/secrets/{name}", operation_id = "deleteSecret", params(("name" = String, Path, description = "The secret's name")), tag = "secrets", security(("bearer" = ["operator"])),
    responses((status = 204)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_secret(&principal.actor(), &name).await.map_err(missing("secret"))?;
    Ok(StatusCode::NO_CONTENT)
}
