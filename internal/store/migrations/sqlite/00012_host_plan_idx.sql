-- The reconciler plans each host from a few columns of its VMs
-- (ListHostVMStates). vm_host_alloc_idx found the host's rows, and each
-- was then read from the table: a page per VM, and SQLite drops its cached
-- pages at the first read after any write, so a pass at 10,000 VMs read
-- some 10,000 pages again. This index starts as vm_host_alloc_idx did (the
-- placement sums still read it alone) and carries the planning columns, so
-- a pass reads the index only. (Keep in step with
-- ../postgres/00012_host_plan_idx.sql, which changes nothing: there every
-- update would then touch every index, losing HOT updates.)

-- +goose Up
CREATE INDEX vm_host_plan_idx ON vm (host_id, state, vcpu, mem_mib, desired_state, tap, retries, next_attempt_at, generation, updated_at, id, last_error);
DROP INDEX vm_host_alloc_idx;

-- +goose Down
CREATE INDEX vm_host_alloc_idx ON vm (host_id, state, vcpu, mem_mib);
DROP INDEX vm_host_plan_idx;
