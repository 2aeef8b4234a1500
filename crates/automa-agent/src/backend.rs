//! What the agent loop needs from a server, so one loop serves remote and embedded agents alike.

use std::future::Future;
use std::time::Duration;

use crate::protocol::{Assignment, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The server could not be reached or answered garbage; worth retrying.
    #[error("server unreachable: {0}")]
    Transport(String),
    /// The server refused the request; retrying the same request will not help.
    #[error("server refused ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The server refused this agent's token (401 or 403): nothing the agent sends will be taken any more.
    #[error(
        "the server refused this agent's token: the agent was disabled or retired, or the token is wrong \
         ({status}: {detail})"
    )]
    Refused { status: u16, detail: String },
    /// The agent's own settings are unusable (a bad or insecure server URL).
    #[error("{0}")]
    Config(String),
}

impl AgentError {
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Transport(_) => true,
            AgentError::Rejected { status, .. } => *status >= 500 || *status == 429,
            AgentError::Refused { .. } | AgentError::Config(_) => false,
        }
    }
}

/// The agent protocol's operations. Every one is idempotent: a request repeated after a lost response has
/// the effect of one.
pub trait AgentBackend: Send + Sync + 'static {
    /// Reports the agent and renews its runs' leases. A server that has not answered within `patience` is
    /// taken as unreachable (a transport error), so an agent with several servers moves on in time to renew.
    fn heartbeat(
        &self,
        heartbeat: Heartbeat,
        patience: Duration,
    ) -> impl Future<Output = Result<HeartbeatReply, AgentError>> + Send;
    /// Waits up to `wait` for a run; `None` when none came.
    fn claim(&self, wait: Duration) -> impl Future<Output = Result<Option<Assignment>, AgentError>> + Send;
    fn append_logs(&self, run_id: i64, batch: LogBatch) -> impl Future<Output = Result<LogsReply, AgentError>> + Send;
    fn finish(&self, run_id: i64, outcome: Outcome) -> impl Future<Output = Result<FinishReply, AgentError>> + Send;
    /// Gives back a run this agent stopped because it is shutting down: the server queues it again without
    /// counting an attempt.
    fn hand_back(&self, run_id: i64) -> impl Future<Output = Result<FinishReply, AgentError>> + Send;
    /// Says the agent stopped cleanly (after its drain), so the server shows it offline at once instead of
    /// when its heartbeats have been missed for long enough.
    fn goodbye(&self) -> impl Future<Output = Result<(), AgentError>> + Send;
}
