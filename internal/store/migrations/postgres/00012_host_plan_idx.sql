-- Nothing for Postgres (keep in step with ../sqlite/00012_host_plan_idx.sql):
-- SQLite's covering index of the reconciler's planning columns holds
-- generation and updated_at, which every update writes. On Postgres that
-- would make every update write every index of vm (no HOT update), and its
-- shared buffers keep the rows a pass reads cached across writes anyway.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
