package metrics

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nexus-microvm/nexus/internal/store"
)

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "nexus.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestProjectsAreCapped: a tenant making many projects cannot grow the
// series; the smallest projects are summed into _other, and the output is
// lint-clean.
func TestProjectsAreCapped(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for p, n := range map[string]int{"a": 5, "b": 4, "c": 3, "d": 2, "e": 1} {
		for i := range n {
			if _, err := st.CreateVM(ctx, store.VM{Name: fmt.Sprintf("%s%d", p, i), Project: p, State: store.VMRunning, DesiredState: store.VMRunning, VCPU: 1, MemMiB: 128}); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := NewFleet(FleetConfig{Store: st, MaxProjects: 2})
	want := `
# HELP nexus_project_vms VMs by project and observed state (projects beyond the cap are summed into "_other").
# TYPE nexus_project_vms gauge
nexus_project_vms{project="_other",state="running"} 6
nexus_project_vms{project="a",state="running"} 5
nexus_project_vms{project="b",state="running"} 4
`
	if err := promtest.CollectAndCompare(f, strings.NewReader(want), "nexus_project_vms"); err != nil {
		t.Fatal(err)
	}
	problems, err := promtest.CollectAndLint(f)
	if err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
}

// TestStoreDown: without a store the scrape still answers, saying so.
func TestStoreDown(t *testing.T) {
	st := openStore(t)
	st.Close()
	f := NewFleet(FleetConfig{Store: st})
	want := `
# HELP nexus_store_up 1 when the store answered this scrape's queries.
# TYPE nexus_store_up gauge
nexus_store_up 0
`
	if err := promtest.CollectAndCompare(f, strings.NewReader(want), "nexus_store_up"); err != nil {
		t.Fatal(err)
	}
	if n := promtest.CollectAndCount(f, "nexus_vms"); n != 0 {
		t.Fatalf("%d VM series without a store", n)
	}
}
