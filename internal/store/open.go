package store

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// DefaultDSN is the embedded single-host database, used when the DSN is
// empty.
const DefaultDSN = "sqlite://./.nexus/nexus.db"

// Option configures Open and Migrate.
type Option func(*options)

type options struct {
	clock    func() time.Time
	logger   *slog.Logger
	maxConns int
	// defaultQuota limits projects without a quota of their own.
	defaultQuota QuotaLimits
}

// WithClock sets the clock the store stamps rows with (created_at,
// updated_at, event and audit times, SQLite lease expiry). Tests pass a fake
// one; the default is time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.clock = now }
}

// WithLogger sets the logger for migrations applied at open. The default
// discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithDefaultQuota sets the limits of every project that has no quota of
// its own (PutQuota gives one; a quota without limits lifts them). The
// default is none. Managers sharing a database should set the same.
func WithDefaultQuota(l QuotaLimits) Option {
	return func(o *options) { o.defaultQuota = l }
}

// WithMaxConns caps the connections to Postgres (default 16), or the
// SQLite read pool (default 8; SQLite always writes on one connection).
func WithMaxConns(n int) Option {
	return func(o *options) { o.maxConns = n }
}

// Open connects to the database the DSN names, applies pending migrations
// and returns the store:
//
//	sqlite://PATH                 embedded SQLite file (parent dirs created)
//	postgres://… | postgresql://… Postgres, pgx connection string syntax
//
// An empty DSN means DefaultDSN.
func Open(ctx context.Context, dsn string, opts ...Option) (Store, error) {
	s, err := open(ctx, dsn, opts)
	if err != nil {
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Migrate applies pending migrations to the database the DSN names and
// returns; `nexus manager migrate` runs it. It is safe to run while other
// managers start against the same database.
func Migrate(ctx context.Context, dsn string, opts ...Option) error {
	s, err := open(ctx, dsn, opts)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.migrate(ctx)
}

func open(ctx context.Context, dsn string, opts []Option) (*sqlStore, error) {
	o := options{clock: time.Now, logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if dsn == "" {
		dsn = DefaultDSN
	}
	scheme, rest, _ := strings.Cut(dsn, "://")
	switch scheme {
	case "sqlite":
		return openSQLite(ctx, rest, o)
	case "postgres", "postgresql":
		return openPostgres(ctx, dsn, o)
	}
	return nil, fmt.Errorf("open store: unsupported DSN %q: want sqlite://PATH or postgres://…", redactDSN(dsn))
}

// redactDSN drops everything but the scheme, so a password in a mistyped DSN
// never reaches a log.
func redactDSN(dsn string) string {
	if scheme, _, ok := strings.Cut(dsn, "://"); ok {
		return scheme + "://…"
	}
	if len(dsn) > 12 {
		return dsn[:12] + "…"
	}
	return dsn
}
