-- Retention. Audit retention deletes the oldest entries and keeps here the id and hash of the last one it
-- deleted, so verification starts from it instead of from genesis. The row alone proves nothing (anyone who can
-- write the database can write it): verification also requires the keyed `audit.prune` entry that the same
-- transaction appended and that names this checkpoint. One row at most.
CREATE TABLE audit_checkpoint (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    entry_id   INTEGER NOT NULL,
    entry_hash TEXT    NOT NULL,
    pruned_at  TEXT    NOT NULL
);

-- Finished runs by age, for the days rule; queued and running runs are never candidates. (The newest-M rule
-- walks runs_task_id, which on SQLite already orders each task's runs by id.)
CREATE INDEX runs_finished_at ON runs (finished_at) WHERE status NOT IN ('queued', 'running');
