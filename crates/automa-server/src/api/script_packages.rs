//! A script version's packages on save: its requirements come from its PEP 723 block or from the request's
//! `dependencies`, are validated (a malformed one is a 422 naming it) and are locked with uv into exact versions
//! and hashes stored with the version. Editing the code keeps the lock while the requirements stay the same, so
//! packages change only when someone asks: "update lock" (`POST /scripts/{id}/lock`) re-resolves them into a
//! new version.

use axum::{Json, extract::State, http::StatusCode};

use automa_core::{
    InvalidField, Requirement, RequiresPython,
    dependencies::{parse_requirements, read_script_metadata},
};
use automa_store::{Script, ScriptPackages, ScriptUpdate};

use crate::{
    api::{grants, scripts::VersionResponse},
    auth::Principal,
    error::{ApiError, ApiResult, missing},
    extract::ApiPath,
    packages::LockError,
    state::AppState,
};

/// The packages of a version about to be saved with `content`, or `None` when they stay as they are (an
/// update that neither brings content nor names dependencies). `explicit` is the request's `dependencies`;
/// `current` the script being updated.
pub(crate) async fn packages_for(
    state: &AppState,
    content: Option<&str>,
    explicit: Option<&[String]>,
    current: Option<&Script>,
) -> ApiResult<Option<ScriptPackages>> {
    if content.is_none() && explicit.is_none() {
        return Ok(None);
    }
    let content = content.or(current.map(|script| script.content.as_str())).unwrap_or_default();
    let block = read_script_metadata(content)?.unwrap_or_default();
    let explicit = explicit.map(|list| parse_requirements("dependencies", list)).transpose()?;
    let requirements = match (block.dependencies, explicit) {
        (Some(from_block), Some(explicit)) if from_block != explicit => {
            return Err(ApiError::invalid(
                "dependencies",
                "differ from the script's `# /// script` block: give them in one place (or the same in both)",
            ));
        }
        (Some(requirements), _) | (None, Some(requirements)) => requirements,
        // Updates are partial: dependencies given explicitly before stay until the request changes them, but
        // those a block declared leave with the block.
        (None, None) => match current {
            Some(script) if !declared_in_block(&script.content) => stored_requirements(&script.packages),
            _ => Vec::new(),
        },
    };
    let requires_python = block.requires_python;
    let dependencies = requirements.iter().map(|requirement| requirement.as_str().to_owned()).collect();
    let mut packages = ScriptPackages::new(
        dependencies,
        requires_python.as_ref().map(|specifiers| specifiers.as_str().to_owned()),
        None,
    );
    if requirements.is_empty() {
        return Ok(Some(packages));
    }
    let unchanged = current.filter(|script| {
        script.packages.lock.is_some()
            && stored_requirements(&script.packages) == requirements
            && stored_requires_python(&script.packages) == requires_python
    });
    packages.lock = match unchanged {
        Some(script) => script.packages.lock.clone(),
        None => Some(lock(state, &requirements, requires_python.as_ref()).await?),
    };
    Ok(Some(packages))
}

fn declared_in_block(content: &str) -> bool {
    read_script_metadata(content).ok().flatten().is_some_and(|block| block.dependencies.is_some())
}

/// The requirements a version was saved with: they were validated then.
fn stored_requirements(packages: &ScriptPackages) -> Vec<Requirement> {
    packages.dependencies.0.iter().filter_map(|text| Requirement::parse(text).ok()).collect()
}

fn stored_requires_python(packages: &ScriptPackages) -> Option<RequiresPython> {
    packages.requires_python.as_deref().and_then(|text| RequiresPython::parse(text).ok())
}

async fn lock(
    state: &AppState,
    requirements: &[Requirement],
    requires_python: Option<&RequiresPython>,
) -> ApiResult<String> {
    state.locker.lock(requirements, requires_python).await.map_err(|error| match error {
        LockError::NoInterpreter => ApiError::Unavailable(error.to_string()),
        LockError::Busy => {
            ApiError::Busy { detail: error.to_string(), retry_after_seconds: crate::packages::BUSY_RETRY_AFTER_SECONDS }
        }
        other => ApiError::Unprocessable(InvalidField::new("dependencies", other.to_string())),
    })
}

/// Update the lock: resolve the newest version's dependencies again and save the result as a new version (201).
/// When the resolution gives the lock the version already has, nothing is saved and that version is answered
/// (200).
#[utoipa::path(post, path = "/scripts/{id}/lock", operation_id = "lockScript", params(("id" = i64, Path, description = "The script's id")), tag = "scripts", security(("bearer" = ["operator"])),
    responses(
        (status = 201, description = "A new version with the new lock", body = VersionResponse),
        (status = 200, description = "The lock did not change: the current version", body = VersionResponse),
        (status = 409, description = "The script has no dependencies, or changed while it was locked", body = crate::error::ErrorBody),
        (status = 422, description = "The dependencies could not be resolved, or no uv is configured", body = crate::error::ErrorBody),
        (status = 503, description = "The server has no Python interpreter to lock for, or is locking other scripts' dependencies (with `Retry-After`)", body = crate::error::ErrorBody),
    ))]
pub async fn update_lock(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<VersionResponse>)> {
    let script = state.store.get_script(id).await.map_err(missing("script"))?;
    // Refused callers learn nothing about the script's dependencies.
    grants::authorize_script_change(&state, &principal, id).await?;
    let requirements = stored_requirements(&script.packages);
    if requirements.is_empty() {
        return Err(ApiError::Conflict("the script has no dependencies to lock".into()));
    }
    let fresh = lock(&state, &requirements, stored_requires_python(&script.packages).as_ref()).await?;
    if script.packages.lock.as_deref() == Some(fresh.as_str()) {
        let current = state.store.get_script_version(id, script.version).await.map_err(missing("script version"))?;
        return Ok((StatusCode::OK, Json(current.into())));
    }
    let packages = ScriptPackages { lock: Some(fresh), ..script.packages.clone() };
    let update =
        ScriptUpdate { packages: Some(packages), expected_version: Some(script.version), ..ScriptUpdate::default() };
    let updated = state.store.update_script(&principal.actor(), id, update).await.map_err(missing("script"))?;
    let version = state.store.get_script_version(id, updated.version).await.map_err(missing("script version"))?;
    Ok((StatusCode::CREATED, Json(version.into())))
}
