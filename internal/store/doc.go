// Package store persists Nexus state — VMs and their events, templates,
// images, snapshots, hosts, API tokens, the audit trail and reconciler
// leases — behind one interface with two engines.
//
// The DSN picks the engine (see Open): "sqlite://PATH" is an embedded,
// pure-Go SQLite file for a single host (the default), "postgres://…" is a
// shared database for a fleet where several manager replicas run at once.
// Following kine, one generic SQL store holds every query; an engine
// overrides only what differs (placeholders, time and JSON encoding, tag
// matching, the lease clock, error codes, connection setup). Database
// errors are translated at this boundary into ErrNotFound, ErrConflict,
// ErrInvalid and ErrStale, so callers never see driver types.
//
// Schema changes are versioned goose migrations embedded in the binary,
// one directory per engine, applied by Open and by Migrate.
//
// Conventions shared by every method:
//   - Times are UTC with microsecond precision on both engines; the store
//     truncates what it is given, so a value read back equals the value
//     returned by the write.
//   - JSON documents owned by other layers (a VM's create request, template
//     config, snapshot meta, audit before/after) are json.RawMessage and
//     round-trip semantically, not byte for byte (Postgres stores jsonb).
//     Structures the store itself queries or sums (tags, resources, snapshot
//     files) are typed.
//   - Empty strings mean "none" (host_id, template_id, project of a global
//     image); nullable times are pointers.
//
// This package must not import other Nexus packages: it is the bottom of the
// dependency graph.
package store
