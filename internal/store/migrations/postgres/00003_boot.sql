-- Images that really boot (keep in step with ../sqlite/00003_boot.sql):
--   * image kind initrd; VMs boot with an initrd (image id or raw path);
--   * each VM's address on its host's bridge, unique per host, so managers
--     sharing a database never hand out one address twice; the host's
--     subnet and gateway, as its agent reports them;
--   * when the guest was started and when it said it was ready, and the
--     VMM pid those belong to (a report of an earlier boot is ignored).

-- +goose Up
ALTER TABLE image DROP CONSTRAINT image_kind_check;
ALTER TABLE image ADD CONSTRAINT image_kind_check CHECK (kind IN ('kernel', 'initrd', 'rootfs'));

ALTER TABLE vm ADD COLUMN initrd_path text NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN initrd_image_id text NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN ip text NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN subnet text NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN gateway text NOT NULL DEFAULT '';
ALTER TABLE vm ADD COLUMN vmm_pid integer NOT NULL DEFAULT 0;
ALTER TABLE vm ADD COLUMN booted_at timestamptz;
ALTER TABLE vm ADD COLUMN guest_ready_at timestamptz;
-- One address per host: the allocation's guarantee across managers.
CREATE UNIQUE INDEX vm_host_ip_key ON vm (host_id, ip) WHERE ip <> '';

ALTER TABLE host ADD COLUMN subnet text NOT NULL DEFAULT '';
ALTER TABLE host ADD COLUMN gateway text NOT NULL DEFAULT '';

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
DELETE FROM image WHERE kind = 'initrd';
ALTER TABLE image DROP CONSTRAINT image_kind_check;
ALTER TABLE image ADD CONSTRAINT image_kind_check CHECK (kind IN ('kernel', 'rootfs'));
