-- Guardrails (issue 12): a bounded audit trail and project quotas.
--
-- A bounded audit trail. Every row records the caller's
-- address (source). Denials of anonymous callers are aggregated: one row
-- per source, action and minute (window_start), whose count says how many
-- calls it stands for, so a flood of them cannot grow the table without
-- limit. Rows of other calls have count 1 and no window.
--
-- Project quotas: one row per project with a quota; a NULL column is no
-- limit, and a project without a row has the manager's default quota
-- (none unless configured). A row with uses_default stands for the
-- default: written by the first create of a project under a default
-- quota, so that its lock orders that project's creates too. Creates lock the row (FOR
-- UPDATE on Postgres) while they count the project's usage and insert, so
-- managers sharing the database never pass a limit together. The usage
-- counts find a project's rows by the indexes that start with project;
-- vm_project_alloc_idx answers a project's VM count and sums alone.

-- +goose Up
ALTER TABLE audit ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN window_start INTEGER;
CREATE UNIQUE INDEX audit_window_idx ON audit (source, action, window_start) WHERE window_start IS NOT NULL;
CREATE TABLE project_quota (
    project            TEXT PRIMARY KEY,
    max_vms            INTEGER,
    max_vcpus          INTEGER,
    max_mem_mib        INTEGER,
    max_snapshots      INTEGER,
    max_snapshot_bytes INTEGER,
    max_images         INTEGER,
    max_templates      INTEGER,
    max_streams        INTEGER,
    uses_default       INTEGER NOT NULL DEFAULT 0,
    updated_at         INTEGER NOT NULL
) STRICT;
CREATE INDEX vm_project_alloc_idx ON vm (project, vcpu, mem_mib);

-- +goose Down
DROP INDEX vm_project_alloc_idx;
DROP TABLE project_quota;
DROP INDEX audit_window_idx;
ALTER TABLE audit DROP COLUMN window_start;
ALTER TABLE audit DROP COLUMN count;
ALTER TABLE audit DROP COLUMN source;
