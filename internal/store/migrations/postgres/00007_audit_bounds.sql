-- A bounded audit trail (issue 12). Every row records the caller's
-- address (source). Denials of anonymous callers are aggregated: one row
-- per source, action and minute (window_start), whose count says how many
-- calls it stands for, so a flood of them cannot grow the table without
-- limit. Rows of other calls have count 1 and no window.

-- +goose Up
ALTER TABLE audit ADD COLUMN source text NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN count bigint NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN window_start timestamptz;
CREATE UNIQUE INDEX audit_window_idx ON audit (source, action, window_start) WHERE window_start IS NOT NULL;

-- +goose Down
DROP INDEX audit_window_idx;
ALTER TABLE audit DROP COLUMN window_start;
ALTER TABLE audit DROP COLUMN count;
ALTER TABLE audit DROP COLUMN source;
