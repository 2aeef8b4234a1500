//! `GET /setup`: whether the server still waits for its first user, so a client (the dashboard's first-admin
//! page) can offer to create the admin instead of a login form. Public: it reveals only whether any user exists.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiResult, state::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct SetupStatus {
    /// True while no user exists: `POST /users` without credentials then creates the first admin.
    pub needs_admin: bool,
}

/// Whether the first admin still has to be created.
#[utoipa::path(get, path = "/setup", operation_id = "getSetupStatus", security(()), tag = "auth", responses((status = 200, body = SetupStatus)))]
pub async fn status(State(state): State<AppState>) -> ApiResult<Json<SetupStatus>> {
    Ok(Json(SetupStatus { needs_admin: state.store.count_users().await? == 0 }))
}
