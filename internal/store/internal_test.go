package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRebind(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"SELECT 1", "SELECT 1"},
		{"a = ? AND b = ?", "a = $1 AND b = $2"},
		{"(created_at, id) < (?, ?) LIMIT ?", "(created_at, id) < ($1, $2) LIMIT $3"},
		{"tags @> CAST(? AS jsonb)", "tags @> CAST($1 AS jsonb)"},
	} {
		if got := (postgresDialect{}).rebind(tc.in); got != tc.want {
			t.Errorf("rebind(%q) = %q; want %q", tc.in, got, tc.want)
		}
		if got := (sqliteDialect{}).rebind(tc.in); got != tc.in {
			t.Errorf("sqlite rebind(%q) = %q; want it unchanged", tc.in, got)
		}
	}
}

// An update writes the columns that changed, then generation and
// updated_at, guarded by the generation it read: SQLite rewrites the
// entries of every index on a column in the SET list.
func TestVMUpdateWritesChangedColumns(t *testing.T) {
	s := &sqlStore{d: sqliteDialect{}}
	now := time.Now()
	cur := VM{ID: "v", Name: "a", Project: "p", State: VMRequested, HostID: "h", Generation: 3, CreatedAt: now, UpdatedAt: now}
	next := cur
	next.State, next.LastError, next.BootedAt = VMRunning, "", &now
	next.Generation, next.UpdatedAt = 4, now.Add(time.Second)
	was, _ := s.vmValues(&cur)
	vals, _ := s.vmValues(&next)
	q, args := vmUpdate(was, vals, cur.ID, cur.Generation)
	if want := "UPDATE vm SET state = ?, booted_at = ?, generation = ?, updated_at = ? WHERE id = ? AND generation = ?"; q != want {
		t.Fatalf("vmUpdate = %s\nwant %s", q, want)
	}
	if len(args) != 6 || args[0] != "running" || args[2] != int64(4) || args[4] != "v" || args[5] != int64(3) {
		t.Fatalf("arguments %v", args)
	}
	if q, args := vmUpdate(was, was, cur.ID, cur.Generation); strings.Count(q, "?") != len(args) || len(args) != 4 {
		t.Fatalf("an update of nothing but its generation: %s %v", q, args)
	}
}

func TestCursor(t *testing.T) {
	c := cursor{at: time.Date(2025, 1, 2, 3, 4, 5, 678901000, time.UTC), id: "3f2a-…-id.with.dots"}
	got, err := parseCursor(c.String())
	if err != nil || !got.at.Equal(c.at) || got.id != c.id {
		t.Fatalf("parseCursor(String()) = %+v, %v; want %+v", got, err, c)
	}
	for _, bad := range []string{"", "!!!", "djE", "djIuMS5pZA", "djEueHl6Lmlk", "djEuMTIzLg"} {
		if _, err := parseCursor(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("parseCursor(%q) = %v; want ErrInvalid", bad, err)
		}
	}
}

func TestOpenRejectsBadDSNs(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ dsn, want string }{
		{"mysql://root:secret@db/nexus", "unsupported DSN"},
		{"nexus.db", "unsupported DSN"},
		{"sqlite://", "empty path"},
		{"sqlite://:memory:", "file path"},
		{"sqlite://file:x.db?mode=memory", "file path"},
		{"sqlite://" + t.TempDir() + "/x.db?cache=shared", "must not contain"},
	} {
		s, err := Open(ctx, tc.dsn)
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded; want an error", tc.dsn)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) = %v; want it to say %q and not leak the password", tc.dsn, err, tc.want)
		}
	}
}

func TestSQLiteFileIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "nexus.db")
	s, err := Open(context.Background(), "sqlite://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, p := range []string{path, filepath.Dir(path)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v; want no group/other access (it holds token hashes)", p, perm)
		}
	}
	var mode string
	if err := s.(*sqlStore).w.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	if _, err := s.(*sqlStore).r.Exec("DELETE FROM vm"); err == nil {
		t.Fatal("the read pool accepted a write; want query_only")
	}
}

// The sweeps the leading manager runs every second read only the VMs they
// are about, through their partial indexes, never the whole table: at
// 10,000 VMs a scan of it was a quarter of the leader's CPU.
func TestSweepsUseTheirIndexes(t *testing.T) {
	s, err := Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "nexus.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, q := range map[string]struct {
		sql  string
		args []any
	}{
		"orphan pool VMs": {orphanPoolVMsQuery, []any{100}},
		"expired VMs":     {vmSelect + expiredVMsQuery, []any{1, 100}},
	} {
		rows, err := s.(*sqlStore).r.Query("EXPLAIN QUERY PLAN "+q.sql, q.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN vm") && !strings.Contains(step, "vm_pool_idx") && !strings.Contains(step, "vm_expires_idx") {
				t.Errorf("%s: the plan walks the VM table: %q", name, plan)
			}
		}
	}
}
