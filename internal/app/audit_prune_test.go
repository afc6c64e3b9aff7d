package app

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

// pruneAudit drops the rows older than the retention and keeps the rest,
// pending ones included.
func TestPruneAuditKeepsRowsWithinRetention(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "nexus.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for _, age := range []time.Duration{72 * time.Hour, 25 * time.Hour, 23 * time.Hour, time.Minute} {
		if _, err := st.BeginAudit(ctx, store.AuditEntry{At: now.Add(-age), Actor: "a", Action: "vm.stop", Resource: "vm", ResourceID: age.String()}); err != nil {
			t.Fatal(err)
		}
	}
	pruneAudit(ctx, st, 24*time.Hour, now, slog.New(slog.DiscardHandler))
	rows, err := st.ListAudit(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, r := range rows {
		left = append(left, r.ResourceID)
	}
	if len(left) != 2 || left[0] != (23*time.Hour).String() || left[1] != time.Minute.String() {
		t.Fatalf("rows left: %q; want those of 23h0m0s and 1m0s", left)
	}
}
