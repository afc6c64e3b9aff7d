package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMigrateDryRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nexus.db")
	dsn := "sqlite://" + path
	code, out, errOut := run(nil, "manager", "migrate", "--dry-run", "--database-url", dsn)
	if code != 0 || !strings.Contains(out, "pending migration(s); the database is at version 0") || !strings.Contains(out, "00001_init.sql\n  CREATE TABLE") {
		t.Fatalf("migrate --dry-run on a new database: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("migrate --dry-run created %s", path)
	}
	if code, _, errOut := run(nil, "manager", "migrate", "--dry-run", "-o", "yaml", "--database-url", dsn); code != exitUsage {
		t.Errorf("-o yaml: exit %d (%s); want %d", code, errOut, exitUsage)
	}
	if code, out, errOut := run(nil, "manager", "migrate", "--database-url", dsn); code != 0 || out != "migrations applied\n" {
		t.Fatalf("migrate: exit %d, %q %q", code, out, errOut)
	}
	code, out, _ = run(nil, "manager", "migrate", "--dry-run", "-o", "json", "--database-url", dsn)
	var got struct {
		Current int64             `json:"current_version"`
		Pending []json.RawMessage `json:"pending"`
	}
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || got.Current == 0 || got.Pending == nil || len(got.Pending) != 0 {
		t.Errorf("migrate --dry-run -o json after migrate: exit %d, %v, %s", code, err, out)
	}
}
