-- Placement sums each host's vCPUs and memory over its VMs in the states
-- that hold resources (AllocationsByHost, CreateVMWithin). An index with
-- those columns answers from the index alone instead of reading every VM
-- row; it starts with host_id, so it serves the host filters of the
-- reconciler as well and replaces vm_host_idx. Older managers run
-- unchanged on either index.

-- +goose Up
CREATE INDEX vm_host_alloc_idx ON vm (host_id, state, vcpu, mem_mib);
DROP INDEX vm_host_idx;

-- +goose Down
CREATE INDEX vm_host_idx ON vm (host_id);
DROP INDEX vm_host_alloc_idx;
