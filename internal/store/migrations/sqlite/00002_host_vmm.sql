-- The VMM each host runs, as its agent reports it ("1.16.1", "1.16.1-sim"):
-- simulated hosts are labelled as such in the API.

-- +goose Up
ALTER TABLE host ADD COLUMN vmm TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE host DROP COLUMN vmm;
