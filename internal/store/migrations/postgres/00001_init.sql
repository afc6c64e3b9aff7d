-- Nexus schema, Postgres. Keep in step with ../sqlite/00001_init.sql.
-- Conventions: ids are text (UUIDs for entities, identity columns for logs),
-- '' means "none" for optional references, times are timestamptz, JSON is
-- jsonb.

-- +goose Up
CREATE TABLE vm (
    id              text        PRIMARY KEY,
    name            text        NOT NULL,
    project         text        NOT NULL DEFAULT '',
    state           text        NOT NULL,
    desired_state   text        NOT NULL,
    host_id         text        NOT NULL DEFAULT '',
    host_addr       text        NOT NULL DEFAULT '',
    api_sock        text        NOT NULL DEFAULT '',
    tap             text        NOT NULL DEFAULT '',
    mac             text        NOT NULL DEFAULT '',
    log_path        text        NOT NULL DEFAULT '',
    vcpu            integer     NOT NULL CHECK (vcpu >= 0),
    mem_mib         integer     NOT NULL CHECK (mem_mib >= 0),
    kernel_path     text        NOT NULL DEFAULT '',
    rootfs_path     text        NOT NULL DEFAULT '',
    kernel_image_id text        NOT NULL DEFAULT '',
    rootfs_image_id text        NOT NULL DEFAULT '',
    boot_args       text        NOT NULL DEFAULT '',
    spec            jsonb       NOT NULL DEFAULT '{}',
    template_id     text        NOT NULL DEFAULT '',
    template_config jsonb,
    overrides       jsonb,
    tags            jsonb       NOT NULL DEFAULT '{}',
    last_error      text        NOT NULL DEFAULT '',
    retries         integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    generation      bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CONSTRAINT vm_project_name_key UNIQUE (project, name)
);
-- Keyset paging (newest first) with and without a project filter.
CREATE INDEX vm_created_idx ON vm (created_at, id);
CREATE INDEX vm_project_created_idx ON vm (project, created_at, id);
CREATE INDEX vm_host_idx ON vm (host_id);
CREATE INDEX vm_state_idx ON vm (state);
CREATE INDEX vm_tags_idx ON vm USING gin (tags jsonb_path_ops);
CREATE INDEX vm_next_attempt_idx ON vm (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

CREATE TABLE vm_event (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vm_id   text        NOT NULL REFERENCES vm (id) ON DELETE CASCADE,
    at      timestamptz NOT NULL,
    level   text        NOT NULL,
    message text        NOT NULL
);
CREATE INDEX vm_event_vm_idx ON vm_event (vm_id, id);

CREATE TABLE template (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    project    text        NOT NULL DEFAULT '',
    owner      text        NOT NULL DEFAULT '',
    config     jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT template_project_name_key UNIQUE (project, name)
);

CREATE TABLE image (
    id         text        PRIMARY KEY,
    project    text        NOT NULL DEFAULT '',
    kind       text        NOT NULL CHECK (kind IN ('kernel', 'rootfs')),
    name       text        NOT NULL,
    host_path  text        NOT NULL,
    sha256     text        NOT NULL DEFAULT '',
    size       bigint      NOT NULL DEFAULT 0,
    read_only  boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL,
    CONSTRAINT image_project_name_key UNIQUE (project, name)
);
CREATE INDEX image_kind_idx ON image (kind);

-- No foreign key to vm: snapshots outlive the VM they were taken from.
CREATE TABLE snapshot (
    id         text        PRIMARY KEY,
    vm_id      text        NOT NULL,
    project    text        NOT NULL DEFAULT '',
    host_id    text        NOT NULL DEFAULT '',
    dir        text        NOT NULL,
    state_path text        NOT NULL,
    mem_path   text        NOT NULL,
    size       bigint      NOT NULL DEFAULT 0,
    files      jsonb       NOT NULL DEFAULT '[]',
    meta       jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);
CREATE INDEX snapshot_vm_idx ON snapshot (vm_id, created_at);
CREATE INDEX snapshot_project_idx ON snapshot (project, created_at);

CREATE TABLE host (
    id           text        PRIMARY KEY,
    name         text        NOT NULL CONSTRAINT host_name_key UNIQUE,
    addr         text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('ready', 'unreachable', 'draining')),
    capacity     jsonb       NOT NULL DEFAULT '{}',
    allocated    jsonb       NOT NULL DEFAULT '{}',
    vms          integer     NOT NULL DEFAULT 0,
    version      text        NOT NULL DEFAULT '',
    last_seen_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL
);

-- Append-only: rows are inserted pending and completed once.
CREATE TABLE audit (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor        text        NOT NULL,
    action       text        NOT NULL,
    resource     text        NOT NULL,
    resource_id  text        NOT NULL DEFAULT '',
    request_id   text        NOT NULL DEFAULT '',
    result       text        NOT NULL CHECK (result IN ('pending', 'success', 'failure', 'denied')),
    before       jsonb,
    after        jsonb,
    error        text        NOT NULL DEFAULT '',
    completed_at timestamptz
);
CREATE INDEX audit_resource_id_idx ON audit (resource_id, id);
CREATE INDEX audit_actor_idx ON audit (actor, id);
CREATE INDEX audit_at_idx ON audit (at);

CREATE TABLE api_token (
    id           text        PRIMARY KEY,
    prefix       text        NOT NULL CONSTRAINT api_token_prefix_key UNIQUE,
    hash         text        NOT NULL,
    owner        text        NOT NULL,
    role         text        NOT NULL,
    project      text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE lease (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE lease;
DROP TABLE api_token;
DROP TABLE audit;
DROP TABLE host;
DROP TABLE snapshot;
DROP TABLE image;
DROP TABLE template;
DROP TABLE vm_event;
DROP TABLE vm;
