-- One source of truth for an agent's concurrency: `slots` is what the agent reports it runs at once (its
-- --concurrency, in every heartbeat; NULL until an agent that reports it has been seen), `max_concurrency` stays
-- the admin's cap, and an agent takes at most the smaller of the two. Agents are retired, not erased:
-- `retired_at` keeps the record (and every run's agent_id) for history while the agent is refused and unlisted.
ALTER TABLE agents ADD COLUMN slots INTEGER;
ALTER TABLE agents ADD COLUMN retired_at TEXT;
