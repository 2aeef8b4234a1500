-- Notifications: channels (a webhook or e-mail recipients), which events each task sends where, and the outbox
-- of deliveries. A delivery row is written in the transaction that ends its run, so a notice is never lost
-- between the run's end and its sending; workers on every server claim due rows and record each attempt.
CREATE TABLE notification_channels (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    name              TEXT    NOT NULL UNIQUE,
    kind              TEXT    NOT NULL CHECK (kind IN ('webhook', 'email')),
    url               TEXT,
    recipients        TEXT    NOT NULL DEFAULT '[]',
    -- The webhook signing secret, sealed by the server like secrets' values; the store never sees it plain.
    secret_ciphertext BLOB,
    secret_nonce      BLOB,
    is_default        INTEGER NOT NULL DEFAULT 0,
    events            TEXT    NOT NULL DEFAULT '[]',
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL
);

-- A task's own choice; tasks without a row use the default channels. Channel ids that no longer exist match
-- nothing.
CREATE TABLE task_notifications (
    task_id     INTEGER PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    channel_ids TEXT    NOT NULL DEFAULT '[]',
    events      TEXT    NOT NULL DEFAULT '[]',
    updated_at  TEXT    NOT NULL
);

-- The channel's name is copied so that history stays readable after the channel is deleted. `dedupe_key`
-- makes a notice that several servers may raise (an agent gone offline) one row per channel.
CREATE TABLE notification_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id      INTEGER REFERENCES notification_channels (id) ON DELETE SET NULL,
    channel_name    TEXT    NOT NULL,
    run_id          INTEGER REFERENCES runs (id) ON DELETE CASCADE,
    event           TEXT    NOT NULL,
    details         TEXT    NOT NULL DEFAULT '{}',
    dedupe_key      TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    lease_until     TEXT,
    last_error      TEXT,
    response_code   INTEGER,
    created_at      TEXT    NOT NULL,
    last_attempt_at TEXT,
    delivered_at    TEXT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_run ON notification_deliveries (run_id);
CREATE INDEX notification_deliveries_channel ON notification_deliveries (channel_id);
CREATE UNIQUE INDEX notification_deliveries_dedupe ON notification_deliveries (channel_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
