package store

import (
	"context"
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

// TestMigrationRetriesLockConflict: a migration that deadlocks with a
// running manager's transaction is run again instead of stopping the new
// manager, the way a rolling upgrade starts it beside the old release.
// Migration 7 alters audit, then indexes vm; the old manager's transaction
// has written vm and then reads audit.
func TestMigrationRetriesLockConflict(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
	if _, err := p.UpTo(ctx, 6); err != nil {
		t.Fatal(err)
	}

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
	waitingQ := `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relname = 'vm' AND NOT l.granted`
	for {
		var n int
		if err := s.r.QueryRowContext(ctx, waitingQ).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the migration finished (%v) without waiting for the open transaction", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Reading audit closes the cycle. The migration waited first, so its
	// deadlock check (after deadlock_timeout) runs first and Postgres
	// aborts it; the read goes on.
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
	if !strings.Contains(logs.String(), "retrying") || !strings.Contains(logs.String(), "deadlock") {
		t.Fatalf("no retry of the deadlocked migration in the log:\n%s", logs.String())
	}
}
