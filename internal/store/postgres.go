package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// postgresDialect is the fleet engine, through pgx's database/sql adapter
// (goose needs a *sql.DB, and one generic store serves both engines).
type postgresDialect struct {
	// migrationLockID is the advisory lock concurrent managers take around
	// migrations, derived from the schema so that separate schemas (test
	// runs, tenants) do not wait on each other.
	migrationLockID int64
	// cfg is what the pool was opened with (migrationDB opens another).
	cfg *pgx.ConnConfig
}

// migrationLockTimeout bounds a migration statement's wait for a lock
// (lock_timeout). It is below Postgres's deadlock_timeout (1 s unless set
// otherwise), which is when a waiting session first looks for a deadlock:
// when a migration and a running manager's transaction come to wait for
// each other (the migration holds one table and waits for another the
// transaction holds, which then asks for the first), the migration gives
// up before either side's check and runs again (Migrate), and the
// manager's request goes on. It also bounds how long the managers'
// statements queue behind a migration's request for an exclusive lock.
const migrationLockTimeout = 500 * time.Millisecond

// migrationDB opens a pool of its own with migrationLockTimeout: the
// store's pool keeps waiting as long as it must.
func (d postgresDialect) migrationDB(*sql.DB) (*sql.DB, func()) {
	cfg := d.cfg.Copy()
	cfg.RuntimeParams["lock_timeout"] = strconv.FormatInt(migrationLockTimeout.Milliseconds(), 10)
	db := stdlib.OpenDB(*cfg)
	return db, func() { db.Close() }
}

func (postgresDialect) engine() string { return "postgres" }

// rebind numbers the placeholders: "? … ?" becomes "$1 … $2". No query of
// this package has a literal "?" (nor uses jsonb's ? operators).
func (postgresDialect) rebind(q string) string {
	n := strings.Count(q, "?")
	if n == 0 {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 2*n)
	i := 0
	for _, c := range []byte(q) {
		if c == '?' {
			i++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(i))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func (postgresDialect) timeArg(t time.Time) any { return t }

// A row lock on the host serialises placements on it across managers;
// placements on other hosts proceed in parallel.
func (postgresDialect) forUpdate() string { return " FOR UPDATE" }

func (postgresDialect) joinText(col string) string { return "string_agg(" + col + ", ',')" }

// Containment uses the GIN index on tags.
func (postgresDialect) tagsFilter(tags map[string]string) (string, []any) {
	b, _ := json.Marshal(tags) // a map[string]string always marshals
	return "tags @> CAST(? AS jsonb)", []any{string(b)}
}

// The lease clock is the database's, so replicas with skewed clocks agree on
// expiry. INSERT … ON CONFLICT DO UPDATE … WHERE is atomic under concurrency:
// a racing insert waits for the other and then sees its row.
func (postgresDialect) acquireLease(name, holder string, ttl time.Duration, _ time.Time) (string, []any) {
	return "INSERT INTO lease (name, holder, expires_at) VALUES (?, ?, clock_timestamp() + make_interval(secs => ?))" +
			" ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at" +
			" WHERE lease.holder = excluded.holder OR lease.expires_at <= clock_timestamp()" +
			" RETURNING holder",
		[]any{name, holder, ttl.Seconds()}
}

func (postgresDialect) classify(err error) (error, string, bool) {
	var e *pgconn.PgError
	if !errors.As(err, &e) {
		return nil, "", false
	}
	detail := e.Message // names the constraint
	// https://www.postgresql.org/docs/current/errcodes-appendix.html
	switch e.Code {
	case "23505": // unique_violation
		return ErrConflict, detail, true
	case "23503": // foreign_key_violation
		return ErrNotFound, detail, true
	case "23514", "23502", "22P02": // check_violation, not_null_violation, invalid_text_representation
		return ErrInvalid, detail, true
	}
	return nil, "", false
}

func (postgresDialect) lockConflict(err error) bool {
	var e *pgconn.PgError
	// deadlock_detected, lock_not_available
	return errors.As(err, &e) && (e.Code == "40P01" || e.Code == "55P03")
}

func (d postgresDialect) migrations() (goose.Dialect, fs.FS, []goose.ProviderOption, error) {
	fsys, err := migrationFS("postgres")
	if err != nil {
		return "", nil, nil, err
	}
	// Managers starting together queue on a session advisory lock; the
	// others then find nothing pending. Poll every second for up to 5 min.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(d.migrationLockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return "", nil, nil, err
	}
	return goose.DialectPostgres, fsys, []goose.ProviderOption{goose.WithSessionLocker(locker)}, nil
}

func openPostgres(ctx context.Context, dsn string, o options) (*sqlStore, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "nexus"
	}
	db := stdlib.OpenDB(*cfg)
	conns := o.maxConns
	if conns <= 0 {
		conns = 16
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	where := fmt.Sprintf("open postgres %s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	var schema sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if !schema.Valid {
		db.Close()
		return nil, fmt.Errorf("%s: no schema on the search_path exists", where)
	}
	h := fnv.New64a()
	h.Write([]byte("nexus migrations " + schema.String))
	return &sqlStore{
		d:     postgresDialect{migrationLockID: int64(h.Sum64()), cfg: cfg},
		w:     db,
		r:     db,
		clock: o.clock,
		log:   o.logger,

		defaultQuota: o.defaultQuota,
	}, nil
}
