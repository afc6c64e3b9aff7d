package store

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/pressly/goose/v3"
)

// migrations/<engine>/NNNNN_name.sql are goose migrations, one directory per
// engine because their types differ (jsonb and timestamptz against STRICT
// TEXT and INTEGER). A change adds a file to both with the same version.
// On Postgres a migration runs beside managers of the previous release:
// it must not hold a lock on a table they write while it waits for a
// stronger one on it (build an index, then drop another: two migrations),
// or their transactions that read the table and then write it deadlock
// with it at once (00006, 00013).
//
//go:embed migrations
var migrationFiles embed.FS

// migrationTable records applied versions (goose's default name is too
// generic for a database other software may share).
const migrationTable = "nexus_migrations"

func migrationFS(engine string) (fs.FS, error) {
	return fs.Sub(migrationFiles, "migrations/"+engine)
}

// migrate applies pending migrations under the engine's lock.
func (s *sqlStore) migrate(ctx context.Context) error {
	dialect, fsys, opts, err := s.d.migrations()
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.d.engine(), err)
	}
	opts = append(opts, goose.WithTableName(migrationTable), goose.WithDisableGlobalRegistry(true))
	db, done := s.d.migrationDB(s.w)
	defer done()
	// Not p.Close: it would close the store's pool.
	p, err := goose.NewProvider(dialect, db, fsys, opts...)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.d.engine(), err)
	}
	// A migration runs beside managers of the previous release (a rolling
	// upgrade): one that takes an exclusive lock on a table their
	// transactions also lock can deadlock with them. On Postgres its
	// statements give up waiting for a lock first (migrationLockTimeout),
	// so the managers' requests go on; its transaction rolled back whole,
	// and it runs again after a pause.
	backoff := migrateRetryBase
	for attempt := 1; ; attempt++ {
		results, err := p.Up(ctx)
		for _, r := range results {
			s.log.InfoContext(ctx, "store migration applied", "engine", s.d.engine(),
				"version", r.Source.Version, "file", path.Base(r.Source.Path), "duration", r.Duration)
		}
		if err == nil {
			return nil
		}
		if !s.d.lockConflict(err) || attempt == migrateAttempts {
			return fmt.Errorf("migrate %s: %w", s.d.engine(), err)
		}
		s.log.WarnContext(ctx, "store migration lost a lock race with running managers; retrying",
			"engine", s.d.engine(), "attempt", attempt, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return fmt.Errorf("migrate %s: %w", s.d.engine(), errors.Join(err, ctx.Err()))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// migrateAttempts bounds the runs of a migration that keeps losing lock
// races (about a minute with migrateRetryBase's doubling pauses).
const (
	migrateAttempts  = 15
	migrateRetryBase = 250 * time.Millisecond
)

// Migration is one of the store's migrations, as `nexus manager migrate
// --dry-run` shows it.
type Migration struct {
	Version int64  `json:"version"`
	File    string `json:"file"`
	Applied bool   `json:"applied"`
	// Up is the SQL the migration runs (its "-- +goose Up" section).
	Up string `json:"up,omitempty"`
}

// Migrations lists the migrations this build knows for the database the
// DSN names, each marked applied or not, without changing anything: no
// version table is created, no lock taken, and a SQLite file that does
// not exist yet is not created (everything is pending there).
func Migrations(ctx context.Context, dsn string, opts ...Option) ([]Migration, error) {
	if dsn == "" {
		dsn = DefaultDSN
	}
	applied := map[int64]bool{}
	engine := "postgres"
	if path, ok := strings.CutPrefix(dsn, "sqlite://"); ok {
		engine = "sqlite"
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return migrationList(engine, applied)
		}
	}
	s, err := open(ctx, dsn, opts)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if applied, err = s.appliedVersions(ctx); err != nil {
		return nil, fmt.Errorf("migrations %s: %w", s.d.engine(), err)
	}
	return migrationList(s.d.engine(), applied)
}

// appliedVersions reads goose's version table (none yet: nothing applied).
// goose records a down migration as a later row with is_applied false, so
// the last row of each version decides.
func (s *sqlStore) appliedVersions(ctx context.Context) (map[int64]bool, error) {
	exists := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?`
	if s.d.engine() == "postgres" {
		exists = `SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = ?`
	}
	var n int
	if err := s.r.QueryRowContext(ctx, s.d.rebind(exists), migrationTable).Scan(&n); err != nil {
		return nil, err
	}
	out := map[int64]bool{}
	if n == 0 {
		return out, nil
	}
	rows, err := s.r.QueryContext(ctx, `SELECT version_id, is_applied FROM `+migrationTable+` ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var v int64
		var ok bool
		if err := rows.Scan(&v, &ok); err != nil {
			return nil, err
		}
		out[v] = ok
	}
	return out, rows.Err()
}

// migrationList is the engine's migration files in version order, marked
// with applied.
func migrationList(engine string, applied map[int64]bool) ([]Migration, error) {
	fsys, err := migrationFS(engine)
	if err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		v, err := goose.NumericComponent(e.Name())
		if err != nil {
			continue // not a migration
		}
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, File: e.Name(), Applied: applied[v], Up: upSection(string(b))})
	}
	slices.SortFunc(out, func(a, b Migration) int { return cmp.Compare(a.Version, b.Version) })
	return out, nil
}

// upSection is the SQL between "-- +goose Up" and "-- +goose Down",
// without comment lines.
func upSection(src string) string {
	_, up, _ := strings.Cut(src, "-- +goose Up")
	up, _, _ = strings.Cut(up, "-- +goose Down")
	var lines []string
	for _, l := range strings.Split(up, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "--") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
