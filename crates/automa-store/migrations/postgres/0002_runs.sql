-- Runs, their output and encrypted secrets. A run freezes everything it needs when it is queued (arguments,
-- environment, secret names, limits, target), so editing or deleting its task never changes a run already made.
--
-- Deletes: a task's runs outlive it as history (task_id SET NULL). A script's runs go with the script
-- (CASCADE), and the store refuses to delete a script while one of its runs is queued or running. An agent's
-- runs keep their history (agent_id SET NULL); a queued run pinned to a deleted agent falls back to label
-- matching (target_agent_id SET NULL), as tasks do.
CREATE TABLE runs (
    id                    BIGSERIAL PRIMARY KEY,
    task_id               BIGINT  REFERENCES tasks (id) ON DELETE SET NULL,
    script_id             BIGINT  REFERENCES scripts (id) ON DELETE CASCADE,
    script_version        BIGINT,
    content               TEXT,
    filename              TEXT    NOT NULL,
    agent_id              BIGINT  REFERENCES agents (id) ON DELETE SET NULL,
    target_agent_id       BIGINT  REFERENCES agents (id) ON DELETE SET NULL,
    labels                JSONB    NOT NULL DEFAULT '[]',
    trigger               TEXT    NOT NULL CHECK (trigger IN ('manual', 'schedule', 'api', 'retry')),
    scheduled_for         TIMESTAMPTZ,
    attempt               BIGINT  NOT NULL DEFAULT 1,
    retries               BIGINT  NOT NULL DEFAULT 0,
    retry_backoff_seconds BIGINT  NOT NULL DEFAULT 10,
    status                TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out',
                                                             'cancelled', 'lost', 'skipped')),
    queued_at             TIMESTAMPTZ    NOT NULL,
    not_before            TIMESTAMPTZ    NOT NULL,
    started_at            TIMESTAMPTZ,
    finished_at           TIMESTAMPTZ,
    exit_code             BIGINT,
    signal                BIGINT,
    timed_out             BOOLEAN NOT NULL DEFAULT FALSE,
    oom_killed            BOOLEAN     NOT NULL DEFAULT FALSE,
    max_rss_kb            BIGINT,
    cpu_ms                BIGINT,
    output_bytes          BIGINT,
    truncated             BOOLEAN     NOT NULL DEFAULT FALSE,
    error                 TEXT,
    lease_until           TIMESTAMPTZ,
    cancel_requested      BOOLEAN     NOT NULL DEFAULT FALSE,
    args                  JSONB    NOT NULL DEFAULT '[]',
    env                   JSONB    NOT NULL DEFAULT '{}',
    secrets               JSONB    NOT NULL DEFAULT '[]',
    timeout_seconds       BIGINT  NOT NULL,
    memory_mb             BIGINT  NOT NULL,
    cpu_seconds           BIGINT  NOT NULL,
    max_output_bytes      BIGINT  NOT NULL,
    network               BOOLEAN     NOT NULL DEFAULT FALSE,
    log_bytes             BIGINT  NOT NULL DEFAULT 0,
    log_capped            BOOLEAN     NOT NULL DEFAULT FALSE,
    created_by            BIGINT  REFERENCES users (id) ON DELETE SET NULL,
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
    run_id BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT  NOT NULL,
    stream TEXT    NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    ts     TIMESTAMPTZ    NOT NULL,
    data   TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE secrets (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    ciphertext BYTEA   NOT NULL,
    nonce      BYTEA   NOT NULL,
    created_by BIGINT  REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ    NOT NULL,
    updated_at TIMESTAMPTZ    NOT NULL
);
CREATE INDEX secrets_created_by ON secrets (created_by);
