-- Run history at scale (docs/architecture.md, "Run history"): every filter of GET /runs reads its newest page
-- through an index in id order, so a page costs the same with 1,000 runs or 1,000,000. PostgreSQL indexes
-- do not end in the id, so each filter's index names it; those on script and on agent and status replace the
-- narrower ones of 0002 (they still serve the foreign keys and the claim's count of an agent's running runs).
-- A time window with an end is read through queued_at. runs_task_id_id (0007) serves a task's runs.
-- IF NOT EXISTS and new names for the replacements: on a long history an operator may build these indexes
-- beforehand with CREATE INDEX CONCURRENTLY (docs/deployment.md, "Upgrades"), and this migration then keeps
-- them instead of building them again while it holds the table.
CREATE INDEX IF NOT EXISTS runs_script_id_id ON runs (script_id, id);
DROP INDEX IF EXISTS runs_script_id;
CREATE INDEX IF NOT EXISTS runs_agent_status_id ON runs (agent_id, status, id);
DROP INDEX IF EXISTS runs_agent_id;
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, id);
CREATE INDEX IF NOT EXISTS runs_task_status ON runs (task_id, status, id);
CREATE INDEX IF NOT EXISTS runs_agent ON runs (agent_id, id);
CREATE INDEX IF NOT EXISTS runs_trigger ON runs (trigger, id);
CREATE INDEX IF NOT EXISTS runs_queued_at ON runs (queued_at);
