-- Run history at scale (docs/architecture.md, "Run history"): every filter of GET /runs reads its newest page
-- through an index in id order, so a page costs the same with 1,000 runs or 1,000,000. On SQLite an index
-- ends in the rowid, which is the run's id: (status) orders each status's runs by id, as runs_task_id,
-- runs_script_id and runs_agent_id (agent_id, status) already do for theirs. A time window with an end is read
-- through queued_at. The claim, the reaper and retention keep the indexes they use.
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_task_status ON runs (task_id, status);
CREATE INDEX runs_agent ON runs (agent_id);
CREATE INDEX runs_trigger ON runs (trigger);
CREATE INDEX runs_queued_at ON runs (queued_at);
