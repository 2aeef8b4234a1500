//! The agent inside `automa serve`: the same agent loop as `automa agent`, talking to this server's
//! [`Execution`] in-process instead of over HTTP. It is an agent record like any other (`embedded-<host>`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use automa_agent::{
    Agent, AgentBackend, AgentConfig, AgentError, Assignment, FinishReply, Heartbeat, HeartbeatReply, LogBatch,
    LogsReply, Outcome, SandboxStatus,
};
use automa_runner::Sandbox;

use crate::{
    auth,
    config::Config,
    error::ApiError,
    execution::{Execution, MAX_CLAIM_WAIT},
};

/// How long the embedded agent's claim waits for a run on SQLite. Every change there is made by this server,
/// and each that may let the agent take a run it could not (a run queued or becoming due, an agent or secret
/// policy changed) wakes it; the wait's end is a safety net. On PostgreSQL it waits the 60 s of an agent's
/// claim over HTTP: changes come from other servers too, through a listener that can miss a notification
/// while it reconnects, and a claim can pass over a run another transaction holds locked.
const EMBEDDED_CLAIM_WAIT_SQLITE: Duration = Duration::from_secs(300);

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

    /// Waits longer than the agent asks: its wait is sized for proxies between it and a remote server, and none
    /// is in between here.
    async fn claim(&self, _wait: Duration) -> Result<Option<Assignment>, AgentError> {
        let wait = if self.execution.store.shared_by_servers() { MAX_CLAIM_WAIT } else { EMBEDDED_CLAIM_WAIT_SQLITE };
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

/// The embedded agent's sandbox, being built: probing the host takes a few interpreter and helper starts, so
/// it begins when the server starts building and runs beside opening the database and the rest.
pub struct PreparedSandbox {
    concurrency: usize,
    built: tokio::task::JoinHandle<anyhow::Result<Result<Arc<Sandbox>, String>>>,
}

/// Starts building the embedded agent's sandbox; fails at once on settings that cannot work.
pub fn prepare_sandbox(config: &Config) -> anyhow::Result<PreparedSandbox> {
    let concurrency = automa_agent::concurrency(config.agent_concurrency)?;
    let settings = config.sandbox_settings();
    let built = tokio::spawn(async move { automa_agent::build_sandbox(&settings, concurrency).await });
    Ok(PreparedSandbox { concurrency, built })
}

/// Creates or updates the embedded agent's record, waits for its sandbox and starts the agent loop. The
/// sandbox's status is written to `status` for `/ready`.
pub async fn start(
    execution: Arc<Execution>,
    config: &Config,
    prepared: PreparedSandbox,
    status: &OnceLock<SandboxStatus>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let PreparedSandbox { concurrency, built } = prepared;
    let hostname = automa_agent::hostname();
    let token = auth::random_token(auth::AGENT_TOKEN_PREFIX);
    let name = config.embedded_agent_name.clone().unwrap_or_else(|| format!("embedded-{hostname}"));
    let record = execution
        .store
        .ensure_embedded_agent(&name, &auth::token_hash(&token))
        .await
        .with_context(|| format!("preparing the embedded agent '{name}'"))?;
    let sandbox = built.await.context("building the sandbox")??;
    if let Err(reason) = &sandbox {
        tracing::error!(%reason, "the embedded agent will not run scripts");
    }
    let backend = EmbeddedBackend { execution, agent_id: record.id };
    let agent_config = AgentConfig {
        concurrency,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        hostname,
        packages: config.package_settings(),
    };
    // Preparing the environment cache starts the interpreter to describe it: off the runtime's threads.
    let agent = tokio::task::spawn_blocking(move || Agent::new(backend, sandbox, agent_config)).await?;
    // An application starts its embedded agent once (running it consumes the application), so this is the
    // only write.
    let _ = status.set(agent.sandbox_status());
    tracing::info!(agent = %name, concurrency, "embedded agent started");
    Ok(tokio::spawn(async move {
        // In-process calls are never refused: a disabled embedded agent keeps heartbeating and claims nothing
        // (the claim skips disabled agents) until it is enabled again.
        if let Err(error) = agent.run(shutdown).await {
            tracing::error!(%error, "the embedded agent stopped");
        }
    }))
}
