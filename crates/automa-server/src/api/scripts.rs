//! Scripts with immutable versions. Content is validated before anything is stored: size, and Python syntax
//! checked by compiling it without running it; a syntax error names the line and column.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use automa_core::ResourceName;
use automa_store::{NewScript, Script, ScriptPackages, ScriptUpdate, ScriptVersion};

use crate::{
    api::{Page, grants, script_packages},
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    extract::{ApiJson, ApiPath, ApiQuery},
    packages::{LockedPackage, locked_packages},
    python::CheckError,
    state::AppState,
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScriptResponse {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub filename: String,
    /// The current version's source.
    pub content: String,
    /// The current version number.
    pub version: i64,
    pub sha256: String,
    pub size: i64,
    /// The current version's packages.
    #[serde(flatten)]
    pub packages: PackagesResponse,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A version's packages: what it asks for and what the server locked that to when the version was saved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PackagesResponse {
    /// PEP 508 requirements, from the script's `# /// script` block or given explicitly.
    pub dependencies: Vec<String>,
    /// The block's `requires-python`.
    pub requires_python: Option<String>,
    /// Every package pinned with its hashes (`uv pip compile --universal --generate-hashes`); null without
    /// dependencies.
    pub lock: Option<String>,
    /// The lock's packages, in its order.
    pub locked_packages: Vec<LockedPackage>,
}

impl From<ScriptPackages> for PackagesResponse {
    fn from(packages: ScriptPackages) -> Self {
        PackagesResponse {
            dependencies: packages.dependencies.0,
            requires_python: packages.requires_python,
            locked_packages: packages.lock.as_deref().map(locked_packages).unwrap_or_default(),
            lock: packages.lock,
        }
    }
}

impl From<Script> for ScriptResponse {
    fn from(script: Script) -> Self {
        ScriptResponse {
            id: script.id,
            name: script.name,
            description: script.description,
            filename: script.filename,
            content: script.content,
            version: script.version,
            sha256: script.sha256,
            size: script.size,
            packages: script.packages.into(),
            created_by: script.created_by,
            created_at: script.created_at,
            updated_at: script.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionResponse {
    pub script_id: i64,
    pub version: i64,
    pub content: String,
    pub sha256: String,
    pub size: i64,
    #[serde(flatten)]
    pub packages: PackagesResponse,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
}

impl From<ScriptVersion> for VersionResponse {
    fn from(version: ScriptVersion) -> Self {
        VersionResponse {
            script_id: version.script_id,
            version: version.version,
            content: version.content,
            sha256: version.sha256,
            size: version.size,
            packages: version.packages.into(),
            created_by: version.created_by,
            created_at: version.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateScript {
    pub name: String,
    /// Python source, UTF-8.
    pub content: String,
    #[serde(default)]
    pub description: String,
    /// The file name the script runs as (default `main.py`).
    pub filename: Option<String>,
    /// PEP 508 requirements, when the content has no `# /// script` block saying them (both: they must agree).
    pub dependencies: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateScript {
    pub name: Option<String>,
    /// New source: appends a version when it differs from the current one.
    pub content: Option<String>,
    pub description: Option<String>,
    pub filename: Option<String>,
    /// New PEP 508 requirements: they append a version when they differ, locked anew. Absent: the ones given
    /// before stay, unless the content's `# /// script` block says otherwise.
    pub dependencies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScriptQuery {
    /// Only scripts whose name contains this, case-insensitively.
    pub name: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

fn parse_filename(raw: &str) -> ApiResult<String> {
    let valid = (4..=100).contains(&raw.len())
        && raw.ends_with(".py")
        && !raw.starts_with('.')
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid("filename", "must be a plain file name ending in .py (letters, digits, '_', '-', '.')"))
    }
}

/// Checks size and syntax; returns the content unchanged when it is fit to store.
pub(crate) async fn check_content(state: &AppState, filename: &str, content: String) -> ApiResult<String> {
    let limit = state.config.max_script_bytes;
    if content.len() > limit {
        return Err(ApiError::invalid("content", format!("is {} bytes; the limit is {limit}", content.len())));
    }
    match state.syntax.check(filename, &content).await {
        Ok(None) => Ok(content),
        Ok(Some(problem)) => {
            let position = match (problem.line, problem.column) {
                (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
                (Some(line), None) => format!(" at line {line}"),
                _ => String::new(),
            };
            Err(ApiError::invalid("content", format!("Python syntax error{position}: {}", problem.message)))
        }
        Err(CheckError::NoInterpreter) => Err(ApiError::Unavailable(CheckError::NoInterpreter.to_string())),
        Err(error @ CheckError::Failed(_)) => Err(ApiError::invalid("content", error.to_string())),
    }
}

/// List scripts with their current version.
#[utoipa::path(get, path = "/scripts", operation_id = "listScripts", tag = "scripts", params(ScriptQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<ScriptResponse>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ScriptQuery>,
) -> ApiResult<Json<Page<ScriptResponse>>> {
    let page = automa_store::Page::new(query.limit, query.offset);
    let listed = state.store.list_scripts(query.name.as_deref(), page).await?;
    Ok(Json(Page::from_listed(listed, page, ScriptResponse::from)))
}

/// Create a script (version 1).
#[utoipa::path(post, path = "/scripts", operation_id = "createScript", tag = "scripts", request_body = CreateScript, security(("bearer" = ["operator"])),
    responses((status = 201, body = ScriptResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid content or dependencies, dependencies that cannot be resolved, or no uv to lock them with", body = crate::error::ErrorBody),
        (status = 503, description = "The server has no Python interpreter to lock dependencies for, or is locking other scripts' dependencies (with `Retry-After`)", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateScript>,
) -> ApiResult<(StatusCode, Json<ScriptResponse>)> {
    let name = ResourceName::parse("name", &input.name)?;
    let filename = parse_filename(input.filename.as_deref().unwrap_or("main.py"))?;
    let content = check_content(&state, &filename, input.content).await?;
    let packages = script_packages::packages_for(&state, Some(&content), input.dependencies.as_deref(), None)
        .await?
        .unwrap_or_default();
    let new = NewScript { name: name.into_inner(), description: input.description, filename, content, packages };
    let script = state.store.create_script(&principal.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(script.into())))
}

/// A script with its current version.
#[utoipa::path(get, path = "/scripts/{id}", operation_id = "getScript", params(("id" = i64, Path, description = "The script's id")), tag = "scripts", security(("bearer" = ["viewer"])),
    responses((status = 200, body = ScriptResponse)))]
pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<ScriptResponse>> {
    Ok(Json(state.store.get_script(id).await.map_err(missing("script"))?.into()))
}

/// Update a script; new content appends a version.
#[utoipa::path(put, path = "/scripts/{id}", operation_id = "updateScript", params(("id" = i64, Path, description = "The script's id")), tag = "scripts", request_body = UpdateScript, security(("bearer" = ["operator"])),
    responses((status = 200, body = ScriptResponse), (status = 409, description = "Name taken", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid content or dependencies, dependencies that cannot be resolved, or no uv to lock them with", body = crate::error::ErrorBody),
        (status = 503, description = "The server has no Python interpreter to lock dependencies for, or is locking other scripts' dependencies (with `Retry-After`)", body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<UpdateScript>,
) -> ApiResult<Json<ScriptResponse>> {
    let current = state.store.get_script(id).await.map_err(missing("script"))?;
    let name = input.name.map(|name| ResourceName::parse("name", &name).map(ResourceName::into_inner)).transpose()?;
    let filename = input.filename.as_deref().map(parse_filename).transpose()?;
    let content = match input.content {
        Some(content) if content != current.content => {
            grants::authorize_script_change(&state, &principal, id).await?;
            Some(check_content(&state, filename.as_deref().unwrap_or(&current.filename), content).await?)
        }
        Some(_) | None => None,
    };
    // Before locking: an operator who may not change the script must not make the server resolve and fetch
    // packages. Dependencies the same as the stored ones keep the stored lock, so they need no grant.
    let new_dependencies = input.dependencies.as_ref().is_some_and(|listed| *listed != current.packages.dependencies.0);
    if content.is_none() && new_dependencies {
        grants::authorize_script_change(&state, &principal, id).await?;
    }
    let packages =
        script_packages::packages_for(&state, content.as_deref(), input.dependencies.as_deref(), Some(&current))
            .await?;
    let update =
        ScriptUpdate { name, description: input.description, filename, content, packages, expected_version: None };
    Ok(Json(state.store.update_script(&principal.actor(), id, update).await.map_err(missing("script"))?.into()))
}

/// Delete a script and its versions; refused (409) while a task uses it.
#[utoipa::path(delete, path = "/scripts/{id}", operation_id = "deleteScript", params(("id" = i64, Path, description = "The script's id")), tag = "scripts", security(("bearer" = ["operator"])),
    responses((status = 204), (status = 409, description = "Used by a task", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    state.store.delete_script(&principal.actor(), id).await.map_err(missing("script"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A script's versions, newest first.
#[utoipa::path(get, path = "/scripts/{id}/versions", operation_id = "listScriptVersions", tag = "scripts", params(("id" = i64, Path, description = "The script's id"), VersionQuery), security(("bearer" = ["viewer"])),
    responses((status = 200, body = Page<VersionResponse>)))]
pub async fn versions(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<VersionQuery>,
) -> ApiResult<Json<Page<VersionResponse>>> {
    let page = automa_store::Page::new(query.limit, query.offset);
    let listed = state.store.list_script_versions(id, page).await.map_err(missing("script"))?;
    Ok(Json(Page::from_listed(listed, page, VersionResponse::from)))
}

/// One version of a script.
#[utoipa::path(get, path = "/scripts/{id}/versions/{version}", operation_id = "getScriptVersion", params(("id" = i64, Path, description = "The script's id"), ("version" = i64, Path, description = "The version number, from 1")), tag = "scripts", security(("bearer" = ["viewer"])),
    responses((status = 200, body = VersionResponse)))]
pub async fn version(
    State(state): State<AppState>,
    ApiPath((id, version)): ApiPath<(i64, i64)>,
) -> ApiResult<Json<VersionResponse>> {
    Ok(Json(state.store.get_script_version(id, version).await.map_err(missing("script version"))?.into()))
}
