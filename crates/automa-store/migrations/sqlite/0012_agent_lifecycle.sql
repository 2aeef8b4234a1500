-- An agent's lifecycle as operators see it. `disconnected_at`: when the agent said goodbye or was found silent
-- past the offline threshold; the agent shows offline while it is set, and its next heartbeat clears it.
-- `agent_events`: what happened to each agent (online, reconnected, offline, goodbye, refused, run_lost),
-- newest 100 per agent, pruned on insert.
ALTER TABLE agents ADD COLUMN disconnected_at TEXT;

CREATE TABLE agent_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id INTEGER NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    at       TEXT    NOT NULL,
    kind     TEXT    NOT NULL CHECK (kind IN ('online', 'reconnected', 'offline', 'goodbye', 'refused', 'run_lost')),
    detail   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX agent_events_by_agent ON agent_events (agent_id, id);
