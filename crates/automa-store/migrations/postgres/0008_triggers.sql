-- Triggers: webhooks that start a task, and run-after links that start a task when another task's run ends.
--
-- A hook belongs to its task and goes with it (CASCADE); the runs it started keep their history (hook_id SET
-- NULL). Like API tokens, only a hook token's SHA-256 is stored, and a revoked hook stays as history.
CREATE TABLE hooks (
    id                BIGSERIAL PRIMARY KEY,
    task_id           BIGINT      NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    name              TEXT        NOT NULL,
    token_hash        TEXT        NOT NULL UNIQUE,
    prefix            TEXT        NOT NULL,
    rate_per_minute   BIGINT      NOT NULL,
    created_by        BIGINT      REFERENCES users (id) ON DELETE SET NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    last_triggered_at TIMESTAMPTZ,
    revoked_at        TIMESTAMPTZ,
    UNIQUE (task_id, name)
);
CREATE INDEX hooks_created_by ON hooks (created_by);

-- "Run task_id when a run of after_task_id ends in on_status", one row per status. Deleting a task drops the
-- links it declares (CASCADE); deleting a task others wait for is refused (RESTRICT, and a 409 naming them
-- before it), since they would silently never run again.
CREATE TABLE task_run_after (
    task_id       BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    after_task_id BIGINT NOT NULL REFERENCES tasks (id) ON DELETE RESTRICT,
    on_status     TEXT   NOT NULL CHECK (on_status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'lost')),
    PRIMARY KEY (task_id, after_task_id, on_status)
);
CREATE INDEX task_run_after_upstream ON task_run_after (after_task_id, on_status);

ALTER TABLE runs ADD COLUMN hook_id BIGINT REFERENCES hooks (id) ON DELETE SET NULL;
ALTER TABLE runs ADD COLUMN upstream_run_id BIGINT REFERENCES runs (id) ON DELETE SET NULL;
-- The per-hook rate limit counts a hook's runs of the last minute.
CREATE INDEX runs_hook_id ON runs (hook_id, queued_at) WHERE hook_id IS NOT NULL;
CREATE INDEX runs_upstream_run_id ON runs (upstream_run_id) WHERE upstream_run_id IS NOT NULL;
-- One downstream run per (upstream run, task), whatever the number of servers finishing runs.
CREATE UNIQUE INDEX runs_after_once ON runs (upstream_run_id, task_id) WHERE trigger = 'after';

-- A hook's JSON body, given to its run (and the run's retries) as a read-only file. Kept apart from runs so
-- that listing runs never reads payloads of up to 1 MiB each. Text, not JSONB: the script gets the bytes the
-- caller sent (JSONB would reorder keys and refuses \u0000).
CREATE TABLE run_payloads (
    run_id  BIGINT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    payload TEXT   NOT NULL
);

ALTER TABLE runs DROP CONSTRAINT runs_trigger_check;
ALTER TABLE runs ADD CONSTRAINT runs_trigger_check
    CHECK (trigger IN ('manual', 'schedule', 'api', 'retry', 'hook', 'after'));
