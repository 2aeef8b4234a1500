-- An agent's lifecycle as operators see it. `disconnected_at`: when the agent said goodbye or was found silent
-- past the offline threshold; the agent shows offline while it is set, and its next heartbeat clears it.
-- `agent_events`: what happened to each agent (online, reconnected, offline, goodbye, refused, run_lost),
-- newest 100 per agent, pruned on insert.
ALTER TABLE agents ADD COLUMN disconnected_at TIMESTAMPTZ;

CREATE TABLE agent_events (
    id       BIGSERIAL   PRIMARY KEY,
    agent_id BIGINT      NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    at       TIMESTAMPTZ NOT NULL,
    kind     TEXT        NOT NULL CHECK (kind IN ('online', 'reconnected', 'offline', 'goodbye', 'refused', 'run_lost')),
    detail   TEXT        NOT NULL DEFAULT ''
);
CREATE INDEX agent_events_by_agent ON agent_events (agent_id, id);
