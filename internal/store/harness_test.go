package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// engine makes fresh, isolated databases of one kind.
type engine struct {
	name string
	// fresh returns the DSN of an empty database that is removed when the
	// test ends.
	fresh func(t testing.TB) string
}

var engines = []engine{
	{name: "sqlite", fresh: freshSQLite},
	// A schema of its own in NEXUS_TEST_DATABASE_URL per database: skips
	// outside CI when unset, fails when set but unreachable.
	{name: "postgres", fresh: testutil.FreshPostgres},
}

func freshSQLite(t testing.TB) string {
	// A subdirectory that does not exist yet: Open must create it.
	return "sqlite://" + filepath.Join(t.TempDir(), "state", "nexus.db")
}

// openStore opens dsn and closes the store when the test ends.
func openStore(t testing.TB, dsn string, opts ...store.Option) store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), dsn, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// env is what a behaviour runs against: a fresh database of one engine.
type env struct {
	engine string
	dsn    string
	s      store.Store
	clock  *fakeClock
	// fresh makes another empty database of the same engine.
	fresh func() string
}

// fakeClock is the store's clock in tests; it stands still unless moved.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// behaviour is one row of the conformance table.
type behaviour struct {
	name string
	run  func(t *testing.T, e *env)
}

// TestConformance runs every behaviour against every engine, each on a
// fresh database.
func TestConformance(t *testing.T) {
	var all []behaviour
	for _, group := range [][]behaviour{
		vmBehaviours, eventBehaviours, catalogBehaviours, hostBehaviours,
		tokenBehaviours, auditBehaviours, leaseBehaviours, lifecycleBehaviours, notifyBehaviours, statsBehaviours,
		addressBehaviours, createWithinBehaviours, quotaBehaviours,
	} {
		all = append(all, group...)
	}
	for _, eng := range engines {
		t.Run(eng.name, func(t *testing.T) {
			for _, b := range all {
				t.Run(b.name, func(t *testing.T) {
					dsn := eng.fresh(t)
					clk := &fakeClock{now: time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)}
					s := openStore(t, dsn, store.WithClock(clk.Now))
					if got := s.Engine(); got != eng.name {
						t.Fatalf("Engine() = %q; want %q", got, eng.name)
					}
					b.run(t, &env{engine: eng.name, dsn: dsn, s: s, clock: clk, fresh: func() string { return eng.fresh(t) }})
				})
			}
		})
	}
}

var ctx = context.Background()

// must(f())(t) returns f's value, failing the test if f returned an error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// wantErr fails unless err wraps target.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v; want %v", what, err, target)
	}
}

func newVM(name string) store.VM {
	return store.VM{
		Name:         name,
		Project:      "default",
		State:        store.VMRequested,
		DesiredState: store.VMRunning,
		VCPU:         1,
		MemMiB:       128,
		KernelPath:   "/srv/fc/images/vmlinux",
		RootfsPath:   "/srv/fc/images/rootfs.ext4",
		BootArgs:     "console=ttyS0 reboot=k panic=1",
		Spec:         []byte(`{"name":"` + name + `","vcpu":1,"mem_mib":128,"extra_drives":[],"nic":{"rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}}`),
		Tags:         map[string]string{"app": "web"},
	}
}

// sameJSON compares JSON documents by meaning: Postgres's jsonb reorders
// keys and drops whitespace.
func sameJSON(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// diff reports how got differs from want ("" when equal), JSON by meaning.
func diff(want, got any) string {
	return cmp.Diff(want, got, cmp.Comparer(sameJSON))
}
