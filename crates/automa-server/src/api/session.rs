//! `POST /token`: the OAuth2 password flow. Logins and failed logins are audited; repeated failures from one
//! address are answered with 429.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::header,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use automa_store::{Actor, AuditEvent};

use crate::{
    auth::{self, ClientIp},
    error::{ApiError, ApiResult},
    extract::{ApiJson, body_error, parse_json},
    state::AppState,
};

/// The OAuth2 password form (`application/x-www-form-urlencoded`); JSON with the same fields is accepted too.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginForm {
    /// The user's e-mail address.
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: i64,
}

/// A login form in either encoding.
pub struct LoginBody(LoginForm);

impl<S: Send + Sync> FromRequest<S> for LoginBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if content_type.starts_with("application/json") {
            return ApiJson::<LoginForm>::from_request(request, state).await.map(|ApiJson(form)| LoginBody(form));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(body_error)?;
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(ApiError::BadRequest("send the login as application/x-www-form-urlencoded".into()));
        }
        let pairs: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(&bytes)
            .map(|(key, value)| (key.into_owned(), serde_json::Value::String(value.into_owned())))
            .collect();
        parse_json(&serde_json::to_vec(&pairs).map_err(anyhow::Error::from)?).map(LoginBody)
    }
}

/// Exchange an e-mail and password for a session token.
#[utoipa::path(
    post, path = "/token", operation_id = "login", security(()), tag = "auth",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse), (status = 401, description = "Wrong e-mail or password", body = crate::error::ErrorBody), (status = 429, description = "Too many failed logins", body = crate::error::ErrorBody))
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    LoginBody(form): LoginBody,
) -> ApiResult<axum::Json<TokenResponse>> {
    let client = ip.clone().unwrap_or_default();
    if let Some(retry_after_seconds) = state.login_limiter.check(&client) {
        return Err(ApiError::TooManyRequests {
            detail: "too many failed logins from this address; try again later".into(),
            retry_after_seconds,
        });
    }
    let email = form.username.trim().to_lowercase();
    let found = state.store.user_credentials(&email).await?;
    let (user, hash) = match found {
        Some((user, hash)) if user.active => (Some(user), Some(hash)),
        _ => (None, None),
    };
    let valid = auth::verify_password(form.password, hash).await;
    let Some(user) = user.filter(|_| valid) else {
        state.login_limiter.record_failure(&client);
        let event = AuditEvent::new("auth.login_failed", "user", None, json!({"email": email}));
        state.store.record_event(&Actor::anonymous(ip), event).await?;
        return Err(ApiError::Unauthorized("wrong e-mail or password".into()));
    };
    state.store.record_login(&Actor::user(user.id, ip), user.id).await?;
    Ok(axum::Json(TokenResponse {
        access_token: state.sessions.issue(user.id)?,
        token_type: "bearer",
        expires_in: state.sessions.ttl_seconds,
    }))
}
