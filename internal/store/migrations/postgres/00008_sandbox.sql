-- Sandboxes (keep in step with ../sqlite/00008_sandbox.sql):
--   * time to live: when a VM expires and what the reconciler then does
--     (stop or delete); the partial index serves the expiry sweep, which
--     reads only VMs that have an expiry;
--   * warm pools: a pool keeps paused VMs of one template or snapshot
--     ready; a VM of a pool names it (pool_id) until it is claimed.

-- +goose Up
ALTER TABLE vm ADD COLUMN expires_at timestamptz;
ALTER TABLE vm ADD COLUMN on_expiry text NOT NULL DEFAULT '';
CREATE INDEX vm_expires_idx ON vm (expires_at) WHERE expires_at IS NOT NULL;
ALTER TABLE vm ADD COLUMN pool_id text NOT NULL DEFAULT '';
CREATE INDEX vm_pool_idx ON vm (pool_id, state) WHERE pool_id <> '';

CREATE TABLE pool (
    id           text    PRIMARY KEY,
    name         text    NOT NULL,
    project      text    NOT NULL,
    template_id  text    NOT NULL DEFAULT '',
    snapshot_id  text    NOT NULL DEFAULT '',
    size         integer NOT NULL,
    min_ready    integer NOT NULL,
    on_empty     text    NOT NULL,
    short_since  timestamptz,
    claims       integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    CONSTRAINT pool_project_name_key UNIQUE (project, name)
);

-- +goose Down
DROP TABLE pool;
DROP INDEX vm_pool_idx;
ALTER TABLE vm DROP COLUMN pool_id;
DROP INDEX vm_expires_idx;
ALTER TABLE vm DROP COLUMN on_expiry;
ALTER TABLE vm DROP COLUMN expires_at;
