//! The execution agent: registers and heartbeats with a server, claims runs by long-polling, runs them in the
//! sandbox, streams their output in numbered batches and reports how they ended. The loop is written against
//! [`AgentBackend`], so the remote agent (over HTTP) and the agent embedded in `automa serve` (in-process) are
//! the same code following the same protocol.

mod backend;
mod http;
mod protocol;
mod runner;
mod worker;

pub use backend::{AgentBackend, AgentError};
pub use http::{HttpBackend, check_transport, client_for, parse_server_url, parse_server_urls};
pub use protocol::{
    Assignment, ClaimRequest, EnvironmentSpec, FinishReply, Heartbeat, HeartbeatReply, LogBatch, LogsReply, Outcome,
    WireChunk,
};
pub use worker::{Agent, AgentConfig};

/// This agent's version, reported in heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host's name, for the agent record.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
