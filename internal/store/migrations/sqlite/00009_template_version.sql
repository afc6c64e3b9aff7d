-- Template versions (keep in step with ../postgres/00009_template_version.sql):
--   * every change to a template stores its whole config as a new,
--     immutable version; template.version is the current one;
--   * VMs and pools record the version they were made from (0: not from
--     a template, or made before versions existed);
--   * pool rollouts: a pool moving to another template version, one step
--     at a time; at most one active (running, paused, reverting) per pool.
-- Existing templates become version 1 of themselves.

-- +goose Up
ALTER TABLE template ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
CREATE TABLE template_version (
    template_id TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    config      TEXT    NOT NULL,
    owner       TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (template_id, version)
) STRICT;
INSERT INTO template_version (template_id, version, config, owner, created_at)
    SELECT id, 1, config, owner, created_at FROM template;
ALTER TABLE vm ADD COLUMN template_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pool ADD COLUMN template_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pool_rollout (
    id                   TEXT    PRIMARY KEY,
    pool_id              TEXT    NOT NULL,
    from_version         INTEGER NOT NULL,
    to_version           INTEGER NOT NULL,
    canary               INTEGER NOT NULL,
    max_parallel         INTEGER NOT NULL,
    min_healthy_ms       INTEGER  NOT NULL,
    progress_deadline_ms INTEGER  NOT NULL,
    auto_revert          INTEGER NOT NULL,
    state                TEXT    NOT NULL,
    phase                TEXT    NOT NULL,
    message              TEXT    NOT NULL DEFAULT '',
    actor                TEXT    NOT NULL DEFAULT '',
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX pool_rollout_active_idx ON pool_rollout (pool_id) WHERE state IN ('running', 'paused', 'reverting');
CREATE INDEX pool_rollout_pool_idx ON pool_rollout (pool_id, created_at);

-- +goose Down
DROP TABLE pool_rollout;
ALTER TABLE pool DROP COLUMN template_version;
ALTER TABLE vm DROP COLUMN template_version;
DROP TABLE template_version;
ALTER TABLE template DROP COLUMN version;
