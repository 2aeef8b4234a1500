-- Notifications: channels (a webhook or e-mail recipients), which events each task sends where, and the outbox
-- of deliveries. A delivery row is written in the transaction that ends its run, so a notice is never lost
-- between the run's end and its sending; workers on every server claim due rows and record each attempt.
CREATE TABLE notification_channels (
    id                BIGSERIAL PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    kind              TEXT    NOT NULL CHECK (kind IN ('webhook', 'email')),
    url               TEXT,
    recipients        JSONB   NOT NULL DEFAULT '[]',
    -- The webhook signing secret, sealed by the server like secrets' values; the store never sees it plain.
    secret_ciphertext BYTEA,
    secret_nonce      BYTEA,
    is_default        BOOLEAN NOT NULL DEFAULT FALSE,
    events            JSONB   NOT NULL DEFAULT '[]',
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- A task's own choice; tasks without a row use the default channels. Channel ids that no longer exist match
-- nothing.
CREATE TABLE task_notifications (
    task_id     BIGINT  PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    channel_ids JSONB   NOT NULL DEFAULT '[]',
    events      JSONB   NOT NULL DEFAULT '[]',
    updated_at  TIMESTAMPTZ NOT NULL
);

-- The channel's name is copied so that history stays readable after the channel is deleted. `dedupe_key`
-- makes a notice that several servers may raise (an agent gone offline) one row per channel.
CREATE TABLE notification_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    channel_id      BIGINT  REFERENCES notification_channels (id) ON DELETE SET NULL,
    channel_name    TEXT    NOT NULL,
    run_id          BIGINT  REFERENCES runs (id) ON DELETE CASCADE,
    event           TEXT    NOT NULL,
    details         JSONB   NOT NULL DEFAULT '{}',
    dedupe_key      TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    response_code   BIGINT,
    created_at      TIMESTAMPTZ NOT NULL,
    last_attempt_at TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_run ON notification_deliveries (run_id);
CREATE INDEX notification_deliveries_channel ON notification_deliveries (channel_id);
CREATE UNIQUE INDEX notification_deliveries_dedupe ON notification_deliveries (channel_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
