package store

import (
	"database/sql"
	"io/fs"
	"time"

	"github.com/pressly/goose/v3"
)

// dialect is what an engine overrides; everything else is generic SQL in
// sqlStore, written with "?" placeholders.
type dialect interface {
	// engine names the engine: "sqlite" or "postgres".
	engine() string
	// rebind rewrites "?" placeholders into the engine's syntax.
	rebind(query string) string
	// timeArg encodes a (UTC, microsecond) time for a timestamp column.
	timeArg(t time.Time) any
	// tagsFilter returns a WHERE fragment (with "?" placeholders) matching
	// VMs that carry every one of tags, and its arguments.
	tagsFilter(tags map[string]string) (string, []any)
	// acquireLease returns the single statement that takes, renews or
	// refuses a lease, returning the holder row only when holder holds it.
	acquireLease(name, holder string, ttl time.Duration, now time.Time) (string, []any)
	// forUpdate is the suffix that locks the rows a SELECT reads for the
	// rest of a write transaction ("" where the transaction already
	// excludes every other writer: SQLite's BEGIN IMMEDIATE).
	forUpdate() string
	// joinText is the aggregate that joins a text column's values with
	// commas into one value (NULL over no rows).
	joinText(col string) string
	// classify recognises the engine's constraint errors.
	classify(err error) (kind error, detail string, ok bool)
	// lockConflict reports an error that only lost a race for locks with
	// other sessions (a deadlock, a lock timeout): the transaction rolled
	// back and running it again may succeed.
	lockConflict(err error) bool
	// migrations returns the engine's migration files and goose options
	// (dialect, locking).
	migrations() (goose.Dialect, fs.FS, []goose.ProviderOption, error)
	// migrationDB is the pool migrations run on (w, or one of their own
	// with other session settings) and what closes it.
	migrationDB(w *sql.DB) (db *sql.DB, done func())
}
