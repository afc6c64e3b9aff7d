package store_test

import (
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
)

var statsBehaviours = []behaviour{
	{"vm counts group by state, project and host", func(t *testing.T, e *env) {
		if got := must(e.s.VMCounts(ctx))(t); len(got) != 0 {
			t.Fatalf("VMCounts on an empty store = %+v; want none", got)
		}
		add := func(name, project, host string, state store.VMState) {
			vm := newVM(name)
			vm.Project, vm.HostID, vm.State = project, host, state
			must(e.s.CreateVM(ctx, vm))(t)
		}
		add("a", "p1", "h1", store.VMRunning)
		add("b", "p1", "h1", store.VMRunning)
		add("c", "p1", "h2", store.VMPaused)
		add("d", "p2", "", store.VMRequested)
		want := []store.VMCount{
			{State: store.VMPaused, Project: "p1", HostID: "h2", VMs: 1},
			{State: store.VMRequested, Project: "p2", HostID: "", VMs: 1},
			{State: store.VMRunning, Project: "p1", HostID: "h1", VMs: 2},
		}
		if d := diff(want, must(e.s.VMCounts(ctx))(t)); d != "" {
			t.Fatalf("VMCounts (-want +got):\n%s", d)
		}
	}},
	{"snapshot counts sum bytes by project", func(t *testing.T, e *env) {
		if got := must(e.s.SnapshotCounts(ctx))(t); len(got) != 0 {
			t.Fatalf("SnapshotCounts on an empty store = %+v; want none", got)
		}
		for _, sn := range []store.Snapshot{
			{VMID: "v1", Project: "p1", Size: 1 << 20},
			{VMID: "v1", Project: "p1", Size: 3 << 20},
			{VMID: "v2", Project: "p2", Size: 5},
		} {
			sn.HostID, sn.Dir, sn.StatePath, sn.MemPath = "h", "/d", "/d/s", "/d/m"
			must(e.s.CreateSnapshot(ctx, sn))(t)
		}
		want := []store.SnapshotCount{{Project: "p1", Snapshots: 2, Bytes: 4 << 20}, {Project: "p2", Snapshots: 1, Bytes: 5}}
		if d := diff(want, must(e.s.SnapshotCounts(ctx))(t)); d != "" {
			t.Fatalf("SnapshotCounts (-want +got):\n%s", d)
		}
	}},
}
