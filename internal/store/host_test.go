package store_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

var hostBehaviours = []behaviour{
	{"host/lifecycle", func(t *testing.T, e *env) {
		capacity := store.Resources{VCPU: 16, MemMiB: 65536}
		h1 := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "node-a", Addr: "10.0.0.1:9090", Capacity: capacity, Version: "0.1.0"}))(t)
		if h1.ID == "" || h1.State != store.HostReady || h1.Capacity != capacity || !h1.LastSeenAt.Equal(e.clock.Now().Truncate(time.Microsecond)) {
			t.Fatalf("first UpsertHost = %+v; want a new ready host", h1)
		}
		if d := diff(h1, must(e.s.GetHost(ctx, h1.ID))(t)); d != "" {
			t.Fatalf("GetHost (-upsert +get):\n%s", d)
		}

		// Re-registration keeps the ID and takes the new address.
		e.clock.Advance(time.Minute)
		again := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "node-a", Addr: "10.0.0.9:9090", Capacity: capacity, Version: "0.2.0",
			Subnet: "172.20.0.0/16", Gateway: "172.20.0.1"}))(t)
		if again.ID != h1.ID || again.Addr != "10.0.0.9:9090" || again.Version != "0.2.0" || !again.CreatedAt.Equal(h1.CreatedAt) ||
			again.Subnet != "172.20.0.0/16" || again.Gateway != "172.20.0.1" {
			t.Fatalf("re-register = %+v; want id %s kept, new addr, version and network", again, h1.ID)
		}

		hb := store.Heartbeat{Capacity: capacity, Allocated: store.Resources{VCPU: 3, MemMiB: 384}, VMs: 2}
		e.clock.Advance(time.Second)
		if err := e.s.Heartbeat(ctx, h1.ID, hb); err != nil {
			t.Fatal(err)
		}
		got := must(e.s.GetHost(ctx, h1.ID))(t)
		if got.Allocated != hb.Allocated || got.VMs != 2 || !got.LastSeenAt.Equal(e.clock.Now().Truncate(time.Microsecond)) {
			t.Fatalf("after heartbeat: %+v", got)
		}
		wantErr(t, "heartbeat of unknown host", e.s.Heartbeat(ctx, "nope", hb), store.ErrNotFound)

		// Draining survives re-registration.
		if err := e.s.SetHostState(ctx, h1.ID, store.HostDraining); err != nil {
			t.Fatal(err)
		}
		if got := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "node-a", Addr: "10.0.0.9:9090"}))(t); got.State != store.HostDraining {
			t.Fatalf("re-register of a draining host made it %s", got.State)
		}
		wantErr(t, "unknown state", e.s.SetHostState(ctx, h1.ID, "on-fire"), store.ErrInvalid)
		wantErr(t, "state of unknown host", e.s.SetHostState(ctx, "nope", store.HostReady), store.ErrNotFound)
		if err := e.s.SetHostState(ctx, h1.ID, store.HostReady); err != nil {
			t.Fatal(err)
		}

		// Hosts not seen lately become unreachable; a heartbeat brings them back.
		h2 := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "node-b", Addr: "10.0.0.2:9090"}))(t)
		e.clock.Advance(time.Minute)
		must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "node-c", Addr: "10.0.0.3:9090"}))(t)
		stale := must(e.s.MarkHostsUnreachable(ctx, e.clock.Now().Add(-30*time.Second)))(t)
		slices.Sort(stale)
		want := []string{h1.ID, h2.ID}
		slices.Sort(want)
		if !slices.Equal(stale, want) {
			t.Fatalf("MarkHostsUnreachable = %v; want %v", stale, want)
		}
		if got := must(e.s.GetHost(ctx, h2.ID))(t); got.State != store.HostUnreachable {
			t.Fatalf("stale host is %s", got.State)
		}
		if again := must(e.s.MarkHostsUnreachable(ctx, e.clock.Now().Add(-30*time.Second)))(t); len(again) != 0 {
			t.Fatalf("second MarkHostsUnreachable = %v; want none (already unreachable)", again)
		}
		if err := e.s.Heartbeat(ctx, h2.ID, store.Heartbeat{}); err != nil {
			t.Fatal(err)
		}
		if got := must(e.s.GetHost(ctx, h2.ID))(t); got.State != store.HostReady {
			t.Fatalf("heartbeat left host %s", got.State)
		}

		hosts := must(e.s.ListHosts(ctx))(t)
		if len(hosts) != 3 || hosts[0].Name != "node-a" || hosts[2].Name != "node-c" {
			t.Fatalf("ListHosts = %v; want node-a, node-b, node-c", hosts)
		}
		_, err := e.s.UpsertHost(ctx, store.HostRegistration{})
		wantErr(t, "nameless host", err, store.ErrInvalid)
		if err := e.s.DeleteHost(ctx, h2.ID); err != nil {
			t.Fatal(err)
		}
		_, err = e.s.GetHost(ctx, h2.ID)
		wantErr(t, "GetHost after delete", err, store.ErrNotFound)
		wantErr(t, "DeleteHost again", e.s.DeleteHost(ctx, h2.ID), store.ErrNotFound)
	}},

	{"host/concurrent_register", func(t *testing.T, e *env) {
		// Agents restarting at once under one name end up as one host.
		ids := make([]string, 8)
		var wg sync.WaitGroup
		for i := range ids {
			wg.Go(func() {
				h, err := e.s.UpsertHost(ctx, store.HostRegistration{Name: "node-a", Addr: fmt.Sprintf("10.0.0.%d:9090", i)})
				if err != nil {
					t.Errorf("UpsertHost %d: %v", i, err)
					return
				}
				ids[i] = h.ID
			})
		}
		wg.Wait()
		for _, id := range ids {
			if id != ids[0] {
				t.Fatalf("one name got several ids: %v", ids)
			}
		}
		if hosts := must(e.s.ListHosts(ctx))(t); len(hosts) != 1 {
			t.Fatalf("%d hosts; want 1", len(hosts))
		}
	}},
}
