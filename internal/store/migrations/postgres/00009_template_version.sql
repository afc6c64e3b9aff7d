-- Template versions (keep in step with ../sqlite/00009_template_version.sql):
--   * every change to a template stores its whole config as a new,
--     immutable version; template.version is the current one;
--   * VMs and pools record the version they were made from (0: not from
--     a template, or made before versions existed).
-- Existing templates become version 1 of themselves.

-- +goose Up
ALTER TABLE template ADD COLUMN version integer NOT NULL DEFAULT 1;
CREATE TABLE template_version (
    template_id text        NOT NULL,
    version     integer     NOT NULL,
    config      jsonb       NOT NULL,
    owner       text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (template_id, version)
);
INSERT INTO template_version (template_id, version, config, owner, created_at)
    SELECT id, 1, config, owner, created_at FROM template;
ALTER TABLE vm ADD COLUMN template_version integer NOT NULL DEFAULT 0;
ALTER TABLE pool ADD COLUMN template_version integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE pool DROP COLUMN template_version;
ALTER TABLE vm DROP COLUMN template_version;
DROP TABLE template_version;
ALTER TABLE template DROP COLUMN version;
