-- Retention. Audit retention deletes the oldest entries and keeps here the id and hash of the last one it
-- deleted, so verification starts from it instead of from genesis. The row alone proves nothing (anyone who can
-- write the database can write it): verification also requires the keyed `audit.prune` entry that the same
-- transaction appended and that names this checkpoint. One row at most.
CREATE TABLE audit_checkpoint (
    singleton  INTEGER     PRIMARY KEY CHECK (singleton = 1),
    entry_id   BIGINT      NOT NULL,
    entry_hash TEXT        NOT NULL,
    pruned_at  TIMESTAMPTZ NOT NULL
);

-- Finished runs by age, for the days rule; queued and running runs are never candidates.
CREATE INDEX runs_finished_at ON runs (finished_at) WHERE status NOT IN ('queued', 'running');
-- Each task's runs in id order, for the newest-M rule; it also serves the foreign key, as runs_task_id did.
CREATE INDEX runs_task_id_id ON runs (task_id, id);
DROP INDEX runs_task_id;
