-- A user's session epoch: every session token carries the epoch it was issued under, and a token whose epoch
-- is no longer the user's is refused. Bumping it (password change, logout, "sign out everywhere") ends every
-- session of that user at once, without keeping a list of issued tokens.
ALTER TABLE users ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
