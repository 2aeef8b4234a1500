-- Bounds on how far one run can carry: how many run-after links lie between a run and the hook, API call or
-- schedule fire that started its chain (0 for those), and how many times it was handed back by an agent
-- shutting down (past a small limit a hand-back counts as a lost attempt).
ALTER TABLE runs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN hand_backs INTEGER NOT NULL DEFAULT 0;
-- The per-task cap on queued run-after runs counts them at every upstream finish.
CREATE INDEX runs_after_queued ON runs (task_id) WHERE trigger = 'after' AND status = 'queued';
