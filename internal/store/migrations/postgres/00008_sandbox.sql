-- Sandboxes (keep in step with ../sqlite/00008_sandbox.sql):
--   * time to live: when a VM expires and what the reconciler then does
--     (stop or delete); the partial index serves the expiry sweep, which
--     reads only VMs that have an expiry.

-- +goose Up
ALTER TABLE vm ADD COLUMN expires_at timestamptz;
ALTER TABLE vm ADD COLUMN on_expiry text NOT NULL DEFAULT '';
CREATE INDEX vm_expires_idx ON vm (expires_at) WHERE expires_at IS NOT NULL;

-- +goose Down
DROP INDEX vm_expires_idx;
ALTER TABLE vm DROP COLUMN on_expiry;
ALTER TABLE vm DROP COLUMN expires_at;
