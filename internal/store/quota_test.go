package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
)

func ptr(v int64) *int64 { return &v }

var quotaBehaviours = []behaviour{
	{"quota/put_get_usage", func(t *testing.T, e *env) {
		q := must(e.s.GetQuota(ctx, "p1"))(t)
		if q.Project != "p1" || q.Limits != (store.QuotaLimits{}) || !q.UpdatedAt.IsZero() {
			t.Fatalf("a quota never set = %+v; want no limits", q)
		}
		put := must(e.s.PutQuota(ctx, store.Quota{Project: "p1", Limits: store.QuotaLimits{VMs: ptr(3), MemMiB: ptr(0)}}))(t)
		got := must(e.s.GetQuota(ctx, "p1"))(t)
		if got.Limits.VMs == nil || *got.Limits.VMs != 3 || got.Limits.MemMiB == nil || *got.Limits.MemMiB != 0 || got.Limits.VCPUs != nil || !got.UpdatedAt.Equal(put.UpdatedAt) {
			t.Fatalf("quota read back = %+v; want vms 3, mem 0, the rest unlimited", got)
		}
		// A second put replaces every limit.
		must(e.s.PutQuota(ctx, store.Quota{Project: "p1", Limits: store.QuotaLimits{Images: ptr(1)}}))(t)
		if got := must(e.s.GetQuota(ctx, "p1"))(t); got.Limits.VMs != nil || got.Limits.Images == nil {
			t.Fatalf("after a second put: %+v; want only images", got.Limits)
		}
		_, err := e.s.PutQuota(ctx, store.Quota{Project: "p1", Limits: store.QuotaLimits{VMs: ptr(-1)}})
		wantErr(t, "a negative limit", err, store.ErrInvalid)
		_, err = e.s.PutQuota(ctx, store.Quota{Limits: store.QuotaLimits{VMs: ptr(1)}})
		wantErr(t, "no project", err, store.ErrInvalid)

		h := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h", Addr: "http://h"}))(t)
		for i := range 2 {
			vm := newVM(fmt.Sprintf("u-%d", i))
			vm.Project, vm.HostID, vm.VCPU, vm.MemMiB = "p1", h.ID, 2, 256
			must(e.s.CreateVMWithin(ctx, vm, store.Resources{VCPU: 100, MemMiB: 1 << 20}))(t)
		}
		must(e.s.CreateSnapshot(ctx, store.Snapshot{VMID: "x", Project: "p1", HostID: h.ID, Size: 1000}))(t)
		must(e.s.CreateTemplate(ctx, store.Template{Name: "t", Project: "p1"}))(t)
		u := must(e.s.ProjectUsage(ctx, "p1"))(t)
		if want := (store.Usage{VMs: 2, VCPUs: 4, MemMiB: 512, Snapshots: 1, SnapshotBytes: 1000, Templates: 1}); u != want {
			t.Fatalf("usage = %+v; want %+v", u, want)
		}
	}},
	{"quota/creates_refused_past_limits", func(t *testing.T, e *env) {
		h := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h", Addr: "http://h"}))(t)
		room := store.Resources{VCPU: 100, MemMiB: 1 << 20}
		must(e.s.PutQuota(ctx, store.Quota{Project: "p", Limits: store.QuotaLimits{
			VMs: ptr(5), VCPUs: ptr(4), Snapshots: ptr(1), SnapshotBytes: ptr(100), Images: ptr(1), Templates: ptr(0),
		}}))(t)
		mk := func(name string, vcpu int) error {
			vm := newVM(name)
			vm.Project, vm.HostID, vm.VCPU = "p", h.ID, vcpu
			_, err := e.s.CreateVMWithin(ctx, vm, room)
			return err
		}
		if err := mk("a", 2); err != nil {
			t.Fatal(err)
		}
		if err := mk("b", 2); err != nil {
			t.Fatal(err)
		}
		err := mk("c", 1)
		var qe *store.QuotaError
		if !errors.As(err, &qe) || !errors.Is(err, store.ErrQuota) || qe.Resource != "vcpus" || qe.Limit != 4 || qe.Used != 4 || qe.Want != 1 {
			t.Fatalf("5th vCPU: %v (%+v); want a quota error on vcpus 4/4 +1", err, qe)
		}
		if _, err := e.s.GetVMByName(ctx, "p", "c"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a refused create stored its VM: %v", err)
		}
		// Other projects are not limited.
		vm := newVM("c")
		vm.HostID = h.ID
		must(e.s.CreateVMWithin(ctx, vm, room))(t)

		_, err = e.s.CreateSnapshot(ctx, store.Snapshot{VMID: "x", Project: "p", HostID: h.ID, Size: 101})
		wantErr(t, "a snapshot over the bytes", err, store.ErrQuota)
		must(e.s.CreateSnapshot(ctx, store.Snapshot{VMID: "x", Project: "p", HostID: h.ID, Size: 100}))(t)
		_, err = e.s.CreateSnapshot(ctx, store.Snapshot{VMID: "x", Project: "p", HostID: h.ID})
		wantErr(t, "a second snapshot", err, store.ErrQuota)
		must(e.s.CreateImage(ctx, store.Image{Project: "p", Kind: store.ImageKernel, Name: "k1", HostPath: "/i/k1"}))(t)
		_, err = e.s.CreateImage(ctx, store.Image{Project: "p", Kind: store.ImageKernel, Name: "k2", HostPath: "/i/k2"})
		wantErr(t, "a second image", err, store.ErrQuota)
		_, err = e.s.CreateTemplate(ctx, store.Template{Name: "t", Project: "p"})
		wantErr(t, "a template with a quota of 0", err, store.ErrQuota)
		// Global images have no project and no quota.
		must(e.s.CreateImage(ctx, store.Image{Kind: store.ImageKernel, Name: "k3", HostPath: "/i/k3"}))(t)
	}},
	// Two stores on one database (two managers) creating at once admit
	// exactly the quota: the quota row's lock orders them.
	{"quota/concurrent_creates_admit_exactly_the_quota", func(t *testing.T, e *env) {
		h := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h", Addr: "http://h"}))(t)
		room := store.Resources{VCPU: 1000, MemMiB: 1 << 30}
		const quota = 7
		must(e.s.PutQuota(ctx, store.Quota{Project: "race", Limits: store.QuotaLimits{VMs: ptr(quota)}}))(t)
		second := openStore(t, e.dsn)
		ok, refused := raceCreates(t, []store.Store{e.s, second}, 24, "race", h.ID, room)
		if ok != quota || refused != 24-quota {
			t.Fatalf("%d created, %d refused; want %d and %d", ok, refused, quota, 24-quota)
		}
		if u := must(e.s.ProjectUsage(ctx, "race"))(t); u.VMs != quota {
			t.Fatalf("usage %d VMs; want %d", u.VMs, quota)
		}
	}},
	// A default quota binds every project without its own, also between
	// two stores creating at once; a quota of its own replaces it.
	{"quota/default_quota", func(t *testing.T, e *env) {
		def := store.QuotaLimits{VMs: ptr(4)}
		a := openStore(t, e.dsn, store.WithDefaultQuota(def))
		b := openStore(t, e.dsn, store.WithDefaultQuota(def))
		h := must(a.UpsertHost(ctx, store.HostRegistration{Name: "h", Addr: "http://h"}))(t)
		room := store.Resources{VCPU: 1000, MemMiB: 1 << 30}
		if q := must(a.GetQuota(ctx, "dflt"))(t); !q.Default || q.Limits.VMs == nil || *q.Limits.VMs != 4 {
			t.Fatalf("quota of a project without one = %+v; want the default", q)
		}
		if ok, refused := raceCreates(t, []store.Store{a, b}, 12, "dflt", h.ID, room); ok != 4 || refused != 8 {
			t.Fatalf("%d created, %d refused under a default of 4", ok, refused)
		}
		// Still the default after the anchor row was written.
		if q := must(b.GetQuota(ctx, "dflt"))(t); !q.Default || *q.Limits.VMs != 4 {
			t.Fatalf("quota after creates = %+v; want the default", q)
		}
		// Its own quota (no limits) lifts the default.
		must(a.PutQuota(ctx, store.Quota{Project: "dflt"}))(t)
		if q := must(b.GetQuota(ctx, "dflt"))(t); q.Default || q.Limits.VMs != nil {
			t.Fatalf("quota after a put = %+v; want its own, unlimited", q)
		}
		vm := newVM("d-more")
		vm.Project, vm.HostID = "dflt", h.ID
		must(b.CreateVMWithin(ctx, vm, room))(t)
		// A store without a default limits nothing.
		vm = newVM("free")
		vm.Project, vm.HostID = "other", h.ID
		must(e.s.CreateVMWithin(ctx, vm, room))(t)
	}},
}

// raceCreates creates n VMs of project on host at once, taking turns
// among stores, and counts those created and those refused by a quota.
func raceCreates(t *testing.T, stores []store.Store, n int, project, hostID string, room store.Resources) (ok, refused int) {
	t.Helper()
	var created, quota atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		s := stores[i%len(stores)]
		wg.Go(func() {
			vm := newVM(fmt.Sprintf("%s-%d", project, i))
			vm.Project, vm.HostID = project, hostID
			_, err := s.CreateVMWithin(context.Background(), vm, room)
			switch {
			case err == nil:
				created.Add(1)
			case errors.Is(err, store.ErrQuota):
				quota.Add(1)
			default:
				t.Errorf("create %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	return int(created.Load()), int(quota.Load())
}
