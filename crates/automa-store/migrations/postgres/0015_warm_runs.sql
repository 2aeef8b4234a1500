-- Warm starts (docs/architecture.md, "Runs and agents"): a task or an ad-hoc run may ask to be handed to a sandbox
-- the agent prepared before it came; its runs copy the choice like every other parameter. Whether a run did
-- start warm is the agent's report, `runs.warm_start`, kept with the rest of its end.
ALTER TABLE tasks ADD COLUMN warm BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE runs ADD COLUMN warm BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE runs ADD COLUMN warm_start BOOLEAN NOT NULL DEFAULT FALSE;
