-- Run history at scale (docs/architecture.md, "Run history"): every filter of GET /runs reads its newest page
-- through an index in id order, so a page costs the same with 1,000 runs or 1,000,000. PostgreSQL indexes
-- do not end in the id, so each filter's index names it; those on script and on agent and status replace the
-- narrower ones of 0002 (they still serve the foreign keys and the claim's count of an agent's running runs).
-- A time window with an end is read through queued_at. runs_task_id_id (0007) serves a task's runs.
DROP INDEX runs_script_id;
CREATE INDEX runs_script_id ON runs (script_id, id);
DROP INDEX runs_agent_id;
CREATE INDEX runs_agent_id ON runs (agent_id, status, id);
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_task_status ON runs (task_id, status, id);
CREATE INDEX runs_agent ON runs (agent_id, id);
CREATE INDEX runs_trigger ON runs (trigger, id);
CREATE INDEX runs_queued_at ON runs (queued_at);
