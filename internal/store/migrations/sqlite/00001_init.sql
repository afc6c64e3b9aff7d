-- Nexus schema, SQLite. Keep in step with ../postgres/00001_init.sql.
-- STRICT tables enforce the column types. Times are INTEGER microseconds
-- since the Unix epoch (UTC); JSON is TEXT; booleans are INTEGER 0/1.

-- +goose Up
CREATE TABLE vm (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    project         TEXT    NOT NULL DEFAULT '',
    state           TEXT    NOT NULL,
    desired_state   TEXT    NOT NULL,
    host_id         TEXT    NOT NULL DEFAULT '',
    host_addr       TEXT    NOT NULL DEFAULT '',
    api_sock        TEXT    NOT NULL DEFAULT '',
    tap             TEXT    NOT NULL DEFAULT '',
    mac             TEXT    NOT NULL DEFAULT '',
    log_path        TEXT    NOT NULL DEFAULT '',
    vcpu            INTEGER NOT NULL CHECK (vcpu >= 0),
    mem_mib         INTEGER NOT NULL CHECK (mem_mib >= 0),
    kernel_path     TEXT    NOT NULL DEFAULT '',
    rootfs_path     TEXT    NOT NULL DEFAULT '',
    kernel_image_id TEXT    NOT NULL DEFAULT '',
    rootfs_image_id TEXT    NOT NULL DEFAULT '',
    boot_args       TEXT    NOT NULL DEFAULT '',
    spec            TEXT    NOT NULL DEFAULT '{}',
    template_id     TEXT    NOT NULL DEFAULT '',
    template_config TEXT,
    overrides       TEXT,
    tags            TEXT    NOT NULL DEFAULT '{}',
    last_error      TEXT    NOT NULL DEFAULT '',
    retries         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    generation      INTEGER NOT NULL DEFAULT 1,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    CONSTRAINT vm_project_name_key UNIQUE (project, name)
) STRICT;
-- Keyset paging (newest first) with and without a project filter.
CREATE INDEX vm_created_idx ON vm (created_at, id);
CREATE INDEX vm_project_created_idx ON vm (project, created_at, id);
CREATE INDEX vm_host_idx ON vm (host_id);
CREATE INDEX vm_state_idx ON vm (state);
CREATE INDEX vm_next_attempt_idx ON vm (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

-- AUTOINCREMENT: ids are never reused, even after the newest rows are
-- deleted with their VM, so "newest last" stays true.
CREATE TABLE vm_event (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id   TEXT    NOT NULL REFERENCES vm (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    level   TEXT    NOT NULL,
    message TEXT    NOT NULL
) STRICT;
CREATE INDEX vm_event_vm_idx ON vm_event (vm_id, id);

CREATE TABLE template (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    project    TEXT    NOT NULL DEFAULT '',
    owner      TEXT    NOT NULL DEFAULT '',
    config     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    CONSTRAINT template_project_name_key UNIQUE (project, name)
) STRICT;

CREATE TABLE image (
    id         TEXT    PRIMARY KEY,
    project    TEXT    NOT NULL DEFAULT '',
    kind       TEXT    NOT NULL CHECK (kind IN ('kernel', 'rootfs')),
    name       TEXT    NOT NULL,
    host_path  TEXT    NOT NULL,
    sha256     TEXT    NOT NULL DEFAULT '',
    size       INTEGER NOT NULL DEFAULT 0,
    read_only  INTEGER NOT NULL DEFAULT 1 CHECK (read_only IN (0, 1)),
    created_at INTEGER NOT NULL,
    CONSTRAINT image_project_name_key UNIQUE (project, name)
) STRICT;
CREATE INDEX image_kind_idx ON image (kind);

-- No foreign key to vm: snapshots outlive the VM they were taken from.
CREATE TABLE snapshot (
    id         TEXT    PRIMARY KEY,
    vm_id      TEXT    NOT NULL,
    project    TEXT    NOT NULL DEFAULT '',
    host_id    TEXT    NOT NULL DEFAULT '',
    dir        TEXT    NOT NULL,
    state_path TEXT    NOT NULL,
    mem_path   TEXT    NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    files      TEXT    NOT NULL DEFAULT '[]',
    meta       TEXT    NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX snapshot_vm_idx ON snapshot (vm_id, created_at);
CREATE INDEX snapshot_project_idx ON snapshot (project, created_at);

CREATE TABLE host (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL CONSTRAINT host_name_key UNIQUE,
    addr         TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('ready', 'unreachable', 'draining')),
    capacity     TEXT    NOT NULL DEFAULT '{}',
    allocated    TEXT    NOT NULL DEFAULT '{}',
    vms          INTEGER NOT NULL DEFAULT 0,
    version      TEXT    NOT NULL DEFAULT '',
    last_seen_at INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;

-- Append-only: rows are inserted pending and completed once.
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    resource     TEXT    NOT NULL,
    resource_id  TEXT    NOT NULL DEFAULT '',
    request_id   TEXT    NOT NULL DEFAULT '',
    result       TEXT    NOT NULL CHECK (result IN ('pending', 'success', 'failure', 'denied')),
    before       TEXT,
    after        TEXT,
    error        TEXT    NOT NULL DEFAULT '',
    completed_at INTEGER
) STRICT;
CREATE INDEX audit_resource_id_idx ON audit (resource_id, id);
CREATE INDEX audit_actor_idx ON audit (actor, id);
CREATE INDEX audit_at_idx ON audit (at);

CREATE TABLE api_token (
    id           TEXT    PRIMARY KEY,
    prefix       TEXT    NOT NULL CONSTRAINT api_token_prefix_key UNIQUE,
    hash         TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    project      TEXT    NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE TABLE lease (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

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
