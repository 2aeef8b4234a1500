-- Runs, their output and encrypted secrets. A run freezes everything it needs when it is queued (arguments,
-- environment, secret names, limits, target), so editing or deleting its task never changes a run already made.
--
-- Deletes: a task's runs outlive it as history (task_id SET NULL). A script's runs go with the script
-- (CASCADE), and the store refuses to delete a script while one of its runs is queued or running. An agent's
-- runs keep their history (agent_id SET NULL); a queued run pinned to a deleted agent falls back to label
-- matching (target_agent_id SET NULL), as tasks do.
CREATE TABLE runs (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id               INTEGER REFERENCES tasks (id) ON DELETE SET NULL,
    script_id             INTEGER REFERENCES scripts (id) ON DELETE CASCADE,
    script_version        INTEGER,
    content               TEXT,
    filename              TEXT    NOT NULL,
    agent_id              INTEGER REFERENCES agents (id) ON DELETE SET NULL,
    target_agent_id       INTEGER REFERENCES agents (id) ON DELETE SET NULL,
    labels                TEXT    NOT NULL DEFAULT '[]',
    trigger               TEXT    NOT NULL CHECK (trigger IN ('manual', 'schedule', 'api', 'retry')),
    scheduled_for         TEXT,
    attempt               INTEGER NOT NULL DEFAULT 1,
    retries               INTEGER NOT NULL DEFAULT 0,
    retry_backoff_seconds INTEGER NOT NULL DEFAULT 10,
    status                TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out',
                                                             'cancelled', 'lost', 'skipped')),
    queued_at             TEXT    NOT NULL,
    not_before            TEXT    NOT NULL,
    started_at            TEXT,
    finished_at           TEXT,
    exit_code             INTEGER,
    signal                INTEGER,
    timed_out             INTEGER NOT NULL DEFAULT 0,
    oom_killed            INTEGER NOT NULL DEFAULT 0,
    max_rss_kb            INTEGER,
    cpu_ms                INTEGER,
    output_bytes          INTEGER,
    truncated             INTEGER NOT NULL DEFAULT 0,
    error                 TEXT,
    lease_until           TEXT,
    cancel_requested      INTEGER NOT NULL DEFAULT 0,
    args                  TEXT    NOT NULL DEFAULT '[]',
    env                   TEXT    NOT NULL DEFAULT '{}',
    secrets               TEXT    NOT NULL DEFAULT '[]',
    timeout_seconds       INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    cpu_seconds           INTEGER NOT NULL,
    max_output_bytes      INTEGER NOT NULL,
    network               INTEGER NOT NULL DEFAULT 0,
    log_bytes             INTEGER NOT NULL DEFAULT 0,
    log_capped            INTEGER NOT NULL DEFAULT 0,
    created_by            INTEGER REFERENCES users (id) ON DELETE SET NULL,
    CHECK (script_id IS NOT NULL OR content IS NOT NULL)
);
CREATE INDEX runs_task_id ON runs (task_id);
CREATE INDEX runs_script_id ON runs (script_id);
CREATE INDEX runs_agent_id ON runs (agent_id, status);
CREATE INDEX runs_target_agent_id ON runs (target_agent_id);
CREATE INDEX runs_created_by ON runs (created_by);
CREATE INDEX runs_status_queued_at ON runs (status, queued_at);
CREATE INDEX runs_lease_until ON runs (lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX runs_task_tick ON runs (task_id, scheduled_for) WHERE scheduled_for IS NOT NULL;

CREATE TABLE run_logs (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    stream TEXT    NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    ts     TEXT    NOT NULL,
    data   TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE secrets (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    ciphertext BLOB    NOT NULL,
    nonce      BLOB    NOT NULL,
    created_by INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX secrets_created_by ON secrets (created_by);
