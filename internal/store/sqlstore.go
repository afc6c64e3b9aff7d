package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
)

// sqlStore is the generic store: every query lives here, engines differ only
// through d.
type sqlStore struct {
	d dialect
	// w takes every write. On SQLite it is a single connection, so writers
	// queue in Go instead of failing with SQLITE_BUSY; on Postgres w and r
	// are the same pool.
	w *sql.DB
	// r serves reads; on SQLite a pool of read-only connections that WAL
	// lets run beside the writer.
	r     *sql.DB
	clock func() time.Time
	log   *slog.Logger
	bus   localBus // Notify/Listen when the engine has no LISTEN/NOTIFY
	// wStmts and rStmts keep prepared statements of w and r (SQLite only;
	// nil on Postgres).
	wStmts, rStmts *stmtCache
	// defaultQuota limits projects without a quota of their own.
	defaultQuota QuotaLimits
}

var _ Store = (*sqlStore)(nil)

func (s *sqlStore) Engine() string { return s.d.engine() }

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s: %w", s.d.engine(), err)
	}
	if s.r != s.w {
		if err := s.r.PingContext(ctx); err != nil {
			return fmt.Errorf("ping %s readers: %w", s.d.engine(), err)
		}
	}
	return nil
}

func (s *sqlStore) Close() error {
	var errs []error
	if s.r != s.w {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s store: %w", s.d.engine(), err)
	}
	return nil
}

// now is the store's clock, normalised like every stored time.
func (s *sqlStore) now() time.Time { return normTime(s.clock()) }

// normTime is how every time is stored: UTC, truncated to the microsecond
// both engines keep (truncated, not rounded, so Go and both engines agree).
func normTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// orNow returns t normalised, or the store's clock when t is zero.
func (s *sqlStore) orNow(t time.Time) time.Time {
	if t.IsZero() {
		return s.now()
	}
	return normTime(t)
}

func normTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	n := normTime(*t)
	return &n
}

// ts encodes a time argument; tsPtr encodes a nullable one.
func (s *sqlStore) ts(t time.Time) any { return s.d.timeArg(normTime(t)) }

func (s *sqlStore) tsPtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return s.ts(*t)
}

// qualified names an entity scoped by project in messages: "p1/web-1", or
// just the name when global.
func qualified(project, name string) string {
	if project == "" {
		return name
	}
	return project + "/" + name
}

// newID returns a random (v4) UUID. Not v7: host-side names are derived from
// the ID's first hex digits (TAP = "tap-" + 11 of them), which must differ
// between VMs created in the same millisecond.
func newID() string { return uuid.NewString() }

// stmtCtx is the context a statement runs with. On SQLite (the engine
// with cached statements) it keeps the caller's values and drops its
// cancellation: for a cancellable context the driver starts a goroutine
// per statement to interrupt it, and database/sql another per result set,
// each a wake-up of an idle CPU (on a paravirtualised 2-core host, the
// manager spent a sixth less CPU per create without them). Once started,
// a statement and its wait for a connection (the one writer's queue, where
// each write takes a fraction of a millisecond) run to their end;
// busy_timeout bounds a wait for the file's lock. A caller already gone
// starts none: its own context goes through, and database/sql refuses it.
// Postgres keeps the cancellation: its statements cross a network.
func (s *sqlStore) stmtCtx(ctx context.Context) context.Context {
	if s.wStmts == nil || ctx.Err() != nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

// The query helpers rebind "?" placeholders for the engine. Reads go to the
// read pool, writes (and reads that must see them) to the write pool.
func (s *sqlStore) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.wStmts.get(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return s.w.ExecContext(ctx, q, args...)
}

func (s *sqlStore) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.rStmts.get(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return s.r.QueryContext(ctx, q, args...)
}

func (s *sqlStore) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.rStmts.get(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return s.r.QueryRowContext(ctx, q, args...)
}

// writeRow runs a write that returns a row (INSERT … RETURNING).
func (s *sqlStore) writeRow(ctx context.Context, q string, args ...any) *sql.Row {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.wStmts.get(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return s.w.QueryRowContext(ctx, q, args...)
}

// txAttempts bounds the runs of a transaction that Postgres keeps
// aborting to break deadlocks (see inTx).
const txAttempts = 4

// inTx runs fn in a write transaction (BEGIN IMMEDIATE on SQLite). A
// transaction Postgres aborted to break a deadlock runs again, after a
// short pause: it rolled back whole, and every fn here only reads and
// writes within it. A rolling upgrade can make such deadlocks, with a
// migration of the next release that holds a lock this transaction needs
// while it waits for one this transaction holds (the migration retries
// too: Migrate).
func (s *sqlStore) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.inTxOnce(ctx, fn)
		if err == nil || attempt == txAttempts || !s.d.lockConflict(err) {
			return err
		}
		if serr := sleepCtx(ctx, jitter(txBackoff<<(attempt-1))); serr != nil {
			return errors.Join(err, serr)
		}
	}
}

// txBackoff is inTx's first pause; it doubles.
const txBackoff = 20 * time.Millisecond

func (s *sqlStore) inTxOnce(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer s.wStmts.prepareNoted(ctx) // after the commit or rollback frees the connection
	if err := fn(tx); err != nil {
		_ = tx.Rollback() // the error that matters is fn's
		return err
	}
	return tx.Commit()
}

// mustAffect turns "no row matched" into sql.ErrNoRows, which fail reports
// as ErrNotFound.
func mustAffect(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return sql.ErrNoRows
	}
	return nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// queryAll runs a read query and scans every row with scan.
func queryAll[T any](ctx context.Context, s *sqlStore, scan func(scanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := s.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// placeholders returns "?, ?, …" for n arguments.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// where joins conditions into a WHERE clause ("" for none).
func where(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// clampLimit applies the List page-size rules.
func clampLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultLimit
	case n > MaxLimit:
		return MaxLimit
	}
	return n
}

// rawArg encodes a JSON document argument. Empty means def ("" for NULL).
// Documents are validated here so both engines reject the same input (SQLite
// would store any text).
func rawArg(field string, raw json.RawMessage, def string) (any, error) {
	if len(raw) == 0 {
		if def == "" {
			return nil, nil
		}
		return def, nil
	}
	if !json.Valid(raw) {
		return nil, invalidf("%s is not valid JSON", field)
	}
	// A string, not []byte: SQLite would store bytes as a BLOB, which its
	// JSON functions read as binary JSONB.
	return string(raw), nil
}

// jsonArg encodes a typed value for a JSON column.
func jsonArg(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}
