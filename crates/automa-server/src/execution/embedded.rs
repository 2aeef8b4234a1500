//! The agent inside `automa serve`: the same agent loop as `automa agent`, talking to this server's
//! [`Execution`] in-process instead of over HTTP. It is an agent record like any other (`embedded-<host>`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use automa_agent::{
    Agent, AgentBackend, AgentConfig, AgentError, Assignment, FinishReply, Heartbeat, HeartbeatReply, LogBatch,
    LogsReply, Outcome, PackageSettings,
};
use automa_runner::{HelperCommand, Profile, Sandbox, SandboxConfig};

use crate::{auth, config::Config, error::ApiError, execution::Execution};

/// The argument that makes the `automa` binary act as the sandbox helper.
pub const SANDBOX_HELPER_ARG: &str = "__sandbox-helper";

pub struct EmbeddedBackend {
    execution: Arc<Execution>,
    agent_id: i64,
}

/// The embedded agent sees the server's refusals as a remote agent would see the HTTP statuses.
fn agent_error(error: ApiError) -> AgentError {
    match error {
        ApiError::Internal(cause) => AgentError::Transport(format!("{cause:#}")),
        other => AgentError::Rejected { status: other.status().as_u16(), detail: other.to_string() },
    }
}

impl AgentBackend for EmbeddedBackend {
    /// In-process: there is no other server to move to, so a slow answer is waited for (the agent's heartbeat
    /// loop keeps sending beside it).
    async fn heartbeat(&self, heartbeat: Heartbeat, _patience: Duration) -> Result<HeartbeatReply, AgentError> {
        self.execution.heartbeat(self.agent_id, heartbeat).await.map_err(agent_error)
    }

    async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, AgentError> {
        self.execution.claim(self.agent_id, wait).await.map_err(agent_error)
    }

    async fn append_logs(&self, run_id: i64, batch: LogBatch) -> Result<LogsReply, AgentError> {
        self.execution.append_logs(self.agent_id, run_id, batch).await.map_err(agent_error)
    }

    async fn finish(&self, run_id: i64, outcome: Outcome) -> Result<FinishReply, AgentError> {
        self.execution.finish(self.agent_id, run_id, outcome).await.map_err(agent_error)
    }

    async fn hand_back(&self, run_id: i64) -> Result<FinishReply, AgentError> {
        self.execution.hand_back(self.agent_id, run_id).await.map_err(agent_error)
    }

    async fn goodbye(&self) -> Result<(), AgentError> {
        self.execution.goodbye(self.agent_id).await.map_err(agent_error)
    }
}

/// Builds the sandbox as configured, or says why it cannot be built. `strict` never falls back to less.
pub async fn build_sandbox(config: &Config, slots: usize) -> anyhow::Result<Result<Arc<Sandbox>, String>> {
    let profile: Profile = config.sandbox.parse().context("AUTOMA_SANDBOX")?;
    if profile == Profile::None {
        tracing::error!("AUTOMA_SANDBOX=none: scripts run WITHOUT ISOLATION, as plain processes of this user");
    }
    let helper = match &config.sandbox_helper {
        Some(program) => HelperCommand { program: program.clone(), args: Vec::new() },
        None => HelperCommand {
            program: std::env::current_exe().context("locating this binary for the sandbox helper")?,
            args: vec![SANDBOX_HELPER_ARG.into()],
        },
    };
    let python = config.python.clone();
    let work_root = absolute(config.data_dir.join("runs"))?;
    let network_deny = config
        .network_deny
        .iter()
        .map(|cidr| cidr.parse::<automa_runner::Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .context("AUTOMA_NETWORK_DENY")?;
    let built = tokio::task::spawn_blocking(move || {
        let interpreter = automa_runner::resolve_interpreter(python.as_deref()).map_err(|e| e.to_string())?;
        let mut sandbox_config = SandboxConfig::new(profile, interpreter, helper, work_root);
        sandbox_config.slots = slots;
        sandbox_config.network_deny = network_deny;
        Sandbox::new(sandbox_config).map(Arc::new).map_err(|e| e.to_string())
    })
    .await?;
    Ok(built)
}

/// The agent's package settings, with its environments in `<data dir>/environments`.
pub fn package_settings(config: &Config) -> anyhow::Result<PackageSettings> {
    Ok(PackageSettings {
        environments_dir: absolute(config.data_dir.join("environments"))?,
        uv: config.uv.clone(),
        index_url: config.package_index_url.clone(),
        extra_index_urls: config.package_extra_index_urls.clone(),
        find_links: config.package_find_links.clone(),
        offline: config.package_offline,
        cache_mb: config.env_cache_mb,
    })
}

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path } else { std::env::current_dir()?.join(path) })
}

/// Creates or updates the embedded agent's record, builds the sandbox and starts the agent loop. The sandbox's
/// capabilities (or why it is refused) are written to `status` for `/ready`.
pub async fn start(
    execution: Arc<Execution>,
    config: &Config,
    status: Arc<RwLock<Option<serde_json::Value>>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let concurrency = config.agent_concurrency()?;
    let hostname = automa_agent::hostname();
    let token = auth::random_token(auth::AGENT_TOKEN_PREFIX);
    let name = config.embedded_agent_name.clone().unwrap_or_else(|| format!("embedded-{hostname}"));
    let record = execution
        .store
        .ensure_embedded_agent(&name, &auth::token_hash(&token))
        .await
        .with_context(|| format!("preparing the embedded agent '{name}'"))?;
    let sandbox = build_sandbox(config, concurrency).await?;
    if let Err(reason) = &sandbox {
        tracing::error!(%reason, "the embedded agent will not run scripts");
    }
    let backend = EmbeddedBackend { execution, agent_id: record.id };
    let agent_config = AgentConfig {
        concurrency,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        hostname,
        packages: package_settings(config)?,
    };
    let agent = Agent::new(backend, sandbox, agent_config);
    *status.write().unwrap_or_else(|e| e.into_inner()) = Some(agent.capabilities());
    tracing::info!(agent = %name, concurrency, "embedded agent started");
    Ok(tokio::spawn(async move {
        // In-process calls are never refused: a disabled embedded agent keeps heartbeating and claims nothing
        // (the claim skips disabled agents) until it is enabled again.
        if let Err(error) = agent.run(shutdown).await {
            tracing::error!(%error, "the embedded agent stopped");
        }
    }))
}
