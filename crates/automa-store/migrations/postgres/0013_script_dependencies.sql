-- Scripts with dependencies (docs/architecture.md, "Dependencies"). A version keeps the PEP 508 requirements it
-- declared (a JSON list of strings, from its PEP 723 block or given explicitly), its `requires-python`, and the
-- lock the server resolved them into when the version was saved (`uv pip compile --universal
-- --generate-hashes` output; NULL without dependencies), so a version always runs with the same packages.
-- `runs.environment_ms`: how long the agent took to prepare the run's environment (0 when it was cached; NULL
-- for runs without dependencies).
ALTER TABLE script_versions ADD COLUMN dependencies JSONB NOT NULL DEFAULT '[]';
ALTER TABLE script_versions ADD COLUMN requires_python TEXT;
ALTER TABLE script_versions ADD COLUMN lock TEXT;
ALTER TABLE runs ADD COLUMN environment_ms BIGINT;
