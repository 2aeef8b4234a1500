//! What operators see of agents coming and going: each agent's start, return, silence, goodbye and refusal,
//! and each run lost on it, logged (never with a token) and kept in the agent's event history, and announced
//! so the dashboard refreshes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use automa_store::{AgentEventKind, AgentSeen, Finished, StoreError};

use crate::{api::agents::OFFLINE_AFTER_SECONDS, error::ApiResult, events::Event, execution::Execution};

/// How often a refusal is logged and recorded per agent (and, for tokens that belong to no agent, at all): a
/// refused agent retrying in a loop, or a stream of made-up tokens, must flood neither the log nor the history.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// When refusals were last reported: per agent, and once for all tokens that belong to no agent (their count
/// since is logged instead), so memory is bounded by the agents that exist.
#[derive(Default)]
pub(crate) struct RefusalLog {
    last: Mutex<HashMap<Option<i64>, Instant>>,
    unknown_since_logged: AtomicU64,
}

impl RefusalLog {
    /// True when a refusal of `agent_id`'s token (`None`: a token of no agent) should be reported now.
    fn due(&self, agent_id: Option<i64>) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.get(&agent_id).is_some_and(|at| now.duration_since(*at) < REFUSAL_LOG_EVERY) {
            return false;
        }
        last.insert(agent_id, now);
        true
    }
}

impl Execution {
    /// Notes an agent's start (an initial heartbeat) or its return after being offline.
    pub(crate) async fn note_presence(&self, seen: &AgentSeen, initial: bool) {
        let agent = &seen.agent;
        let (kind, detail) = if initial {
            tracing::info!(agent = %agent.name, agent_id = agent.id, "agent online");
            (AgentEventKind::Online, "the agent started")
        } else if seen.returned {
            tracing::info!(agent = %agent.name, agent_id = agent.id, "agent reconnected");
            (AgentEventKind::Reconnected, "heartbeats resumed after the agent was offline")
        } else {
            return;
        };
        self.record(agent.id, kind, detail).await;
    }

    /// The agent stopped cleanly: it is offline at once.
    pub async fn goodbye(&self, agent_id: i64) -> ApiResult<()> {
        self.store.agent_goodbye(agent_id).await?;
        let agent = self.store.get_agent(agent_id).await?;
        tracing::info!(agent = %agent.name, agent_id, "agent said goodbye: offline");
        self.record(agent_id, AgentEventKind::Goodbye, "the agent stopped cleanly").await;
        Ok(())
    }

    /// Logs and records runs that were just marked lost.
    pub(crate) async fn note_lost(&self, lost: &[Finished]) {
        for finished in lost.iter().filter(|finished| finished.changed) {
            let run = &finished.run;
            let reason = run.error.as_deref().unwrap_or("lost");
            tracing::warn!(run_id = run.id, agent_id = run.agent_id, %reason, "run lost");
            if let Some(agent_id) = run.agent_id {
                self.record(agent_id, AgentEventKind::RunLost, &format!("run {}: {reason}", run.id)).await;
            }
        }
    }

    /// Logs and records a refused agent token, at most once a minute per agent. The token itself is never
    /// logged; the agent it belongs to is, when there is one (disabled, or retired).
    pub async fn note_refused(&self, token_hash: &str, ip: Option<&str>) {
        match self.store.agent_by_token_hash(token_hash).await {
            Ok(Some(agent)) if self.refusals.due(Some(agent.id)) => {
                let why = if agent.retired_at.is_some() { "the agent is retired" } else { "the agent is disabled" };
                tracing::warn!(agent = %agent.name, agent_id = agent.id, ip, reason = why, "agent refused");
                self.record(agent.id, AgentEventKind::Refused, &format!("token refused: {why}")).await;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let refused = self.refusals.unknown_since_logged.fetch_add(1, Ordering::Relaxed) + 1;
                if self.refusals.due(None) {
                    self.refusals.unknown_since_logged.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        ip,
                        refused,
                        "agent tokens refused: they belong to no agent (count since last said)"
                    );
                }
            }
            Err(error) => {
                if self.refusals.due(None) {
                    tracing::warn!(%error, ip, "agent refused; cannot look up whose token it was");
                }
            }
        }
    }

    /// Marks agents offline whose heartbeats stopped for longer than the offline threshold, once per silence
    /// (whichever server looks first). Works whether or not notification channels are configured.
    pub(crate) async fn note_silent_agents(&self) -> Result<(), StoreError> {
        let silent_since = automa_store::now() - chrono::Duration::seconds(OFFLINE_AFTER_SECONDS);
        for (agent_id, name, last_seen_at) in self.store.disconnect_silent_agents(silent_since).await? {
            tracing::warn!(agent = %name, agent_id, %last_seen_at, "agent offline: no heartbeat");
            let detail = format!("no heartbeat since {}", last_seen_at.to_rfc3339());
            self.record(agent_id, AgentEventKind::Offline, &detail).await;
        }
        Ok(())
    }

    /// Keeps an event in the agent's history and tells the dashboard. History is for people: failing to keep
    /// it must not fail what the agent asked for.
    async fn record(&self, agent_id: i64, kind: AgentEventKind, detail: &str) {
        if let Err(error) = self.store.record_agent_event(agent_id, kind, detail).await {
            tracing::warn!(%error, agent_id, kind = kind.as_str(), "cannot record an agent event");
        }
        self.events.publish(Event::Agent { id: agent_id });
    }
}
