-- vm_host_idx is covered by vm_host_alloc_idx (00006). Dropped in a
-- migration of its own, holding no other lock on vm while it waits for the
-- table (see 00006).

-- +goose Up
DROP INDEX IF EXISTS vm_host_idx;

-- +goose Down
CREATE INDEX IF NOT EXISTS vm_host_idx ON vm (host_id);
