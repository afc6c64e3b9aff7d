package store_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

var leaseBehaviours = []behaviour{
	{"lease/exclusive_and_renew", func(t *testing.T, e *env) {
		acquire := func(holder string) bool {
			t.Helper()
			return must(e.s.AcquireLease(ctx, "reconciler", holder, time.Minute))(t)
		}
		if !acquire("mgr-a") {
			t.Fatal("mgr-a could not take a free lease")
		}
		if acquire("mgr-b") {
			t.Fatal("mgr-b took a lease mgr-a holds")
		}
		if !acquire("mgr-a") {
			t.Fatal("mgr-a could not renew its lease")
		}
		if l := must(e.s.GetLease(ctx, "reconciler"))(t); l.Holder != "mgr-a" || l.ExpiresAt.IsZero() {
			t.Fatalf("GetLease = %+v", l)
		}
		if err := e.s.ReleaseLease(ctx, "reconciler", "mgr-b"); err != nil {
			t.Fatal(err)
		}
		if acquire("mgr-b") {
			t.Fatal("a release by a non-holder freed the lease")
		}
		if err := e.s.ReleaseLease(ctx, "reconciler", "mgr-a"); err != nil {
			t.Fatal(err)
		}
		_, err := e.s.GetLease(ctx, "reconciler")
		wantErr(t, "GetLease after release", err, store.ErrNotFound)
		if !acquire("mgr-b") {
			t.Fatal("mgr-b could not take a released lease")
		}
		if !must(e.s.AcquireLease(ctx, "gc", "mgr-a", time.Minute))(t) {
			t.Fatal("leases of different names interfere")
		}
		_, err = e.s.AcquireLease(ctx, "reconciler", "mgr-b", 0)
		wantErr(t, "zero ttl", err, store.ErrInvalid)
	}},

	{"lease/expiry_takeover_race", func(t *testing.T, e *env) {
		// Several managers race for a fresh lease: exactly one wins.
		race := func(name string) string {
			var wins atomic.Int32
			var winner atomic.Value
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					holder := fmt.Sprintf("mgr-%d", i)
					held, err := e.s.AcquireLease(ctx, name, holder, 300*time.Millisecond)
					if err != nil {
						t.Errorf("AcquireLease %s: %v", holder, err)
					}
					if held {
						wins.Add(1)
						winner.Store(holder)
					}
				})
			}
			wg.Wait()
			if n := wins.Load(); n != 1 {
				t.Fatalf("%d managers hold lease %s; want exactly 1", n, name)
			}
			return winner.Load().(string)
		}
		first := race("reconciler")

		// Let it expire. SQLite measures expiry on the store's clock,
		// Postgres on the database's: move both.
		time.Sleep(400 * time.Millisecond)
		e.clock.Advance(400 * time.Millisecond)

		// Everyone but the old holder races for the expired lease.
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			holder := fmt.Sprintf("new-%d", i)
			wg.Go(func() {
				held, err := e.s.AcquireLease(ctx, "reconciler", holder, time.Minute)
				if err != nil {
					t.Errorf("AcquireLease %s: %v", holder, err)
				}
				if held {
					wins.Add(1)
				}
			})
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("%d managers took the expired lease; want exactly 1", n)
		}
		if held := must(e.s.AcquireLease(ctx, "reconciler", first, time.Minute))(t); held {
			t.Fatalf("the expired holder %s got its lease back from the new one", first)
		}
	}},
}
