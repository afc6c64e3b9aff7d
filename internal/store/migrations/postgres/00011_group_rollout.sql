-- Rollouts of VM groups (keep in step with ../sqlite/00011_group_rollout.sql):
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
    id                   text    PRIMARY KEY,
    project              text    NOT NULL,
    template_id          text    NOT NULL,
    group_name           text    NOT NULL,
    to_version           integer NOT NULL,
    canary               integer NOT NULL,
    max_parallel         integer NOT NULL,
    min_healthy_ms       bigint  NOT NULL,
    progress_deadline_ms bigint  NOT NULL,
    auto_revert          integer NOT NULL,
    auto_promote         integer NOT NULL DEFAULT 1,
    state                text    NOT NULL,
    phase                text    NOT NULL,
    message              text    NOT NULL DEFAULT '',
    actor                text    NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE UNIQUE INDEX group_rollout_active_idx ON group_rollout (template_id, group_name) WHERE state IN ('running', 'paused', 'awaiting_promotion', 'reverting');
CREATE INDEX group_rollout_group_idx ON group_rollout (template_id, group_name, created_at);
CREATE TABLE group_rollout_vm (
    rollout_id   text    NOT NULL,
    vm_id        text    NOT NULL,
    position     integer NOT NULL,
    from_version integer NOT NULL,
    restart      integer NOT NULL,
    old_config   text    NOT NULL,
    state        text    NOT NULL,
    message      text    NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (rollout_id, vm_id)
);

-- +goose Down
DROP TABLE group_rollout_vm;
DROP TABLE group_rollout;
