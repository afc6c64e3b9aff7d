-- Images that really boot (keep in step with ../postgres/00003_boot.sql):
--   * image kind initrd; VMs boot with an initrd (image id or raw path);
--   * each VM's address on its host's bridge, unique per host, so managers
--     sharing a database never hand out one address twice; the host's
--     subnet and gateway, as its agent reports them;
--   * when the guest was started and when it said it was ready, and the
--     VMM pid those belong to (a report of an earlier boot is ignored).
-- SQLite cannot change a CHECK constraint: the image table is rebuilt.

-- +goose Up
CREATE TABLE image_new (
    id         TEXT    PRIMARY KEY,
    project    TEXT    NOT NULL DEFAULT '',
    kind       TEXT    NOT NULL CHECK (kind IN ('kernel', 'initrd', 'rootfs')),
    name       TEXT    NOT NULL,
    host_path  TEXT    NOT NULL,
    sha256     TEXT    NOT NULL DEFAULT '',
    size       INTEGER NOT NULL DEFAULT 0,
    read_only  INTEGER NOT NULL DEFAULT 1 CHECK (read_only IN (0, 1)),
    created_at INTEGER NOT NULL,
    CONSTRAINT image_project_name_key UNIQUE (project, name)
) STRICT;
INSERT INTO image_new (id, project, kind, name, host_path, sha256, size, read_only, created_at)
    SELECT id, project, kind, name, host_path, sha256, size, read_only, created_at FROM image;
DROP TABLE image;
ALTER TABLE image_new RENAME TO image;
CREATE INDEX image_kind_idx ON image (kind);

ALTER TABLE vm ADD COLUMN initrd_path TEXT NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN initrd_image_id TEXT NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN subnet TEXT NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN gateway TEXT NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN vmm_pid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vm ADD COLUMN booted_at INTEGER;
ALTER TABLE vm ADD COLUMN guest_ready_at INTEGER;
-- One address per host: the allocation's guarantee across managers.
CREATE UNIQUE INDEX vm_host_ip_key ON vm (host_id, ip) WHERE ip <> '';

ALTER TABLE host ADD COLUMN subnet TEXT NOT NULL DEFAULT '';
ALTER TABLE host ADD COLUMN gateway TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE host DROP COLUMN gateway;
ALTER TABLE host DROP COLUMN subnet;
DROP INDEX vm_host_ip_key;
ALTER TABLE vm DROP COLUMN guest_ready_at;
ALTER TABLE vm DROP COLUMN booted_at;
ALTER TABLE vm DROP COLUMN vmm_pid;
ALTER TABLE vm DROP COLUMN gateway;
ALTER TABLE vm DROP COLUMN subnet;
ALTER TABLE vm DROP COLUMN ip;
ALTER TABLE vm DROP COLUMN initrd_image_id;
ALTER TABLE vm DROP COLUMN initrd_path;
CREATE TABLE image_old (
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
INSERT INTO image_old (id, project, kind, name, host_path, sha256, size, read_only, created_at)
    SELECT id, project, kind, name, host_path, sha256, size, read_only, created_at FROM image WHERE kind <> 'initrd';
DROP TABLE image;
ALTER TABLE image_old RENAME TO image;
CREATE INDEX image_kind_idx ON image (kind);
