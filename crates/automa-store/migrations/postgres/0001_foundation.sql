-- Users, tokens, agents, scripts, tasks and the audit log.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT        NOT NULL,
    password_hash TEXT        NOT NULL,
    role          TEXT        NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    active        BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL,
    last_login_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));

-- Deleting a user deletes their API tokens: a token must never outlive its owner.
CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT        NOT NULL,
    token_hash   TEXT        NOT NULL UNIQUE,
    prefix       TEXT        NOT NULL,
    role_cap     TEXT CHECK (role_cap IN ('admin', 'operator', 'viewer')),
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE agents (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT        NOT NULL UNIQUE,
    description     TEXT        NOT NULL DEFAULT '',
    labels          JSONB       NOT NULL DEFAULT '[]',
    max_concurrency BIGINT      NOT NULL DEFAULT 1,
    token_hash      TEXT        NOT NULL UNIQUE,
    disabled        BOOLEAN     NOT NULL DEFAULT FALSE,
    draining        BOOLEAN     NOT NULL DEFAULT FALSE,
    embedded        BOOLEAN     NOT NULL DEFAULT FALSE,
    hostname        TEXT,
    version         TEXT,
    capabilities    JSONB       NOT NULL DEFAULT '{}',
    last_seen_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL
);

-- Scripts keep their author's id after the author is deleted only as history: SET NULL, never a cascade that
-- would silently delete scripts with their author.
CREATE TABLE scripts (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT        NOT NULL UNIQUE,
    description     TEXT        NOT NULL DEFAULT '',
    filename        TEXT        NOT NULL,
    current_version BIGINT      NOT NULL,
    created_by      BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX scripts_created_by ON scripts (created_by);

CREATE TABLE script_versions (
    script_id  BIGINT      NOT NULL REFERENCES scripts (id) ON DELETE CASCADE,
    version    BIGINT      NOT NULL,
    content    TEXT        NOT NULL,
    sha256     TEXT        NOT NULL,
    size       BIGINT      NOT NULL,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (script_id, version)
);
CREATE INDEX script_versions_created_by ON script_versions (created_by);

-- A script used by a task cannot be deleted (RESTRICT): the task would silently stop working. An agent that a
-- task is pinned to can: the task falls back to label matching (SET NULL).
CREATE TABLE tasks (
    id                    BIGSERIAL PRIMARY KEY,
    name                  TEXT        NOT NULL UNIQUE,
    description           TEXT        NOT NULL DEFAULT '',
    script_id             BIGINT      NOT NULL REFERENCES scripts (id) ON DELETE RESTRICT,
    script_version        BIGINT,
    agent_id              BIGINT REFERENCES agents (id) ON DELETE SET NULL,
    labels                JSONB       NOT NULL DEFAULT '[]',
    args                  JSONB       NOT NULL DEFAULT '[]',
    env                   JSONB       NOT NULL DEFAULT '{}',
    secrets               JSONB       NOT NULL DEFAULT '[]',
    timeout_seconds       BIGINT      NOT NULL,
    memory_mb             BIGINT      NOT NULL,
    cpu_seconds           BIGINT      NOT NULL,
    max_output_bytes      BIGINT      NOT NULL,
    network               BOOLEAN     NOT NULL DEFAULT FALSE,
    retries               BIGINT      NOT NULL DEFAULT 0,
    retry_backoff_seconds BIGINT      NOT NULL DEFAULT 10,
    schedule              JSONB,
    enabled               BOOLEAN     NOT NULL DEFAULT TRUE,
    next_fire_at          TIMESTAMPTZ,
    created_by            BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_script_id ON tasks (script_id);
CREATE INDEX tasks_agent_id ON tasks (agent_id);
CREATE INDEX tasks_created_by ON tasks (created_by);
CREATE INDEX tasks_next_fire_at ON tasks (next_fire_at) WHERE next_fire_at IS NOT NULL;

-- Ids are assigned by the writer (last id + 1 under an advisory lock) because each id is part of its hash.
CREATE TABLE audit_log (
    id            BIGINT PRIMARY KEY,
    ts            TIMESTAMPTZ NOT NULL,
    actor_type    TEXT        NOT NULL,
    actor_id      TEXT,
    action        TEXT        NOT NULL,
    resource_type TEXT        NOT NULL,
    resource_id   TEXT,
    ip            TEXT,
    details       JSONB       NOT NULL DEFAULT '{}',
    prev_hash     TEXT        NOT NULL,
    hash          TEXT        NOT NULL
);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_resource ON audit_log (resource_type, resource_id);
CREATE INDEX audit_log_actor ON audit_log (actor_type, actor_id);
