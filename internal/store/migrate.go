package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"

	"github.com/pressly/goose/v3"
)

// migrations/<engine>/NNNNN_name.sql are goose migrations, one directory per
// engine because their types differ (jsonb and timestamptz against STRICT
// TEXT and INTEGER). A change adds a file to both with the same version.
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
	// Not p.Close: it would close the store's pool.
	p, err := goose.NewProvider(dialect, s.w, fsys, opts...)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.d.engine(), err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.d.engine(), err)
	}
	for _, r := range results {
		s.log.InfoContext(ctx, "store migration applied", "engine", s.d.engine(),
			"version", r.Source.Version, "file", path.Base(r.Source.Path), "duration", r.Duration)
	}
	return nil
}
