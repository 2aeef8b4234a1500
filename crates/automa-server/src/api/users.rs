//! Users. The very first user may be created without credentials and becomes admin; afterwards admins create
//! users (or anyone creates a viewer, when open sign-up is configured).

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::{Email, Role};
use automa_store::{Actor, NewUser, User, UserUpdate};

use crate::{
    api::{Page, Paging, session::check_password_length},
    auth::{self, ClientIp, Principal},
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath, ApiQuery},
    state::AppState,
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    pub id: i64,
    pub email: String,
    pub role: Role,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<User> for UserResponse {
    fn from(user: User) -> Self {
        UserResponse {
            id: user.id,
            role: user.role,
            email: user.email,
            active: user.active,
            created_at: user.created_at,
            last_login_at: user.last_login_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    /// 8 characters to 1024 bytes.
    pub password: String,
    /// Default `viewer`; the first user is always `admin`.
    pub role: Option<Role>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub email: Option<String>,
    /// 8 characters to 1024 bytes. Changing it ends every session of the user.
    pub password: Option<String>,
    /// Your current password: needed to change your own e-mail or password.
    pub current_password: Option<String>,
    pub role: Option<Role>,
    pub active: Option<bool>,
}

const MIN_PASSWORD: usize = 8;

fn check_password(password: &str) -> ApiResult<()> {
    // The byte bound comes first: counting characters of a huge string is work an attacker chooses.
    check_password_length("password", password)?;
    if password.chars().count() < MIN_PASSWORD {
        return Err(ApiError::invalid("password", format!("must be at least {MIN_PASSWORD} characters")));
    }
    Ok(())
}

/// Create a user. Without credentials this works only while there are no users: the first becomes admin.
#[utoipa::path(
    post, path = "/users", operation_id = "createUser", tag = "users", request_body = CreateUser,
    security(("bearer" = ["admin"]), ()),
    responses((status = 201, body = UserResponse), (status = 409, description = "E-mail taken", body = crate::error::ErrorBody),
        (status = 429, description = "Too many passwords being hashed at once; see `Retry-After`", body = crate::error::ErrorBody))
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Option<Principal>,
    ClientIp(ip): ClientIp,
    body: Result<ApiJson<CreateUser>, ApiError>,
) -> ApiResult<(StatusCode, Json<UserResponse>)> {
    // Who may create a user is decided before the body is looked at, so that an anonymous caller learns
    // nothing about the expected shape once the system is set up.
    let first = state.store.count_users().await? == 0;
    let (role, actor) = if first {
        (None, Actor::anonymous(ip))
    } else if let Some(admin) = principal.as_ref().filter(|p| p.role.allows(Role::Admin)) {
        (Some(Role::Viewer), admin.actor())
    } else if state.config.open_signup && principal.is_none() {
        (Some(Role::Viewer), Actor::anonymous(ip))
    } else {
        return Err(auth::require(principal.as_ref(), Role::Admin)
            .err()
            .unwrap_or_else(|| ApiError::Forbidden("only an admin creates users".into())));
    };
    let ApiJson(input) = body?;
    let email = Email::parse("email", &input.email)?;
    check_password(&input.password)?;
    let role = match role {
        None => Role::Admin,
        Some(_) if actor.actor_type == "user" => input.role.unwrap_or(Role::Viewer),
        Some(_) if input.role.is_some_and(|role| role != Role::Viewer) => {
            return Err(ApiError::Forbidden("open sign-up creates viewers only".into()));
        }
        Some(default) => default,
    };
    let password_hash = state.passwords.hash(input.password).await?;
    let new = NewUser { email: email.as_str().to_owned(), password_hash, role };
    match state.store.create_user(&actor, new, first).await? {
        Some(user) => Ok((StatusCode::CREATED, Json(user.into()))),
        None => Err(ApiError::Conflict("another request created the first user just now; log in instead".into())),
    }
}

/// List users.
#[utoipa::path(get, path = "/users", operation_id = "listUsers", tag = "users", params(Paging), security(("bearer" = ["admin"])),
    responses((status = 200, body = Page<UserResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page<UserResponse>>> {
    let page = paging.page();
    Ok(Json(Page::from_listed(state.store.list_users(page).await?, page, UserResponse::from)))
}

/// The user the credentials belong to, with the role they act with.
#[utoipa::path(get, path = "/users/me", operation_id = "getCurrentUser", tag = "users", security(("bearer" = ["viewer"])),
    responses((status = 200, body = UserResponse)))]
pub async fn me(principal: Principal) -> Json<UserResponse> {
    let mut response = UserResponse::from(principal.user);
    response.role = principal.role;
    Json(response)
}

/// Change your own e-mail or password. Needs a session (not an API token) and your `current_password`: a
/// stolen session or token alone cannot take the account over. A new password ends all your sessions.
#[utoipa::path(put, path = "/users/me", operation_id = "updateCurrentUser", tag = "users", request_body = UpdateUser, security(("bearer" = ["viewer"])),
    responses((status = 200, body = UserResponse),
        (status = 429, description = "Too many wrong current passwords, or too many passwords being checked at once; \
            see `Retry-After`", body = crate::error::ErrorBody)))]
pub async fn update_me(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserResponse>> {
    if input.role.is_some() || input.active.is_some() {
        return Err(ApiError::Forbidden("only an admin changes roles and activation, through /users/{id}".into()));
    }
    apply_update(&state, &principal, principal.user.id, input).await
}

/// A user.
#[utoipa::path(get, path = "/users/{id}", operation_id = "getUser", params(("id" = i64, Path, description = "The user's id")), tag = "users", security(("bearer" = ["admin"])),
    responses((status = 200, body = UserResponse)))]
pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<UserResponse>> {
    Ok(Json(state.store.get_user(id).await.map_err(missing("user"))?.into()))
}

/// Change a user's e-mail, password, role or activation. E-mail and password changes need a session, not an
/// API token; your own also need `current_password`, as on `/users/me`.
#[utoipa::path(put, path = "/users/{id}", operation_id = "updateUser", params(("id" = i64, Path, description = "The user's id")), tag = "users", request_body = UpdateUser, security(("bearer" = ["admin"])),
    responses((status = 200, body = UserResponse), (status = 409, description = "E-mail taken, or the last admin", body = crate::error::ErrorBody),
        (status = 429, description = "Too many wrong current passwords, or too many passwords being checked at once; \
            see `Retry-After`", body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserResponse>> {
    apply_update(&state, &principal, id, input).await
}

async fn apply_update(
    state: &AppState,
    principal: &Principal,
    id: i64,
    input: UpdateUser,
) -> ApiResult<Json<UserResponse>> {
    let email = input.email.as_deref().map(|raw| Email::parse("email", raw)).transpose()?;
    if let Some(password) = &input.password {
        check_password(password)?;
    }
    if email.is_some() || input.password.is_some() {
        // An e-mail and a password are what a login needs: changing either is taking the account, so it
        // takes someone who signed in, and for one's own account the password they signed in with.
        principal.require_session("changing an e-mail or password")?;
        if id == principal.user.id {
            confirm_current_password(state, principal, input.current_password).await?;
        }
    }
    let password_hash = match input.password {
        Some(password) => Some(state.passwords.hash(password).await?),
        None => None,
    };
    let update = UserUpdate {
        email: email.map(|e| e.as_str().to_owned()),
        password_hash,
        role: input.role,
        active: input.active,
    };
    let updated = state.store.update_user(&principal.actor(), id, update).await.map_err(missing("user"))?;
    // Streams of this user re-check their credentials: the change may have ended their sessions or role.
    state.sessions.announce_revocation(id);
    Ok(Json(updated.into()))
}

/// Checks `current_password` against the principal's, counted like a login attempt so that a stolen session
/// cannot be used to guess it faster than the login form allows.
async fn confirm_current_password(state: &AppState, principal: &Principal, current: Option<String>) -> ApiResult<()> {
    let current = current
        .ok_or_else(|| ApiError::invalid("current_password", "is required to change your own e-mail or password"))?;
    check_password_length("current_password", &current)?;
    let address = principal.ip.as_deref().unwrap_or_default();
    let attempt = state.login_limiter.reserve(address, &principal.user.email).map_err(|retry_after_seconds| {
        ApiError::TooManyRequests {
            detail: "too many wrong passwords for this account; try again later".into(),
            retry_after_seconds,
        }
    })?;
    let hash = state.store.user_credentials(&principal.user.email).await?.map(|(_, hash)| hash);
    match state.passwords.verify(current, hash).await {
        Ok(true) => {
            attempt.forget();
            Ok(())
        }
        Ok(false) => Err(ApiError::Forbidden("current_password is not your password".into())),
        Err(busy) => {
            attempt.forget();
            Err(busy)
        }
    }
}

/// Sign a user out everywhere: every session they have ends, on every server (open event streams on this one
/// at once, on others within 30 seconds). Their API tokens stay valid.
#[utoipa::path(post, path = "/users/{id}/sessions/revoke", operation_id = "revokeUserSessions", tag = "users",
    params(("id" = i64, Path, description = "The user's id")), security(("bearer" = ["admin"])),
    responses((status = 204, description = "Every session of the user has ended")))]
pub async fn revoke_sessions(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store.revoke_sessions(&principal.actor(), id, "user.sessions_revoke").await.map_err(missing("user"))?;
    state.sessions.announce_revocation(id);
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a user and their API tokens.
#[utoipa::path(delete, path = "/users/{id}", operation_id = "deleteUser", params(("id" = i64, Path, description = "The user's id")), tag = "users", security(("bearer" = ["admin"])),
    responses((status = 204), (status = 409, description = "The last admin", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store.delete_user(&principal.actor(), id).await.map_err(missing("user"))?;
    state.sessions.announce_revocation(id);
    Ok(StatusCode::NO_CONTENT)
}
