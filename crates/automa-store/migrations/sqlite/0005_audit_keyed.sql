-- Audit entries are now hashed with HMAC-SHA256 under a key derived from the server key. Existing entries
-- keep their plain SHA-256 hash and say so, so they verify exactly as they were written; nothing is re-hashed.
ALTER TABLE audit_log ADD COLUMN scheme TEXT NOT NULL DEFAULT 'sha256' CHECK (scheme IN ('sha256', 'hmac-sha256'));
