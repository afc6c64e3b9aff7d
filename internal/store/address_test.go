package store_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
)

var (
	subnet29 = netip.MustParsePrefix("10.9.0.0/29") // .1 gateway, .2-.6 for guests, .7 broadcast
	gw29     = netip.MustParseAddr("10.9.0.1")
)

var addressBehaviours = []behaviour{
	{"address/assign_keep_release", func(t *testing.T, e *env) {
		mk := func(name, host string) store.VM {
			vm := newVM(name)
			vm.HostID = host
			return must(e.s.CreateVM(ctx, vm))(t)
		}
		assign := func(vm store.VM) store.VM {
			t.Helper()
			return must(e.s.AssignAddress(ctx, vm.ID, subnet29, gw29))(t)
		}
		a, b, c := mk("a", "h1"), mk("b", "h1"), mk("c", "h1")
		other := mk("other", "h2")
		ga := assign(a)
		if ga.IP != "10.9.0.2" || ga.Subnet != "10.9.0.0/29" || ga.Gateway != "10.9.0.1" || ga.Generation != a.Generation+1 {
			t.Fatalf("first address = %s in %s via %s (generation %d); want 10.9.0.2 in 10.9.0.0/29 via 10.9.0.1, the generation bumped",
				ga.IP, ga.Subnet, ga.Gateway, ga.Generation)
		}
		if d := diff(ga, must(e.s.GetVM(ctx, a.ID))(t)); d != "" {
			t.Fatalf("GetVM differs from AssignAddress (-assign +get):\n%s", d)
		}
		if again := assign(a); again.IP != ga.IP || again.Generation != ga.Generation {
			t.Fatalf("assigning again = %s (generation %d); want %s kept and nothing written", again.IP, again.Generation, ga.IP)
		}
		if gb := assign(b); gb.IP != "10.9.0.3" {
			t.Fatalf("second VM = %s; want 10.9.0.3", gb.IP)
		}
		if g := assign(other); g.IP != "10.9.0.2" {
			t.Fatalf("a VM of another host = %s; want 10.9.0.2 (addresses are per host)", g.IP)
		}
		// A deleted VM's address is free again; the lowest free one goes first.
		if err := e.s.DeleteVM(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if gc := assign(c); gc.IP != "10.9.0.2" {
			t.Fatalf("after a delete = %s; want the freed 10.9.0.2", gc.IP)
		}
		// Full: .2-.6 are five addresses.
		for i := range 3 {
			assign(mk(fmt.Sprintf("fill-%d", i), "h1"))
		}
		_, err := e.s.AssignAddress(ctx, mk("late", "h1").ID, subnet29, gw29)
		wantErr(t, "a full subnet", err, store.ErrExhausted)

		// The gateway moves onto b's address: b moves; the others stay.
		gw3 := netip.MustParseAddr("10.9.0.3")
		if g := must(e.s.AssignAddress(ctx, c.ID, subnet29, gw3))(t); g.IP != "10.9.0.2" || g.Gateway != "10.9.0.3" {
			t.Fatalf("c under a new gateway = %s via %s; want 10.9.0.2 kept, via 10.9.0.3", g.IP, g.Gateway)
		}
		// A new subnet: a new address in it.
		wide := netip.MustParsePrefix("10.10.0.0/16")
		if g := must(e.s.AssignAddress(ctx, b.ID, wide, netip.MustParseAddr("10.10.0.1")))(t); g.IP != "10.10.0.2" || g.Subnet != "10.10.0.0/16" {
			t.Fatalf("b in a new subnet = %s in %s; want 10.10.0.2 in 10.10.0.0/16", g.IP, g.Subnet)
		}

		for name, tc := range map[string]struct {
			subnet string
			gw     string
		}{
			"/31":               {"10.9.0.0/31", "10.9.0.1"},
			"/0":                {"0.0.0.0/0", "10.9.0.1"},
			"not masked":        {"10.9.0.4/29", "10.9.0.1"},
			"gateway outside":   {"10.9.0.0/29", "10.9.1.1"},
			"gateway network":   {"10.9.0.0/29", "10.9.0.0"},
			"gateway broadcast": {"10.9.0.0/29", "10.9.0.7"},
			"ipv6":              {"fd00::/64", "fd00::1"},
		} {
			_, err := e.s.AssignAddress(ctx, c.ID, netip.MustParsePrefix(tc.subnet), netip.MustParseAddr(tc.gw))
			wantErr(t, name, err, store.ErrInvalid)
		}
		_, err = e.s.AssignAddress(ctx, must(e.s.CreateVM(ctx, newVM("unplaced")))(t).ID, subnet29, gw29)
		wantErr(t, "a VM without a host", err, store.ErrInvalid)
		_, err = e.s.AssignAddress(ctx, "nope", subnet29, gw29)
		wantErr(t, "an unknown VM", err, store.ErrNotFound)
	}},

	// Two stores on one database (two managers) assign addresses to the
	// VMs of one host at once: every VM gets one, no two the same.
	{"address/two_stores_concurrent", func(t *testing.T, e *env) {
		second := openStore(t, e.dsn)
		const n = 60
		ids := make([]string, n)
		for i := range n {
			vm := newVM(fmt.Sprintf("vm-%02d", i))
			vm.HostID = "h1"
			ids[i] = must(e.s.CreateVM(ctx, vm))(t).ID
		}
		subnet, gw := netip.MustParsePrefix("172.20.0.0/16"), netip.MustParseAddr("172.20.0.1")
		got := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			s := e.s
			if i%2 == 1 {
				s = second
			}
			wg.Go(func() {
				vm, err := s.AssignAddress(ctx, ids[i], subnet, gw)
				if err != nil {
					t.Errorf("AssignAddress %d: %v", i, err)
					return
				}
				got[i] = vm.IP
			})
		}
		wg.Wait()
		seen := map[string]int{}
		for i, ip := range got {
			if j, dup := seen[ip]; dup {
				t.Errorf("vm %d and vm %d both hold %s", j, i, ip)
			}
			seen[ip] = i
		}
		if len(seen) != n {
			t.Fatalf("%d distinct addresses for %d VMs", len(seen), n)
		}
		// The lowest addresses, none skipped: .2 … .61.
		for i := 2; i < n+2; i++ {
			if _, ok := seen[fmt.Sprintf("172.20.0.%d", i)]; !ok {
				t.Errorf("172.20.0.%d was skipped", i)
			}
		}
	}},
}

var createWithinBehaviours = []behaviour{
	// A VM placed with CreateVMWithin gets its address in the same
	// transaction: the lowest free one, none twice even from two stores at
	// once; a full subnet stores nothing.
	{"address/create_within", func(t *testing.T, e *env) {
		h := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h", Addr: "http://h", Subnet: "10.9.0.0/29", Gateway: "10.9.0.1"}))(t)
		limit := store.Resources{VCPU: 1000, MemMiB: 1 << 30}
		second := openStore(t, e.dsn)
		mk := func(s store.Store, name string) (store.VM, error) {
			vm := newVM(name)
			vm.HostID, vm.Subnet, vm.Gateway = h.ID, "10.9.0.0/29", "10.9.0.1"
			return s.CreateVMWithin(ctx, vm, limit)
		}
		got := make([]string, 5)
		var wg sync.WaitGroup
		for i := range got {
			s := e.s
			if i%2 == 1 {
				s = second
			}
			wg.Go(func() {
				vm, err := mk(s, fmt.Sprintf("vm-%d", i))
				if err != nil {
					t.Errorf("CreateVMWithin %d: %v", i, err)
					return
				}
				if stored, err := e.s.GetVM(ctx, vm.ID); err != nil || stored.IP != vm.IP || stored.Subnet != "10.9.0.0/29" || stored.Gateway != "10.9.0.1" {
					t.Errorf("vm %d stored with %s in %s via %s (%v); created with %s", i, stored.IP, stored.Subnet, stored.Gateway, err, vm.IP)
				}
				got[i] = vm.IP
			})
		}
		wg.Wait()
		slices.Sort(got)
		if want := []string{"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"}; !slices.Equal(got, want) {
			t.Fatalf("addresses = %v; want %v", got, want)
		}
		_, err := mk(e.s, "late")
		wantErr(t, "a full subnet", err, store.ErrExhausted)
		if _, err := e.s.GetVMByName(ctx, "default", "late"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a refused create stored its VM: %v", err)
		}
		// Without a subnet, no address.
		vm := newVM("plain")
		vm.HostID = h.ID
		if got := must(e.s.CreateVMWithin(ctx, vm, limit))(t); got.IP != "" {
			t.Fatalf("a VM without a subnet got %s", got.IP)
		}
		bad := newVM("bad")
		bad.HostID, bad.Subnet, bad.Gateway = h.ID, "10.9.0.0/31", "10.9.0.1"
		_, err = e.s.CreateVMWithin(ctx, bad, limit)
		wantErr(t, "an unusable subnet", err, store.ErrInvalid)
	}},

	// A host that is not ready takes no VM, whatever its placer read
	// before its drain; undrained, it takes them again.
	{"address/create_within_not_ready", func(t *testing.T, e *env) {
		h := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h", Addr: "http://h"}))(t)
		limit := store.Resources{VCPU: 1000, MemMiB: 1 << 30}
		for _, st := range []store.HostState{store.HostDraining, store.HostUnreachable} {
			if err := e.s.SetHostState(ctx, h.ID, st); err != nil {
				t.Fatal(err)
			}
			vm := newVM("on-" + string(st))
			vm.HostID = h.ID
			_, err := e.s.CreateVMWithin(ctx, vm, limit)
			wantErr(t, "a "+string(st)+" host", err, store.ErrHostNotReady)
			if _, err := e.s.GetVMByName(ctx, "default", vm.Name); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("a refused create stored its VM: %v", err)
			}
		}
		if err := e.s.SetHostState(ctx, h.ID, store.HostReady); err != nil {
			t.Fatal(err)
		}
		vm := newVM("undrained")
		vm.HostID = h.ID
		must(e.s.CreateVMWithin(ctx, vm, limit))(t)
	}},
}
