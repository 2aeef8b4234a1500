-- Who may use a secret, set by its owner (creator) or an admin. A secret goes only to the tasks its policy
-- names (or every task with all_tasks), and only to the agents it names by id or label; with neither ids nor
-- labels, only to the embedded agent, which runs inside the server that already holds the key. Lists are JSON
-- arrays like the other list columns: an id that no longer exists matches nothing, so deleting a task or an
-- agent never widens a policy (ids are never reused).
ALTER TABLE secrets
    ADD COLUMN all_tasks    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN task_ids     JSONB   NOT NULL DEFAULT '[]',
    ADD COLUMN agent_ids    JSONB   NOT NULL DEFAULT '[]',
    ADD COLUMN agent_labels JSONB   NOT NULL DEFAULT '[]';

-- Tasks that already name a secret were set up deliberately: they keep it. Ad-hoc use and new tasks need the
-- new policy.
UPDATE secrets s SET task_ids = COALESCE(
    (SELECT jsonb_agg(t.id ORDER BY t.id) FROM tasks t WHERE t.secrets @> jsonb_build_array(s.name)),
    '[]'::jsonb
);
