-- Template versions (keep in step with ../sqlite/00009_template_version.sql):
--   * every change to a template stores its whole config as a new,
--     immutable version; template.version is the current one;
--   * VMs and pools record the version they were made from (0: not from
--     a template, or made before versions existed);
--   * pool rollouts: a pool moving to another template version, one step
--     at a time; at most one active (running, paused, reverting) per pool.
-- Existing templates become version 1 of themselves.

-- +goose Up
ALTER TABLE template ADD COLUMN version integer NOT NULL DEFAULT 1;
CREATE TABLE template_version (
    template_id text        NOT NULL,
    version     integer     NOT NULL,
    config      jsonb       NOT NULL,
    owner       text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (template_id, version)
);
INSERT INTO template_version (template_id, version, config, owner, created_at)
    SELECT id, 1, config, owner, created_at FROM template;
ALTER TABLE vm ADD COLUMN template_version integer NOT NULL DEFAULT 0;
ALTER TABLE pool ADD COLUMN template_version integer NOT NULL DEFAULT 0;
CREATE TABLE pool_rollout (
    id                   text    PRIMARY KEY,
    pool_id              text    NOT NULL,
    from_version         integer NOT NULL,
    to_version           integer NOT NULL,
    canary               integer NOT NULL,
    max_parallel         integer NOT NULL,
    min_healthy_ms       bigint  NOT NULL,
    progress_deadline_ms bigint  NOT NULL,
    auto_revert          integer NOT NULL,
    state                text    NOT NULL,
    phase                text    NOT NULL,
    message              text    NOT NULL DEFAULT '',
    actor                text    NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE UNIQUE INDEX pool_rollout_active_idx ON pool_rollout (pool_id) WHERE state IN ('running', 'paused', 'reverting');
CREATE INDEX pool_rollout_pool_idx ON pool_rollout (pool_id, created_at);

-- +goose Down
DROP TABLE pool_rollout;
ALTER TABLE pool DROP COLUMN template_version;
ALTER TABLE vm DROP COLUMN template_version;
DROP TABLE template_version;
ALTER TABLE template DROP COLUMN version;
