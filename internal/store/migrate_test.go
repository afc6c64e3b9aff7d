package store

import (
	"context"
	"database/sql"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/nexus-microvm/nexus/internal/testutil"
)

// pendingOf returns the versions Migrations reports as pending.
func pendingOf(t *testing.T, dsn string) []int64 {
	t.Helper()
	ms, err := Migrations(context.Background(), dsn)
	if err != nil {
		t.Fatalf("Migrations: %v", err)
	}
	var out []int64
	for _, m := range ms {
		if !m.Applied {
			out = append(out, m.Version)
		}
	}
	return out
}

// TestMigrationsDryRun: Migrations reports what is pending on a new, a
// partly migrated and a current database, and changes none of them.
func TestMigrationsDryRun(t *testing.T) {
	ctx := context.Background()
	all := knownVersions(t, "sqlite")
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			var dsn string
			if engine == "sqlite" {
				dsn = "sqlite://" + filepath.Join(t.TempDir(), "nexus.db")
			} else {
				dsn = testutil.FreshPostgres(t)
			}
			if got := pendingOf(t, dsn); !slices.Equal(got, all) {
				t.Fatalf("new database: pending %v; want %v", got, all)
			}
			if engine == "sqlite" {
				if _, err := os.Stat(strings.TrimPrefix(dsn, "sqlite://")); err == nil {
					t.Fatal("a dry run created the SQLite file")
				}
			} else if s := openRaw(t, dsn); tableExists(t, s, migrationTable) {
				t.Fatal("a dry run created the version table")
			}

			// A database of an older release: up to the third migration.
			s := openRaw(t, dsn)
			dialect, fsys, opts, err := s.d.migrations()
			if err != nil {
				t.Fatal(err)
			}
			p, err := goose.NewProvider(dialect, s.w, fsys, append(opts, goose.WithTableName(migrationTable), goose.WithDisableGlobalRegistry(true))...)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.UpTo(ctx, all[2]); err != nil {
				t.Fatal(err)
			}
			if got := pendingOf(t, dsn); !slices.Equal(got, all[3:]) {
				t.Fatalf("at version %d: pending %v; want %v", all[2], got, all[3:])
			}
			if got := pendingOf(t, dsn); !slices.Equal(got, all[3:]) {
				t.Fatalf("a second dry run: pending %v; want %v", got, all[3:])
			}
			if err := Migrate(ctx, dsn); err != nil {
				t.Fatal(err)
			}
			if got := pendingOf(t, dsn); len(got) != 0 {
				t.Fatalf("after Migrate: pending %v", got)
			}
		})
	}
}

func openRaw(t *testing.T, dsn string) *sqlStore {
	t.Helper()
	s, err := open(context.Background(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tableExists(t *testing.T, s *sqlStore, name string) bool {
	t.Helper()
	var n int
	q := `SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = $1`
	if err := s.r.QueryRowContext(context.Background(), q, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func knownVersions(t *testing.T, engine string) []int64 {
	t.Helper()
	ms, err := migrationList(engine, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, m := range ms {
		out = append(out, m.Version)
	}
	return out
}

// TestMigrationFilesPaired: every migration exists for both engines under
// the same name.
func TestMigrationFilesPaired(t *testing.T) {
	names := map[string][]string{}
	for _, engine := range []string{"sqlite", "postgres"} {
		fsys, err := migrationFS(engine)
		if err != nil {
			t.Fatal(err)
		}
		entries, _ := fs.ReadDir(fsys, ".")
		for _, e := range entries {
			names[engine] = append(names[engine], e.Name())
		}
	}
	if !slices.Equal(names["sqlite"], names["postgres"]) || len(names["sqlite"]) == 0 {
		t.Errorf("migrations differ between engines:\nsqlite   %v\npostgres %v", names["sqlite"], names["postgres"])
	}
}

// contracting are statements that break a manager of the previous release
// still running on the database (docs/upgrading.md: expand, then
// contract). Dropping or renaming what it reads, narrowing a type, or
// requiring a value it does not write.
var contracting = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bDROP\s+(TABLE|COLUMN|VIEW)\b`),
	regexp.MustCompile(`(?i)\bRENAME\b`),
	regexp.MustCompile(`(?i)\bALTER\s+COLUMN\b.*\b(TYPE|SET\s+NOT\s+NULL)\b`),
	regexp.MustCompile(`(?i)\bADD\s+COLUMN\b[^;]*\bNOT\s+NULL\b`),
}

// contractMark in a migration file says which release stopped using what
// it removes: the one place a contracting statement is allowed.
var contractMark = regexp.MustCompile(`(?m)^-- nexus:contract .+ no longer used since \S+`)

// TestMigrationsOnlyExpand holds the Postgres migrations (the engine
// managers share, so the one where two releases run side by side) to the
// expand-then-contract rule. A NOT NULL column needs a DEFAULT, which older
// managers' inserts then get.
func TestMigrationsOnlyExpand(t *testing.T) {
	fsys, err := migrationFS("postgres")
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := fs.ReadDir(fsys, ".")
	for _, e := range entries {
		b, _ := fs.ReadFile(fsys, e.Name())
		if contractMark.Match(b) {
			continue
		}
		for _, stmt := range strings.Split(upSection(string(b)), ";") {
			stmt = strings.Join(strings.Fields(stmt), " ")
			for _, re := range contracting {
				if !re.MatchString(stmt) {
					continue
				}
				if strings.Contains(strings.ToUpper(stmt), "ADD COLUMN") && strings.Contains(strings.ToUpper(stmt), "DEFAULT") {
					continue // older managers' inserts get the default
				}
				t.Errorf("%s: %q contracts the schema under a running older manager; "+
					"do it a release later, marked %q", e.Name(), stmt, "-- nexus:contract X no longer used since vN")
			}
		}
	}
	// The rule catches what it must.
	for _, bad := range []string{"ALTER TABLE vm DROP COLUMN ip", "ALTER TABLE vm RENAME COLUMN ip TO addr",
		"ALTER TABLE vm ALTER COLUMN ip TYPE inet", "ALTER TABLE vm ADD COLUMN zone text NOT NULL", "DROP TABLE image"} {
		hit := false
		for _, re := range contracting {
			hit = hit || re.MatchString(bad)
		}
		if !hit {
			t.Errorf("%q is not recognised as contracting", bad)
		}
	}
}

// migratedTo opens a fresh Postgres schema migrated up to version v.
func migratedTo(ctx context.Context, t *testing.T, v int64) (string, *sqlStore) {
	t.Helper()
	dsn := testutil.FreshPostgres(t)
	s := openRaw(t, dsn)
	dialect, fsys, opts, err := s.d.migrations()
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(dialect, s.w, fsys, append(opts, goose.WithTableName(migrationTable), goose.WithDisableGlobalRegistry(true))...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, v); err != nil {
		t.Fatal(err)
	}
	return dsn, s
}

// waitForVMLockWait returns once a session waits for a lock on vm (the
// migration running beside the test's transaction).
func waitForVMLockWait(ctx context.Context, t *testing.T, s *sqlStore, done <-chan error) {
	t.Helper()
	q := `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relname = 'vm' AND NOT l.granted`
	for {
		var n int
		if err := s.r.QueryRowContext(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the migration finished (%v) without waiting for the open transaction", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestMigrationRetriesLockConflict: a migration that would deadlock with a
// running manager's transaction gives up its lock wait and is run again,
// instead of stopping the new manager or failing the old manager's
// request, the way a rolling upgrade starts it beside the old release.
// Migration 7 alters audit, then indexes vm; the old manager's transaction
// has written vm and then reads audit.
func TestMigrationRetriesLockConflict(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, s := migratedTo(ctx, t, 6)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE vm SET name = name`); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Migrate(ctx, dsn, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	}()
	// The migration holds audit and waits for SHARE on vm (its index)
	// behind the transaction.
	waitForVMLockWait(ctx, t, s, done)
	// Reading audit closes the cycle. The migration waited first, and its
	// lock_timeout (migrationLockTimeout) is shorter than the read's
	// deadlock_timeout: it gives up, and the read goes on.
	if _, err := tx.ExecContext(ctx, `SELECT count(*) FROM audit`); err != nil {
		t.Fatalf("the old manager's read: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Migrate: %v\n%s", err, logs.String())
	}
	if got := pendingOf(t, dsn); len(got) != 0 {
		t.Fatalf("after Migrate: pending %v", got)
	}
	if !strings.Contains(logs.String(), "retrying") || !strings.Contains(logs.String(), "lock timeout") {
		t.Fatalf("no retry of the migration that gave up its lock wait in the log:\n%s", logs.String())
	}
}

// TestMigrationYieldsToATransaction: a running manager's transaction that
// read vm, and writes it while the migrations run (from the first release)
// and one of them waits for an exclusive lock on vm, goes on. It failed at
// once with a deadlock when migration 6 built an index of vm and then
// dropped another in the same transaction: the build's SHARE lock, held
// while the drop waited, blocked the write (a create's 500 in a rolling
// upgrade). The drop is 13 now, holding nothing on vm while it waits.
func TestMigrationYieldsToATransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, s := migratedTo(ctx, t, 5)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM vm`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Migrate(ctx, dsn) }()
	waitForVMLockWait(ctx, t, s, done)
	// Past a deadlock check of the migration's (deadlock_timeout, 1 s).
	time.Sleep(1200 * time.Millisecond)
	if _, err := tx.ExecContext(ctx, `UPDATE vm SET name = name`); err != nil {
		t.Fatalf("the running transaction's write: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got := pendingOf(t, dsn); len(got) != 0 {
		t.Fatalf("after Migrate: pending %v", got)
	}
}

// TestTxRetriesDeadlock: a transaction Postgres aborts to break a deadlock
// runs again (inTx) instead of failing its caller's request. The store's
// side waits first, so its deadlock check (deadlock_timeout after its wait
// began) runs first and Postgres aborts it.
func TestTxRetriesDeadlock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := openRaw(t, testutil.FreshPostgres(t))
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE pair (k text PRIMARY KEY, v int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, `INSERT INTO pair VALUES ('a', 0), ('b', 0)`); err != nil {
		t.Fatal(err)
	}
	other, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	if _, err := other.ExecContext(ctx, `UPDATE pair SET v = v + 10 WHERE k = 'b'`); err != nil {
		t.Fatal(err)
	}
	otherDone := make(chan error, 1)
	attempts := 0
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		attempts++
		var pid int
		if err := tx.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE pair SET v = v + 1 WHERE k = 'a'`); err != nil {
			return err
		}
		if attempts == 1 {
			// Once this side waits for b, the other asks for a: a cycle.
			go func() {
				for waiting := false; !waiting; time.Sleep(5 * time.Millisecond) {
					q := `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`
					if err := s.r.QueryRowContext(ctx, q, pid).Scan(&waiting); err != nil {
						otherDone <- err
						return
					}
				}
				time.Sleep(300 * time.Millisecond) // its deadlock check comes well after this side's
				_, err := other.ExecContext(ctx, `UPDATE pair SET v = v + 10 WHERE k = 'a'`)
				if err == nil {
					err = other.Commit()
				}
				otherDone <- err
			}()
		}
		_, err := tx.ExecContext(ctx, `UPDATE pair SET v = v + 1 WHERE k = 'b'`)
		return err
	})
	if err != nil {
		t.Fatalf("inTx = %v after %d attempts; want the deadlocked transaction run again", err, attempts)
	}
	if err := <-otherDone; err != nil {
		t.Fatalf("the other transaction: %v", err)
	}
	if attempts != 2 {
		t.Errorf("attempts = %d; want 2 (the first aborted by the deadlock)", attempts)
	}
	var a, b int
	if err := s.r.QueryRowContext(ctx, `SELECT (SELECT v FROM pair WHERE k = 'a'), (SELECT v FROM pair WHERE k = 'b')`).Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	if a != 11 || b != 11 {
		t.Errorf("a, b = %d, %d; want 11, 11: both transactions once each", a, b)
	}
}
