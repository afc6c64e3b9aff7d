package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

var vmBehaviours = []behaviour{
	// A caller already gone starts no statement, on either engine (SQLite
	// runs a started one to its end without watching the caller).
	{"vm/caller-gone", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		gone, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := e.s.CreateVM(gone, newVM("web-2")); !errors.Is(err, context.Canceled) {
			t.Fatalf("CreateVM for a caller gone: %v; want context.Canceled", err)
		}
		_, err := e.s.UpdateVM(gone, vm.ID, func(v *store.VM) error { v.State = store.VMRunning; return nil })
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("UpdateVM for a caller gone: %v; want context.Canceled", err)
		}
		if _, err := e.s.AddEvent(gone, store.VMEvent{VMID: vm.ID, Level: store.LevelInfo, Message: "x"}); !errors.Is(err, context.Canceled) {
			t.Fatalf("AddEvent for a caller gone: %v; want context.Canceled", err)
		}
		if got := must(e.s.GetVM(ctx, vm.ID))(t); got.State != vm.State || got.Generation != vm.Generation {
			t.Fatalf("the VM changed: %s gen %d; want %s gen %d", got.State, got.Generation, vm.State, vm.Generation)
		}
		if _, err := e.s.GetVMByName(ctx, "default", "web-2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("web-2: %v; want not found", err)
		}
		if evs := must(e.s.ListEvents(ctx, vm.ID, 10))(t); len(evs) != 0 {
			t.Fatalf("events %+v; want none", evs)
		}
	}},
	{"vm/crud", func(t *testing.T, e *env) {
		created := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		if created.ID == "" || created.Generation != 1 {
			t.Fatalf("CreateVM = id %q, generation %d; want an id and generation 1", created.ID, created.Generation)
		}
		wantAt := e.clock.Now().Truncate(time.Microsecond)
		if !created.CreatedAt.Equal(wantAt) || !created.UpdatedAt.Equal(wantAt) {
			t.Fatalf("CreateVM times = %v, %v; want the store clock %v", created.CreatedAt, created.UpdatedAt, wantAt)
		}
		if d := diff(created, must(e.s.GetVM(ctx, created.ID))(t)); d != "" {
			t.Fatalf("GetVM differs from CreateVM (-create +get):\n%s", d)
		}
		if d := diff(created, must(e.s.GetVMByName(ctx, "default", "web-1"))(t)); d != "" {
			t.Fatalf("GetVMByName differs (-create +get):\n%s", d)
		}

		e.clock.Advance(time.Second)
		updated := must(e.s.UpdateVM(ctx, created.ID, func(vm *store.VM) error {
			vm.State = store.VMRunning
			vm.HostID, vm.HostAddr = "host-1", "10.0.0.1:9090"
			vm.APISock, vm.TAP, vm.MAC = "/srv/fc/vms/x/sock/fc.sock", "tap-0123456789a", "02:fc:00:00:00:01"
			vm.LogPath = "/srv/fc/vms/x/logs/fc.log"
			vm.TemplateID = "tpl-1"
			vm.TemplateConfig = []byte(`{"vcpu": 2}`)
			vm.Overrides = []byte(`{"mem_mib": 512}`)
			vm.Tags["tier"] = "front"
			vm.LastError = "boot timeout"
			vm.Retries = 2
			next := e.clock.Now().Add(30 * time.Second)
			vm.NextAttemptAt = &next
			vm.InitrdPath, vm.InitrdImageID = "/srv/fc/images/initrd.cpio.gz", "img-initrd"
			vm.VMMPID = 4242
			booted, ready := e.clock.Now().Add(time.Millisecond+time.Nanosecond), e.clock.Now().Add(2*time.Second)
			vm.BootedAt, vm.GuestReadyAt = &booted, &ready
			expires := e.clock.Now().Add(time.Hour)
			vm.ExpiresAt, vm.OnExpiry = &expires, store.ExpiryStop
			return nil
		}))(t)
		if updated.Generation != 2 || !updated.UpdatedAt.Equal(wantAt.Add(time.Second)) || !updated.CreatedAt.Equal(wantAt) {
			t.Fatalf("UpdateVM = generation %d, updated %v, created %v; want 2, %v, %v",
				updated.Generation, updated.UpdatedAt, updated.CreatedAt, wantAt.Add(time.Second), wantAt)
		}
		if d := diff(updated, must(e.s.GetVM(ctx, created.ID))(t)); d != "" {
			t.Fatalf("GetVM after update differs (-update +get):\n%s", d)
		}

		if err := e.s.DeleteVM(ctx, created.ID); err != nil {
			t.Fatal(err)
		}
		_, err := e.s.GetVM(ctx, created.ID)
		wantErr(t, "GetVM after delete", err, store.ErrNotFound)
		wantErr(t, "second DeleteVM", e.s.DeleteVM(ctx, created.ID), store.ErrNotFound)
	}},

	{"vm/expired", func(t *testing.T, e *env) {
		now := e.clock.Now()
		at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
		for _, c := range []struct {
			name string
			exp  *time.Time
		}{{"late", at(-time.Second)}, {"early", at(-time.Minute)}, {"now", at(0)}, {"future", at(time.Second)}, {"never", nil}} {
			vm := newVM(c.name)
			vm.ExpiresAt, vm.OnExpiry = c.exp, store.ExpiryDelete
			if c.exp == nil {
				vm.OnExpiry = ""
			}
			must(e.s.CreateVM(ctx, vm))(t)
		}
		got := must(e.s.ListExpiredVMs(ctx, now, 10))(t)
		if n := names(got); n != "early late now" {
			t.Fatalf("ListExpiredVMs(now) = %s; want early late now (earliest first)", n)
		}
		if n := names(must(e.s.ListExpiredVMs(ctx, now, 1))(t)); n != "early" {
			t.Fatalf("ListExpiredVMs(now, limit 1) = %s; want early", n)
		}
		if got[0].OnExpiry != store.ExpiryDelete || got[0].ExpiresAt == nil || !got[0].ExpiresAt.Equal(now.Add(-time.Minute).Truncate(time.Microsecond)) {
			t.Fatalf("expired VM = expires %v, on_expiry %q; want %v, delete", got[0].ExpiresAt, got[0].OnExpiry, now.Add(-time.Minute))
		}
		// Clearing the expiry takes the VM out of the sweep.
		must(e.s.UpdateVM(ctx, got[0].ID, func(vm *store.VM) error { vm.ExpiresAt, vm.OnExpiry = nil, ""; return nil }))(t)
		if n := names(must(e.s.ListExpiredVMs(ctx, now.Add(time.Hour), 10))(t)); n != "late now future" {
			t.Fatalf("ListExpiredVMs(+1h) = %s; want late,now,future", n)
		}
	}},

	{"vm/conflict", func(t *testing.T, e *env) {
		first := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		_, err := e.s.CreateVM(ctx, newVM("web-1"))
		wantErr(t, "same project and name", err, store.ErrConflict)
		other := newVM("web-1")
		other.Project = "other"
		must(e.s.CreateVM(ctx, other))(t)
		dupID := newVM("web-9")
		dupID.ID = first.ID
		_, err = e.s.CreateVM(ctx, dupID)
		wantErr(t, "same id", err, store.ErrConflict)

		second := must(e.s.CreateVM(ctx, newVM("web-2")))(t)
		_, err = e.s.UpdateVM(ctx, second.ID, func(vm *store.VM) error { vm.Name = "web-1"; return nil })
		wantErr(t, "rename onto a taken name", err, store.ErrConflict)
		if got := must(e.s.GetVM(ctx, second.ID))(t); got.Name != "web-2" || got.Generation != 1 {
			t.Fatalf("after failed rename: name %q generation %d; want web-2, 1", got.Name, got.Generation)
		}
	}},

	{"vm/not_found", func(t *testing.T, e *env) {
		_, err := e.s.GetVM(ctx, "3f2a-missing")
		wantErr(t, "GetVM", err, store.ErrNotFound)
		if !strings.Contains(err.Error(), "vm 3f2a-missing") {
			t.Fatalf("GetVM error %q does not name the vm", err)
		}
		_, err = e.s.GetVMByName(ctx, "default", "ghost")
		wantErr(t, "GetVMByName", err, store.ErrNotFound)
		called := false
		_, err = e.s.UpdateVM(ctx, "3f2a-missing", func(*store.VM) error { called = true; return nil })
		wantErr(t, "UpdateVM", err, store.ErrNotFound)
		if called {
			t.Fatal("UpdateVM called mutate for a missing VM")
		}
		wantErr(t, "DeleteVM", e.s.DeleteVM(ctx, "3f2a-missing"), store.ErrNotFound)
	}},

	{"vm/list_filters", func(t *testing.T, e *env) {
		mk := func(name, project string, state store.VMState, host string, tags map[string]string) {
			vm := newVM(name)
			vm.Project, vm.State, vm.HostID, vm.Tags = project, state, host, tags
			if name == "d" {
				vm.DesiredState = store.VMStopped
			}
			must(e.s.CreateVM(ctx, vm))(t)
			e.clock.Advance(time.Millisecond)
		}
		mk("a", "p1", store.VMRunning, "h1", map[string]string{"app": "web", "tier": "front", "k8s.io/name": `we"b`})
		mk("b", "p1", store.VMStopped, "h2", map[string]string{"app": "web"})
		mk("c", "p2", store.VMRunning, "h1", map[string]string{"app": "db"})
		mk("d", "p2", store.VMRequested, "", nil)

		for _, tc := range []struct {
			f    store.VMFilter
			want string
		}{
			{store.VMFilter{}, "d c b a"},
			{store.VMFilter{Project: "p1"}, "b a"},
			{store.VMFilter{State: store.VMRunning}, "c a"},
			{store.VMFilter{DesiredState: store.VMStopped}, "d"},
			{store.VMFilter{HostID: "h1"}, "c a"},
			{store.VMFilter{Tags: map[string]string{"app": "web"}}, "b a"},
			{store.VMFilter{Tags: map[string]string{"app": "web", "tier": "front"}}, "a"},
			{store.VMFilter{Tags: map[string]string{"k8s.io/name": `we"b`}}, "a"},
			{store.VMFilter{Tags: map[string]string{"app": "none"}}, ""},
			{store.VMFilter{Tags: map[string]string{"tier": "web"}}, ""},
			{store.VMFilter{Project: "p2", State: store.VMRunning}, "c"},
			{store.VMFilter{Project: "p1", HostID: "h1", Tags: map[string]string{"app": "web"}}, "a"},
		} {
			items, next := must2(e.s.ListVMs(ctx, tc.f))(t)
			if got := names(items); got != tc.want || next != "" {
				t.Errorf("ListVMs(%+v) = %q, next %q; want %q, no next", tc.f, got, next, tc.want)
			}
		}
	}},

	{"vm/list_host_states", func(t *testing.T, e *env) {
		// The reconciler's view of one host: its VMs, with the fields a
		// pass plans from equal to the whole row's, and nothing else.
		next := e.clock.Now().Add(time.Minute)
		var want []store.VM
		for i, host := range []string{"h1", "h2", "h1", ""} {
			vm := newVM(fmt.Sprintf("v%d", i))
			vm.HostID, vm.TAP, vm.Tags = host, fmt.Sprintf("tap-%d", i), map[string]string{"k": "v"}
			vm = must(e.s.CreateVM(ctx, vm))(t)
			if i == 2 {
				vm = must(e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error {
					v.State, v.DesiredState, v.LastError, v.Retries, v.NextAttemptAt = store.VMFailed, store.VMRunning, "vmm gone", 2, &next
					return nil
				}))(t)
			}
			if host == "h1" {
				want = append(want, vm)
			}
		}
		got := must(e.s.ListHostVMStates(ctx, "h1"))(t)
		slices.SortFunc(got, func(a, b store.VM) int { return strings.Compare(a.ID, b.ID) })
		slices.SortFunc(want, func(a, b store.VM) int { return strings.Compare(a.ID, b.ID) })
		if len(got) != len(want) {
			t.Fatalf("ListHostVMStates(h1) = %d VMs; want %d", len(got), len(want))
		}
		for i, w := range want {
			brief := store.VM{ID: w.ID, HostID: w.HostID, State: w.State, DesiredState: w.DesiredState, TAP: w.TAP,
				LastError: w.LastError, Retries: w.Retries, NextAttemptAt: w.NextAttemptAt, Generation: w.Generation, UpdatedAt: w.UpdatedAt}
			g := got[i]
			if g.ID != brief.ID || g.HostID != brief.HostID || g.State != brief.State || g.DesiredState != brief.DesiredState ||
				g.TAP != brief.TAP || g.LastError != brief.LastError || g.Retries != brief.Retries || g.Generation != brief.Generation ||
				!g.UpdatedAt.Equal(brief.UpdatedAt) || (g.NextAttemptAt == nil) != (brief.NextAttemptAt == nil) ||
				(g.NextAttemptAt != nil && !g.NextAttemptAt.Equal(*brief.NextAttemptAt)) {
				t.Errorf("VM %d: %+v; want %+v", i, g, brief)
			}
			if g.Name != "" || g.Tags != nil || len(g.Spec) != 0 {
				t.Errorf("VM %d carries more than planning needs: name %q, tags %v", i, g.Name, g.Tags)
			}
		}
		if got := must(e.s.ListHostVMStates(ctx, "h9"))(t); len(got) != 0 {
			t.Errorf("a host without VMs: %d", len(got))
		}
	}},

	{"vm/list_paging", func(t *testing.T, e *env) {
		// Three runs of VMs that share a timestamp, so paging must break
		// ties on id.
		base := e.clock.Now()
		want := map[string]bool{}
		for i := range 25 {
			vm := newVM(fmt.Sprintf("vm-%02d", i))
			vm.CreatedAt = base.Add(time.Duration(i/10) * time.Second)
			if i%2 == 0 {
				vm.Project = "even"
			}
			want[must(e.s.CreateVM(ctx, vm))(t).ID] = true
		}
		var seen []store.VM
		cur, pages := "", 0
		for {
			items, next := must2(e.s.ListVMs(ctx, store.VMFilter{Limit: 4, Cursor: cur}))(t)
			pages++
			seen = append(seen, items...)
			if pages == 2 {
				// A VM created mid-listing is newer than the cursor: it
				// must not shift or repeat later pages.
				late := newVM("late")
				late.CreatedAt = base.Add(time.Hour)
				must(e.s.CreateVM(ctx, late))(t)
			}
			if next == "" {
				if len(items) > 4 {
					t.Fatalf("last page has %d items; limit 4", len(items))
				}
				break
			}
			if len(items) != 4 {
				t.Fatalf("page %d has %d items; want 4", pages, len(items))
			}
			cur = next
		}
		if pages != 7 {
			t.Errorf("paged 25 VMs by 4 in %d pages; want 7", pages)
		}
		got := map[string]bool{}
		for i, vm := range seen {
			if got[vm.ID] {
				t.Fatalf("VM %s (%s) listed twice", vm.ID, vm.Name)
			}
			got[vm.ID] = true
			if i > 0 {
				prev := seen[i-1]
				if vm.CreatedAt.After(prev.CreatedAt) || (vm.CreatedAt.Equal(prev.CreatedAt) && vm.ID > prev.ID) {
					t.Fatalf("order broken at %d: %s@%v after %s@%v; want newest first, then id descending",
						i, vm.ID, vm.CreatedAt, prev.ID, prev.CreatedAt)
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("listed %d VMs; want the %d that existed when paging began", len(got), len(want))
		}
		for id := range want {
			if !got[id] {
				t.Fatalf("VM %s never listed", id)
			}
		}

		// Paging a filtered list.
		var even []store.VM
		cur = ""
		for {
			items, next := must2(e.s.ListVMs(ctx, store.VMFilter{Project: "even", Limit: 5, Cursor: cur}))(t)
			even = append(even, items...)
			if next == "" {
				break
			}
			cur = next
		}
		if len(even) != 13 {
			t.Fatalf("paged %d VMs of project even; want 13", len(even))
		}

		items, _ := must2(e.s.ListVMs(ctx, store.VMFilter{}))(t)
		if len(items) != 26 {
			t.Fatalf("ListVMs with default limit = %d items; want all 26", len(items))
		}
		_, _, err := e.s.ListVMs(ctx, store.VMFilter{Cursor: "not-a-cursor"})
		wantErr(t, "malformed cursor", err, store.ErrInvalid)
	}},

	{"vm/update_concurrent", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		// Both writers read the same generation before either writes (the
		// barrier), so one of them must lose, re-read and re-apply.
		arrived := make(chan struct{}, 2)
		release := make(chan struct{})
		var wg sync.WaitGroup
		errs := make([]error, 2)
		calls := make([]int, 2)
		for i, tag := range []string{"a", "b"} {
			wg.Go(func() {
				_, errs[i] = e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error {
					calls[i]++
					if calls[i] == 1 {
						arrived <- struct{}{}
						select {
						case <-release:
						case <-time.After(5 * time.Second):
						}
					}
					v.Tags[tag] = "set"
					v.Retries++
					return nil
				})
			})
		}
		<-arrived
		<-arrived
		close(release)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("writer %d: %v", i, err)
			}
		}
		got := must(e.s.GetVM(ctx, vm.ID))(t)
		if got.Retries != 2 || got.Tags["a"] != "set" || got.Tags["b"] != "set" || got.Generation != 3 {
			t.Fatalf("after two concurrent updates: retries %d, tags %v, generation %d; want 2, a and b set, 3",
				got.Retries, got.Tags, got.Generation)
		}
		if calls[0]+calls[1] < 3 {
			t.Fatalf("mutate ran %d times; the loser must have re-applied (want ≥ 3)", calls[0]+calls[1])
		}

		// Many writers: every update that reports success is in the row.
		var mu sync.Mutex
		ok := 0
		for range 8 {
			wg.Go(func() {
				for range 5 {
					_, err := e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error { v.Retries++; return nil })
					if err != nil && !errors.Is(err, store.ErrStale) {
						t.Errorf("UpdateVM: %v", err)
					}
					if err == nil {
						mu.Lock()
						ok++
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		got = must(e.s.GetVM(ctx, vm.ID))(t)
		if got.Retries != 2+ok || got.Generation != int64(3+ok) {
			t.Fatalf("after %d successful updates: retries %d, generation %d; want %d, %d (a lost update)",
				ok, got.Retries, got.Generation, 2+ok, 3+ok)
		}
		if ok == 0 {
			t.Fatal("no update of 40 succeeded")
		}
	}},

	{"vm/update_stale_and_abort", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		// Every attempt is overtaken by another writer: ErrStale.
		attempts := 0
		_, err := e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error {
			attempts++
			if _, err := e.s.UpdateVM(ctx, vm.ID, func(o *store.VM) error { o.Retries++; return nil }); err != nil {
				return err
			}
			v.LastError = "outer"
			return nil
		})
		wantErr(t, "always overtaken", err, store.ErrStale)
		got := must(e.s.GetVM(ctx, vm.ID))(t)
		if got.LastError != "" || got.Retries != attempts || attempts < 2 {
			t.Fatalf("after ErrStale: last_error %q, retries %d, attempts %d; want the outer write absent and every inner one applied",
				got.LastError, got.Retries, attempts)
		}

		// An error from mutate aborts without writing.
		boom := errors.New("boom")
		_, err = e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error { v.Name = "changed"; return boom })
		wantErr(t, "mutate error", err, boom)
		if after := must(e.s.GetVM(ctx, vm.ID))(t); after.Name != "web-1" || after.Generation != got.Generation {
			t.Fatalf("aborted update wrote: name %q generation %d", after.Name, after.Generation)
		}
	}},

	{"vm/update_from", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		// From the row as stored: written, one generation on.
		got := must(e.s.UpdateVMFrom(ctx, vm, func(v *store.VM) error { v.State = store.VMRunning; return nil }))(t)
		if got.State != store.VMRunning || got.Generation != vm.Generation+1 {
			t.Fatalf("from the current row: %s, generation %d", got.State, got.Generation)
		}
		// From a stale row (another writer came between): the mutation is
		// applied again to the stored row, and the other write stays.
		must(e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error { v.Retries = 3; return nil }))(t)
		calls := 0
		got = must(e.s.UpdateVMFrom(ctx, got, func(v *store.VM) error { calls++; v.LastError = "from"; return nil }))(t)
		if stored := must(e.s.GetVM(ctx, vm.ID))(t); stored.Retries != 3 || stored.LastError != "from" || calls != 2 || got.Generation != stored.Generation {
			t.Fatalf("from a stale row: retries %d, last_error %q, %d calls, generation %d/%d; want both writes, the mutation applied twice",
				stored.Retries, stored.LastError, calls, got.Generation, stored.Generation)
		}
		// A stale row that the mutation leaves as it is answers with the
		// row as stored, not the stale one.
		same := must(e.s.UpdateVMFrom(ctx, vm, func(v *store.VM) error { v.Name = "web-1"; return nil }))(t)
		if same.Retries != 3 || same.Generation != got.Generation {
			t.Fatalf("no-op from a stale row answered %+v", same)
		}
		// A mutation that refuses a stale row decides again on the row as
		// stored; one that refuses the stored row too fails, writing nothing.
		boom := errors.New("not running")
		onlyRunning := func(v *store.VM) error {
			if v.State != store.VMRunning {
				return boom
			}
			v.LastError = "ready"
			return nil
		}
		if got = must(e.s.UpdateVMFrom(ctx, vm, onlyRunning))(t); got.LastError != "ready" {
			t.Fatalf("from a stale row the mutation refused: %+v; want it applied to the stored row", got)
		}
		stopped := must(e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error { v.State = store.VMStopped; return nil }))(t)
		_, err := e.s.UpdateVMFrom(ctx, got, onlyRunning) // stale, and refused as stored
		wantErr(t, "refused by the stored row", err, boom)
		_, err = e.s.UpdateVMFrom(ctx, stopped, onlyRunning) // current, refused twice
		wantErr(t, "refused by the current row", err, boom)
		if after := must(e.s.GetVM(ctx, vm.ID))(t); after.Generation != stopped.Generation || after.LastError != "ready" {
			t.Fatalf("a refused update wrote: generation %d (want %d), last_error %q", after.Generation, stopped.Generation, after.LastError)
		}
		// A VM deleted since: not found.
		if err := e.s.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		_, err = e.s.UpdateVMFrom(ctx, got, func(v *store.VM) error { v.State = store.VMStopped; return nil })
		wantErr(t, "deleted", err, store.ErrNotFound)
	}},

	{"vm/update_guarded_fields_and_noop", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		e.clock.Advance(time.Minute)
		same := must(e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error { v.State = vm.State; return nil }))(t)
		if same.Generation != 1 || !same.UpdatedAt.Equal(vm.UpdatedAt) {
			t.Fatalf("no-op update: generation %d, updated %v; want nothing written", same.Generation, same.UpdatedAt)
		}
		got := must(e.s.UpdateVM(ctx, vm.ID, func(v *store.VM) error {
			v.ID, v.Generation, v.CreatedAt, v.UpdatedAt = "hijack", 99, time.Unix(0, 0), time.Unix(0, 0)
			v.State = store.VMRunning
			return nil
		}))(t)
		if got.ID != vm.ID || got.Generation != 2 || !got.CreatedAt.Equal(vm.CreatedAt) || !got.UpdatedAt.Equal(vm.UpdatedAt.Add(time.Minute)) {
			t.Fatalf("mutate moved store-owned fields: %+v", got)
		}
		if _, err := e.s.GetVM(ctx, "hijack"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetVM(hijack) = %v; want ErrNotFound", err)
		}
	}},

	{"vm/parallel_200", func(t *testing.T, e *env) {
		const n = 200
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				vm, err := e.s.CreateVM(ctx, newVM(fmt.Sprintf("vm-%03d", i)))
				if err != nil {
					t.Errorf("CreateVM %d: %v", i, err)
					return
				}
				ids[i] = vm.ID
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		// Updates of every VM, with readers running beside them.
		for i := range n {
			wg.Go(func() {
				_, err := e.s.UpdateVM(ctx, ids[i], func(v *store.VM) error {
					v.State, v.HostID = store.VMRunning, fmt.Sprintf("h%d", i%4)
					return nil
				})
				if err != nil {
					t.Errorf("UpdateVM %d: %v", i, err)
				}
			})
			wg.Go(func() {
				if _, err := e.s.GetVM(ctx, ids[(i+1)%n]); err != nil {
					t.Errorf("GetVM: %v", err)
				}
				if _, _, err := e.s.ListVMs(ctx, store.VMFilter{Limit: 10}); err != nil {
					t.Errorf("ListVMs: %v", err)
				}
			})
		}
		wg.Wait()
		items, next := must2(e.s.ListVMs(ctx, store.VMFilter{State: store.VMRunning, Limit: store.MaxLimit}))(t)
		if len(items) != n || next != "" {
			t.Fatalf("%d running VMs (next %q); want %d", len(items), next, n)
		}
		alloc := must(e.s.AllocationsByHost(ctx))(t)
		if len(alloc) != 4 || alloc["h0"].VMs != n/4 {
			t.Fatalf("AllocationsByHost = %v; want 4 hosts with %d VMs each", alloc, n/4)
		}
	}},

	{"vm/allocations", func(t *testing.T, e *env) {
		mk := func(name, host string, state store.VMState, vcpu, mem int) {
			vm := newVM(name)
			vm.HostID, vm.State, vm.VCPU, vm.MemMiB = host, state, vcpu, mem
			must(e.s.CreateVM(ctx, vm))(t)
		}
		mk("a", "h1", store.VMRunning, 2, 256)
		mk("b", "h1", store.VMStopped, 1, 128)
		mk("c", "h2", store.VMRunning, 4, 1024)
		mk("d", "", store.VMRequested, 8, 8192) // not placed yet
		got := must(e.s.AllocationsByHost(ctx))(t)
		want := map[string]store.Allocation{"h1": {VMs: 2, VCPU: 3, MemMiB: 384}, "h2": {VMs: 1, VCPU: 4, MemMiB: 1024}}
		if d := diff(want, got); d != "" {
			t.Fatalf("AllocationsByHost() (-want +got):\n%s", d)
		}
		got = must(e.s.AllocationsByHost(ctx, store.VMStopped, store.VMFailed))(t)
		want["h1"] = store.Allocation{VMs: 1, VCPU: 2, MemMiB: 256}
		if d := diff(want, got); d != "" {
			t.Fatalf("AllocationsByHost(stopped, failed) (-want +got):\n%s", d)
		}
	}},
}

// must2 is must for functions with two results.
func must2[A, B any](a A, b B, err error) func(testing.TB) (A, B) {
	return func(t testing.TB) (A, B) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

// names lists VM names in order, space separated.
func names(vms []store.VM) string {
	var out []string
	for _, vm := range vms {
		out = append(out, vm.Name)
	}
	return strings.Join(out, " ")
}

func init() {
	vmBehaviours = append(vmBehaviours, behaviour{"vm/create-within-capacity", func(t *testing.T, e *env) {
		limit := store.Resources{VCPU: 8, MemMiB: 8 * 128}
		h1 := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h1", Addr: "http://h1"}))(t)
		h2 := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "h2", Addr: "http://h2"}))(t)
		mk := func(name string, vcpu int) store.VM {
			vm := newVM(name)
			vm.HostID, vm.VCPU, vm.MemMiB, vm.State = h1.ID, vcpu, 128, store.VMRunning
			return vm
		}
		_, err := e.s.CreateVMWithin(ctx, newVM("nowhere"), limit)
		wantErr(t, "CreateVMWithin on a host that does not exist", err, store.ErrNotFound)
		// Sequentially: fills to the limit, then refuses; a stopped VM's
		// resources do not count.
		for i := range 4 {
			must(e.s.CreateVMWithin(ctx, mk(fmt.Sprintf("a-%d", i), 2), limit, store.VMStopped, store.VMFailed))(t)
		}
		_, err = e.s.CreateVMWithin(ctx, mk("over", 1), limit, store.VMStopped, store.VMFailed)
		wantErr(t, "CreateVMWithin past the limit", err, store.ErrNoCapacity)
		if _, err := e.s.GetVMByName(ctx, "default", "over"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the refused VM was stored: %v", err)
		}
		first := must(e.s.GetVMByName(ctx, "default", "a-0"))(t)
		must(e.s.UpdateVM(ctx, first.ID, func(v *store.VM) error { v.State = store.VMStopped; return nil }))(t)
		must(e.s.CreateVMWithin(ctx, mk("fits-again", 2), limit, store.VMStopped, store.VMFailed))(t)

		// Racing: 24 creates of 1 vCPU onto room for 8, from as many
		// connections as the store gives: exactly 8 get in.
		race := store.Resources{VCPU: 8, MemMiB: 1 << 20}
		var wg sync.WaitGroup
		var mu sync.Mutex
		placed := 0
		for i := range 24 {
			wg.Go(func() {
				vm := mk(fmt.Sprintf("r-%d", i), 1)
				vm.HostID = h2.ID
				_, err := e.s.CreateVMWithin(ctx, vm, race, store.VMStopped, store.VMFailed)
				switch {
				case err == nil:
					mu.Lock()
					placed++
					mu.Unlock()
				case !errors.Is(err, store.ErrNoCapacity):
					t.Errorf("racing create: %v", err)
				}
			})
		}
		wg.Wait()
		if placed != 8 {
			t.Fatalf("%d VMs placed onto room for 8", placed)
		}
	}})
}

func init() {
	vmBehaviours = append(vmBehaviours, behaviour{"pool/crud", func(t *testing.T, e *env) {
		p := must(e.s.CreatePool(ctx, store.Pool{Name: "warm", Project: "default", SnapshotID: "snap-1", Size: 3, MinReady: 2, OnEmpty: "create"}))(t)
		if d := diff(p, must(e.s.GetPool(ctx, p.ID))(t)); d != "" {
			t.Fatalf("GetPool differs (-create +get):\n%s", d)
		}
		if d := diff(p, must(e.s.GetPoolByName(ctx, "default", "warm"))(t)); d != "" {
			t.Fatalf("GetPoolByName differs (-create +get):\n%s", d)
		}
		_, err := e.s.CreatePool(ctx, store.Pool{Name: "warm", Project: "default", Size: 1, MinReady: 1, OnEmpty: "fail"})
		wantErr(t, "same project and name", err, store.ErrConflict)

		at := e.clock.Now()
		must(struct{}{}, e.s.SetPoolShort(ctx, p.ID, &at))(t)
		later := at.Add(time.Minute)
		must(struct{}{}, e.s.SetPoolShort(ctx, p.ID, &later))(t) // stays short: the first time counts
		must(struct{}{}, e.s.CountPoolClaim(ctx, p.ID))(t)
		got := must(e.s.GetPool(ctx, p.ID))(t)
		if got.ShortSince == nil || !got.ShortSince.Equal(at.Truncate(time.Microsecond)) || got.Claims != 1 {
			t.Fatalf("pool = short since %v, claims %d; want %v, 1", got.ShortSince, got.Claims, at)
		}
		must(struct{}{}, e.s.SetPoolShort(ctx, p.ID, nil))(t)
		if got := must(e.s.GetPool(ctx, p.ID))(t); got.ShortSince != nil {
			t.Fatalf("full pool short since %v", got.ShortSince)
		}

		vm := newVM("warm-1")
		vm.PoolID = p.ID
		must(e.s.CreateVM(ctx, vm))(t)
		must(e.s.CreateVM(ctx, newVM("other")))(t)
		inPool, _ := must2(e.s.ListVMs(ctx, store.VMFilter{PoolID: p.ID}))(t)
		if n := names(inPool); n != "warm-1" {
			t.Fatalf("ListVMs(pool) = %s; want warm-1", n)
		}
		if ps := must(e.s.ListPools(ctx, "default"))(t); len(ps) != 1 {
			t.Fatalf("ListPools = %d pools", len(ps))
		}
		if ids := must(e.s.ListOrphanPoolVMs(ctx, 10))(t); len(ids) != 0 {
			t.Fatalf("VMs of deleted pools while the pool exists: %v", ids)
		}
		if err := e.s.DeletePool(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		// Its VM outlives it (a pool delete that failed halfway): an orphan.
		orphans := must(e.s.ListOrphanPoolVMs(ctx, 10))(t)
		if got := must(e.s.GetVMByName(ctx, "default", "warm-1"))(t); len(orphans) != 1 || orphans[0] != got.ID {
			t.Fatalf("ListOrphanPoolVMs = %v; want [%s] (warm-1)", orphans, got.ID)
		}
		wantErr(t, "second DeletePool", e.s.DeletePool(ctx, p.ID), store.ErrNotFound)
		wantErr(t, "SetPoolShort of a missing pool", e.s.SetPoolShort(ctx, p.ID, nil), store.ErrNotFound)
	}})
}
