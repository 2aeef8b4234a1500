//! Who may give a run secrets or network: the checks `POST /tasks`, `PUT /tasks/{id}`, `POST /execute` and
//! `POST /tasks/{id}/execute` share. A secret's policy says which tasks may use it; only its owner or an admin
//! may widen it, and a task they save naming the secret is added to it. Network is granted by admins, or by
//! operators when `AUTOMA_NETWORK_GRANT=operator`.

use automa_core::Role;
use automa_store::{Agent, SecretInfo, Task};

use crate::{
    api::secrets::may_manage,
    auth::Principal,
    config::NetworkGrant,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// The named secrets, in order, or a 422 naming the first that does not exist (`secrets[2]`).
async fn existing_secrets(state: &AppState, names: &[String]) -> ApiResult<Vec<SecretInfo>> {
    let mut infos = state.store.secret_infos(names).await?;
    let mut ordered = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let position = infos.iter().position(|info| &info.name == name).ok_or_else(|| {
            ApiError::invalid(&format!("secrets[{index}]"), format!("there is no secret named '{name}'"))
        })?;
        ordered.push(infos.swap_remove(position));
    }
    Ok(ordered)
}

/// The agent a task is pinned to, refusing (422, on `agent_id`) one that does not exist, or that is disabled or
/// retired (the task's runs would never start).
pub(crate) async fn pinned_agent(state: &AppState, agent_id: Option<i64>) -> ApiResult<Option<Agent>> {
    let Some(agent) = existing_agent(state, agent_id).await? else { return Ok(None) };
    match unavailable(&agent) {
        Some(why) => Err(ApiError::invalid("agent_id", why)),
        None => Ok(Some(agent)),
    }
}

/// The agent a run queued now is pinned to: one that does not exist is a 422 on `agent_id`; a disabled or retired
/// one a 409 naming it, since the run would wait forever.
pub(crate) async fn run_agent(state: &AppState, agent_id: Option<i64>) -> ApiResult<Option<Agent>> {
    let Some(agent) = existing_agent(state, agent_id).await? else { return Ok(None) };
    match unavailable(&agent) {
        Some(why) => Err(ApiError::Conflict(why)),
        None => Ok(Some(agent)),
    }
}

async fn existing_agent(state: &AppState, agent_id: Option<i64>) -> ApiResult<Option<Agent>> {
    let Some(agent_id) = agent_id else { return Ok(None) };
    match state.store.get_agent(agent_id).await {
        Ok(agent) => Ok(Some(agent)),
        Err(automa_store::StoreError::NotFound) => {
            Err(ApiError::invalid("agent_id", format!("there is no agent with id {agent_id}")))
        }
        Err(other) => Err(other.into()),
    }
}

/// Why runs pinned to `agent` would never start, if they would not.
fn unavailable(agent: &Agent) -> Option<String> {
    let why = if agent.retired_at.is_some() {
        "retired"
    } else if agent.disabled {
        "disabled"
    } else {
        return None;
    };
    Some(format!(
        "agent '{}' (id {}) is {why} and takes no runs; pin to another agent or to none",
        agent.name, agent.id
    ))
}

/// A run pinned to an agent that none of its secrets' policies admit would wait forever: refuse it now.
fn check_agent_allowed(agent: Option<&Agent>, secrets: &[SecretInfo]) -> ApiResult<()> {
    let Some(agent) = agent else { return Ok(()) };
    match secrets.iter().find(|secret| !secret.policy().allows_agent(agent)) {
        Some(secret) => Err(ApiError::invalid(
            "agent_id",
            format!(
                "secret '{}' may not be given to agent {}; its policy names the agents it may",
                secret.name, agent.id
            ),
        )),
        None => Ok(()),
    }
}

/// What a task's save changes about what it runs with its secrets and network.
pub(crate) struct TaskChange<'a> {
    /// The task being updated; `None` on create.
    pub task_id: Option<i64>,
    pub secrets: &'a [String],
    pub agent: Option<&'a Agent>,
    /// Whether the script, its version, arguments, environment or network differ from the saved task (always
    /// true on create).
    pub changes_what_runs: bool,
}

/// Checks that a task may name its secrets, and returns those whose policy the save should extend to the
/// task. The owner of a secret (or an admin) may use it in any task, which then joins the policy. Anyone
/// else needs the policy to allow the task already, and may not change what a task runs while it uses a
/// secret not open to all tasks: otherwise they could swap in a script that prints it.
pub(crate) async fn authorize_task_secrets(
    state: &AppState,
    principal: &Principal,
    change: TaskChange<'_>,
) -> ApiResult<Vec<String>> {
    let secrets = existing_secrets(state, change.secrets).await?;
    check_agent_allowed(change.agent, &secrets)?;
    if let (Some(task_id), true) = (change.task_id, change.changes_what_runs) {
        // A policy that lists the task vouches for what it runs, named at the moment or not: otherwise one could
        // drop the secret, change the code, and name the secret again under the same policy entry.
        let vouching = state.store.secrets_listing_tasks(&[task_id]).await?;
        if let Some(secret) = vouching.iter().find(|secret| !may_manage(principal, secret)) {
            return Err(ApiError::Forbidden(format!(
                "secret '{}' allows this task: only the secret's owner or an admin may change what it runs",
                secret.name
            )));
        }
    }
    let mut grants = Vec::new();
    for secret in &secrets {
        let policy = secret.policy();
        let allowed = change.task_id.is_some_and(|id| policy.allows_task(id));
        if may_manage(principal, secret) {
            if !allowed {
                grants.push(secret.name.clone());
            }
            continue;
        }
        if !allowed {
            return Err(ApiError::Forbidden(format!(
                "secret '{}' does not allow this task; its owner or an admin can allow it (PUT /secrets/{})",
                secret.name, secret.name
            )));
        }
        if change.changes_what_runs && !policy.all_tasks {
            return Err(ApiError::Forbidden(format!(
                "this task uses secret '{}': only the secret's owner or an admin may change what it runs",
                secret.name
            )));
        }
    }
    Ok(grants)
}

/// A new version of a script reaches every task that runs its latest version, with their secrets and network:
/// for a secret not open to all tasks (named by such a task, or whose policy lists one), only its owner or an
/// admin may change that code, and for a networked task only who may grant network.
pub(crate) async fn authorize_script_change(state: &AppState, principal: &Principal, script_id: i64) -> ApiResult<()> {
    let reach = state.store.script_reach(script_id).await?;
    let mut secrets = state.store.secret_infos(&reach.secrets).await?;
    secrets.extend(state.store.secrets_listing_tasks(&reach.task_ids).await?);
    if let Some(secret) = secrets.iter().find(|secret| !secret.all_tasks && !may_manage(principal, secret)) {
        return Err(ApiError::Forbidden(format!(
            "a task running this script's latest version may use secret '{}': only the secret's owner or an admin \
             may change its code",
            secret.name
        )));
    }
    if reach.network {
        authorize_network(state, principal).map_err(|_| {
            ApiError::Forbidden(
                "a task running this script's latest version has network: changing its code grants network to new \
                 code, which needs the role that grants network (AUTOMA_NETWORK_GRANT)"
                    .into(),
            )
        })?;
    }
    Ok(())
}

/// Secrets in an ad-hoc run are an admin's decision: otherwise any operator could print any secret.
pub(crate) async fn authorize_adhoc_secrets(
    state: &AppState,
    principal: &Principal,
    names: &[String],
    agent: Option<&Agent>,
) -> ApiResult<()> {
    if names.is_empty() {
        return Ok(());
    }
    if principal.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only admins may give secrets to ad-hoc runs; run a task the secret's policy allows".into(),
        ));
    }
    let secrets = existing_secrets(state, names).await?;
    check_agent_allowed(agent, &secrets)
}

/// Checks, when a task is queued by hand, that every secret it names still exists and still allows it (a
/// policy narrowed after the task was saved stops its next run), and that the agent it is pinned to may
/// still receive them: otherwise the run would wait for an agent that can never take it.
pub(crate) async fn check_task_may_run(state: &AppState, task: &Task) -> ApiResult<()> {
    let infos = state.store.secret_infos(task.params.secrets().as_slice()).await?;
    if let Some(agent_id) = task.agent_id.filter(|_| !infos.is_empty()) {
        let agent = state.store.get_agent(agent_id).await?;
        if let Some(secret) = infos.iter().find(|secret| !secret.policy().allows_agent(&agent)) {
            return Err(ApiError::Forbidden(format!(
                "secret '{}' may not be given to agent {agent_id}, which task {} is pinned to",
                secret.name, task.id
            )));
        }
    }
    for name in task.params.secrets().as_slice() {
        match infos.iter().find(|info| &info.name == name) {
            None => {
                return Err(ApiError::Conflict(format!(
                    "task {} names secret '{name}', which does not exist",
                    task.id
                )));
            }
            Some(info) if !info.policy().allows_task(task.id) => {
                return Err(ApiError::Forbidden(format!(
                    "secret '{name}' does not allow task {}; its owner or an admin can allow it",
                    task.id
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Network for a run is granted by admins, or also by operators when the server is configured so.
pub(crate) fn authorize_network(state: &AppState, principal: &Principal) -> ApiResult<()> {
    let least = match state.config.network_grant {
        NetworkGrant::Admin => Role::Admin,
        NetworkGrant::Operator => Role::Operator,
    };
    if principal.role.allows(least) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "granting network to a run needs the {least} role (AUTOMA_NETWORK_GRANT); you have {}",
            principal.role
        )))
    }
}
