-- Rollouts of VM groups (keep in step with ../postgres/00011_group_rollout.sql):
--   * a group is the VMs of one template in one project that carry the
--     tag group=<name>; a group rollout moves them to another version of
--     the template in place (stop, rewrite the config, start);
--   * group_rollout_vm is the rollout's list of VMs, fixed when it starts,
--     with each VM's config before the rollout (what a revert restores)
--     and whether it ran (restart: a stopped VM is rewritten, not started);
--   * auto_promote 0: once its canaries run the rollout waits in state
--     awaiting_promotion for a promote (as pool rollouts, 00010);
--   * at most one active (running, paused, awaiting_promotion, reverting)
--     rollout per group.
-- Expand only: new tables, nothing existing changes.

-- +goose Up
CREATE TABLE group_rollout (
    id                   TEXT    PRIMARY KEY,
    project              TEXT    NOT NULL,
    template_id          TEXT    NOT NULL,
    group_name           TEXT    NOT NULL,
    to_version           INTEGER NOT NULL,
    canary               INTEGER NOT NULL,
    max_parallel         INTEGER NOT NULL,
    min_healthy_ms       INTEGER NOT NULL,
    progress_deadline_ms INTEGER NOT NULL,
    auto_revert          INTEGER NOT NULL,
    auto_promote         INTEGER NOT NULL DEFAULT 1,
    state                TEXT    NOT NULL,
    phase                TEXT    NOT NULL,
    message              TEXT    NOT NULL DEFAULT '',
    actor                TEXT    NOT NULL DEFAULT '',
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX group_rollout_active_idx ON group_rollout (template_id, group_name) WHERE state IN ('running', 'paused', 'awaiting_promotion', 'reverting');
CREATE INDEX group_rollout_group_idx ON group_rollout (template_id, group_name, created_at);
CREATE TABLE group_rollout_vm (
    rollout_id   TEXT    NOT NULL,
    vm_id        TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    from_version INTEGER NOT NULL,
    restart      INTEGER NOT NULL,
    old_config   TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    message      TEXT    NOT NULL DEFAULT '',
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, vm_id)
) STRICT;

-- +goose Down
DROP TABLE group_rollout_vm;
DROP TABLE group_rollout;
