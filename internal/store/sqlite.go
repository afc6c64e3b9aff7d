package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// sqliteDialect is the embedded engine: one file, pure Go (no cgo).
type sqliteDialect struct {
	// lockPath is the file migrations lock, so two processes opening the same
	// database at once (`nexus up` and `nexus manager migrate`) take turns.
	lockPath string
}

func (sqliteDialect) engine() string { return "sqlite" }

func (sqliteDialect) rebind(q string) string { return q }

// Times are INTEGER microseconds since the epoch: exact, compact, and
// ordered numerically, which keyset paging and lease expiry rely on.
func (sqliteDialect) timeArg(t time.Time) any { return t.UnixMicro() }

func (sqliteDialect) tagsFilter(tags map[string]string) (string, []any) {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	slices.Sort(keys) // a stable statement text for the statement cache
	conds := make([]string, 0, len(keys))
	args := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		// json_each instead of a JSON path, so no key needs quoting.
		conds = append(conds, "EXISTS (SELECT 1 FROM json_each(vm.tags) AS t WHERE t.key = ? AND t.value = ?)")
		args = append(args, k, tags[k])
	}
	return strings.Join(conds, " AND "), args
}

// The lease clock is the store's: on one host it is the database's too.
// SQLite runs the upsert under its single writer lock, so it is atomic.
func (sqliteDialect) acquireLease(name, holder string, ttl time.Duration, now time.Time) (string, []any) {
	return "INSERT INTO lease (name, holder, expires_at) VALUES (?, ?, ?)" +
			" ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at" +
			" WHERE lease.holder = excluded.holder OR lease.expires_at <= ?" +
			" RETURNING holder",
		[]any{name, holder, now.Add(ttl).UnixMicro(), now.UnixMicro()}
}

// SQLite's write transactions begin IMMEDIATE: they exclude every other
// writer already.
func (sqliteDialect) forUpdate() string { return "" }

func (sqliteDialect) joinText(col string) string { return "group_concat(" + col + ", ',')" }

func (sqliteDialect) classify(err error) (error, string, bool) {
	var e *sqlite.Error
	if !errors.As(err, &e) {
		return nil, "", false
	}
	switch e.Code() {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return ErrConflict, sqliteDetail(e), true
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return ErrNotFound, sqliteDetail(e), true
	case sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_NOTNULL:
		return ErrInvalid, sqliteDetail(e), true
	}
	return nil, "", false
}

// sqliteDetail trims the driver's wrapping down to SQLite's own words:
// "UNIQUE constraint failed: vm.project, vm.name".
func sqliteDetail(e *sqlite.Error) string {
	msg := e.Error()
	if i := strings.LastIndex(msg, " ("); i > 0 {
		msg = msg[:i] // " (2067)"
	}
	return strings.TrimPrefix(msg, "constraint failed: ")
}

// Migrations run under an exclusive file lock and BEGIN IMMEDIATE
// transactions wait out the busy timeout: nothing to retry.
func (sqliteDialect) lockConflict(error) bool { return false }

func (sqliteDialect) migrationDB(w *sql.DB) (*sql.DB, func()) { return w, func() {} }

func (d sqliteDialect) migrations() (goose.Dialect, fs.FS, []goose.ProviderOption, error) {
	fsys, err := migrationFS("sqlite")
	if err != nil {
		return "", nil, nil, err
	}
	return goose.DialectSQLite3, fsys, []goose.ProviderOption{goose.WithLocker(&fileLocker{path: d.lockPath})}, nil
}

// busyTimeout bounds how long a connection waits for another process's lock
// (in-process writers already queue for the single write connection).
const busyTimeout = 10 * time.Second

func openSQLite(ctx context.Context, path string, o options) (*sqlStore, error) {
	fail := func(err error) (*sqlStore, error) { return nil, fmt.Errorf("open sqlite %s: %w", path, err) }
	switch {
	case path == "":
		return fail(errors.New("empty path: want sqlite://PATH"))
	case path == ":memory:" || strings.HasPrefix(path, "file:"):
		// Two pools on a memory database would be two databases.
		return fail(errors.New("want a file path, not an in-memory or URI database"))
	case strings.ContainsAny(path, "?#"):
		return fail(errors.New("the path must not contain '?' or '#'"))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fail(err)
	}
	// Create the file ourselves so it starts private (it holds token hashes);
	// SQLite gives its -wal and -shm files the same mode.
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	} else if !errors.Is(err, fs.ErrExist) {
		return fail(err)
	}

	// No mmap_size: SQLite drops a reader's mapping of the file at the
	// start of every read after a write, and mapping it again (munmap,
	// mmap, a page fault per page touched) cost three times what reading
	// the pages did: BenchmarkReadsUnderWrites, a write before each host's
	// read, 330-357 ms a pass mapped against 116 ms read. Only a pass with
	// no write in it was faster mapped (36 against 60 ms,
	// BenchmarkReconcileReads), and a fleet's heartbeats alone write
	// several times a second.
	common := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)", busyTimeout.Milliseconds())
	// WAL lets readers run beside the writer; synchronous=NORMAL is the WAL
	// setting that survives crashes of the process (a power loss may roll
	// back the last commits, never corrupt). BEGIN IMMEDIATE takes the write
	// lock up front instead of upgrading mid-transaction.
	w, err := sql.Open("sqlite", path+"?"+common+"&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		return fail(err)
	}
	// One write connection: concurrent writers queue in database/sql instead
	// of failing with SQLITE_BUSY.
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// Opening processes take turns: the switch to WAL (and a WAL's recovery)
	// can answer SQLITE_BUSY at once, without waiting out busy_timeout, when
	// another process opens the same new file at that moment.
	opening := &fileLocker{path: path + ".lock"}
	if err := opening.Lock(ctx, nil); err != nil {
		w.Close()
		return fail(err)
	}
	defer opening.Unlock(ctx, nil)
	if err := w.PingContext(ctx); err != nil { // the first connection switches the file to WAL
		w.Close()
		return fail(err)
	}
	r, err := sql.Open("sqlite", path+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return fail(err)
	}
	readers := o.maxConns
	if readers <= 0 {
		readers = 8
	}
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		w.Close()
		return fail(err)
	}
	return &sqlStore{
		d:      sqliteDialect{lockPath: path + ".lock"},
		w:      w,
		r:      r,
		clock:  o.clock,
		log:    o.logger,
		wStmts: newStmtCache(w),
		rStmts: newStmtCache(r),

		defaultQuota: o.defaultQuota,
	}, nil
}
