-- Placement sums each host's vCPUs and memory over its VMs in the states
-- that hold resources (AllocationsByHost, CreateVMWithin). An index with
-- those columns answers from the index alone instead of reading every VM
-- row; it starts with host_id, so it serves the host filters of the
-- reconciler as well and replaces vm_host_idx, which 00013 drops. Older
-- managers run unchanged on either index.
--
-- The drop was here once, after the build in the same transaction: on
-- Postgres the migration then held the build's SHARE lock on vm while it
-- waited for ACCESS EXCLUSIVE to drop, and a running manager's transaction
-- that had read vm and then wrote it deadlocked with it at once (a create
-- failed in a rolling upgrade). Databases that applied it as it was lack
-- vm_host_idx already; 00013 finds nothing to drop there.

-- +goose Up
CREATE INDEX vm_host_alloc_idx ON vm (host_id, state, vcpu, mem_mib);

-- +goose Down
DROP INDEX vm_host_alloc_idx;
