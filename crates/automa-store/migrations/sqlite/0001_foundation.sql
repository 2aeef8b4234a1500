-- Users, tokens, agents, scripts, tasks and the audit log. Timestamps are RFC 3339 text in UTC; booleans are
-- 0/1 integers; lists and maps are JSON text.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    TEXT    NOT NULL,
    last_login_at TEXT
);

-- Deleting a user deletes their API tokens: a token must never outlive its owner.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    role_cap     TEXT CHECK (role_cap IN ('admin', 'operator', 'viewer')),
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT,
    created_at   TEXT    NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE agents (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    description     TEXT    NOT NULL DEFAULT '',
    labels          TEXT    NOT NULL DEFAULT '[]',
    max_concurrency INTEGER NOT NULL DEFAULT 1,
    token_hash      TEXT    NOT NULL UNIQUE,
    disabled        INTEGER NOT NULL DEFAULT 0,
    draining        INTEGER NOT NULL DEFAULT 0,
    embedded        INTEGER NOT NULL DEFAULT 0,
    hostname        TEXT,
    version         TEXT,
    capabilities    TEXT    NOT NULL DEFAULT '{}',
    last_seen_at    TEXT,
    created_at      TEXT    NOT NULL
);

-- Scripts keep their author's id after the author is deleted only as history: SET NULL, never a cascade that
-- would silently delete scripts with their author.
CREATE TABLE scripts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    description     TEXT    NOT NULL DEFAULT '',
    filename        TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    created_by      INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
CREATE INDEX scripts_created_by ON scripts (created_by);

CREATE TABLE script_versions (
    script_id  INTEGER NOT NULL REFERENCES scripts (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    content    TEXT    NOT NULL,
    sha256     TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    created_by INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (script_id, version)
);
CREATE INDEX script_versions_created_by ON script_versions (created_by);

-- A script used by a task cannot be deleted (RESTRICT): the task would silently stop working. An agent that a
-- task is pinned to can: the task falls back to label matching (SET NULL).
CREATE TABLE tasks (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT    NOT NULL UNIQUE,
    description           TEXT    NOT NULL DEFAULT '',
    script_id             INTEGER NOT NULL REFERENCES scripts (id) ON DELETE RESTRICT,
    script_version        INTEGER,
    agent_id              INTEGER REFERENCES agents (id) ON DELETE SET NULL,
    labels                TEXT    NOT NULL DEFAULT '[]',
    args                  TEXT    NOT NULL DEFAULT '[]',
    env                   TEXT    NOT NULL DEFAULT '{}',
    secrets               TEXT    NOT NULL DEFAULT '[]',
    timeout_seconds       INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    cpu_seconds           INTEGER NOT NULL,
    max_output_bytes      INTEGER NOT NULL,
    network               INTEGER NOT NULL DEFAULT 0,
    retries               INTEGER NOT NULL DEFAULT 0,
    retry_backoff_seconds INTEGER NOT NULL DEFAULT 10,
    schedule              TEXT,
    enabled               INTEGER NOT NULL DEFAULT 1,
    next_fire_at          TEXT,
    created_by            INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at            TEXT    NOT NULL,
    updated_at            TEXT    NOT NULL
);
CREATE INDEX tasks_script_id ON tasks (script_id);
CREATE INDEX tasks_agent_id ON tasks (agent_id);
CREATE INDEX tasks_created_by ON tasks (created_by);
CREATE INDEX tasks_next_fire_at ON tasks (next_fire_at) WHERE next_fire_at IS NOT NULL;

-- Ids are assigned by the writer (last id + 1 under the write lock) because each id is part of its hash.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY,
    ts            TEXT    NOT NULL,
    actor_type    TEXT    NOT NULL,
    actor_id      TEXT,
    action        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT,
    ip            TEXT,
    details       TEXT    NOT NULL DEFAULT '{}',
    prev_hash     TEXT    NOT NULL,
    hash          TEXT    NOT NULL
);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_resource ON audit_log (resource_type, resource_id);
CREATE INDEX audit_log_actor ON audit_log (actor_type, actor_id);
