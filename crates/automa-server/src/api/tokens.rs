//! API tokens of the current user: for automation, used as Bearer tokens. The token is shown once, at
//! creation; the server keeps only its hash.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{ResourceName, Role};
use automa_store::{ApiToken, NewApiToken};

use crate::{
    auth::{self, Credential, Principal},
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath},
    state::AppState,
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    /// The most the token may do, below its owner's role.
    pub role: Option<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<ApiToken> for TokenInfo {
    fn from(token: ApiToken) -> Self {
        TokenInfo {
            id: token.id,
            role: token.role_cap.as_deref().and_then(|r| r.parse().ok()),
            name: token.name,
            prefix: token.prefix,
            expires_at: token.expires_at,
            last_used_at: token.last_used_at,
            revoked_at: token.revoked_at,
            created_at: token.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The token itself. It is shown only in this response.
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// Caps the token below your own role.
    pub role: Option<Role>,
    /// Days until it expires (1-3650); never, if absent.
    pub expires_in_days: Option<i64>,
}

/// Your API tokens, revoked ones included.
#[utoipa::path(get, path = "/tokens", operation_id = "listTokens", tag = "tokens", security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<TokenInfo>)))]
pub async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(state.store.list_tokens(principal.user.id).await?.into_iter().map(TokenInfo::from).collect()))
}

/// Create an API token; the response is the only time the token is shown. Created with an API token, the new
/// one must be capped at or below it (else 403), and expires no later than it.
#[utoipa::path(post, path = "/tokens", operation_id = "createToken", tag = "tokens", request_body = CreateToken, security(("bearer" = ["viewer"])),
    responses((status = 201, body = CreatedToken), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = ResourceName::parse("name", &input.name)?;
    if input.role.is_some_and(|role| !principal.role.allows(role)) {
        return Err(ApiError::invalid("role", format!("cannot exceed your own role ({})", principal.role)));
    }
    let expires_at = match input.expires_in_days {
        Some(days @ 1..=3650) => Some(automa_store::now() + Duration::days(days)),
        Some(_) => return Err(ApiError::invalid("expires_in_days", "must be between 1 and 3650")),
        None => None,
    };
    let expires_at = within_creating_token(&principal, input.role, expires_at)?;
    let token = auth::random_token(auth::API_TOKEN_PREFIX);
    let new = NewApiToken {
        user_id: principal.user.id,
        name: name.into_inner(),
        token_hash: auth::token_hash(&token),
        prefix: token[..auth::API_TOKEN_PREFIX.len() + 6].to_owned(),
        role_cap: input.role,
        expires_at,
    };
    let created = state.store.create_token(&principal.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { info: created.into(), token })))
}

/// A token created with an API token gets no more than that token has: a role at or below its cap (an
/// uncapped token from a capped one would follow the owner's role, now and after a promotion), and an expiry
/// no later than its own (else a short-lived token could renew itself forever); a later or absent expiry is
/// brought forward to it. Gives the new token's expiry.
fn within_creating_token(
    principal: &Principal,
    role: Option<Role>,
    expires_at: Option<DateTime<Utc>>,
) -> ApiResult<Option<DateTime<Utc>>> {
    let Credential::ApiToken { capped, expires_at: creator_expires_at, .. } = &principal.credential else {
        return Ok(expires_at);
    };
    if *capped && role.is_none() {
        return Err(ApiError::Forbidden(format!(
            "this API token is capped at {}; the tokens it creates must name a role at or below that",
            principal.role
        )));
    }
    Ok(match (expires_at, *creator_expires_at) {
        (Some(requested), Some(limit)) => Some(requested.min(limit)),
        (requested, limit) => requested.or(limit),
    })
}

/// Revoke one of your API tokens. Revoking twice is harmless.
#[utoipa::path(delete, path = "/tokens/{id}", operation_id = "revokeToken", params(("id" = i64, Path, description = "The API token's id")), tag = "tokens", security(("bearer" = ["viewer"])),
    responses((status = 200, body = TokenInfo)))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TokenInfo>> {
    let token = state.store.revoke_token(&principal.actor(), principal.user.id, id).await.map_err(missing("token"))?;
    state.sessions.announce_revocation(principal.user.id);
    Ok(Json(token.into()))
}
