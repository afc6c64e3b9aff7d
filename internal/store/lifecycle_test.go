package store_test

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

var lifecycleBehaviours = []behaviour{
	{"migrate/idempotent", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		// The database is migrated already: opening again and migrating
		// alone apply nothing and keep the data.
		if err := store.Migrate(ctx, e.dsn); err != nil {
			t.Fatalf("Migrate on a migrated database: %v", err)
		}
		again := openStore(t, e.dsn)
		if got := must(again.GetVM(ctx, vm.ID))(t); got.Name != "web-1" {
			t.Fatalf("second store reads %+v", got)
		}
		if err := again.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}},

	{"migrate/concurrent_open", func(t *testing.T, e *env) {
		// Managers starting at once against one new database: the migration
		// lock lets one migrate while the others wait, then find nothing to do.
		dsn := e.fresh()
		var wg sync.WaitGroup
		stores := make([]store.Store, 3)
		for i := range stores {
			wg.Go(func() {
				s, err := store.Open(ctx, dsn)
				if err != nil {
					t.Errorf("Open %d: %v", i, err)
					return
				}
				stores[i] = s
			})
		}
		wg.Wait()
		for i, s := range stores {
			if s == nil {
				continue
			}
			if _, err := s.CreateVM(ctx, newVM("vm-"+string(rune('a'+i)))); err != nil {
				t.Errorf("store %d: %v", i, err)
			}
			s.Close()
		}
	}},

	{"time/roundtrip", func(t *testing.T, e *env) {
		// Times come back in UTC, truncated to the microsecond, equal to
		// what the write returned, whatever zone and precision went in.
		zone := time.FixedZone("UTC+5:30", 5*3600+1800)
		created := time.Date(2031, 7, 4, 23, 59, 59, 999999999, zone)
		next := time.Date(1999, 12, 31, 23, 59, 59, 1500, zone)
		vm := newVM("web-1")
		vm.CreatedAt, vm.NextAttemptAt = created, &next
		got := must(e.s.CreateVM(ctx, vm))(t)
		if !got.CreatedAt.Equal(created.Truncate(time.Microsecond)) || got.CreatedAt.Location() != time.UTC {
			t.Fatalf("CreatedAt = %v; want %v in UTC", got.CreatedAt, created.Truncate(time.Microsecond).UTC())
		}
		read := must(e.s.GetVM(ctx, got.ID))(t)
		if read.CreatedAt != got.CreatedAt || read.UpdatedAt != got.UpdatedAt || *read.NextAttemptAt != *got.NextAttemptAt {
			t.Fatalf("read back %v, %v, %v; want exactly %v, %v, %v",
				read.CreatedAt, read.UpdatedAt, *read.NextAttemptAt, got.CreatedAt, got.UpdatedAt, *got.NextAttemptAt)
		}
		if read.NextAttemptAt.Nanosecond() != 1000 {
			t.Fatalf("NextAttemptAt ns = %d; want 1000 (microseconds kept, nanoseconds dropped)", read.NextAttemptAt.Nanosecond())
		}
		cleared := must(e.s.UpdateVM(ctx, got.ID, func(v *store.VM) error { v.NextAttemptAt = nil; return nil }))(t)
		if cleared.NextAttemptAt != nil || must(e.s.GetVM(ctx, got.ID))(t).NextAttemptAt != nil {
			t.Fatal("NextAttemptAt did not clear to NULL")
		}
		// The store clock has nanoseconds too.
		e.clock.Advance(123 * time.Nanosecond)
		h := must(e.s.UpsertHost(ctx, store.HostRegistration{Name: "n"}))(t)
		if hh := must(e.s.GetHost(ctx, h.ID))(t); hh.LastSeenAt != h.LastSeenAt || hh.CreatedAt != h.CreatedAt {
			t.Fatalf("host times %v %v; read back %v %v", h.LastSeenAt, h.CreatedAt, hh.LastSeenAt, hh.CreatedAt)
		}
	}},

	{"json/roundtrip_and_invalid", func(t *testing.T, e *env) {
		vm := newVM("web-1")
		vm.Spec = json.RawMessage(`{"b": [1, 2.5, null, true], "a": {"ü": "\u2603"}, "n": 12345678901234}`)
		vm.Tags = map[string]string{"emoji": "🚀", "quote": `a"b`, "": "empty key"}
		created := must(e.s.CreateVM(ctx, vm))(t)
		got := must(e.s.GetVM(ctx, created.ID))(t)
		if !sameJSON(got.Spec, vm.Spec) {
			t.Fatalf("spec = %s; want %s", got.Spec, vm.Spec)
		}
		if d := diff(vm.Tags, got.Tags); d != "" {
			t.Fatalf("tags (-want +got):\n%s", d)
		}
		if got.TemplateConfig != nil || got.Overrides != nil {
			t.Fatalf("unset template_config/overrides read back as %s / %s; want nil (NULL)", got.TemplateConfig, got.Overrides)
		}
		bad := newVM("web-2")
		bad.Spec = json.RawMessage(`{"unterminated": `)
		_, err := e.s.CreateVM(ctx, bad)
		wantErr(t, "invalid spec", err, store.ErrInvalid)
		if !strings.Contains(err.Error(), "spec") {
			t.Fatalf("error %q does not name the field", err)
		}
		_, err = e.s.GetVMByName(ctx, "default", "web-2")
		wantErr(t, "VM with invalid spec", err, store.ErrNotFound)
		_, err = e.s.BeginAudit(ctx, store.AuditEntry{Actor: "a", Action: "b", Resource: "c", Before: json.RawMessage(`nope`)})
		wantErr(t, "invalid audit before", err, store.ErrInvalid)
	}},
}
