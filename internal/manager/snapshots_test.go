package manager

import (
	"errors"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

func TestSnapshotCreateRestoreDelete(t *testing.T) {
	e := newEnv(t)
	src := e.mustCreate("src")
	sn, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, src.ID, SnapshotOptions{})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if v, _ := e.st.GetVM(e.ctx, src.ID); v.State != store.VMRunning {
		t.Errorf("source after the snapshot: %s; want running again", v.State)
	}
	if !strings.Contains(e.events(src.ID), "snapshot "+sn.ID+": inspect") {
		t.Errorf("no step report for the snapshot:\n%s", e.events(src.ID))
	}
	r, err := e.m.Snapshots.InstantiateSnapshot(e.ctx, All, sn.ID, apitypes.InstantiateSnapshotRequest{Name: "clone"}, InstantiateOptions{})
	if err != nil || r.VM.State != store.VMRunning {
		t.Fatalf("restore = %+v, %v", r.VM, err)
	}
	if len(r.Notices) == 0 {
		t.Error("a restored VM's notices do not mention its MAC")
	}
	list, err := e.m.Snapshots.ListVMSnapshots(e.ctx, All, src.ID)
	if err != nil || len(list) != 1 {
		t.Fatalf("catalog = %v, %v", list, err)
	}
	for _, id := range []string{r.VM.ID, src.ID} {
		if err := e.m.VMs.DeleteVM(e.ctx, All, id); err != nil {
			t.Fatal(err)
		}
	}
	// The snapshot outlives its VM until it is deleted itself.
	if _, err := e.m.Snapshots.GetSnapshot(e.ctx, All, sn.ID); err != nil {
		t.Fatalf("snapshot after its VM's delete: %v", err)
	}
	if err := e.m.Snapshots.DeleteSnapshot(e.ctx, All, sn.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}

// A snapshot that fails while the guest is paused is undone: files gone,
// the guest running again; a restore that fails leaves nothing.
func TestSnapshotFailuresAreUndone(t *testing.T) {
	e := newEnv(t)
	src := e.mustCreate("src")
	e.faults.add(t, &fault{method: "PUT", suffix: "/proxy/snapshot/create", nth: 1, status: 400, body: `{"fault_message":"Cannot create snapshot: injected"}`})
	if _, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, src.ID, SnapshotOptions{}); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("snapshot = %v; want the injected refusal", err)
	}
	if v, _ := e.st.GetVM(e.ctx, src.ID); v.State != store.VMRunning {
		t.Errorf("source after the failed snapshot: %s; want running", v.State)
	}
	if !strings.Contains(e.events(src.ID), "undid pause") {
		t.Errorf("events do not say the pause was undone:\n%s", e.events(src.ID))
	}
	if l, _ := e.m.Snapshots.ListVMSnapshots(e.ctx, All, src.ID); len(l) != 0 {
		t.Errorf("a failed snapshot is in the catalog: %v", l)
	}
	e.faults.clear()
	sn, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, src.ID, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.faults.add(t, &fault{method: "PUT", suffix: "/proxy/snapshot/load", nth: 1, status: 400, body: `{"fault_message":"Load snapshot error: injected"}`})
	if _, err := e.m.Snapshots.InstantiateSnapshot(e.ctx, All, sn.ID, apitypes.InstantiateSnapshotRequest{Name: "clone"}, InstantiateOptions{}); err == nil {
		t.Fatal("restore succeeded through an injected refusal")
	}
	if n := e.rows(); n != 1 {
		t.Errorf("%d VM rows; want only the source", n)
	}
	if inv := e.inventory(); len(inv.VMMs) != 1 || len(inv.Taps) != 1 {
		t.Errorf("host after the failed restore: %+v; want only the source's VMM and TAP", inv)
	}
	e.faults.clear()
	// Stopped VMs cannot be snapshotted.
	if _, err := e.m.VMs.StopVM(e.ctx, All, src.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, src.ID, SnapshotOptions{}); !isKind(err, KindConflict) {
		t.Errorf("snapshot of a stopped VM = %v; want a conflict", err)
	}
	if err := e.m.Snapshots.DeleteSnapshot(e.ctx, All, sn.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, src.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}

// A snapshot past the project's quota is refused before the guest is
// paused or a file is written.
func TestSnapshotQuotaRefusedEarly(t *testing.T) {
	e := newEnv(t)
	src := e.mustCreate("quota-src")
	one := int64(1)
	if _, err := e.st.PutQuota(e.ctx, store.Quota{Project: src.Project, Limits: store.QuotaLimits{SnapshotBytes: &one}}); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, src.ID, SnapshotOptions{})
	var qe *store.QuotaError
	if !errors.As(err, &qe) || qe.Resource != "snapshot_bytes" {
		t.Fatalf("snapshot over the bytes quota: %v; want a quota error", err)
	}
	if strings.Contains(e.events(src.ID), "pause") {
		t.Errorf("the guest was paused for a refused snapshot:\n%s", e.events(src.ID))
	}
	if v, _ := e.st.GetVM(e.ctx, src.ID); v.State != store.VMRunning {
		t.Errorf("source after a refused snapshot: %s; want running", v.State)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, src.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}
