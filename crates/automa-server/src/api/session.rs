//! `POST /token`: the OAuth2 password flow, and `POST /logout`. Logins and failed logins are audited
//! (repeated failures as one summary a minute); attempts are limited per address and per account.

use axum::{
    extract::{FromRequest, Request, State},
    http::{StatusCode, header},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use automa_store::{Actor, AuditEvent};

use crate::{
    auth::{ClientIp, Principal},
    error::{ApiError, ApiResult},
    extract::parse_json,
    limits::{FAILED_LOGIN_FLUSH, FailedLoginSummary, Noted},
    state::AppState,
};

/// The OAuth2 password form (`application/x-www-form-urlencoded`); JSON with the same fields is accepted too.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginForm {
    /// The user's e-mail address.
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
}

/// The largest login body accepted. A login is two short fields; anything bigger is not a login, and reading
/// it (up to the general body limit) would only cost memory.
pub const LOGIN_BODY_LIMIT: usize = 4 * 1024;

/// How much of an oversized login body is read and thrown away before answering 413. Closing a connection
/// with unread data resets it, and the client may then never see the 413; reading a little more lets honest
/// clients get their answer, costs no memory, and an abusive body beyond this is simply cut off.
const OVERSIZED_BODY_DRAIN: usize = 1024 * 1024;

async fn read_login_body(body: axum::body::Body) -> ApiResult<Vec<u8>> {
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0_usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| ApiError::BadRequest(format!("reading the body: {error}")))?;
        seen += chunk.len();
        if seen > OVERSIZED_BODY_DRAIN {
            break;
        }
        if seen <= LOGIN_BODY_LIMIT {
            bytes.extend_from_slice(&chunk);
        }
    }
    if seen > LOGIN_BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge(format!("a login body is at most {LOGIN_BODY_LIMIT} bytes")));
    }
    Ok(bytes)
}

/// A login form in either encoding.
pub struct LoginBody(LoginForm);

impl<S: Send + Sync> FromRequest<S> for LoginBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = read_login_body(request.into_body()).await?;
        if content_type.starts_with("application/json") {
            return parse_json(&bytes).map(LoginBody);
        }
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(ApiError::BadRequest("send the login as application/x-www-form-urlencoded".into()));
        }
        let pairs: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(&bytes)
            .map(|(key, value)| (key.into_owned(), serde_json::Value::String(value.into_owned())))
            .collect();
        parse_json(&serde_json::to_vec(&pairs).map_err(anyhow::Error::from)?).map(LoginBody)
    }
}

/// Exchange an e-mail and password for a session token. Attempts are limited per client address and per
/// account (429 with `Retry-After`), and so is the number of passwords checked at once.
#[utoipa::path(
    post, path = "/token", operation_id = "login", security(()), tag = "auth",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "Wrong e-mail or password", body = crate::error::ErrorBody),
        (status = 413, description = "A body over 4 KiB", body = crate::error::ErrorBody),
        (status = 429, description = "Too many login attempts from this address or for this account, or too many \
            passwords being checked at once; `Retry-After` says when to try again", body = crate::error::ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    LoginBody(form): LoginBody,
) -> ApiResult<axum::Json<TokenResponse>> {
    let email = bounded_username(&form.username)?;
    check_password_length("password", &form.password)?;
    let attempt =
        state.login_limiter.reserve(ip.as_deref().unwrap_or_default(), &email).map_err(|retry_after_seconds| {
            ApiError::TooManyRequests {
                detail: "too many failed logins from this address or for this account; try again later".into(),
                retry_after_seconds,
            }
        })?;
    let (user, hash) = match state.store.user_credentials(&email).await? {
        Some((user, hash)) if user.active => (Some(user), Some(hash)),
        _ => (None, None),
    };
    let valid = match state.passwords.verify(form.password, hash).await {
        Ok(valid) => valid,
        Err(busy) => {
            attempt.forget();
            return Err(busy);
        }
    };
    let Some(user) = user.filter(|_| valid) else {
        drop(attempt);
        record_failure(&state, ip, email).await?;
        return Err(ApiError::Unauthorized("wrong e-mail or password".into()));
    };
    attempt.forget();
    state.store.record_login(&Actor::user(user.id, ip), user.id).await?;
    Ok(axum::Json(TokenResponse {
        access_token: state.sessions.issue(&user)?,
        token_type: "bearer".to_owned(),
        expires_in: state.sessions.ttl_seconds,
    }))
}

/// The longest e-mail address there is (RFC 5321 path limit).
const MAX_EMAIL: usize = 254;

/// The attempted e-mail, normalised, refused when no account could have it: its length is bounded before it
/// is looked up or recorded anywhere.
fn bounded_username(raw: &str) -> ApiResult<String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_EMAIL {
        return Err(ApiError::invalid("username", format!("must be at most {MAX_EMAIL} characters")));
    }
    Ok(trimmed.to_lowercase())
}

/// The most a password may be, in bytes, checked before it is hashed: argon2 reads all of it.
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub fn check_password_length(field: &str, password: &str) -> ApiResult<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid(field, format!("must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
}

/// Audits a failed login: the first of a window at once, the rest as one summary when the window closes.
async fn record_failure(state: &AppState, ip: Option<String>, email: String) -> ApiResult<()> {
    let (noted, closed) = state.failed_logins.note(ip.as_deref(), &email);
    write_summaries(state, closed).await?;
    if noted == Noted::First {
        let event = AuditEvent::new("auth.login_failed", "user", None, json!({"email": email, "count": 1}));
        let id = state.store.record_event(&Actor::anonymous(ip.clone()), event).await?;
        state.failed_logins.first_written(ip.as_deref(), &email, id);
    }
    Ok(())
}

/// Writes one audit entry per summary of repeated failed logins.
pub async fn write_summaries(state: &AppState, summaries: Vec<FailedLoginSummary>) -> ApiResult<()> {
    for summary in summaries {
        let details = json!({
            "email": summary.email,
            "count": summary.count,
            "window_started_at": summary.window_started_at,
            "first_entry_id": summary.first_entry_id,
            "summary": true,
        });
        let event = AuditEvent::new("auth.login_failed", "user", None, details);
        state.store.record_event(&Actor::anonymous(summary.address), event).await?;
    }
    Ok(())
}

/// Writes out closed windows of failed logins every [`FAILED_LOGIN_FLUSH`] while any is open, until `stopping`,
/// then all of them. With none open it sleeps until one opens.
pub async fn flush_failed_logins(state: AppState, mut stopping: tokio::sync::watch::Receiver<bool>) {
    loop {
        let flush_due = async {
            state.failed_logins.any_open().await;
            tokio::time::sleep(FAILED_LOGIN_FLUSH).await;
        };
        let stop = tokio::select! {
            () = flush_due => false,
            _ = stopping.wait_for(|stopping| *stopping) => true,
        };
        if let Err(error) = write_summaries(&state, state.failed_logins.take_closed(stop)).await {
            tracing::error!(%error, "writing the summary of failed logins");
        }
        if stop {
            return;
        }
    }
}

/// End your session, and every other session you have: sessions carry your session epoch, which this moves
/// on. API tokens stay valid (revoke them with `DELETE /tokens/{id}`). Needs a session, not an API token.
#[utoipa::path(post, path = "/logout", operation_id = "logout", tag = "auth", security(("bearer" = ["viewer"])),
    responses((status = 204, description = "Every session of the caller has ended")))]
pub async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<StatusCode> {
    principal.require_session("logging out")?;
    state.store.revoke_sessions(&principal.actor(), principal.user.id, "auth.logout").await?;
    state.sessions.announce_revocation(principal.user.id);
    Ok(StatusCode::NO_CONTENT)
}
