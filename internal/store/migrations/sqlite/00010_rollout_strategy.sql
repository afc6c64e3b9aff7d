-- Rollout strategy: manual promotion and a console health check (keep in step with
-- ../postgres/00010_rollout_strategy.sql):
--   * auto_promote 0: once its canaries are healthy the rollout waits in
--     state awaiting_promotion for a promote; 1 (every older rollout):
--     it moves on by itself;
--   * awaiting_promotion is an active state: at most one active rollout
--     per pool, so the partial index gets it too;
--   * ready_line: a new VM counts healthy only once its console shows
--     this text ('': no console check).

-- +goose Up
ALTER TABLE pool_rollout ADD COLUMN auto_promote INTEGER NOT NULL DEFAULT 1;
ALTER TABLE pool_rollout ADD COLUMN ready_line TEXT    NOT NULL DEFAULT '';
DROP INDEX pool_rollout_active_idx;
CREATE UNIQUE INDEX pool_rollout_active_idx ON pool_rollout (pool_id) WHERE state IN ('running', 'paused', 'reverting', 'awaiting_promotion');

-- +goose Down
DROP INDEX pool_rollout_active_idx;
CREATE UNIQUE INDEX pool_rollout_active_idx ON pool_rollout (pool_id) WHERE state IN ('running', 'paused', 'reverting');
ALTER TABLE pool_rollout DROP COLUMN ready_line;
ALTER TABLE pool_rollout DROP COLUMN auto_promote;
